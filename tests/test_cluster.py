"""`--cluster`: sweeps on Dask (the optional extra, `pip install -e ".[cluster]"`).

A real LocalCluster of 2 processes on loopback, and the `dask scheduler` and `dask worker`
commands started as processes, give the very bytes of `--workers 1`; a worker killed in the
middle of a unit has the unit run again elsewhere, with the same bytes; Ctrl-C cancels what is
pending and keeps the runs written; an unreachable address is one line and exit 2 within 10 s.
The option's checks need no Dask and run everywhere.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, live_processes

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SWEEP = ["sweep", QUICKSTART, "--thresholds", "1,10", "--seeds", "0,1,2", "--set", "train.steps=100", "--no-plots",
         "--quiet"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def runs(out: Path) -> dict[str, bytes]:
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    return {str(p.relative_to(exp)): p.read_bytes() for p in sorted((exp / "runs").rglob("*")) if p.is_file()}


def distributed():
    if os.environ.get("GRADLAB_REQUIRE_DASK") == "1":  # CI's cluster step: a missing Dask fails
        import distributed as dist
        return dist
    return pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference")
    assert cli(*SWEEP, "--workers", "1", "--out", out) == 0
    return runs(out)


BAD = [
    ("local:0", "--cluster: local:N needs N >= 1 worker processes"),
    ("local:two", "--cluster: expected local:N with N a whole number"),
    ("not an address", "--cluster: expected local:N or a Dask scheduler's address such as tcp://HOST:8786"),
    ("tcp://", "--cluster: expected local:N or a Dask scheduler's address"),
]


@pytest.mark.parametrize("value, message", BAD, ids=[v for v, _ in BAD])
def test_a_bad_cluster_value_exits_2_naming_the_option(tmp_path, capsys, value, message):
    assert cli(*SWEEP, "--cluster", value, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_workers_and_a_cluster_together_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRADLAB_CLUSTER", "local:2")  # the environment's cluster counts as given
    assert cli(*SWEEP, "--workers", "2", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("gradlab: error: --workers: counts this machine's worker processes") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_gradlab_help_does_not_import_dask():
    code = ("import sys; from gradlab.cli import main\ntry: main(['sweep', '--help'])\nexcept SystemExit: pass\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, stdout=subprocess.DEVNULL)


def test_an_unreachable_scheduler_is_one_line_and_exit_2_within_10_s(tmp_path):
    distributed()
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gradlab.cli", *map(str, SWEEP), "--cluster", f"tcp://127.0.0.1:{port}",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=30)
    took = time.monotonic() - t
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"gradlab: error: --cluster: cannot reach a Dask scheduler at tcp://127.0.0.1:{port}")
    assert proc.stderr.count("\n") == 1 and took < 10, (took, proc.stderr)
    assert not (tmp_path / "out").exists()


def test_something_else_listening_is_not_taken_for_a_scheduler(tmp_path, capsys):
    """A port where a server that is not Dask's listens (the dashboard's, a web server): Dask's
    Client would read its bytes as a frame length and fail with a MemoryError, then block 10 s."""
    distributed()
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            time.sleep(1)

    threading.Thread(target=answer, daemon=True).start()
    port = server.getsockname()[1]
    try:
        assert cli(*SWEEP, "--cluster", f"tcp://127.0.0.1:{port}", "--out", tmp_path / "out") == 2
    finally:
        server.close()
    err = capsys.readouterr().err
    assert "is not a Dask scheduler" in err and err.count("\n") == 1, err



def _in_a_unit(pid: int) -> bool:
    """Whether a Dask worker process has started a unit: it has imported gradlab's engine,
    whose ml_dtypes library (bfloat16) nothing in distributed loads."""
    try:
        return b"ml_dtypes" in Path(f"/proc/{pid}/maps").read_bytes()
    except OSError:
        return False


def test_a_worker_killed_mid_unit_has_it_run_again_with_the_same_bytes(tmp_path, reference):
    """A real LocalCluster of 2 processes on loopback, one of them killed in a unit: the
    sweep completes, to the bytes of --workers 1."""
    distributed()
    args = [*SWEEP, "--cluster", "local:2", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            busy = [w for w in live_processes(parent=proc.pid) if _in_a_unit(w)]
            if busy:
                assert not list(tmp_path.rglob("report.json"))  # the unit it runs is not finished
                os.kill(busy[0], signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            pytest.fail("no worker was seen in a unit before the sweep ended")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert runs(tmp_path) == reference


def test_a_unit_whose_workers_all_died_is_exit_3_naming_a_seed(tmp_path):
    """With allowed-failures 0 the scheduler gives up on a unit at its first lost worker
    (distributed's KilledWorker): one line, exit 3, the runs written so far kept."""
    distributed()
    env = {**ENV, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    args = [*SWEEP, "--cluster", "local:1", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            busy = [w for w in live_processes(parent=proc.pid) if _in_a_unit(w)]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 3, err
    # the seed of the first unit the scheduler gave up on (a worker holds its next unit too)
    assert re.match(r"gradlab: error: the Dask workers that ran seed [0-2] died, as often as the scheduler allows", err), err
    assert err.count("\n") == 1 and "run the same command to resume" in err, err


def test_ctrl_c_cancels_the_pending_units_and_keeps_the_runs_written(tmp_path, reference):
    distributed()
    args = [*SWEEP, "--cluster", "local:1", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(tmp_path.rglob("report.json"))) < 3:  # a seed's
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the cluster's processes too
        t = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert time.monotonic() - t < 10
        assert err.startswith("gradlab: interrupted; ") and "run the same command to resume" in err, err
        assert err.count("\n") == 1, err
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(live_processes(group=proc.pid)):
            time.sleep(0.05)
        assert not live_processes(group=proc.pid), "a cluster process outlived Ctrl-C"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kept = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("report.json")}
    assert 3 <= len(kept) < 9 and not list(tmp_path.rglob("*.tmp"))
    assert cli(*SWEEP, "--workers", "1", "--out", tmp_path) == 0  # resumes: only the rest is computed
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert runs(tmp_path) == reference



def test_dask_scheduler_and_worker_processes_give_the_bytes_of_one_worker(tmp_path, reference):
    """The README's recipe on one machine: `dask scheduler`, two `dask worker`s, and the sweep
    given the scheduler's address; its progress adds up to the sweep's steps; a grid sweep on
    the same cluster gives the bytes of a local one."""
    distributed()
    sched_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        import json

        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([*worker, address, "--nthreads", "1", "--no-dashboard"], env=ENV,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        from distributed import Client

        with Client(address, timeout=20) as client:
            client.wait_for_workers(2, timeout=30)
        from gradlab.config import load_config
        from gradlab.experiment import Progress, run_experiment

        steps, total = [], []

        class Counted(Progress):
            def start(self, n_steps, n_runs, n_skipped):
                total.append(n_steps)

            def advance(self, n):
                steps.append(n)

        out = tmp_path / "out"
        cfg = load_config(QUICKSTART, ["train.steps=100"], [0, 1, 2],
                          sweep={"method": "norm", "thresholds": [1.0, 10.0], "baseline": True})
        run_experiment(cfg, out, plots=False, cluster=address, progress=Counted())
        assert runs(out) == reference  # the same sweep as SWEEP's
        assert sum(steps) == total[0] == 300  # every step counted once, as the units ran or at their end
        # A grid sweep (configs/lr_stability.yaml's, shortened) too: its (point, variant) stacks
        # on the workers give the bytes of one process.
        grid = load_config(ROOT / "configs" / "lr_stability.yaml", ["train.steps=30"], [0, 1],
                           sweep={"method": "norm", "thresholds": [0.1, 10.0], "baseline": True},
                           grid=["train.optimizer.lr=0.03,0.3"])
        run_experiment(grid, tmp_path / "grid-cluster", plots=False, cluster=address)
        run_experiment(grid, tmp_path / "grid-local", plots=False, workers=1)
        cluster_runs = runs(tmp_path / "grid-cluster")
        assert len(cluster_runs) == 2 * 3 * 2 * 3 and cluster_runs == runs(tmp_path / "grid-local")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def test_progress_counts_a_unit_run_again_once_and_nothing_after_its_result():
    """The events of a unit's second attempt (its first worker lost) replace the first's
    count; events that arrive after the unit's result are not counted."""
    import threading
    from types import SimpleNamespace

    from gradlab.cluster import DaskExecutor

    seen = []
    ex = DaskExecutor.__new__(DaskExecutor)  # its bookkeeping alone, without a cluster
    ex._advance, ex._lock, ex._counted, ex._closed = seen.append, threading.Lock(), {}, set()
    for attempt, n in (("a", 25), ("a", 25), ("b", 25), ("b", 25), ("b", 25)):
        ex._on_event((0.0, ("unit-1", attempt, n)))
    assert sum(seen) == 75  # the lost attempt's 50 steps undone when the second reported
    assert ex.unreported(SimpleNamespace(key="unit-1"), 100) == 25
    ex._on_event((0.0, ("unit-1", "b", 25)))  # late: the result has come
    assert sum(seen) + 25 == 100
