"""What training adds to the run directory (fcn8s_tf/model/run_dir.py): the lock that keeps a second
trainer out, and the checks and restore of `--init_from`.
"""

import json
import math
import os
import socket
import time
from typing import Any, Dict

import tensorflow as tf

from fcn8s_tf import files
from fcn8s_tf.model import run_dir
from fcn8s_tf.model.run_dir import CHECKPOINT_DIR, CONFIG_FILE, path


def init_checkpoint(source: str, model_kwargs: Dict[str, Any]) -> str:
    """The checkpoint `--init_from=source` names, after checking its net matches this run's.

    Args:
      source: a workdir (model_config.json + checkpoints/; its newest checkpoint), a directory of
        checkpoints, or a checkpoint path (the prefix before .index).
      model_kwargs: this run's build_fcn8s arguments (TrainConfig.model_kwargs()).
    Raises:
      FileNotFoundError: no checkpoint there.
      ValueError: the source's model_config.json describes another net (IDENTITY_FIELDS: what
        the weights cannot fit or do not say).
    """
    if tf.io.gfile.exists(path(source, CONFIG_FILE)):
        differ = model_config_differences(source, model_kwargs)
        if differ:
            raise ValueError(f"--init_from={source} holds another net: {'; '.join(differ)}. "
                             "Set those flags as its model_config.json says.")
    if tf.io.gfile.isdir(source):
        checkpoint_dir = path(source, CHECKPOINT_DIR)
        if not tf.io.gfile.isdir(checkpoint_dir):
            checkpoint_dir = source
        found = tf.train.latest_checkpoint(checkpoint_dir)
        if found is None:
            raise FileNotFoundError(f"--init_from={source}: no checkpoint in {checkpoint_dir}")
        return found
    if tf.io.gfile.exists(source + ".index"):
        return source
    raise FileNotFoundError(f"--init_from={source}: neither a workdir, a checkpoint directory, "
                            f"nor a checkpoint ({source}.index does not exist)")


def init_model_from(model, source: str, model_kwargs: Dict[str, Any]) -> str:
    """Loads the model weights (not the optimizer, not the step) of a workdir or checkpoint.

    For fine-tuning from another run, e.g. the published FCN-8s that tools/import_weights.py
    writes. Returns the checkpoint loaded; raises as init_checkpoint and restore_model_weights.
    """
    checkpoint = init_checkpoint(source, model_kwargs)
    try:
        run_dir.restore_model_weights(model, checkpoint, "this model")
    except ValueError as e:
        raise ValueError(f"--init_from={source}: {e}") from None
    return checkpoint


# The build_fcn8s arguments a checkpoint cannot be used without: the first two fix weight shapes,
# skip_scales what the score layers' weights mean.
IDENTITY_FIELDS = ("num_classes", "fc_units", "skip_scales")


def model_config_differences(workdir: str, model_kwargs: Dict[str, Any],
                             fields=IDENTITY_FIELDS) -> list:
    """Where `model_kwargs` disagrees with the workdir's model_config.json on `fields`.

    Returns one "--name=<ours> here, <theirs> in <path>" string per differing field ([] when the
    workdir has no model_config.json or agrees).
    """
    if not tf.io.gfile.exists(path(workdir, CONFIG_FILE)):
        return []
    theirs = run_dir.read_model_config(workdir)

    def text(value):
        if isinstance(value, (list, tuple)):
            return ",".join(f"{float(v):g}" for v in value)
        return str(value)

    def same(a, b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=1e-6)
                                            for x, y in zip(a, b))
        return a == b

    return [f"--{name}={text(model_kwargs[name])} here, {text(theirs[name])} in "
            f"{path(workdir, CONFIG_FILE)}"
            for name in fields if name in theirs and not same(model_kwargs[name], theirs[name])]


# ---------------------------------------------------------------------------------------- lock --
LOCK_FILE = "LOCK"


class WorkdirInUseError(RuntimeError):
    """Another live process is training in this workdir."""


class RunLock:
    """One trainer per workdir: an flock(2) on `<workdir>/LOCK`, which names its holder.

    fcn8s_tf/files.py's lock, so a trainer killed in any way (SIGKILL, the OOM killer) leaves no
    lock behind: the kernel releases it. The file holds the owner's pid, host and start time, for
    the message a second trainer fails with at once; it is removed on a clean exit, and one left by
    a killed trainer is taken over with a log line. Remote workdirs (gs://...) have no flock: the
    lock is skipped there with a log line, as it is on a local file system without flock.
    """

    def __init__(self, workdir: str, log=None):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.log = log or (lambda message: None)
        self._fd = None

    def __enter__(self) -> "RunLock":
        if files.is_remote(self.path):
            self.log(f"{self.path}: remote workdir, no lock taken (one trainer at a time is up "
                     "to you)")
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o644))
            try:
                fd = files.lock(self.path)
            except BlockingIOError:
                owner = self._owner()
                raise WorkdirInUseError(
                    f"{os.path.dirname(self.path)} is in use by pid {owner.get('pid')} on "
                    f"{owner.get('host')} since {owner.get('since')} ({self.path}). Wait for it, "
                    "stop it, or use another --workdir.") from None
            if fd is None:
                self.log(f"{self.path}: this file system has no flock, no lock taken (one trainer "
                         "at a time is up to you)")
                return self
            try:  # the file may have been removed by its last holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                files.unlock(fd)
                continue
            self._fd = fd
            previous = self._owner()
            if previous.get("pid") not in (None, -1):
                self.log(f"{self.path}: taking over the lock of pid {previous.get('pid')} on "
                         f"{previous.get('host')}, which is no longer running (killed?)")
            with open(self.path, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            return self
        raise WorkdirInUseError(f"{self.path}: could not take the lock")

    def _owner(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):  # empty (being written), or garbage
            return {"pid": -1, "host": "an unknown host", "since": "an unknown time"}

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:  # removed while still held, so that no one can take the file being removed
                os.remove(self.path)
            except FileNotFoundError:
                pass
            files.unlock(self._fd)
            self._fd = None
