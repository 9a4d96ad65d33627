"""Local study cells in several processes at once.

A small model's training step is mostly short kernels and Python overhead, which a second thread barely speeds up:
on the quick start's 2-core machine one fine-tuning step took 47 ms with one thread and 32 ms with two
(benchmarks/quickstart_step.py with OMP_NUM_THREADS=1 and 2 in one sitting: benchmarks/results/
quickstart_step_1thread.json and _2threads.json), so two single-threaded cells side by side finish sooner than the
same cells one after another on two threads. Workers are spawned (a forked process inherits torch's thread pools in
an unusable state) and set their thread count before any work.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ..errors import BusyError
from ..utils.io import is_locked


def worker_count(workers: int | str, jobs: int) -> int:
    """"auto": one worker per CPU core; never more workers than jobs."""
    wanted = (os.cpu_count() or 1) if workers == "auto" else int(workers)
    return max(1, min(wanted, jobs))


def thread_count(threads: int | None, workers: int) -> int | None:
    """The threads each worker may use: as asked, or the cores shared out; None leaves torch's default."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None


@contextmanager
def torch_threads(threads: int | None):
    """This process's torch threads set for a block (None: unchanged), then restored."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


WORKER_LOCK = ".worker-{pid}.lock"  # held by each live worker process for its whole life, in the folder it writes
_HELD: list = []  # a worker's own lock, kept referenced so that it is never released before the process ends


def _watch_parent(parent: int) -> None:
    """A worker whose parent has gone (killed, say) stops at once instead of finishing cells on its own: the parent
    would never collect them, and a new run of the same folder would race them."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.2)


def _start_worker(threads: int | None, parent: int, folder: str | None) -> None:
    if hasattr(signal, "SIGKILL") and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # the kernel ends this process with its parent
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    if folder is not None:
        lock = FileLock(str(Path(folder) / WORKER_LOCK.format(pid=os.getpid())))
        lock.acquire(timeout=0)
        _HELD.append(lock)
    if threads is not None:
        torch.set_num_threads(threads)


def check_no_workers(folder: Path) -> None:
    """Refuse to start while worker processes of an earlier run of `folder` are alive (their locks are held); the
    locks of ended ones are removed."""
    for path in sorted(folder.glob(WORKER_LOCK.format(pid="*"))):
        if is_locked(path):
            pid = path.name.split("-")[1].split(".")[0]
            raise BusyError(f"{folder}: a worker process of an earlier run (pid {pid}) still runs; wait for it to end "
                            f"or stop it (kill {pid})")
        path.unlink(missing_ok=True)


def run_pool(jobs: Iterable[tuple[Callable[..., Any], tuple]], workers: int, threads: int | None,
             on_result: Callable[[Callable, tuple, Any], Iterable[tuple[Callable, tuple]] | None],
             on_error: Callable[[Callable, tuple, BaseException], Iterable[tuple[Callable, tuple]] | None],
             folder: Path | None = None) -> None:
    """`job(*args)` for each `(job, args)` in `workers` spawned processes; every outcome is handed to `on_result` or
    `on_error` in this process as it arrives (a job whose process died too). Either may return more jobs, which run
    in the same processes: work that waits on finished jobs starts no new process. The workers end with this process;
    each holds a lock in `folder` while it lives (`check_no_workers`)."""
    ctx = get_context("spawn")
    args = (threads, os.getpid(), None if folder is None else str(folder))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=args) as pool:
        running: dict[Future, tuple[Callable, tuple]] = {}

        def submit(items: Iterable[tuple[Callable, tuple]]) -> None:
            for job, args in items:
                try:
                    running[pool.submit(job, *args)] = (job, args)
                except BrokenProcessPool as err:  # a process died: the pool takes no more work
                    submit(on_error(job, args, err) or ())

        submit(jobs)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job, args = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 - the job's own error, or its process killed (BrokenProcessPool)
                    submit(on_error(job, args, err) or ())
                else:
                    submit(on_result(job, args, result) or ())
