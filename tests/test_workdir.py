"""fcn8s_tf/training/workdir.py: the trainer's lock, and what --init_from accepts and refuses.

The CLI paths (a second trainer on a busy run, a killed one's lock taken over) are in
tests/test_train_faults.py; these are the library's own cases, fast, with tiny checkpoints.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from fcn8s_tf.model import run_dir
from fcn8s_tf.training import workdir as workdir_lib

TINY = dict(num_classes=3, fc_units=8, skip_scales=[0.01, 0.0001])


def test_run_lock_names_its_holder_and_goes_on_exit(tmp_path):
    lock_file = tmp_path / workdir_lib.LOCK_FILE
    with workdir_lib.RunLock(str(tmp_path)):
        owner = json.loads(lock_file.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] and owner["since"]
        with pytest.raises(workdir_lib.WorkdirInUseError,
                           match=f"is in use by pid {os.getpid()} on {owner['host']}"):
            with workdir_lib.RunLock(str(tmp_path)):
                pass
    assert not lock_file.exists()
    with workdir_lib.RunLock(str(tmp_path)):  # free again
        pass


def test_a_killed_holders_lock_is_taken_over_with_a_note(tmp_path):
    # A trainer killed with SIGKILL leaves LOCK naming it; the kernel released its flock.
    holder = subprocess.run(
        [sys.executable, "-c", "import os, sys; from fcn8s_tf.training import workdir; "
         f"workdir.RunLock({str(tmp_path)!r}).__enter__(); os._exit(9)"],
        capture_output=True, text=True, timeout=120)
    assert holder.returncode == 9, holder.stderr[-2000:]
    dead_pid = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["pid"]
    notes = []
    with workdir_lib.RunLock(str(tmp_path), log=notes.append):
        pass
    assert len(notes) == 1 and f"taking over the lock of pid {dead_pid}" in notes[0]


def test_remote_workdirs_take_no_lock_and_say_so(tmp_path):
    notes = []
    with workdir_lib.RunLock("gs://bucket/run", log=notes.append):
        pass
    assert notes and "remote workdir, no lock taken" in notes[0]


def _checkpoint(directory, fc_units=8):
    """A tiny checkpoint of a model-shaped object, as CheckpointManager writes them."""
    model = tf.Module()
    model.kernel = tf.Variable(tf.zeros([fc_units]))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory), 2)
    return manager.save()


def test_init_checkpoint_takes_a_workdir_a_folder_or_a_path(tmp_path):
    run = tmp_path / "run"
    run_dir.write_model_config(str(run), TINY)
    saved = _checkpoint(run / run_dir.CHECKPOINT_DIR)
    assert workdir_lib.init_checkpoint(str(run), TINY) == saved
    assert workdir_lib.init_checkpoint(str(run / run_dir.CHECKPOINT_DIR), TINY) == saved
    assert workdir_lib.init_checkpoint(saved, TINY) == saved


def test_init_checkpoint_refuses_another_net_and_names_each_difference(tmp_path):
    run = tmp_path / "run"
    run_dir.write_model_config(str(run), TINY)
    _checkpoint(run / run_dir.CHECKPOINT_DIR)
    ours = dict(TINY, num_classes=21, skip_scales=[1.0, 1.0], dropout_rate=0.3)
    with pytest.raises(ValueError, match="holds another net") as raised:
        workdir_lib.init_checkpoint(str(run), ours)
    message = str(raised.value)
    assert "--num_classes=21 here, 3 in" in message
    assert "--skip_scales=1,1 here, 0.01,0.0001 in" in message
    assert "dropout_rate" not in message  # not an identity field: the weights do not depend on it
    # Scales equal up to float noise (written as JSON, read back) are the same net.
    close = dict(TINY, skip_scales=[0.01 * (1 + 1e-9), 0.0001])
    assert workdir_lib.model_config_differences(str(run), close) == []


def test_init_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        (tmp_path / "empty").mkdir()
        workdir_lib.init_checkpoint(str(tmp_path / "empty"), TINY)
    with pytest.raises(FileNotFoundError, match="neither a workdir, a checkpoint directory"):
        workdir_lib.init_checkpoint(str(tmp_path / "ckpt-7"), TINY)
