"""The numerical environment each run records (issue: results that silently depend on the
machine). OpenBLAS's kernel (Haswell, SkylakeX, ...) and NumPy's SIMD loops decide a run's
float32 digits; a run says where it was computed, and a resume that would mix environments
says which runs came from where instead of mixing them silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

from gradlab import environment

ROOT = Path(__file__).resolve().parents[1]

from test_faults import RUNS, TINY  # noqa: E402  (quickstart's network, 12 steps, 2 seeds x 3 variants)


def _openblas_reports_a_kernel() -> bool:
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl looks at)
    import threadpoolctl

    return any(p.get("architecture") for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")


def _run(config: Path, out: Path, *extra) -> int:
    return cli("run", config, "--out", out, "--quiet", "--no-plots", *extra)


def _reports(exp: Path) -> dict[str, dict]:
    return {rid: json.loads((exp / "runs" / rid / "report.json").read_text()) for rid in RUNS}


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, Path, Path]:
    """(config, --out, experiment directory) of a complete experiment, computed here."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    assert _run(config, out, "--workers", "2") == 0
    (exp,) = out.iterdir()
    return config, out, exp


def _numpy_blas_kernel() -> str:
    import numpy  # noqa: F401  (threadpoolctl sees only loaded libraries)
    from threadpoolctl import threadpool_info

    return environment._numpy_blas(threadpool_info())["architecture"]


def test_each_run_records_the_environment_it_was_computed_in(tiny):
    """In report.json, from the worker processes that trained them, and so in summary.json."""
    _, _, exp = tiny
    here = environment.for_training()
    reports = _reports(exp)
    for rid, rep in reports.items():
        assert rep["environment"] == here, rid
    assert here["blas_threads"] == 1  # what train_seed pins, not the process's default
    assert here["blas_kernel"] == _numpy_blas_kernel()
    import numpy

    assert here["numpy"] == numpy.__version__
    summary = json.loads((exp / "summary.json").read_text())
    assert [r["environment"] for r in summary] == [here] * len(RUNS)
    md = (exp / "report.md").read_text()
    assert f"Numerical environment: {environment.describe(here)} (all 6 runs)" in md


def _move(exp: Path, rid: str, **changes) -> dict:
    """Edit only the `environment` of a run's report.json (and its summary.json entry, which
    would otherwise contradict it), as if the run was computed elsewhere."""
    path = exp / "runs" / rid / "report.json"
    rep = json.loads(path.read_text())
    rep["environment"].update(changes)
    path.write_text(json.dumps(rep, indent=2) + "\n")
    summary = json.loads((exp / "summary.json").read_text())
    (exp / "summary.json").write_text(json.dumps([rep if r["run_id"] == rid else r for r in summary], indent=2) + "\n")
    return rep["environment"]


def test_a_resume_that_would_mix_environments_warns_names_the_runs_and_keeps_them(tiny, capsys):
    config, out, exp = tiny
    here = environment.for_training()
    other_kernel = "Prescott" if here["blas_kernel"] != "Prescott" else "Haswell"
    elsewhere = _move(exp, "none-s0", blas_kernel=other_kernel)
    _move(exp, "norm-1-s0", blas_kernel=other_kernel)
    kept = {rid: (exp / "runs" / rid / "report.json").read_bytes() for rid in ("none-s0", "norm-1-s0")}
    (exp / "runs" / "value-0.1-s1" / "report.json").unlink()  # something left to compute
    capsys.readouterr()

    assert _run(config, out) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1, err
    assert ("complete runs computed in another numerical environment: 2 runs (none-s0 and norm-1-s0) in "
            f"{environment.describe(elsewhere)} "
            f"(another BLAS kernel: {other_kernel}, not {here['blas_kernel']})") in err
    assert f"This process computes in {environment.describe(here)}" in err
    assert "reproduce bit for bit only in their own environment" in err and "--force recomputes" in err
    for rid in ("norm-1-s1", "value-0.1-s0"):  # the runs of this environment are not named
        assert rid not in err
    for rid, data in kept.items():  # kept, not recomputed
        assert (exp / "runs" / rid / "report.json").read_bytes() == data
    assert _reports(exp)["value-0.1-s1"]["environment"] == here
    md = (exp / "report.md").read_text()
    assert "**Mixed numerical environments**: 4 runs (value-0.1-s0, none-s1, norm-1-s1 and value-0.1-s1) in " \
        f"{environment.describe(here)}" in md, md
    assert f"2 runs (none-s0 and norm-1-s0) in {environment.describe(elsewhere)}" in md

    assert cli("report", exp) == 0  # `report` flags the mixed experiment too
    err = capsys.readouterr().err
    assert "warning: Mixed numerical environments" in err and "none-s0 and norm-1-s0" in err, err

    assert _run(config, out, "--force") == 0
    assert "warning" not in capsys.readouterr().err
    assert all(rep["environment"] == here for rep in _reports(exp).values())
    assert "Mixed" not in (exp / "report.md").read_text()
    assert _run(config, out) == 0  # and a plain resume has nothing to say
    assert "warning" not in capsys.readouterr().err


def test_many_runs_of_other_environments_are_grouped_counted_and_exemplified():
    here = {"machine": "x86_64", "numpy": "2.4.6", "numpy_simd": "X86_V2 X86_V3", "blas": "openblas",
            "blas_library": "libscipy_openblas", "blas_version": "0.3.31", "blas_kernel": "SkylakeX", "blas_threads": 1}
    haswell = {**here, "blas_kernel": "Haswell"}
    old_numpy = {**here, "numpy": "1.26.4"}
    kept = ([{"run_id": f"norm-{i}-s0", "environment": haswell} for i in range(300)]
            + [{"run_id": "none-s0", "environment": old_numpy}, {"run_id": "none-s1"}]
            + [{"run_id": f"norm-{i}-s1", "environment": here} for i in range(50)])
    text = environment.foreign_warning(kept, here)
    assert text.startswith("complete runs computed in another or an unrecorded numerical environment: "
                           "300 runs (norm-0-s0, norm-1-s0, norm-2-s0 and 297 more) in "
                           "NumPy 2.4.6 (X86_V3 loops), OpenBLAS 0.3.31 Haswell kernel, 1 BLAS thread, x86_64 "
                           "(another BLAS kernel: Haswell, not SkylakeX); 1 run (none-s0) in NumPy 1.26.4"), text
    assert "(another NumPy version: 1.26.4, not 2.4.6)" in text
    assert "1 run (none-s1) in an unrecorded environment" in text
    assert "norm-299-s0" not in text and "-s1, " not in text
    assert environment.foreign_warning(kept[-50:], here) == ""


def test_runs_written_without_an_environment_still_load(tiny, capsys):
    """report.json of a gradlab that did not record environments: whole, of an unknown one."""
    config, out, exp = tiny
    old = []
    for rid in RUNS:
        path = exp / "runs" / rid / "report.json"
        rep = json.loads(path.read_text())
        del rep["environment"]
        path.write_text(json.dumps(rep, indent=2) + "\n")
        old.append(rep)
    (exp / "summary.json").write_text(json.dumps(old, indent=2) + "\n")
    before = {rid: (exp / "runs" / rid / "report.json").read_bytes() for rid in RUNS}
    capsys.readouterr()
    assert cli("report", exp) == 0
    out_text, err = capsys.readouterr()
    assert "warning" not in err and all(rid in out_text for rid in RUNS), err
    assert "Numerical environment: an unrecorded environment" in (exp / "report.md").read_text()
    assert _run(config, out) == 0
    err = capsys.readouterr().err
    assert "damaged" not in err and "6 runs (none-s0, norm-1-s0, value-0.1-s0 and 3 more) in an unrecorded" in err, err
    assert {rid: (exp / "runs" / rid / "report.json").read_bytes() for rid in RUNS} == before  # not recomputed


@pytest.mark.skipif(not _openblas_reports_a_kernel(), reason="NumPy's BLAS names no kernel (not OpenBLAS)")
@pytest.mark.parametrize("coretype", [None, "Haswell"])
def test_the_recorded_kernel_is_the_one_openblas_chose_in_that_process(tmp_path, coretype):
    """OPENBLAS_CORETYPE forces OpenBLAS's kernel: each process records the one it ran on,
    as threadpoolctl reports it there (on an AVX-512 machine, SkylakeX without it)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    probe = ("import numpy, threadpoolctl, json; print(json.dumps([p.get('architecture') for p in "
             "threadpoolctl.threadpool_info() if p['user_api'] == 'blas']))")
    kernels = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                                        capture_output=True, text=True).stdout)
    assert kernels and kernels[0] is not None  # the skipif below holds in the child too
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("seeds: [0, 1]", "seeds: [0]").replace("steps: 12", "steps: 3"))
    subprocess.run([sys.executable, "-m", "gradlab.cli", "run", str(config), "--out", str(tmp_path / "out"),
                    "--quiet", "--no-plots"], env=env, check=True, capture_output=True)
    (exp,) = (tmp_path / "out").iterdir()
    recorded = {json.loads((exp / "runs" / rid / "report.json").read_text())["environment"]["blas_kernel"]
                for rid in RUNS[:3]}
    assert recorded == {kernels[0]}
    if coretype:
        assert kernels[0] == coretype


def test_a_damaged_environment_is_damage_but_extra_plain_keys_are_not():
    good = environment.for_training()
    assert environment.problem(good) == ""
    assert environment.problem({**good, "future_key": "x"}) == ""
    assert environment.problem("SkylakeX") == "not an object"
    assert environment.problem({k: v for k, v in good.items() if k != "blas_kernel"}) == "no `blas_kernel`"
    assert environment.problem({**good, "blas_threads": "1"}) == "`blas_threads` is not an integer or null"
    assert environment.problem({**good, "numpy": None}) == "`numpy` is not a string"
    assert environment.problem({**good, "extra": [1]}) == "`extra` is not a plain value"
