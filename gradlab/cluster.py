"""Units on a Dask cluster (`--cluster`, GRADLAB_CLUSTER): the executor seam over
distributed's Client, for the optional extra `pip install -e ".[cluster]"`.

`local:N` starts a LocalCluster of N single-threaded worker processes for this experiment
alone; any other value is a running scheduler's address (`tcp://HOST:8786`), whose workers
need gradlab installed (the same version) but no filesystem shared with this machine: they
return RunResults, and the `gradlab` process writes them. Each unit is submitted with
pure=False, a key of its own: a worker lost mid-unit has the scheduler run it again on
another (up to distributed.scheduler.allowed-failures times), and the numbers are the same,
since a unit is a pure function of the config and the seed on a given numerical environment
(each run records the environment of the worker that computed it).

Dask is imported here only, when --cluster is given: `gradlab --help` and `validate` never
load it.
"""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError, clip

CONNECT_TIMEOUT = 4  # seconds: with Dask's import (1-3 s), an unreachable scheduler is an error within 10 s
_LOCAL = re.compile(r"local:(\d+)")


def parse_cluster(text: str | None) -> str | None:
    """`local:N` (N >= 1) or a scheduler address (`tcp://HOST:PORT`, `tls://...`, or
    `HOST:PORT`); anything else is a UserError naming --cluster. None and "" mean no cluster."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    m = _LOCAL.fullmatch(text)
    if m:
        if int(m.group(1)) < 1:
            raise UserError("local:N needs N >= 1 worker processes", key="--cluster")
        return text
    if text.startswith("local"):
        raise UserError(f"expected local:N with N a whole number of worker processes, got `{clip(text)}`",
                        key="--cluster")
    if not re.fullmatch(r"([a-z][a-z0-9+.-]*://)?[^\s/:]+(:\d+)?/?", text) or text.endswith("://"):
        raise UserError(f"expected local:N or a Dask scheduler's address such as tcp://HOST:8786, got `{clip(text)}`",
                        key="--cluster")
    return text


def _dask():
    try:
        import dask
        import distributed
    except ImportError as e:
        raise UserError(f"needs Dask, which is not installed ({e}); pip install -e \".[cluster]\"",
                        key="--cluster") from None
    return dask, distributed


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C in this process while a LocalCluster starts: it arrives when the block
    ends, with the cluster whole, which then closes the usual way (a second late at most). A
    Ctrl-C in the middle of the start left a half-made cluster, and Dask's exit hook printed
    a traceback closing it. The signal is blocked, not ignored: nothing is lost. (The worker
    processes get the terminal's Ctrl-C too, and ignore it: gradlab.cli in a spawned process,
    dask_setup once started.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _probe(address: str) -> None:
    """Raise OSError unless a Dask scheduler answers at `address` (tcp) within CONNECT_TIMEOUT.

    A scheduler speaks first: its handshake, a frame whose first 8 bytes are its length. Read
    before distributed's Client connects, because the Client fails badly on a port where
    something else listens (a web server, the dashboard's 8787, a proxy): it reads their bytes
    as a frame length, tries to allocate exabytes, and its clean-up then blocks for 10 s."""
    import socket
    import struct
    import time

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    scheme, loc = parse_address(address)
    if scheme != "tcp":
        return  # tls and others: the handshake is encrypted; the Client's own timeout holds
    host, port = parse_host_port(loc, 8786)
    deadline = time.monotonic() + CONNECT_TIMEOUT
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as sock:
        head = b""
        while len(head) < 8:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(8 - len(head))
            except socket.timeout:
                raise OSError(f"no Dask handshake from {host}:{port} within {CONNECT_TIMEOUT} s") from None
            if not chunk:
                raise OSError(f"{host}:{port} closed the connection without a Dask handshake")
            head += chunk
    if not 0 < struct.unpack("<Q", head)[0] < 2**20:
        raise OSError(f"what listens at {host}:{port} is not a Dask scheduler")


_FLUSH_EVERY = 25  # steps between progress events, as the local pool sends them


def _on_worker(topic: str, fn: Callable, *args: Any):
    """Run a unit on a Dask worker: its progress as events on `topic`, every 25 steps, and its
    BLAS at one thread for good. train_seed limits BLAS for its own span only and then restores
    what it found; on a worker running units in two threads (`dask worker` without --nthreads 1)
    one unit's restore would hand the other's remaining steps the machine's thread count, and
    other digits."""
    import uuid

    from distributed import get_worker

    from .executors import limit_blas_threads

    limit_blas_threads()
    worker = get_worker()
    key, attempt, pending = worker.get_current_task(), uuid.uuid4().hex, 0

    def advance(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= _FLUSH_EVERY:
            worker.log_event(topic, (key, attempt, pending))
            pending = 0

    result = fn(*args, advance=advance)
    if pending:
        worker.log_event(topic, (key, attempt, pending))
    return result


class DaskExecutor:
    """The executor seam (gradlab.executors) on a Dask cluster. Progress comes as Dask events,
    every 25 steps of each unit; a unit run again after a lost worker starts its count afresh,
    and its events that come after its result are not counted (unreported() has the rest)."""

    def __init__(self, spec: str, advance: Callable[[int], None] = lambda n: None) -> None:
        import logging
        import threading
        import uuid

        self._advance, self._lock = advance, threading.Lock()
        self._topic = f"gradlab-progress-{uuid.uuid4().hex}"
        self._counted: dict[str, tuple[str, int]] = {}  # unit's key -> (its attempt, steps counted)
        self._closed: set[str] = set()  # units whose result came: their late events are ignored

        dask, distributed = _dask()
        self.name, self._cluster, self._futures = spec, None, set()
        # distributed's own log lines (a worker restarted, a connection closed on Ctrl-C, a
        # unit given up on) are for a cluster's operator; the user of gradlab sees gradlab's
        # one-line outcomes, which say the same.
        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        m = _LOCAL.fullmatch(spec)
        try:
            if m:
                # Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off
                # glibc's adaptive mmap threshold: every NumPy temporary above 128 KiB is then mapped
                # and unmapped afresh: one grid unit took 4.45 s with the variable, 3.35 s without
                # (the same process otherwise), and a 64-run grid sweep 1.32x the local pool's time
                # against 1.10x without. Unset for our own workers; `dask worker` is the operator's.
                environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_TRIM_THRESHOLD_": None}
                with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _ctrl_c_held():
                    self._cluster = distributed.LocalCluster(
                        n_workers=int(m.group(1)), threads_per_worker=1, processes=True, dashboard_address=None,
                        silence_logs=logging.CRITICAL, host="127.0.0.1", preload=["gradlab.cluster"])
                    self._client = distributed.Client(self._cluster, set_as_default=False)
            else:
                _probe(spec)
                with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT}s"}):
                    self._client = distributed.Client(spec, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except Exception as e:  # refused, timed out, a malformed address, not a Dask scheduler
            self.shutdown()
            why = " ".join(str(e).split()) or type(e).__name__
            raise UserError(f"cannot reach a Dask scheduler at {spec} ({why})", key="--cluster") from None
        except BaseException:
            self.shutdown()
            raise
        # Worker threads, each a unit at a time (0: a scheduler whose workers have yet to come)
        self.workers = sum(w.get("nthreads", 1) for w in self._client.scheduler_info()["workers"].values())
        self._client.subscribe_topic(self._topic, self._on_event)

    def _on_event(self, event) -> None:
        """A unit's progress (called on the client's thread): a new attempt of a unit (its
        worker was lost) replaces the old one's count, so that the bar never counts twice."""
        key, attempt, n = event[1]
        with self._lock:
            if key in self._closed:
                return
            was, counted = self._counted.get(key, (attempt, 0))
            delta = n - counted if was != attempt else n
            self._counted[key] = (attempt, n if was != attempt else counted + n)
        if delta:
            self._advance(delta)

    def unreported(self, fut, steps: int) -> int:
        """Of a finished unit's `steps`, those its events have not counted; none are counted after."""
        with self._lock:
            self._closed.add(fut.key)
            return steps - self._counted.pop(fut.key, ("", 0))[1]

    def submit(self, fn: Callable, *args: Any):
        fut = self._client.submit(_on_worker, self._topic, fn, *args, pure=False)
        self._futures.add(fut)
        return fut

    def start(self) -> None:
        pass  # the scheduler starts each unit as a worker is free

    def as_completed(self, futures: Iterable) -> Iterator:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        from .executors import Lost

        pending = as_completed(list(futures), loop=self._client.loop)
        del futures  # the caller's list: each result is to be freed once written
        for fut in pending:
            if fut.status == "error" and isinstance(fut.exception(), KilledWorker):
                # The scheduler gave up on it: the workers running it died allowed-failures times.
                raise Lost(fut, None)
            self._futures.discard(fut)  # finished: nothing to cancel, and its result is freed once written
            yield fut

    def shutdown(self, cancel: bool = False) -> None:
        """Cancel what is pending (with `cancel`), then close the client and a local cluster.
        Idempotent: the experiment calls it when the units are done and again on its way out."""
        client, cluster = getattr(self, "_client", None), self._cluster
        self._client = self._cluster = None
        if client is not None:
            try:
                client.unsubscribe_topic(self._topic)
            except Exception:  # not subscribed yet (failed to connect), or the scheduler is gone
                pass
            if cancel and self._futures:
                try:
                    client.cancel(list(self._futures))
                except Exception:  # a scheduler gone already: nothing left to cancel
                    pass
            client.close()
        if cluster is not None:
            cluster.close()
        self._futures = set()


def dask_setup(worker) -> None:
    """Run by each LocalCluster worker process as it starts (a Dask preload): a terminal's
    Ctrl-C reaches the whole process group, and the `gradlab` process, not each worker, decides
    what it means (cancel the pending units, close the cluster). A worker left to itself would
    print a KeyboardInterrupt traceback per process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
