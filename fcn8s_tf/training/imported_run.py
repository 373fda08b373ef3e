"""A run directory made from published weights instead of by training (tools/import_weights.py).

    python tools/import_weights.py --weights=fcn8s-heavy-pascal.caffemodel \
        --workdir=runs/fcn8s_caffe

Training's stage because what it writes is a run directory, the same one fcn8s_tf.train writes
(model_config.json, checkpoints/, export/): reading and mapping the file are the model stage's
(fcn8s_tf/model/weights/).
"""

import hashlib
import os
import shutil
import tempfile
from typing import Callable, Optional, Sequence, Tuple

from fcn8s_tf import files
from fcn8s_tf import signals
from fcn8s_tf.model.weights.fcn8s_map import (ImportedFCN8s, build_model, check_fcn8s, describe,
                                              fcn8s_from, read_weights)
from fcn8s_tf.model.weights.layers import WeightsError, check_readable

IMPORTED_FROM_FILE = "imported_from.json"  # what a workdir was imported from


def file_sha1(path: str) -> str:
    """SHA-1 of a file, read in 16 MB pieces."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            digest.update(piece)
    return digest.hexdigest()


# An import in progress: <parent>/.import_weights.tmp-p<pid>-<workdir name>-XXXXXXXX holds the
# workdir being written (new/) and, after the swap, the one it replaced (in new/ after an exchange,
# old/ after two renames: files.publish_dir). The pid lets a later import remove what a killed
# one left (files.remove_stale_temp_dirs) and leave alone the folder of one still running.
IMPORT_TMP_PREFIX = ".import_weights.tmp-"


def import_weights(weights_path: str, workdir: str, *, sha1: Optional[str] = None,
                   overwrite: bool = False, skip_scales: Optional[Sequence[float]] = None,
                   log=print) -> Tuple[ImportedFCN8s, str]:
    """Reads published FCN-8s weights and writes a workdir the rest of the project understands.

    The workdir gets what fcn8s_tf.train writes and fcn8s_tf/model/run_dir.load_model reads:
    model_config.json (build_fcn8s arguments), checkpoints/ckpt-0 (tf.train.Checkpoint(model=)),
    and export/1 (the TF Serving SavedModel of serving/export.py), plus imported_from.json
    (the file, its SHA-1 and what was read). It is written into a temporary folder beside it and
    renamed into place, so an error, Ctrl-C or SIGTERM (which tools/import_weights.py turns into an
    exception) leaves no half-written workdir, no temporary folder, and with overwrite the old
    workdir as it was; a later import removes what a SIGKILL left. Its mode is 0777 less the umask,
    as os.makedirs gives a trained one, so other users can serve the export where they could
    serve a trained one.

    Args:
      weights_path: a .caffemodel or .npz (fcn8s_tf/model/weights/caffemodel.py, npz.py).
      workdir: the directory to create; must not exist or be empty unless overwrite.
      sha1: if given, the file's SHA-1 must equal it (checked before parsing).
      overwrite: replace an existing run directory (one with model_config.json and checkpoints/);
        any other non-empty folder is refused.
      skip_scales: (pool4, pool3) for an .npz without scale entries (see fcn8s_from).
      log: where the summary lines go.
    Returns:
      (the ImportedFCN8s, the export version directory).
    Raises:
      FileNotFoundError: no weights file. FileExistsError: a non-empty workdir without overwrite,
        one that is not a run directory, or a run a live trainer holds. PermissionError: the
        workdir cannot be created there.
      WeightsError: an unreadable or bad file, a SHA-1 mismatch, not an FCN-8s.
    """
    workdir = os.path.abspath(workdir)
    _check_workdir(workdir, overwrite)
    check_readable(weights_path)
    digest = file_sha1(weights_path)
    if sha1 is not None and digest != sha1.strip().lower():
        raise WeightsError(f"{weights_path} has SHA-1 {digest}, not the expected {sha1} "
                           "(an incomplete or different download?)")
    imported = fcn8s_from(read_weights(weights_path, check=check_fcn8s), skip_scales)
    log(describe(imported))
    model = build_model(imported)

    import tensorflow as tf
    from fcn8s_tf.model import run_dir
    from fcn8s_tf.serving import export as export_lib

    staging = _make_staging(workdir, log)
    try:
        new = os.path.join(staging, "new")
        os.mkdir(new)  # 0777 less the umask, as os.makedirs (mkdtemp's own folder is 0700)
        run_dir.write_model_config(new, imported.model_kwargs())
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), run_dir.path(new, run_dir.CHECKPOINT_DIR),
            max_to_keep=1)
        manager.save(checkpoint_number=0)
        export_dir = export_lib.export_saved_model(
            model, run_dir.path(new, run_dir.EXPORT_DIR))
        files.write_json(os.path.join(new, IMPORTED_FROM_FILE), {
            "weights": os.path.abspath(weights_path), "sha1": digest, "format": imported.format,
            "num_classes": imported.num_classes, "fc_units": imported.fc_units,
            "skip_scales": list(imported.skip_scales), "scale_notes": imported.scale_notes,
            "layers": imported.layer_names})
        with signals.deferred():  # a signal between two renames would strand both runs
            files.publish_dir(new, workdir, aside=os.path.join(staging, "old"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    export_dir = os.path.join(workdir, os.path.relpath(export_dir, new))
    log(f"Wrote {workdir}: model_config.json, checkpoints/, "
        f"{os.path.relpath(export_dir, workdir)}/ (SavedModel), imported_from.json")
    return imported, export_dir


def _check_workdir(workdir: str, overwrite: bool) -> None:
    """Refuses, before any work, a workdir this import may not write; a refused one is untouched.

    overwrite replaces only a run directory, told by what every run holds (the names
    fcn8s_tf/model/run_dir.py owns): the replaced folder is deleted whole, and `--workdir=.` once
    deleted a source tree that way. A run a live trainer holds (workdir.RunLock) is refused too.
    """
    from fcn8s_tf.model import run_dir  # imports TensorFlow
    from fcn8s_tf.training import workdir as workdir_lib

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise FileExistsError(f"--workdir={workdir} exists and is not a directory")
    try:
        entries = os.listdir(workdir) if os.path.isdir(workdir) else []
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} cannot be listed: {e.strerror}") from None
    if entries and not overwrite:
        raise FileExistsError(f"--workdir={workdir} exists and is not empty; choose another or "
                              "pass --overwrite to replace it")
    if entries:
        config, checkpoints = run_dir.CONFIG_FILE, run_dir.CHECKPOINT_DIR
        if not (os.path.isfile(run_dir.path(workdir, config))
                and os.path.isdir(run_dir.path(workdir, checkpoints))):
            raise FileExistsError(f"--workdir={workdir} is not a run directory (it has no "
                                  f"{config} and {checkpoints}/), and --overwrite replaces only "
                                  "a run directory; choose a new or empty --workdir")
        try:
            with workdir_lib.RunLock(workdir):
                pass
        except workdir_lib.WorkdirInUseError as e:
            raise FileExistsError(str(e)) from None
    ancestor = os.path.dirname(workdir)  # the nearest that exists must take the new folders
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"--workdir={workdir} cannot be created: {ancestor} is not a "
                              "writable folder")


def _make_staging(workdir: str, log: Callable[[str], None]) -> str:
    """A new IMPORT_TMP_PREFIX folder beside workdir, once those of killed imports are removed."""
    import tensorflow as tf

    parent = os.path.dirname(workdir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} cannot be created: {e}") from None
    try:
        files.remove_stale_temp_dirs(
            parent, lambda name: name.startswith(IMPORT_TMP_PREFIX), log=log)
    except (OSError, tf.errors.OpError) as e:  # another user's, say: not ours to remove
        log(f"note: a killed import's folder in {parent} could not be removed: {e}")
    try:
        return tempfile.mkdtemp(dir=parent, prefix=f"{IMPORT_TMP_PREFIX}p{os.getpid()}-"
                                                   f"{os.path.basename(workdir)}-")
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} cannot be created in {parent}: "
                              f"{e.strerror}") from None
