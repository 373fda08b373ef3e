"""SIGTERM and SIGINT, the one way the project turns them into something its code can handle.

SIGTERM is what `kill`, job schedulers, container runtimes and cloud preemption send; SIGINT is
Ctrl-C. Three behaviours, one owner:
  - raising(): the signal raises Interrupted where the main thread is, so `finally` blocks clean
    up (the converter stops its workers, the importer removes its temporary folder) and the CLI
    exits 128 + the signal number, as a shell reports a signal.
  - deferred(): around the few renames that put finished work in place, the signal waits until
    they are done, then takes effect.
  - StopFlag: training turns the signal into a flag that tf.distribute's preemption handler polls,
    so that every worker saves the same step and stops (training/distribute.py).
"""

import contextlib
import signal
import threading
from typing import Optional

from absl import logging

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The process was asked to stop by a signal.

    A BaseException, as KeyboardInterrupt is: TensorFlow re-raises an Exception that meets it while
    it traces a function (as autograph's StagingError, seen with a SIGTERM during the importer's
    export), and `except Exception` clean-up code would take it for an ordinary error.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, what a shell reports for a process a signal stopped."""
        return 128 + self.signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal() works only there


def _raise_interrupted(signum, frame):
    del frame  # unused
    raise Interrupted(signum)


@contextlib.contextmanager
def raising(signums=TERMINATION_SIGNALS):
    """Within the block, each of `signums` raises Interrupted (the previous handlers come back)."""
    if not _in_main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred(signums=TERMINATION_SIGNALS):
    """`signums` wait until the block is done, then take effect as the handlers before it say.

    Around the renames that put a finished set, run or export in place: a handler that raised in
    the middle would leave the work half done. SIGKILL cannot wait; callers order their renames so
    that their next run can finish them.
    """
    if not _in_main_thread():
        yield
        return
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)


class StopFlag:
    """SIGTERM and SIGINT become a flag to poll; a second Ctrl-C raises Interrupted at once.

    Training's (training/distribute.py): the flag feeds tf.distribute's
    PreemptionCheckpointHandler (its `termination_watcher_fn`), which saves a checkpoint at the
    next step boundary, in step with every worker of a cluster, and then stops training.
    """

    def __init__(self):
        self.received: Optional[int] = None  # the first signal's number
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        if _in_main_thread():
            for signum in TERMINATION_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame  # unused
        if self.received is not None and signum == signal.SIGINT:
            raise Interrupted(signum)
        if self.received is None:
            self.received = signum
            logging.warning("%s received: saving a checkpoint at the end of this step, then "
                            "stopping (Ctrl-C again to stop without it)",
                            signal.Signals(signum).name)

    def is_set(self) -> bool:
        return self.received is not None

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
