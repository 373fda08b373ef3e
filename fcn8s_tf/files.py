"""Files and folders that appear whole or not at all, and the lock that keeps a second writer out.

The one owner of what the converter, the trainer, the importer, the export and the benchmark each
need (docs/DESIGN.md, "One owner per piece of infrastructure"):
  - write_text / write_json: a temporary sibling, flushed to disk, renamed over the target: a
    reader sees the old file or the new one, never half of one. JSON is strict (no NaN).
  - publish_dir: a finished folder renamed into place; an existing one is swapped out in one step
    where Linux allows it (renameat2 RENAME_EXCHANGE), else moved aside first.
  - lock: flock(2) on a file or folder.
  - remove_stale_temp_dirs: what killed writers left, told by the pid in the folder's name.
No TensorFlow at import: the converter's worker processes use this module. Remote paths (gs://)
go through tf.io.gfile, imported only for them.
"""

import ctypes
import errno
import json
import math
import os
import sys
from typing import Any, Callable, List, Optional

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock there
    fcntl = None


def is_remote(path: str) -> bool:
    """A path TensorFlow's file systems serve (gs://, s3://, ...), not the local one."""
    return "://" in str(path)


def fsync(path) -> None:
    """Flushes a file's or a folder's contents to disk (a rename is only durable after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------ atomic files --
def temp_name(name: str) -> str:
    """The temporary sibling write_text writes `name` into: hidden, and this process's own."""
    return f".{name}.tmp-p{os.getpid()}"


def is_temp_of(entry: str, name: str) -> bool:
    """Whether folder entry `entry` is a temporary of write_text for `name` (any process's)."""
    return entry.startswith(f".{name}.tmp-p")


def write_text(path, text: str) -> None:
    """Writes `text` to `path` atomically; its folder is created if missing.

    The pid in the temporary's name keeps two writers from writing into one temporary; the last
    rename wins whole.
    """
    path = str(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    tmp = os.path.join(directory, temp_name(name))
    if is_remote(path):
        import tensorflow as tf  # only remote paths need TensorFlow's file systems

        tf.io.gfile.makedirs(directory)
        try:
            with tf.io.gfile.GFile(tmp, "w") as f:
                f.write(text)
            tf.io.gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
            raise
        return
    os.makedirs(directory, exist_ok=True)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(payload: Any, indent: Optional[int] = None) -> str:
    """Strict JSON text of `payload` (json_safe first, so a NaN can never reach the output)."""
    return json.dumps(json_safe(payload), indent=indent, allow_nan=False)


def write_json(path, payload: Any) -> None:
    """Writes `payload` as strict, indented JSON, atomically (write_text)."""
    write_text(path, dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------------- folders --
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(a, b) -> None:
    """Swaps two folders in one step (Linux renameat2 RENAME_EXCHANGE).

    Raises:
      OSError: not Linux, no renameat2 in the C library (glibc < 2.28), or the file system does
        not support the exchange (EINVAL, e.g. NFS), or any rename error.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2(RENAME_EXCHANGE) is Linux-only")
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "this C library has no renameat2")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(a), None, str(b))


def publish_dir(new: str, target: str, aside: Optional[str] = None) -> None:
    """Puts the finished folder `new` at `target`, whole: readers see the old folder or the new.

    An absent target: one rename. An existing target (allowed only when `aside` is given) is
    swapped with `new` in one step where the file system allows it (the old folder is then at
    `new`), else renamed to `aside` first: a SIGKILL between those two renames (microseconds)
    leaves no target and both folders beside it, for the caller's next run to clean up. Run it
    under signals.deferred() so that Ctrl-C cannot land between them. Remote targets (gs://) take
    one tf.io.gfile rename and may not exist yet.

    Raises:
      FileExistsError: target exists and no `aside` was given.
    """
    if is_remote(target):
        import tensorflow as tf

        if tf.io.gfile.exists(target):
            raise FileExistsError(f"{target} already exists")
        tf.io.gfile.rename(new, target)
        return
    if not os.path.lexists(target):
        # fails, rather than merges, if target appeared meanwhile (non-empty)
        os.rename(new, target)
        return
    if aside is None:
        raise FileExistsError(f"{target} already exists")
    try:
        exchange(new, target)
        return
    except OSError:  # no exchange here: two renames
        pass
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise


def remove_stale_temp_dirs(directory: str, is_temp: Callable[[str], bool], log=None) -> List[str]:
    """Deletes the temp folders in `directory` that killed processes left; returns their paths.

    `is_temp(name)` picks the folders. A name that carries its writer's pid as a `-p<pid>` part
    (an export's `.tmp-<version>-p<pid>-<time>`, an import's `.import_weights.tmp-p<pid>-...`) is
    removed only when that pid is gone; a name without one (TF's `ckpt-N_temp` checkpoint parts) is
    removed outright: callers hold the lock of the folder, so no live writer of it exists.
    """
    import tensorflow as tf  # gfile: a workdir or export base may be remote

    removed = []
    if not tf.io.gfile.isdir(directory):
        return removed
    for name in tf.io.gfile.listdir(directory):
        name = name.rstrip("/")
        if not is_temp(name):
            continue
        pid = next((int(part[1:]) for part in name.split("-")
                    if part.startswith("p") and part[1:].isdigit()), None)
        if pid is not None and pid_alive(pid):
            continue
        full = os.path.join(directory, name)
        if tf.io.gfile.isdir(full):
            tf.io.gfile.rmtree(full)
            removed.append(full)
            if log:
                log(f"removed {full}, left by an interrupted run")
    return removed


# ------------------------------------------------------------------------------------- lock --
def lock(path) -> Optional[int]:
    """An exclusive flock(2) on a file or folder: the open descriptor (close it to unlock), or None
    where this file system or OS has no flock (the caller goes on unlocked, saying so).

    flock, not a lock file created with O_EXCL that holds a pid: the kernel releases a flock when
    its process dies in any way (SIGKILL, the OOM killer, a lost node), so there is no stale lock
    to judge; a pid can only be checked on its own host (trainers of one run share a network file
    system from several) and pids are reused. Linux NFS clients carry flock to the server as a
    POSIX byte-range lock (since 2.6.12), so it holds across hosts there too.

    Raises:
      BlockingIOError: another open descriptor (any process's) holds it.
    """
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # no flock on this file system: go on unlocked
        os.close(fd)
        return None
    return fd


def unlock(fd: Optional[int]) -> None:
    """Releases a lock() (None: there was none)."""
    if fd is not None:
        os.close(fd)
