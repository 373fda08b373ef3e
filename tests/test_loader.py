"""fcn8s_tf/serving/loader.py: one loader for exports and run directories, one error per fault."""

import pytest

from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.model import run_dir
from fcn8s_tf.serving import export as export_lib
from fcn8s_tf.serving import loader

TINY = dict(num_classes=3, fc_units=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory (config + one checkpoint) and its export, from a tiny untrained net."""
    import tensorflow as tf

    workdir = tmp_path_factory.mktemp("run")
    model = model_lib.build_fcn8s(weights=None, **TINY)
    run_dir.write_model_config(str(workdir), TINY)
    tf.train.Checkpoint(model=model).write(str(workdir / run_dir.CHECKPOINT_DIR / "ckpt-1"))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                               str(workdir / run_dir.CHECKPOINT_DIR), max_to_keep=1).save(2)
    export_dir = export_lib.export_saved_model(model, str(workdir / run_dir.EXPORT_DIR),
                                               model_kwargs=TINY)
    return workdir, export_dir


def test_an_export_base_loads_its_highest_version(run):
    workdir, export_dir = run
    model = loader.load(str(workdir / run_dir.EXPORT_DIR))
    assert model.kind == loader.SAVED_MODEL and model.path == export_dir
    assert model.description == f"SavedModel {export_dir}"
    assert model.classes.num_classes == 3
    assert model.signature("serving_uint8") is not None
    with pytest.raises(loader.ModelLoadError, match="has no 'nope' signature"):
        model.signature("nope")


@pytest.mark.parametrize("where", ["workdir", "checkpoints"])
def test_a_workdir_loads_its_newest_checkpoint(run, where):
    workdir, _ = run
    path = workdir if where == "workdir" else workdir / run_dir.CHECKPOINT_DIR
    model = loader.load(str(path), kinds=(loader.WORKDIR,))
    assert model.kind == loader.WORKDIR and model.path == str(workdir)
    assert model.description.startswith("checkpoint ") and model.description.endswith("ckpt-2")
    assert model.model_kwargs == TINY and model.classes.num_classes == 3
    assert model.keras_model.output_shape[-1] == 3
    with pytest.raises(loader.ModelLoadError, match="num_classes=21 was asked for"):
        loader.load(str(path), kinds=(loader.WORKDIR,), num_classes=21)


def test_each_fault_is_one_error_naming_the_path(run, tmp_path):
    workdir, _ = run
    with pytest.raises(loader.ModelLoadError, match="nowhere: no such file or directory"):
        loader.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "3").mkdir(parents=True)  # a numeric folder without saved_model.pb
    with pytest.raises(loader.ModelLoadError,
                       match="empty is neither a SavedModel .* nor a training workdir"):
        loader.load(str(tmp_path / "empty"))
    with pytest.raises(loader.ModelLoadError, match="is not a SavedModel"):
        loader.load(str(workdir), kinds=(loader.SAVED_MODEL,))  # predict's: exports only
    with pytest.raises(loader.ModelLoadError, match="is not a training workdir"):
        loader.load(str(tmp_path / "empty"), kinds=(loader.WORKDIR,))
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(loader.ModelLoadError, match="cannot load the SavedModel"):
        loader.load(str(broken))
    no_checkpoint = tmp_path / "fresh"
    run_dir.write_model_config(str(no_checkpoint), TINY)
    with pytest.raises(loader.ModelLoadError, match="no checkpoint"):
        loader.load(str(no_checkpoint))
