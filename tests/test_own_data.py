"""Your own dataset end to end, along the README's commands: a 3-class folders dataset with RGB
masks -> converter -> two training steps -> evaluate -> predict. The class names and colours must
reach metrics.json, TensorBoard, the SavedModel and the overlays.

Slow (about a minute on 2 cores): it runs the real CLIs in subprocesses, as a user does.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import run_python


def _run(*args, timeout=600):
    proc = run_python(*args, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_folders_dataset_converted_trained_evaluated_predicted(tmp_path):
    raw, records, run = tmp_path / "raw", tmp_path / "records", tmp_path / "run"
    _run("tools/make_demo_dataset.py", "--format=folders", f"--output_dir={raw}",
         "--num_images=12", "--image_size=48", "--seed=0")
    lines = [line.split() for line in (raw / "classes.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    names = [line[0] for line in lines]
    colours = [tuple(int(v) for v in line[1:4]) for line in lines]
    assert len(names) == 3
    _run("tools/make_tfrecords.py", "--format=folders", f"--images={raw / 'images'}",
         f"--masks={raw / 'masks'}", f"--classes={raw / 'classes.txt'}",
         "--ignore_color=255,255,255", f"--output_dir={records}", "--splits=train:0.75,val:0.25")
    manifest = json.loads((records / "manifest.json").read_text())
    assert manifest["classes"]["names"] == names

    # No --num_classes: the manifest says 3, with its names and colours.
    _run("-m", "fcn8s_tf.train", f"--train_data={records}/train-*.tfrecord",
         f"--val_data={records}/val-*.tfrecord", f"--workdir={run}", "--base_size=32",
         "--crop_size=32", "--backbone_weights=none", "--fc_units=16", "--train_steps=2",
         "--batch_size=2", "--learning_rate=1e-3", "--log_every=1", "--tb_images=1",
         "--notrain_backbone")
    config = json.loads((run / "model_config.json").read_text())
    assert config["num_classes"] == 3 and config["classes"]["names"] == names
    val_metrics = json.loads((run / "val_metrics.json").read_text())
    assert list(val_metrics["per_class"]) == names
    tags = set()
    for event_file in (run / "tensorboard" / "val").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {value.tag for value in event.summary.value}
    assert any(tag == f"iou/{names[0]}" for tag in tags), tags
    assert not any("aeroplane" in tag for tag in tags)

    # The export carries the classes: evaluate and predict use them without being told.
    export = run / "export"
    assert (export / "1" / "assets" / "class_names.txt").read_text().split() == names
    evaluated = _run("-m", "fcn8s_tf.evaluate", f"--model={export}",
                     f"--data={records}/val-*.tfrecord", f"--output_dir={tmp_path / 'eval'}",
                     "--save_predictions=1")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == names and names[1] in evaluated.stdout
    saved = next((tmp_path / "eval" / "predictions").iterdir())
    with Image.open(saved) as mask:
        palette = np.array(mask.getpalette(), np.uint8).reshape(-1, 3)
    assert [tuple(c) for c in palette[:3]] == colours

    image = sorted((raw / "images").iterdir())[0]
    predicted = _run("-m", "fcn8s_tf.predict", f"--model={export}",
                     f"--output_dir={tmp_path / 'pred'}", str(image))
    assert any(name in predicted.stdout for name in names)
    assert "aeroplane" not in predicted.stdout  # not VOC's names
    with Image.open(tmp_path / "pred" / f"{image.stem}_mask.png") as mask:
        palette = np.array(mask.getpalette(), np.uint8).reshape(-1, 3)
    assert [tuple(c) for c in palette[:3]] == colours
