"""Tests for fcn8s_tf.evaluate on real VOC sample images: the evaluator against a direct numpy
computation (the reference score.py), the SavedModel and checkpoint paths, and its errors."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf import files
from fcn8s_tf import pixels
from fcn8s_tf import render
from fcn8s_tf.class_info import IGNORE_LABEL, NUM_CLASSES, VOC_CLASSES, VOC_PALETTE, ClassInfo
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data import records
from fcn8s_tf.evaluation import evaluator as evaluate_lib
from fcn8s_tf.evaluation import metrics
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.model import run_dir
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import loader

# pytest puts tests/ on the path: the hand-worked metric example, the folders dataset maker.
from test_metrics import LABELS, PREDICTIONS
import test_convert_folders as folders_data
from helpers import REPO

# 2011_001855 has no background pixel at all; the others are ordinary train/val images.
SAMPLE_IDS = ("2007_000032", "2007_000129", "2008_000763", "2011_001855")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # uint8 (H, W) -> mode "L"
    return buffer.getvalue()


def _key(image) -> str:
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sample(voc_sample_dir, tmp_path_factory):
    """Real JPEGs and labels written into two TFRecord shards, as the converter would.

    Returns a dict: pattern, ids (in record order), labels {id: (H, W) uint8}, images {id: the
    RGB array TF decodes from the JPEG}.
    """
    voc = voc_sample_dir / "VOCdevkit" / "VOC2012"
    out = tmp_path_factory.mktemp("records")
    labels, images = {}, {}
    shards = {"val-00000-of-00002.tfrecord": SAMPLE_IDS[:2],
              "val-00001-of-00002.tfrecord": SAMPLE_IDS[2:]}
    for shard, ids in shards.items():
        with tf.io.TFRecordWriter(str(out / shard)) as writer:
            for example_id in ids:
                jpeg = (voc / "JPEGImages" / f"{example_id}.jpg").read_bytes()
                # The palette PNG read as indices (PIL mode "P"), re-encoded as a plain index PNG.
                label = np.array(Image.open(voc / "SegmentationClass" / f"{example_id}.png"))
                assert label.dtype == np.uint8 and label.ndim == 2
                writer.write(records.encode_example(jpeg, _png_bytes(label), label.shape[0],
                                                    label.shape[1], example_id))
                labels[example_id] = label
                images[example_id] = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    return dict(pattern=str(out / "val-*.tfrecord"), ids=SAMPLE_IDS, labels=labels,
                images=images)


def _reference_scores(pairs, n=NUM_CLASSES):
    """The reference FCN score.py in numpy: fast_hist summed over images, then the scores."""
    hist = np.zeros((n, n))
    for gt, pred in pairs:
        k = (gt >= 0) & (gt < n)
        hist += np.bincount(n * gt[k].astype(int) + pred[k], minlength=n ** 2).reshape(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    mean_iu = np.nanmean(iu)
    freq = hist.sum(1) / hist.sum()
    fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return hist, dict(pixel_accuracy=acc, mean_accuracy=acc_cls, mean_iou=mean_iu,
                      frequency_weighted_iou=fwavacc, iu=iu)


def _perturbed(label: np.ndarray, index: int) -> np.ndarray:
    """The ground truth with some pixels changed: void -> background, a block and a stripe wrong."""
    pred = np.where(label == IGNORE_LABEL, 0, label).astype(np.int32)
    pred[10:70, 20:120] = (3 + 5 * index) % NUM_CLASSES
    pred[::7, :] = 15
    return pred


def _assert_scores_match(result, expected):
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    want = [None if np.isnan(v) else pytest.approx(v, rel=1e-12, abs=1e-15) for v in expected["iu"]]
    assert result["per_class_iou"] == want


def test_evaluate_matches_numpy_reference_on_real_images(sample, tmp_path):
    predictions = {}
    for i, example_id in enumerate(sample["ids"]):
        predictions[_key(sample["images"][example_id])] = _perturbed(
            sample["labels"][example_id], i)

    def predict_fn(image):
        return {"labels": tf.constant(predictions[_key(image.numpy())])}

    lines = []
    result, cm = evaluate_lib.evaluate(
        predict_fn, input_pipeline.eval_dataset(sample["pattern"]), NUM_CLASSES,
        hooks=[evaluate_lib.save_predictions_hook(str(tmp_path / "pred"), 2)], log_every=3,
        print_fn=lines.append)

    hist, expected = _reference_scores(
        (sample["labels"][i], _perturbed(sample["labels"][i], n))
        for n, i in enumerate(sample["ids"]))
    np.testing.assert_array_equal(cm, hist)
    _assert_scores_match(result, expected)
    assert result["num_images"] == 4
    # Some class is in neither GT nor prediction here, so the mean really skips classes.
    assert 0 < result["num_classes_in_mean_iou"] < NUM_CLASSES
    assert lines[0].startswith("evaluated 3 images,")
    assert lines[-1].startswith("evaluated 4 images,")
    assert "images/s" in lines[-1]

    # The first two records (sorted shards) were written as palette PNGs named by id.
    assert sorted(os.listdir(tmp_path / "pred")) == [f"{i}.png" for i in sorted(sample["ids"][:2])]
    with Image.open(tmp_path / "pred" / f"{sample['ids'][0]}.png") as saved:
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.array(saved),
                                      _perturbed(sample["labels"][sample["ids"][0]], 0))
        palette = np.array(saved.getpalette(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(palette[:21], VOC_PALETTE[:21])


def test_evaluate_rejects_a_prediction_of_the_wrong_size(sample):
    def predict_fn(image):
        return {"labels": tf.zeros(tf.shape(image)[:2] + 1, tf.int32)}

    with pytest.raises(ValueError, match="prediction of shape"):
        evaluate_lib.evaluate(predict_fn, input_pipeline.eval_dataset(sample["pattern"]),
                              NUM_CLASSES, log_every=0)


# --------------------------------------------------------------------------- SavedModel path --
class _RedIsPerson(tf.Module):
    """Stands in for the export's serving_uint8: person (15) where red > threshold, else 0."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = tf.Variable(threshold, dtype=tf.int32)  # a variable, as a real model has

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_uint8(self, images):
        labels = tf.where(tf.cast(images[..., 0], tf.int32) > self.threshold, 15, 0)
        return {"labels": labels, "probabilities": tf.one_hot(labels, NUM_CLASSES)}


def _export(module, path):
    tf.saved_model.save(module, str(path), signatures={"serving_uint8": module.serving_uint8})


def test_cli_on_a_saved_model_base_dir_uses_the_highest_version(sample, tmp_path):
    base = tmp_path / "export"
    _export(_RedIsPerson(300), base / "1")   # an older version that says background everywhere
    _export(_RedIsPerson(128), base / "10")  # 10 > 9 > 1 numerically, not as strings
    _export(_RedIsPerson(300), base / "9")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "fcn8s_tf.evaluate", f"--model={base}",
         f"--data={sample['pattern']}", f"--output_dir={out}", "--confusion_png",
         "--save_predictions=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean IU" in proc.stdout and "person" in proc.stdout
    assert "evaluated 4 images" in proc.stdout

    hist, expected = _reference_scores(
        (sample["labels"][i], np.where(sample["images"][i][..., 0] > 128, 15, 0))
        for i in sample["ids"])
    data = json.loads((out / "metrics.json").read_text())
    _assert_scores_match(data, expected)
    assert data["num_images"] == 4
    assert data["model"] == str(base)
    assert data["model_loaded"].endswith(os.path.join("export", "10"))
    assert data["data"] == sample["pattern"]
    np.testing.assert_array_equal(np.array(data["confusion_matrix"]), hist)
    assert list(data["per_class"]) == list(VOC_CLASSES)
    assert data["per_class"]["person"]["gt_pixels"] == int(hist[15].sum())
    with Image.open(out / "confusion_matrix.png") as png:
        assert png.format == "PNG"
    assert os.listdir(out / "predictions") == [f"{sample['ids'][0]}.png"]


def test_saved_model_version_dir_and_missing_signature(tmp_path):
    _export(_RedIsPerson(128), tmp_path / "7")
    predict_fn, loaded, classes = evaluate_lib.load_predict_fn(str(tmp_path / "7"))
    assert loaded == f"SavedModel {tmp_path / '7'}"
    assert classes.names == VOC_CLASSES  # no metadata signature: VOC's, by the class count
    image = np.zeros((5, 6, 3), np.uint8)
    image[:, :3, 0] = 200
    np.testing.assert_array_equal(predict_fn(tf.constant(image))["labels"].numpy(),
                                  np.where(image[..., 0] > 128, 15, 0))

    module = _RedIsPerson(128)
    tf.saved_model.save(module, str(tmp_path / "other"),
                        signatures={"serving_default": module.serving_uint8})
    with pytest.raises(ValueError, match="no 'serving_uint8' signature"):
        evaluate_lib.load_predict_fn(str(tmp_path / "other"))


# --------------------------------------------------------------------------- checkpoint path --
def _tiny_build_fcn8s(num_classes=21, weights=None, extra_layer=False, **unused):
    """A one-conv stand-in for build_fcn8s with the same input/output contract."""
    assert weights is None
    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    logits = keras.layers.Conv2D(num_classes, 1, name="score")(x)
    if extra_layer:
        logits = keras.layers.Conv2D(num_classes, 1, name="extra")(logits)
    return keras.Model(image, logits)


def _write_workdir(workdir: Path, config: dict, model: keras.Model) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "model_config.json").write_text(json.dumps(config))
    checkpoint = tf.train.Checkpoint(model=model, optimizer=keras.optimizers.Adam(),
                                     step=tf.Variable(5, dtype=tf.int64))
    tf.train.CheckpointManager(checkpoint, str(workdir / "checkpoints"), max_to_keep=2).save(5)


def test_workdir_checkpoint_is_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(model_lib, "build_fcn8s", _tiny_build_fcn8s)
    keras.utils.set_random_seed(3)
    trained = _tiny_build_fcn8s(num_classes=5)
    _write_workdir(tmp_path / "run", {"num_classes": 5}, trained)

    image = np.random.default_rng(0).integers(0, 256, size=(9, 13, 3)).astype(np.uint8)
    want = np.argmax(trained(pixels.preprocess(image[None])).numpy()[0], axis=-1)
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        predict_fn, loaded, classes = evaluate_lib.load_predict_fn(str(path))
        assert loaded.startswith("checkpoint ") and loaded.endswith("ckpt-5")
        assert classes.num_classes == 5
        got = predict_fn(tf.constant(image))["labels"].numpy()
        assert got.dtype == np.int32 and got.shape == (9, 13)
        np.testing.assert_array_equal(got, want)

    with pytest.raises(ValueError, match="num_classes=21 was asked for but"):
        run_dir.load_model(str(tmp_path / "run"), num_classes=21)

    # Configs that do not fit the checkpoint: a weight it lacks; a weight of another shape.
    for config in ({"num_classes": 5, "extra_layer": True}, {"num_classes": 6}):
        (tmp_path / "run" / "model_config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match="does not hold the weights"):
            evaluate_lib.load_predict_fn(str(tmp_path / "run"))


@pytest.mark.slow
def test_workdir_with_the_real_fcn8s(tmp_path):
    """The real build_fcn8s (narrow fc only to keep the checkpoint small) through a checkpoint."""
    config = {"num_classes": 3, "fc_units": 8, "learnable_upsampling": False}
    keras.utils.set_random_seed(1)
    trained = model_lib.build_fcn8s(weights=None, **config)
    for layer in ("score_fr", "score_pool4", "score_pool3"):  # zero-initialised: make them count
        layer = trained.get_layer(layer)
        rng = np.random.default_rng(2)
        layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    _write_workdir(tmp_path / "run", config, trained)
    image = np.random.default_rng(0).integers(0, 256, size=(37, 45, 3)).astype(np.uint8)
    want = np.argmax(trained(pixels.preprocess(image[None]), training=False).numpy()[0], -1)
    predict_fn, _, classes = evaluate_lib.load_predict_fn(str(tmp_path / "run"))
    assert classes.num_classes == 3
    np.testing.assert_array_equal(predict_fn(tf.constant(image))["labels"].numpy(), want)


# ------------------------------------------------------------------------------------- errors --
def test_model_path_errors(tmp_path):
    with pytest.raises(loader.ModelLoadError, match="nowhere: no such file or directory"):
        evaluate_lib.load_predict_fn(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a SavedModel .* nor a training workdir"):
        evaluate_lib.load_predict_fn(str(tmp_path / "empty"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model_config.json").write_text('{"num_classes": 21}')
    with pytest.raises(loader.ModelLoadError, match="no checkpoint"):
        evaluate_lib.load_predict_fn(str(tmp_path / "run"))


def test_no_matching_records_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "missing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="missing-"):
        input_pipeline.eval_dataset(pattern)


def test_cli_errors_are_one_line_without_traceback(sample, tmp_path):
    (tmp_path / "not_a_model").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "fcn8s_tf.evaluate", f"--model={tmp_path / 'not_a_model'}",
         f"--data={sample['pattern']}", f"--output_dir={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "neither a SavedModel" in proc.stderr and "not_a_model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("asked", [5, 30])
def test_cli_num_classes_must_match_the_model(sample, tmp_path, asked):
    _export(_RedIsPerson(128), tmp_path / "export" / "1")  # a 21-class model
    proc = subprocess.run(
        [sys.executable, "-m", "fcn8s_tf.evaluate", f"--model={tmp_path / 'export'}",
         f"--data={sample['pattern']}", f"--output_dir={tmp_path / 'out'}",
         f"--num_classes={asked}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"--num_classes={asked} but" in proc.stderr and "predicts 21 classes" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------- the records' classes --
@pytest.fixture(scope="module")
def three_class_records(tmp_path_factory):
    """A 3-class val split (background, cat, dog; 8 images of 12x16) made by the folders
    converter, its manifest.json beside it; returns the val pattern."""
    root = tmp_path_factory.mktemp("own_data")
    folders_data._make(root / "raw")
    folders_data._convert(root / "raw", root / "records", splits={"val": 1.0},
                          num_shards={"val": 2}, ignore_color=folders_data.VOID)
    return str(root / "records" / "val-*.tfrecord")


class _RedIsClassOne(tf.Module):
    """A 3-class model's serving_uint8: class 1 where red > 128, else 0."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_uint8(self, images):
        labels = tf.where(tf.cast(images[..., 0], tf.int32) > 128, 1, 0)
        return {"labels": labels, "probabilities": tf.one_hot(labels, 3)}


def _export_with_classes(module, path, names):
    """An export of module.serving_uint8 with a metadata signature naming `names`, as export.py
    writes it; without one (an export older than it) for names=None."""
    signatures = {"serving_uint8": module.serving_uint8}
    if names is not None:
        grey = tuple((k, k, k) for k in range(len(names)))
        signatures["metadata"] = serving.metadata_signature(ClassInfo(tuple(names), grey))
    tf.saved_model.save(module, str(path), signatures=signatures)


def _run_evaluate(model, data, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "fcn8s_tf.evaluate", f"--model={model}", f"--data={data}",
         f"--output_dir={out}", *extra], cwd=REPO, capture_output=True, text=True, timeout=300)


RECORD_NAMES = [name for name, _ in folders_data.CLASSES]  # background, cat, dog


@pytest.mark.parametrize("model, extra, expected", [
    # The case: the VOC demo export on 3-class records; and an export older than the
    # metadata signature (its 21 channels say VOC).
    ("voc", [], "predicts 21 classes (background, aeroplane, bicycle, bird, boat, ...) but the "
                "records of --data={data} hold 3 classes (background, cat, dog) by their "
                "manifest.json: evaluate a model trained on these classes, or records converted "
                "with the model's"),
    ("voc_without_metadata", [], "predicts 21 classes (background, aeroplane,"),
    ("voc", ["--allow_class_mismatch"], "(--allow_class_mismatch only covers other names"),
    ("renamed", [], "names its 3 classes (background, cat, bird) otherwise than the records of "
                    "--data={data} in their manifest.json (background, cat, dog; id 2: 'bird' vs "
                    "'dog'); if each id is the same class in both, pass --allow_class_mismatch"),
])
def test_cli_refuses_a_model_whose_classes_are_not_the_records(three_class_records, tmp_path,
                                                               model, extra, expected):
    path = tmp_path / "export" / "1"
    if model == "renamed":
        _export_with_classes(_RedIsClassOne(), path, ["background", "cat", "bird"])
    else:
        _export_with_classes(_RedIsPerson(128), path, VOC_CLASSES if model == "voc" else None)
    proc = _run_evaluate(tmp_path / "export", three_class_records, tmp_path / "out", *extra)
    assert proc.returncode == 1, proc.stdout[-2000:]
    error = [line for line in proc.stderr.splitlines() if "fcn8s_tf.evaluate: error:" in line]
    assert len(error) == 1 and expected.format(data=three_class_records) in error[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("model_names, extra", [
    (RECORD_NAMES, []),                                   # the same classes
    (None, []),                                           # unnamed (no metadata): the count agrees
    (["background", "cat", "bird"], ["--allow_class_mismatch"]),  # renamed, and the user says so
])
def test_cli_scores_with_the_records_classes(three_class_records, tmp_path, model_names, extra):
    _export_with_classes(_RedIsClassOne(), tmp_path / "export" / "1", model_names)
    proc = _run_evaluate(tmp_path / "export", three_class_records, tmp_path / "out", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(data["per_class"]) == RECORD_NAMES and data["num_images"] == 8
    if extra:
        assert "otherwise than the records" in proc.stderr and "'bird' vs 'dog'" in proc.stderr
        assert data["model_class_names"] == model_names
    elif model_names is None:  # the export does not name its classes: the records' are used
        assert data["model_class_names"] == ["class_0", "class_1", "class_2"]
    else:
        assert "model_class_names" not in data
    assert "no manifest.json" not in proc.stderr


def test_cli_records_without_a_manifest_are_scored_with_a_warning(three_class_records,
                                                                  tmp_path):
    copy = tmp_path / "records"
    copy.mkdir()
    for path in Path(three_class_records).parent.glob("val-*.tfrecord"):
        (copy / path.name).write_bytes(path.read_bytes())
    _export_with_classes(_RedIsClassOne(), tmp_path / "export" / "1", RECORD_NAMES)
    proc = _run_evaluate(tmp_path / "export", copy / "val-*.tfrecord", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"--data={copy / 'val-*.tfrecord'}: no manifest.json with classes beside the "
            "records, so the model's classes are not checked against theirs") in proc.stderr
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(data["per_class"]) == RECORD_NAMES  # the model's names, unchecked


# ---------------------------------------------------------------------------------- reporting --
def test_format_table_lists_every_class_and_marks_empty_union():
    cm = metrics.confusion_matrix(LABELS, PREDICTIONS, 4).numpy()
    table = evaluate_lib.format_table(metrics.scores(cm), ["bg", "cat", "dog", "cow"])
    lines = table.splitlines()
    assert any(line.startswith("bg") and "0.6000" in line and "0.7500" in line for line in lines)
    cow = next(line for line in lines if line.startswith("cow"))
    assert "-" in cow and "0." not in cow
    assert "mean IU" in table and "0.3667" in table
    with pytest.raises(ValueError, match="class names"):
        evaluate_lib.format_table(metrics.scores(cm), ["bg"])
    assert "mean IU 0.3667" in evaluate_lib.summary_line(metrics.scores(cm))


def test_write_json_is_strict_json_with_null_for_empty_classes(tmp_path):
    cm = metrics.confusion_matrix(LABELS, PREDICTIONS, 4).numpy()
    path = tmp_path / "out" / "metrics.json"
    files.write_json(str(path), evaluate_lib.metrics_payload(
        metrics.scores(cm), ["bg", "cat", "dog", "cow"], num_images=np.int64(2),
        note=float("nan")))
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["per_class_iou"][3] is None
    assert data["per_class"]["cow"] == {"iou": None, "accuracy": None, "gt_pixels": 0}
    assert data["per_class"]["bg"]["iou"] == pytest.approx(0.6)
    assert data["num_images"] == 2 and data["note"] is None
    assert data["mean_iou"] == pytest.approx(11 / 30)
    assert os.listdir(path.parent) == ["metrics.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="class names"):
        evaluate_lib.metrics_payload(metrics.scores(cm), ["bg"])


def test_confusion_matrix_png(tmp_path):
    rng = np.random.default_rng(1)
    cm = rng.integers(0, 1000, size=(NUM_CLASSES, NUM_CLASSES))
    cm[5] = 0  # a class with no GT pixel: a grey row
    path = tmp_path / "cm.png"
    render.confusion_matrix_png(cm, str(path), VOC_CLASSES)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.width > 21 * 24 and image.height > 21 * 24
        pixels = np.asarray(image)
    assert (pixels == (220, 220, 220)).all(axis=-1).sum() > 21 * 100  # the grey row is there
    with pytest.raises(ValueError, match="class names"):
        render.confusion_matrix_png(cm, str(path), VOC_CLASSES[:3])
