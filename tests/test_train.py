"""The training job end to end: steps, resume, export, distribution, and its failure modes.

Models here use fc_units=16 and tiny images: what these tests check (the loop, the loss reduction,
checkpoints, the strategies) does not depend on the fc width, and the full-size net would make
each step take seconds.
"""

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf import config as config_lib
from fcn8s_tf.data import records
from fcn8s_tf.training import loop as train_lib
from fcn8s_tf.training import step as step_lib

from helpers import REPO, free_port


def write_records(directory: Path, split: str, num_examples: int, num_shards: int,
                  size=(40, 48), seed=0) -> str:
    """Writes `num_examples` random image/label pairs into shards; returns their file pattern."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(directory / f"{split}-{i:05d}-of-"
                                                    f"{num_shards:05d}.tfrecord"))
               for i in range(num_shards)]
    for n in range(num_examples):
        h, w = size
        label = np.zeros((h, w), np.uint8)
        label[h // 4:3 * h // 4, w // 4:3 * w // 4] = 1 + n % 2
        label[h // 4, :] = 255  # a void band, as VOC has
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        image[label == 1] = (220, 40, 40)
        image[label == 2] = (40, 40, 220)
        jpeg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(image).save(jpeg, format="JPEG", quality=95)
        Image.fromarray(label, mode="L").save(png, format="PNG")
        writers[n % num_shards].write(records.encode_example(
            jpeg.getvalue(), png.getvalue(), h, w, f"ex_{n:03d}"))
    for writer in writers:
        writer.close()
    return str(directory / f"{split}-*.tfrecord")


def tiny_config(tmp_path: Path, **overrides) -> config_lib.TrainConfig:
    data = tmp_path / "records"
    settings = dict(
        train_data=write_records(data, "train", 8, 2),
        val_data=write_records(data, "val", 3, 1, size=(37, 29), seed=1),
        workdir=str(tmp_path / "run"), base_size=32, crop_size=32, num_classes=3,
        backbone_weights=None, fc_units=16, train_steps=2, batch_size=2, learning_rate=1e-3,
        log_every=1, checkpoint_every=1, eval_every=2, tb_images=1, shuffle_buffer=8)
    settings.update(overrides)
    return config_lib.TrainConfig(**settings)


@pytest.mark.slow
def test_two_steps_export_then_resume(tmp_path, caplog):
    config = tiny_config(tmp_path)
    caplog.set_level(logging.INFO, logger="absl")
    result = train_lib.train(config, flags_text="--seed=0\n")
    assert result["step"] == 2
    # The progress line carries s/step and img/s with three significant digits, to compare runs.
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2/2")]
    assert progress and re.search(r" \d+(\.\d+)?(e-?\d+)? s/step  \S+ img/s  eta ", progress[0]), \
        progress
    assert np.isfinite(result["loss"])
    workdir = Path(config.workdir)
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-2")
    assert json.loads((workdir / "model_config.json").read_text())["fc_units"] == 16
    assert (workdir / "flags.txt").read_text() == "--seed=0\n"
    # The in-training evaluation is the evaluator's: the export, scored by `evaluate`, gives the
    # same numbers (same weights, same images, same any-size float32 net).
    from fcn8s_tf.evaluation import evaluator as evaluate_lib
    from fcn8s_tf.data import input_pipeline
    predict_fn, _, _ = evaluate_lib.load_predict_fn(result["export"])
    again, _ = evaluate_lib.evaluate(predict_fn, input_pipeline.eval_dataset(config.val_data), 3,
                                     log_every=0)
    for key in ("mean_iou", "pixel_accuracy", "per_class_iou", "num_images"):
        assert result["eval"][key] == again[key], key
    saved = json.loads((workdir / "val_metrics.json").read_text())
    assert saved["mean_iou"] == result["eval"]["mean_iou"] and saved["step"] == 2
    assert list(saved["per_class"]) == ["class_0", "class_1", "class_2"]
    assert np.isfinite(saved["loss"])
    assert (Path(result["export"]) / "saved_model.pb").exists()
    assert Path(result["export"]).name == "1"

    # Rerunning the finished command does nothing: no step, no second export.
    rerun = train_lib.train(config)
    assert rerun["finished_before"] and rerun["export"] is None and rerun["step"] == 2
    assert sorted(p.name for p in (workdir / "export").iterdir()) == ["1"]
    assert any((workdir / "tensorboard" / "train").iterdir())
    # The training model was built for the crop size; the checkpoint still loads into the
    # any-size net that evaluation and export build from model_config.json.
    from fcn8s_tf.model import run_dir
    restored, _ = run_dir.load_model(str(workdir))
    assert restored.input_shape == (None, None, None, 3)

    # Same workdir, one more step: resumes from step 2 rather than starting again.
    config.train_steps = 3
    resumed = train_lib.train(config)
    assert resumed["step"] == 3
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-3")
    assert Path(resumed["export"]).name == "2"


def test_masked_cross_entropy_ignores_void():
    logits = tf.constant([[[[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]]]])  # (1, 1, 3, 2)
    labels = tf.constant([[[0, 0, 255]]])
    loss_sum, count = step_lib.masked_cross_entropy(logits, labels)
    expected = -np.log(np.exp(2) / (np.exp(2) + 1)) - np.log(1 / (1 + np.exp(2)))
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)


def test_missing_records_named(tmp_path):
    config = tiny_config(tmp_path, train_data=str(tmp_path / "nothing-*.tfrecord"))
    with pytest.raises(FileNotFoundError, match="nothing-"):
        train_lib.train(config)


def test_nan_loss_stops_with_step(tmp_path, monkeypatch):
    # Poison the loss from the first step on: the loop must stop at once and name the step.
    real = step_lib.masked_cross_entropy

    def nan_loss(logits, labels):
        loss_sum, count = real(logits, labels)
        return loss_sum * np.nan, count

    monkeypatch.setattr(step_lib, "masked_cross_entropy", nan_loss)
    config = tiny_config(tmp_path, train_steps=5)
    with pytest.raises(train_lib.NonFiniteLossError, match="at step 1"):
        train_lib.train(config)
    assert tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")) is None


def _run_python(code: str, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from fcn8s_tf.training import distribute
    from fcn8s_tf.training import loop as train_lib
    from fcn8s_tf.training import step as step_lib
    from fcn8s_tf import config as config_lib
    config = config_lib.TrainConfig(train_data="unused", workdir="unused", num_classes=3,
        backbone_weights=None, fc_units=16, dropout_rate=0.0, crop_size=24, scale_range=(1.0, 1.0),
        flip_prob=0.0, batch_size=4, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 24, 24, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, (4, 24, 24, 1)).astype(np.uint8)
    # Unequal void: the first replica's half is mostly ignored, the second's not at all.
    labels[:2, :20] = 255
    divisible_error = ""
    try:
        train_lib.train(config_lib.TrainConfig(**{**config.__dict__, "batch_size": 3,
                                                 "train_steps": 1}),
                        devices=["/cpu:0", "/cpu:1"])
    except ValueError as e:
        divisible_error = str(e)
    out = {"divisible_error": divisible_error}
    weights = {}
    for name, devices in (("one", ["/cpu:0"]), ("two", ["/cpu:0", "/cpu:1"])):
        strategy = distribute.make_strategy(devices)
        with strategy.scope():
            model, _ = step_lib.build_model_and_optimizer(config, total_steps=1)
            # Plain SGD: its update is proportional to the gradient, so a wrong cross-replica
            # reduction (e.g. a mean of per-replica means) shows in the weights; Adam's first
            # step is ~lr * sign(gradient) and would hide it.
            optimizer = keras.optimizers.SGD(learning_rate=1.0)
            optimizer.build(model.trainable_variables)
        initial = model.get_weights()  # same seed, so the same start for both strategies
        step = step_lib.make_train_step(strategy, model, optimizer, config)
        dataset = tf.data.Dataset.from_tensors((images, labels))
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
        loss, count = step(batch, tf.constant(0, tf.int64))
        out[name] = {"loss": float(loss), "count": float(count)}
        weights[name] = model.get_weights()
    # Every variable after the update, compared here: the full list is too big to print.
    out["max_weight_diff"] = max(float(np.max(np.abs(a - b)))
                                 for a, b in zip(weights["one"], weights["two"]))
    out["max_update"] = max(float(np.max(np.abs(a - b)))
                            for a, b in zip(weights["one"], initial))
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device():
    proc = _run_python(MIRRORED_SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert "does not divide evenly over 2 replicas" in out["divisible_error"]
    one, two = out["one"], out["two"]
    assert one["count"] == two["count"] == 4 * 24 * 24 - 2 * 20 * 24
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert out["max_update"] > 1e-4  # the step really moved the weights...
    assert out["max_weight_diff"] < 1e-5  # ...and by the same amount on one and two replicas


@pytest.mark.slow
def test_multi_worker_two_processes(tmp_path):
    config = tiny_config(tmp_path, eval_every=0, tb_images=0)
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        workdir = tmp_path / f"worker{index}"
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        args = [sys.executable, "-m", "fcn8s_tf.train", f"--train_data={config.train_data}",
                f"--val_data={config.val_data}", f"--workdir={workdir}", "--base_size=32",
                "--crop_size=32", "--num_classes=3", "--backbone_weights=none", "--fc_units=16",
                "--train_steps=2", "--batch_size=4", "--log_every=1", "--checkpoint_every=1",
                "--eval_every=0", "--tb_images=0"]
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert tf.train.latest_checkpoint(str(chief / "checkpoints")).endswith("ckpt-2")
    assert (chief / "export" / "1" / "saved_model.pb").exists()
    assert not (other / "checkpoints").exists()
    assert not (other / "export").exists()


# ----------------------------------------------------------------------------- schedules, steps --
@pytest.mark.parametrize("schedule", ["constant", "poly", "cosine"])
def test_learning_rate_schedules(schedule):
    config = config_lib.TrainConfig(train_data="x", workdir="w", learning_rate=1e-3,
                                   lr_schedule=schedule, warmup_steps=4)
    lr = step_lib.make_learning_rate(config, total_steps=14)
    values = [float(lr(tf.constant(step))) for step in range(14)]
    # Linear warm-up to the peak over 4 steps...
    np.testing.assert_allclose(values[:4], [2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    if schedule == "constant":
        np.testing.assert_allclose(values[4:], 1e-3, rtol=1e-6)
    else:  # ...then from the peak down towards zero over the remaining 10 steps.
        assert values[4] == pytest.approx(1e-3, rel=1e-6)
        assert all(a > b for a, b in zip(values[4:], values[5:]))
        expected_mid = {"poly": 1e-3 * 0.5 ** 0.9, "cosine": 0.5e-3}[schedule]
        assert float(lr(tf.constant(9))) == pytest.approx(expected_mid, rel=1e-5)
    # The schedule survives Keras serialisation (optimizer configs, checkpoints of the config).
    restored = type(lr).from_config(lr.get_config())
    np.testing.assert_allclose([float(restored(tf.constant(s))) for s in range(14)], values,
                               rtol=1e-6)


def test_no_warmup_constant_is_a_plain_float():
    config = config_lib.TrainConfig(train_data="x", workdir="w", learning_rate=3e-4)
    assert step_lib.make_learning_rate(config, total_steps=10) == 3e-4


def test_epochs_count_the_records(tmp_path):
    pattern = write_records(tmp_path / "records", "train", 10, 2)
    config = config_lib.TrainConfig(train_data=pattern, workdir="w", epochs=2.5, batch_size=4)
    assert step_lib.resolve_train_steps(config) == 7  # ceil(2.5 * 10 / 4)
    # A manifest (as the converter writes) that disagrees with the files is an error naming them.
    (tmp_path / "records" / "manifest.json").write_text(json.dumps({"splits": {"train": {
        "shards": [{"file": f"train-{i:05d}-of-00002.tfrecord", "count": 50} for i in range(2)]}}}))
    with pytest.raises(records.DataError, match="train-00000-of-00002.tfrecord"):
        step_lib.resolve_train_steps(config)
