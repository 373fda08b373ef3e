"""The run directory (`--workdir`): its layout, the files in it, and how they are written.

    <workdir>/model_config.json   build_fcn8s keyword arguments (the net a checkpoint fits)
    <workdir>/flags.txt           the resolved flags, replayable with --flagfile
    <workdir>/checkpoints/        tf.train.CheckpointManager (model, optimizer, step)
    <workdir>/tensorboard/        train/ and val/ event files
    <workdir>/val_metrics.json    the last in-training evaluation
    <workdir>/export/<version>/   SavedModels (fcn8s_tf/serving/contract.py)

Training writes these; evaluation, export, prediction and tools/import_weights.py read or write
them through this module, so the names live here only. Every JSON file is written by
fcn8s_tf/files.py: atomically and strictly (NaN and inf become null: JSON has neither).
"""

import json
import math
import os
import socket
import time
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from fcn8s_tf import files

CONFIG_FILE = "model_config.json"
FLAGS_FILE = "flags.txt"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
VAL_METRICS_FILE = "val_metrics.json"
EXPORT_DIR = "export"


def path(workdir: str, name: str) -> str:
    """`<workdir>/<name>`, for one of the names above."""
    return os.path.join(workdir, name)


# ---------------------------------------------------------------------------------- model config --
def read_model_config(workdir: str) -> Dict[str, Any]:
    """The build_fcn8s arguments a run was trained with.

    Raises:
      FileNotFoundError: no model_config.json (the message says what a workdir holds).
    """
    config_path = path(workdir, CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not found (a training workdir has "
                                f"{CONFIG_FILE} and {CHECKPOINT_DIR}/)")
    with tf.io.gfile.GFile(config_path) as f:
        config = json.load(f)
    config.pop("weights", None)  # a checkpoint supplies every weight
    config.pop("classes", None)  # read_classes
    return config


def read_classes(workdir: str):
    """The run's class_info.ClassInfo: from model_config.json, VOC's for runs that predate it."""
    from fcn8s_tf import class_info  # pylint: disable=import-outside-toplevel
    with tf.io.gfile.GFile(path(workdir, CONFIG_FILE)) as f:
        config = json.load(f)
    if "classes" in config:
        return class_info.ClassInfo.from_json(config["classes"])
    return class_info.ClassInfo.default(config.get("num_classes", class_info.NUM_CLASSES))


def write_model_config(workdir: str, model_kwargs: Dict[str, Any], classes=None) -> None:
    """model_config.json: the build_fcn8s arguments, and the classes (a class_info.ClassInfo) if given."""
    payload = dict(model_kwargs)
    if classes is not None:
        payload["classes"] = classes.to_json()
    files.write_json(path(workdir, CONFIG_FILE), payload)


def latest_checkpoint(workdir: str) -> Optional[str]:
    """The newest checkpoint of a run, or None."""
    return tf.train.latest_checkpoint(path(workdir, CHECKPOINT_DIR))


def load_model(workdir: str, num_classes: Optional[int] = None) -> Tuple[Any, str]:
    """Rebuilds the FCN-8s of a training workdir and restores its newest checkpoint.

    Args:
      workdir: holds model_config.json and checkpoints/.
      num_classes: if given, must equal the config's.
    Returns:
      (keras model, path of the checkpoint restored).
    Raises:
      FileNotFoundError: no model_config.json or no checkpoint.
      ValueError: num_classes disagrees with the config, or the checkpoint does not fit the model.
    """
    from fcn8s_tf.model import fcn8s as model_lib  # Keras only when a model is built
    from fcn8s_tf import class_info

    config = read_model_config(workdir)
    config_classes = config.get("num_classes", class_info.NUM_CLASSES)
    if num_classes is not None and num_classes != config_classes:
        raise ValueError(f"num_classes={num_classes} was asked for but "
                         f"{path(workdir, CONFIG_FILE)} says num_classes={config_classes}")
    latest = latest_checkpoint(workdir)
    if latest is None:
        raise FileNotFoundError(f"{path(workdir, CHECKPOINT_DIR)}: no checkpoint found")
    model = model_lib.build_fcn8s(weights=None, **config)
    restore_model_weights(model, latest, f"the model in {path(workdir, CONFIG_FILE)}")
    return model, latest


def restore_model_weights(model, checkpoint: str, what: str) -> None:
    """Restores every weight of `model` from a checkpoint that may hold more (optimizer, step).

    Raises:
      ValueError: a weight of the model is missing from the checkpoint or has another shape.
    """
    try:
        status = tf.train.Checkpoint(model=model).restore(checkpoint)
        status.expect_partial()  # the optimizer and step may be in the file, not needed here
        status.assert_existing_objects_matched()  # ...but every model weight must be
    except (AssertionError, ValueError) as e:  # a missing weight, or one of another shape
        raise ValueError(f"{checkpoint} does not hold the weights of {what}: "
                         f"{str(e)[:500]}") from None


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
        restore_model_weights(model, checkpoint, "this model")
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
    theirs = read_model_config(workdir)

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
