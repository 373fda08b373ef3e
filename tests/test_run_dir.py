"""fcn8s_tf/model/run_dir.py: the run directory's config and the model restored from it."""

import json

import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf.class_info import ClassInfo
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.model import run_dir

TINY = dict(num_classes=3, fc_units=8)


def test_model_config_round_trip_with_classes(tmp_path):
    classes = ClassInfo(("bg", "cat", "dog"), ((0, 0, 0), (1, 2, 3), (4, 5, 6)))
    run_dir.write_model_config(str(tmp_path), TINY, classes)
    assert run_dir.read_model_config(str(tmp_path)) == TINY  # the classes are read apart
    assert run_dir.read_classes(str(tmp_path)) == classes
    written = json.loads((tmp_path / run_dir.CONFIG_FILE).read_text())
    assert written["classes"] == classes.to_json()


def test_a_run_that_predates_classes_reads_as_voc_or_numbered(tmp_path):
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps({"num_classes": 21}))
    assert run_dir.read_classes(str(tmp_path)).names[15] == "person"
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps({"num_classes": 3}))
    assert run_dir.read_classes(str(tmp_path)).names == ("class_0", "class_1", "class_2")


def test_missing_config_says_what_a_workdir_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json: not found .*checkpoints/"):
        run_dir.read_model_config(str(tmp_path))


def test_load_model_restores_the_newest_checkpoint(tmp_path):
    model = model_lib.build_fcn8s(weights=None, **TINY)
    run_dir.write_model_config(str(tmp_path), TINY)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                         run_dir.path(str(tmp_path), run_dir.CHECKPOINT_DIR), 2)
    manager.save(1)
    score = model.get_layer("score_fr")
    score.kernel.assign(tf.random.normal(score.kernel.shape, seed=1))
    newest = manager.save(2)
    restored, checkpoint = run_dir.load_model(str(tmp_path))
    assert checkpoint == newest == run_dir.latest_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(restored.get_layer("score_fr").kernel.numpy(),
                                  score.kernel.numpy())


def test_a_checkpoint_of_another_net_is_refused_naming_it(tmp_path):
    other = model_lib.build_fcn8s(weights=None, num_classes=3, fc_units=16)
    run_dir.write_model_config(str(tmp_path), TINY)  # says fc 8, holds fc 16
    tf.train.CheckpointManager(tf.train.Checkpoint(model=other),
                               run_dir.path(str(tmp_path), run_dir.CHECKPOINT_DIR), 1).save(1)
    with pytest.raises(ValueError, match="does not hold the weights of the model in"):
        run_dir.load_model(str(tmp_path))
