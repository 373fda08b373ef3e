"""The run directory (`--workdir`): its layout, and the model it holds (config + checkpoints).

    <workdir>/model_config.json   build_fcn8s keyword arguments (the net a checkpoint fits)
    <workdir>/flags.txt           the resolved flags, replayable with --flagfile
    <workdir>/checkpoints/        tf.train.CheckpointManager (model, optimizer, step)
    <workdir>/tensorboard/        train/ and val/ event files
    <workdir>/val_metrics.json    the last in-training evaluation
    <workdir>/export/<version>/   SavedModels (fcn8s_tf/serving/contract.py)

Training writes these; evaluation, export, prediction and tools/import_weights.py read or write
them through this module, so the names live here only. In the model stage, below serving and
evaluation, because a run directory is how a trained model is kept: serving/loader.py loads it.
Every JSON file is written by fcn8s_tf/files.py: atomically and strictly (NaN and inf become null:
JSON has neither).
"""

import json
import os
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
    """model_config.json: the build_fcn8s arguments, and the classes (a class_info.ClassInfo) if
    given."""
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
