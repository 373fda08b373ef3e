"""Tests for fcn8s_tf.training.distribute: the strategy TF_CONFIG chooses, which worker is the
chief, where each worker checkpoints, and the preemption handler's save-then-stop.

All in-process and on one CPU device: the strategy choice is checked with stand-ins for the
strategy classes (a real MultiWorkerMirroredStrategy would start a server and wait for its peers).
Two real replicas and a real two-worker cluster are tests/test_train.py's (subprocesses); a real
signal to a training process is tests/test_train_faults.py's.
"""

import json
import os
import shutil
import signal
import tempfile
import time
import types

import pytest
import tensorflow as tf

from fcn8s_tf.model import run_dir
from fcn8s_tf.training import distribute


# -------------------------------------------------------------------------------------- strategy --
class _Recorded:
    """Stands in for a strategy class; remembers how it was built."""

    def __init__(self, devices=None):
        self.devices = devices


@pytest.fixture
def fake_strategies(monkeypatch):
    """tf.distribute's two strategy classes replaced by recording stand-ins."""
    mirrored = type("Mirrored", (_Recorded,), {})
    multi_worker = type("MultiWorker", (_Recorded,), {})
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", mirrored)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", multi_worker)
    return mirrored, multi_worker


@pytest.mark.parametrize("tf_config, multi_worker", [
    (None, False),
    ("", False),
    ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    # Only chief and worker tasks train: an evaluator or a parameter server is not a replica.
    ({"cluster": {"chief": ["a:1"], "evaluator": ["b:1"], "ps": ["c:1"]},
      "task": {"type": "chief", "index": 0}}, False),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, True),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}},
     True),
])
def test_make_strategy_follows_tf_config(monkeypatch, fake_strategies, tf_config, multi_worker):
    mirrored, multi = fake_strategies
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config if isinstance(tf_config, str)
                           else json.dumps(tf_config))
    strategy = distribute.make_strategy(["/cpu:0"])
    assert type(strategy) is (multi if multi_worker else mirrored)
    if not multi_worker:
        assert strategy.devices == ["/cpu:0"]  # the override reaches MirroredStrategy


def test_make_strategy_without_a_cluster_is_mirrored_on_the_devices_given(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.make_strategy(["/cpu:0"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert strategy.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:0",)


# ----------------------------------------------------------------------------------------- chief --
def _with_resolver(cluster, task_type=None, task_id=None):
    """An object with a strategy's cluster_resolver, for is_chief."""
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("cluster, task, chief", [
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, ("chief", 0), True),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, ("worker", 0), False),
    ({"worker": ["b:1", "c:1"]}, ("worker", 0), True),
    ({"worker": ["b:1", "c:1"]}, ("worker", 1), False),
])
def test_is_chief(cluster, task, chief):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1])

    class FakeStrategy:
        cluster_resolver = resolver

    assert distribute.is_chief(FakeStrategy()) is chief


def test_is_chief_without_a_cluster():
    # MirroredStrategy has no cluster resolver; a local-mode one has an empty cluster spec.
    assert distribute.is_chief(tf.distribute.MirroredStrategy(["/cpu:0"])) is True
    assert distribute.is_chief(types.SimpleNamespace()) is True
    assert distribute.is_chief(_with_resolver({})) is True


@pytest.mark.parametrize("task", [("evaluator", 0), ("ps", 0)])
def test_tasks_that_do_not_train_are_not_the_chief(task):
    cluster = {"worker": ["a:1", "b:1"], "evaluator": ["c:1"], "ps": ["d:1"]}
    assert distribute.is_chief(_with_resolver(cluster, *task)) is False


# ---------------------------------------------------------------------------------- checkpoints --
def test_chief_checkpoints_into_the_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    assert distribute.checkpoint_dir(workdir, chief=True) == \
        os.path.join(workdir, run_dir.CHECKPOINT_DIR)
    assert not os.path.exists(workdir)  # only a name: the CheckpointManager makes it


def test_other_workers_checkpoint_into_temp_dirs_of_their_own(tmp_path):
    workdir = str(tmp_path / "run")
    first = distribute.checkpoint_dir(workdir, chief=False)
    second = distribute.checkpoint_dir(workdir, chief=False)
    try:
        for path in (first, second):
            assert os.path.isdir(path) and not os.listdir(path)
            assert os.path.basename(path).startswith("fcn8s_worker_ckpt_")
            assert os.path.dirname(path) == tempfile.gettempdir()  # never inside the workdir
        assert first != second
    finally:
        shutil.rmtree(first), shutil.rmtree(second)


# ----------------------------------------------------------------------------------- preemption --
@pytest.fixture
def not_on_gcp(monkeypatch):
    """PreemptionCheckpointHandler asks the GCE metadata server where it runs, and on a GCE CPU VM
    it never saves; an address that refuses at once keeps these tests the same everywhere."""
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")


def _checkpointed_step(tmp_path):
    """A step variable, and a CheckpointManager of a checkpoint holding it, in tmp_path/ckpt."""
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "ckpt"),
                                         max_to_keep=3)
    return step, manager


def _signals(received):
    """A stand-in for the flag preemption_handler polls (the received signal, or None)."""
    return types.SimpleNamespace(received=received, is_set=lambda: received is not None)


@pytest.mark.usefixtures("not_on_gcp")
def test_preemption_handler_restores_and_saves_nothing_without_a_signal(tmp_path):
    step, manager = _checkpointed_step(tmp_path)
    step.assign(7)
    manager.save(checkpoint_number=7)
    step.assign(0)
    handler = distribute.preemption_handler(tf.distribute.MirroredStrategy(["/cpu:0"]), manager,
                                            _signals(None), step)
    assert int(step.numpy()) == 7  # the manager's latest checkpoint, restored by the handler
    for done in range(8, 11):
        step.assign(done)
        handler.save_checkpoint_if_preempted(checkpoint_number=done)
    assert manager.latest_checkpoint.endswith("ckpt-7")  # nothing saved, training went on


@pytest.mark.usefixtures("not_on_gcp")
def test_preemption_handler_saves_the_current_step_then_stops(tmp_path):
    step, manager = _checkpointed_step(tmp_path)
    handler = distribute.preemption_handler(tf.distribute.MirroredStrategy(["/cpu:0"]), manager,
                                            _signals(signal.SIGTERM), step)
    # The flag is polled on a thread of the handler's own: it is seen within a step or two.
    # pytest.raises(Exception): TF's own exit_fn would sys.exit(42), a SystemExit, which this
    # does not catch; ours raises so the trainer can report the step and exit with 128 + signal.
    with pytest.raises(Exception):
        for done in range(1, 100):
            step.assign(done)
            handler.save_checkpoint_if_preempted(checkpoint_number=done)
            time.sleep(0.05)
    # Saved through our manager, into its directory, numbered and holding the step it stopped at.
    assert os.path.dirname(manager.latest_checkpoint) == str(tmp_path / "ckpt")
    assert manager.latest_checkpoint.endswith(f"ckpt-{done}")
    assert tf.train.load_variable(manager.latest_checkpoint, "step/.ATTRIBUTES/VARIABLE_VALUE") \
        == done
