"""The converter's worker processes: they prepare examples, and die with the converter.

However the converter dies: prctl PR_SET_PDEATHSIG on Linux (the kernel SIGKILLs a worker when its
parent dies, SIGKILL included), and a thread that watches the parent everywhere. On SIGINT, and on
SIGTERM that tools/make_tfrecords.py turns into signals.Interrupted, the converter kills them
(stop_workers) before it removes its temporary files and exits.

Workers are started with 'spawn' and import the modules of the function they run: those import no
TensorFlow, so each worker starts in a fraction of a second instead of several seconds.
"""

import collections
import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_init(parent_pid: int) -> None:
    """Runs first in every worker process."""
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # The kernel SIGKILLs this process when its parent dies, SIGKILL of the parent included.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    # Everywhere else (and as a second line of defence): a thread that watches the parent.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def start_workers(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # 'spawn', not fork: the parent has TensorFlow's thread pools running.
    return concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(os.getpid(),))


def stop_workers(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kills the workers at once (one may be blocked reading a file) and releases the pool."""
    if hasattr(executor, "kill_workers"):  # Python >= 3.14
        executor.kill_workers()
        processes = []
    else:  # the pool's own list of its processes: no public way to reach them before 3.14
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
    # Not cancel_futures=True: see map_in_order.
    executor.shutdown(wait=False)
    for process in processes:
        process.join(timeout=5)


def _run_chunk(function: Callable[[T], R], items: Sequence[T]) -> list:
    return [function(item) for item in items]


def map_in_order(executor: concurrent.futures.ProcessPoolExecutor, function: Callable[[T], R],
                 items: Sequence[T], chunksize: int, in_flight: int) -> Iterator[R]:
    """function(item) for each item, in order, computed in the pool's processes.

    executor.map without its clean-up: a caller that stops early (an error, a signal) leaves the
    futures in flight alone instead of cancelling them. Cancelled futures race the pool's own
    thread once stop_workers kills the processes: Python 3.11's thread then fails setting their
    exception and prints an InvalidStateError traceback. At most `in_flight` chunks are queued,
    which also bounds the results that wait in memory for the writer.
    """
    starts = iter(range(0, len(items), chunksize))
    pending = collections.deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append(executor.submit(_run_chunk, function, items[start:start + chunksize]))

    for _ in range(in_flight):
        submit()
    while pending:
        results = pending.popleft().result()
        submit()
        yield from results
