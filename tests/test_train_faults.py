"""What happens to real training processes: signals, a second trainer, changed flags, bad paths.

Each test runs `python -m fcn8s_tf.train` as a user does, in a subprocess, and sends real signals.
A narrow net (fc_units=16) on 32x32 crops with the VGG16 blocks frozen keeps a step near a second
on 2 cores (Caffe's pad 100 makes even a 32x32 crop a 232x232 input to conv1_1).
"""

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf.data import records
from fcn8s_tf.model import run_dir
from fcn8s_tf.training import workdir as workdir_lib

from helpers import REPO, wait_for_line


def _identical_records(directory: Path, count: int = 8) -> str:
    """`count` copies of one example: the data order cannot change what a run computes."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    label = np.zeros((40, 48), np.uint8)
    label[10:30, 12:36] = 1
    label[0, :] = 255
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=95)
    Image.fromarray(label, mode="L").save(png, format="PNG")
    directory.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(directory / "train-00000-of-00001.tfrecord")) as writer:
        for n in range(count):
            writer.write(records.encode_example(jpeg.getvalue(), png.getvalue(), 40, 48,
                                                f"same_{n}"))
    return str(directory / "train-*.tfrecord")


def _args(pattern: str, workdir: Path, steps: int, *extra: str):
    return [sys.executable, "-m", "fcn8s_tf.train", f"--train_data={pattern}",
            f"--workdir={workdir}", "--base_size=32", "--crop_size=32", "--num_classes=3",
            "--backbone_weights=none", "--fc_units=16", f"--train_steps={steps}",
            "--batch_size=2", "--learning_rate=1e-3", "--log_every=1", "--checkpoint_every=1000",
            "--eval_every=0", "--export=false", "--shuffle_buffer=8", "--notrain_backbone",
            *extra]


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _final_weights(workdir: Path):
    model, checkpoint = run_dir.load_model(str(workdir))
    return model.get_weights(), checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_current_step_and_resume_matches_an_uninterrupted_run(tmp_path, signum):
    pattern = _identical_records(tmp_path / "records")
    steps = 12
    proc = _start(_args(pattern, tmp_path / "interrupted", steps))
    wait_for_line(proc, f"step 2/{steps}")
    proc.send_signal(signum)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signum, output[-3000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step" in output and "Run the same command to resume" in output
    saved = tf.train.latest_checkpoint(str(tmp_path / "interrupted" / "checkpoints"))
    stopped_at = int(saved.rsplit("-", 1)[1])
    assert 2 <= stopped_at < steps  # the step it had reached, not a periodic checkpoint (1000)
    assert not (tmp_path / "interrupted" / workdir_lib.LOCK_FILE).exists()
    if signum == signal.SIGINT:
        return  # Ctrl-C takes the same path as SIGTERM from here; resume is checked once

    resumed = subprocess.run(_args(pattern, tmp_path / "interrupted", steps), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stderr  # "Resumed from ... at step N"
    straight = subprocess.run(_args(pattern, tmp_path / "straight", steps), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    got, got_path = _final_weights(tmp_path / "interrupted")
    want, want_path = _final_weights(tmp_path / "straight")
    assert got_path.endswith(f"ckpt-{steps}") and want_path.endswith(f"ckpt-{steps}")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_second_trainer_on_a_busy_workdir_fails_at_once(tmp_path):
    pattern = _identical_records(tmp_path / "records")
    first = _start(_args(pattern, tmp_path / "run", 10000))
    try:
        wait_for_line(first, "step 1/10000")
        second = subprocess.run(_args(pattern, tmp_path / "run", 10000), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"is in use by pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.communicate()
    # SIGKILL left the lock behind: the next trainer takes it over, saying so.
    lock = tmp_path / "run" / workdir_lib.LOCK_FILE
    assert json.loads(lock.read_text())["pid"] == first.pid
    third = subprocess.run(_args(pattern, tmp_path / "run", 1), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of pid {first.pid}" in third.stderr
    assert not lock.exists()


@pytest.mark.slow
def test_resume_with_another_net_fails_before_writing_and_temp_dirs_are_cleaned(tmp_path):
    pattern = _identical_records(tmp_path / "records")
    run = tmp_path / "run"
    first = subprocess.run(_args(pattern, run, 1), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    config_before = (run / "model_config.json").read_text()
    changed = subprocess.run(_args(pattern, run, 2, "--fc_units=32", "--num_classes=4"),
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 1
    assert "--num_classes=4 here, 3 in" in changed.stderr
    assert "--fc_units=32 here, 16 in" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert (run / "model_config.json").read_text() == config_before

    # Folders a SIGKILL leaves: a half-written checkpoint and a half-written export.
    (run / "checkpoints" / "ckpt-7_temp").mkdir()
    (run / "export" / ".tmp-3-p999999-1").mkdir(parents=True)
    resumed = subprocess.run(_args(pattern, run, 2, "--export=true"), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run / "checkpoints" / "ckpt-7_temp").exists()
    assert sorted(p.name for p in (run / "export").iterdir()) == ["1"]


def test_a_file_where_the_workdir_should_be_is_one_line(tmp_path):
    pattern = _identical_records(tmp_path / "records")
    (tmp_path / "file").write_text("not a directory")
    proc = subprocess.run(_args(pattern, tmp_path / "file" / "run", 1), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fcn8s_tf.train:") and str(tmp_path / "file") in last


def test_broken_data_is_one_line_naming_the_file(tmp_path):
    """A truncated shard, and a label value the net cannot have, through the training CLI."""
    import record_utils  # tests/ is on the path (pytest rootdir)
    pattern = _identical_records(tmp_path / "records")
    shard = record_utils.shard_files(pattern)[0]
    record_utils.truncate(shard, 100)
    proc = subprocess.run(_args(pattern, tmp_path / "run", 1), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert Path(shard).name in proc.stderr.strip().splitlines()[-1]

    rng = np.random.default_rng(0)
    label = np.zeros((16, 16), np.uint8)
    label[4:8, 4:8] = 7  # a class id of a 3-class net
    bad = record_utils.write_shards(tmp_path / "bad", "train", [record_utils.example(
        rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), label, "seven")] * 2, 1)
    proc = subprocess.run(_args(bad, tmp_path / "run2", 1), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "train-00000-of-00001.tfrecord" in last and "seven" in last, last
