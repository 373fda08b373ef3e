"""The one way a model is loaded from a path: an export or a training run directory.

    <base>/<version>/saved_model.pb   an export (TF Serving layout; the highest version is taken)
    <version dir>/saved_model.pb      one version of it
    <workdir>/model_config.json + checkpoints/   a run (fcn8s_tf/model/run_dir.py), its newest
                                                 checkpoint; `<workdir>/checkpoints` is the same

evaluate takes either; predict and the serving tests take exports; export takes runs. Every fault
is a ModelLoadError whose one line names the path and what was expected there, so the CLIs report
it as it is. In the serving stage because an export is read through the serving contract
(contract.py), and below evaluation, which loads what it scores through here.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf.model import run_dir
from fcn8s_tf.serving import contract

SAVED_MODEL = "SavedModel"
WORKDIR = "workdir"
_EXPECTED = {
    SAVED_MODEL: "a SavedModel (saved_model.pb in it, or in a numeric version subdirectory: the "
                 "TF Serving layout <base>/<version>/saved_model.pb)",
    WORKDIR: f"a training workdir ({run_dir.CONFIG_FILE} and {run_dir.CHECKPOINT_DIR}/)",
}


class ModelLoadError(ValueError):
    """A path that does not hold a model this project can load; the message names it and why."""


@dataclasses.dataclass
class LoadedModel:
    """What `load` found.

    Attributes:
      kind: SAVED_MODEL or WORKDIR.
      path: the version directory of an export, or the workdir.
      description: "SavedModel <dir>" or "checkpoint <path>", for logs and reports.
      classes: the model's classes; None for an export that does not say (no metadata signature
        and no probabilities output to count them from).
      saved_model: the loaded export (tf.saved_model.load), kind SAVED_MODEL.
      keras_model: the FCN-8s with the checkpoint's weights, kind WORKDIR.
      model_kwargs: its build_fcn8s arguments (model_config.json), kind WORKDIR.
    """
    kind: str
    path: str
    description: str
    classes: Optional[class_info.ClassInfo]
    saved_model: Any = None
    keras_model: Any = None
    model_kwargs: Optional[Dict[str, Any]] = None

    def signature(self, name: str):
        """The export's signature `name`, or ModelLoadError naming what it has instead."""
        if name not in self.saved_model.signatures:
            raise ModelLoadError(f"{self.path}: the SavedModel has no {name!r} signature (it has "
                                 f"{sorted(self.saved_model.signatures)})")
        return self.saved_model.signatures[name]


def _workdir_of(path: str) -> Optional[str]:
    """The run directory at `path` (or whose checkpoints/ `path` is), or None."""
    if tf.io.gfile.exists(run_dir.path(path, run_dir.CONFIG_FILE)):
        return path
    parent, name = os.path.split(os.path.normpath(path))
    if name == run_dir.CHECKPOINT_DIR and tf.io.gfile.exists(
            run_dir.path(parent, run_dir.CONFIG_FILE)):
        return parent
    return None


def load(path: str, kinds: Sequence[str] = (SAVED_MODEL, WORKDIR),
         num_classes: Optional[int] = None) -> LoadedModel:
    """Loads the model at `path`, of one of `kinds`.

    Args:
      path: an export base, a version directory, a workdir, or a workdir's checkpoints/.
      kinds: what the caller can use (SAVED_MODEL, WORKDIR); an export is preferred.
      num_classes: for a workdir, the class count the caller expects (checked against its config).
    Raises:
      ModelLoadError: nothing at `path`, nothing of `kinds` there, or what is there does not load
        (a corrupt SavedModel, no checkpoint, a checkpoint that does not fit its config).
    """
    if not tf.io.gfile.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if SAVED_MODEL in kinds:
        export_dir = contract.find_saved_model(path)
        if export_dir is not None:
            return _load_saved_model(export_dir)
    if WORKDIR in kinds:
        workdir = _workdir_of(path)
        if workdir is not None:
            return _load_workdir(workdir, num_classes)
    expected = " nor ".join(_EXPECTED[kind] for kind in kinds)
    raise ModelLoadError(f"{path} is {'neither ' if len(kinds) > 1 else 'not '}{expected}")


def _load_saved_model(export_dir: str) -> LoadedModel:
    try:
        loaded = tf.saved_model.load(export_dir)
    except Exception as e:  # corrupt protobuf, missing variables ...: name the directory
        raise ModelLoadError(f"{export_dir}: cannot load the SavedModel ({type(e).__name__}: "
                             f"{str(e)[:300]})") from None
    classes = contract.read_metadata(loaded)
    if classes is None and contract.SIGNATURE_UINT8 in loaded.signatures:
        # An export made before the metadata signature: count the classes, names unknown.
        outputs = loaded.signatures[contract.SIGNATURE_UINT8].structured_outputs
        channels = outputs["probabilities"].shape[-1] if "probabilities" in outputs else None
        classes = None if channels is None else class_info.ClassInfo.default(int(channels))
    return LoadedModel(SAVED_MODEL, export_dir, f"SavedModel {export_dir}", classes,
                       saved_model=loaded)


def _load_workdir(workdir: str, num_classes: Optional[int]) -> LoadedModel:
    try:
        model, checkpoint = run_dir.load_model(workdir, num_classes)
        kwargs = run_dir.read_model_config(workdir)
        classes = run_dir.read_classes(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise ModelLoadError(str(e)) from None
    return LoadedModel(WORKDIR, workdir, f"checkpoint {checkpoint}", classes,
                       keras_model=model, model_kwargs=kwargs)
