"""The VOC + SBD -> TFRecord converter, on the real sample files in ../shared/voc_sample.

Records are read back with plain tf.data and literal Model Garden keys (not fcn8s_tf.data.records),
so a wrong key in records.py would fail here too.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from fcn8s_tf.class_info import VOC_CLASSES, VOC_PALETTE
from fcn8s_tf.data.convert import convert
from fcn8s_tf.data.convert import examples as convert_examples
from fcn8s_tf.data.convert import voc_sbd
from fcn8s_tf.data.convert.layout import ConversionError

from helpers import left_behind

REPO_ROOT = Path(__file__).resolve().parents[1]
SBD_IDS = ("2008_000051", "2008_000195")  # both in SBD val, in neither VOC2012 list
RIDER_ID = "rider"  # extras/sbd_cls_unknown_id: a third real SBD .mat, listed in SBD train here
GRAYSCALE_ID = "2007_000129"  # a VOC val id; its label is replaced by the "L" redistribution
PRECEDENCE_ID = "2007_000032"  # a VOC train id we also give an SBD .mat: the VOC PNG must win
VAL_IN_SBD_TRAIN = "2007_000033"  # a VOC val id listed in SBD train: must stay out of train

# What TF Model Garden's segmentation Decoder parses
# (official/vision/dataloaders/segmentation_input.py), spelt out rather than imported.
MODEL_GARDEN_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
}
ALL_KEYS = dict(MODEL_GARDEN_FEATURES, **{
    "image/format": tf.io.FixedLenFeature((), tf.string),
    "image/filename": tf.io.FixedLenFeature((), tf.string),
    "image/segmentation/class/format": tf.io.FixedLenFeature((), tf.string),
})


def _read_ids(path: Path):
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def roots(tmp_path, voc_sample_dir):
    """VOC and SBD roots in tmp_path built from the sample files and the subset lists."""
    sample_voc = voc_sample_dir / "VOCdevkit" / "VOC2012"
    sample_sbd = voc_sample_dir / "benchmark_RELEASE" / "dataset"
    subsets = voc_sample_dir / "subset_lists"
    voc = tmp_path / "VOC2012"
    sbd = tmp_path / "sbd"
    shutil.copytree(sample_voc / "JPEGImages", voc / "JPEGImages")
    shutil.copytree(sample_voc / "SegmentationClass", voc / "SegmentationClass")
    shutil.copy(voc_sample_dir / "extras" / "SegmentationClassAug_style_grayscale" /
                f"{GRAYSCALE_ID}.png", voc / "SegmentationClass" / f"{GRAYSCALE_ID}.png")
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    shutil.copy(subsets / "voc2012_seg_train_present.txt", lists / "train.txt")
    shutil.copy(subsets / "voc2012_seg_val_present.txt", lists / "val.txt")
    shutil.copytree(sample_sbd / "img", sbd / "img")
    shutil.copytree(sample_sbd / "cls", sbd / "cls")
    shutil.copy(sample_sbd / "cls" / f"{SBD_IDS[0]}.mat", sbd / "cls" / f"{PRECEDENCE_ID}.mat")
    rider = voc_sample_dir / "extras" / "sbd_cls_unknown_id"
    shutil.copy(rider / "rider.jpg", sbd / "img" / f"{RIDER_ID}.jpg")
    shutil.copy(rider / "rider_label.mat", sbd / "cls" / f"{RIDER_ID}.mat")
    shutil.copy(subsets / "sbd_val_present.txt", sbd / "val.txt")
    (sbd / "train.txt").write_text(f"{PRECEDENCE_ID}\n{VAL_IN_SBD_TRAIN}\n{RIDER_ID}\n")
    return voc, sbd


def _expected_ids(voc: Path):
    lists = voc / "ImageSets" / "Segmentation"
    return {"train": sorted(_read_ids(lists / "train.txt") + list(SBD_IDS) + [RIDER_ID]),
            "val": sorted(_read_ids(lists / "val.txt"))}


def _source_files(voc: Path, sbd: Path, example_id: str):
    """(JPEG path, label array) as the dataset holds them, by the documented precedence."""
    image = voc / "JPEGImages" / f"{example_id}.jpg"
    if not image.exists():
        image = sbd / "img" / f"{example_id}.jpg"
    png = voc / "SegmentationClass" / f"{example_id}.png"
    if png.exists():
        label = np.array(Image.open(png))  # palette indices (P) or grey levels (L): class ids
    else:
        label = scipy.io.loadmat(sbd / "cls" / f"{example_id}.mat", struct_as_record=False,
                                 squeeze_me=True)["GTcls"].Segmentation
    return image, label


def _read_split(output_dir: Path, manifest: dict, split: str):
    files = [str(output_dir / s["file"]) for s in manifest["splits"][split]["shards"]]
    dataset = tf.data.TFRecordDataset(files).map(
        lambda record: tf.io.parse_single_example(record, ALL_KEYS))
    return list(dataset.as_numpy_iterator())


# ----------------------------------------------------------------------------------------------
# Round trip on the real files.
# ----------------------------------------------------------------------------------------------

def test_records_hold_source_jpeg_bytes_and_label_pixels_exactly(roots, tmp_path):
    voc, sbd = roots
    assert Image.open(voc / "SegmentationClass" / f"{GRAYSCALE_ID}.png").mode == "L"
    assert Image.open(voc / "SegmentationClass" / "2007_000032.png").mode == "P"
    output_dir = tmp_path / "records"
    manifest = convert.convert(voc, sbd, output_dir, num_shards={"train": 3, "val": 2},
                               num_workers=2, progress_stream=None)

    expected = _expected_ids(voc)
    assert VAL_IN_SBD_TRAIN not in expected["train"]
    for split in ("train", "val"):
        records = _read_split(output_dir, manifest, split)
        assert [r["image/filename"].decode() for r in records] == expected[split]
        for record in records:
            example_id = record["image/filename"].decode()
            image_path, label = _source_files(voc, sbd, example_id)
            assert record["image/encoded"] == image_path.read_bytes(), example_id
            assert record["image/format"] == b"jpeg"
            assert record["image/segmentation/class/format"] == b"png"
            decoded = tf.io.decode_png(record["image/segmentation/class/encoded"], channels=1)
            np.testing.assert_array_equal(decoded.numpy()[..., 0], label, err_msg=example_id)
            assert (record["image/height"], record["image/width"]) == label.shape
            # A single-channel PNG of indices, not a palette: any reader gets the class ids.
            assert Image.open(io.BytesIO(record["image/segmentation/class/encoded"])).mode == "L"


def test_records_decode_with_model_garden_decoder(roots, tmp_path):
    voc, sbd = roots
    output_dir = tmp_path / "records"
    manifest = convert.convert(voc, sbd, output_dir, num_workers=1, progress_stream=None)
    first_val = output_dir / manifest["splits"]["val"]["shards"][0]["file"]
    serialized = next(iter(tf.data.TFRecordDataset(str(first_val))))
    # As Model Garden's Decoder.decode and Parser._prepare_image_and_label do it.
    data = tf.io.parse_single_example(serialized, MODEL_GARDEN_FEATURES)
    height, width = data["image/height"], data["image/width"]
    label = tf.reshape(tf.io.decode_image(data["image/segmentation/class/encoded"], channels=1),
                       (1, height, width))
    image = tf.reshape(tf.io.decode_image(data["image/encoded"], channels=3, dtype=tf.uint8),
                       (height, width, 3))
    example_id = _expected_ids(voc)["val"][0]
    image_path, expected_label = _source_files(voc, sbd, example_id)
    np.testing.assert_array_equal(label.numpy()[0], expected_label)
    np.testing.assert_array_equal(image.numpy(), tf.io.decode_jpeg(image_path.read_bytes()))


def test_manifest(roots, tmp_path):
    voc, sbd = roots
    output_dir = tmp_path / "records"
    manifest = convert.convert(voc, sbd, output_dir, num_shards={"train": 4, "val": 20},
                               num_workers=1, progress_stream=None)
    with open(output_dir / "manifest.json") as f:
        assert json.load(f) == manifest

    # Only the shards and the manifest; no temporary files.
    shard_files = [s["file"] for split in ("train", "val")
                   for s in manifest["splits"][split]["shards"]]
    assert left_behind(output_dir) == sorted(shard_files + ["manifest.json"])

    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["num_examples"] == 18 and val["num_examples"] == 15
    assert [s["file"] for s in train["shards"]] == [
        f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert [s["count"] for s in train["shards"]] == [4, 5, 4, 5]
    # 20 val shards asked for, 15 examples: one shard each.
    assert val["num_shards"] == 15 and {s["count"] for s in val["shards"]} == {1}
    for info in (train, val):
        for shard in info["shards"]:
            assert sum(1 for _ in tf.data.TFRecordDataset(str(output_dir / shard["file"]))) == \
                shard["count"]
    assert train["label_source"] == {"voc": 15, "sbd": 3}
    assert train["image_source"] == {"voc": 15, "sbd": 3}
    assert val["label_source"] == {"voc": 15, "sbd": 0}
    assert train["list_files"] == {
        "include": [str(sbd / "train.txt"), str(sbd / "val.txt"),
                    str(voc / "ImageSets/Segmentation/train.txt")],
        "exclude": [str(voc / "ImageSets/Segmentation/val.txt")]}
    assert val["list_files"] == {"include": [str(voc / "ImageSets/Segmentation/val.txt")],
                                 "exclude": []}

    for split, info in manifest["splits"].items():
        counts = np.zeros(256, np.int64)
        for example_id in _expected_ids(voc)[split]:
            counts += np.bincount(_source_files(voc, sbd, example_id)[1].ravel(), minlength=256)
        assert info["class_pixels"] == counts[:21].tolist()
        assert info["ignore_pixels"] == counts[255]
        assert info["image_formats"] == {"jpeg": info["num_examples"]}
        assert info["reencoded"] == {}
    assert manifest["classes"] == {
        "names": list(VOC_CLASSES), "palette": VOC_PALETTE[:21].tolist(), "ignore_label": 255}
    assert manifest["created"]["source"] == "voc"
    assert manifest["created"]["voc_root"] == str(voc)
    assert manifest["created"]["sbd_root"] == str(sbd)


def test_without_sbd_train_is_voc_train(roots, tmp_path):
    voc, _ = roots
    manifest = convert.convert(voc, None, tmp_path / "records", num_workers=1,
                               progress_stream=None)
    assert manifest["splits"]["train"]["num_examples"] == 15
    assert manifest["splits"]["train"]["label_source"] == {"voc": 15, "sbd": 0}


def test_overwrite_replaces_old_records(roots, tmp_path):
    voc, sbd = roots
    output_dir = tmp_path / "records"
    convert.convert(voc, sbd, output_dir, num_shards={"train": 5, "val": 3}, num_workers=1,
                    progress_stream=None)
    manifest = convert.convert(voc, sbd, output_dir, num_shards={"train": 2, "val": 1},
                               num_workers=1, overwrite=True, progress_stream=None)
    assert left_behind(output_dir) == sorted(
        ["manifest.json", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
         "val-00000-of-00001.tfrecord"])
    assert manifest["splits"]["train"]["num_examples"] == 18


def test_progress_line(roots, tmp_path):
    voc, sbd = roots
    stream = io.StringIO()
    convert.convert(voc, sbd, tmp_path / "records", num_workers=1, progress_stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[-2].startswith("train: 18/18 images, ") and "images/s" in lines[-2]
    assert lines[-1].startswith("val: 15/15 images, ")


def test_label_png_encoder_round_trip():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 7), (281, 500)]:
        label = rng.choice(np.array([0, 1, 15, 20, 255], np.uint8), size=shape)
        png = convert_examples.encode_label_png(label)
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(png))), label)
        np.testing.assert_array_equal(tf.io.decode_png(png, channels=1).numpy()[..., 0], label)


# ----------------------------------------------------------------------------------------------
# --list: one list's ids only (e.g. VOC2011 seg11valid), into one split.
# ----------------------------------------------------------------------------------------------

def test_list_converts_only_its_ids(roots, tmp_path):
    voc, sbd = roots
    listed = _expected_ids(voc)["val"][:4] + [SBD_IDS[0]]
    list_file = tmp_path / "seg11valid.txt"
    list_file.write_text("".join(f"{i}\n" for i in reversed(listed)) + listed[0] + "\n")
    for split in ("train", "val"):  # the split lists are not read
        (voc / "ImageSets/Segmentation" / f"{split}.txt").unlink()
    output_dir = tmp_path / "records"
    manifest = convert.convert(voc, sbd, output_dir, list_file=list_file, num_workers=1,
                               progress_stream=None)
    assert list(manifest["splits"]) == ["val"]
    records = _read_split(output_dir, manifest, "val")
    assert [r["image/filename"].decode() for r in records] == sorted(listed)
    for record in records:
        example_id = record["image/filename"].decode()
        image_path, label = _source_files(voc, sbd, example_id)
        assert record["image/encoded"] == image_path.read_bytes()
        decoded = tf.io.decode_png(record["image/segmentation/class/encoded"], channels=1)
        np.testing.assert_array_equal(decoded.numpy()[..., 0], label, err_msg=example_id)
    val = manifest["splits"]["val"]
    assert val["list_files"] == {"include": [str(list_file)], "exclude": []}
    assert val["label_source"] == {"voc": 4, "sbd": 1}
    assert manifest["created"]["list"] == str(list_file)
    assert sorted(p.name for p in output_dir.glob("*.tfrecord")) == [
        f"val-0000{i}-of-00004.tfrecord" for i in range(4)]


def test_list_into_a_named_split_and_its_errors(roots, tmp_path):
    voc, sbd = roots
    list_file = tmp_path / "ids.txt"
    list_file.write_text(f"{SBD_IDS[0]}\n{PRECEDENCE_ID}\n")
    manifest = convert.convert(voc, sbd, tmp_path / "records", list_file=list_file,
                               list_split="seg11valid", num_shards={"train": 3, "val": 1},
                               num_workers=1, progress_stream=None)
    assert manifest["splits"]["seg11valid"]["num_examples"] == 2
    assert [p.name for p in (tmp_path / "records").glob("*.tfrecord")] == [
        "seg11valid-00000-of-00001.tfrecord"]  # not train: --val_shards' count
    message = _convert_fails(voc, None, tmp_path / "out", list_file=list_file)
    assert "1 of 2 val ids have no image" in message and SBD_IDS[0] in message
    message = _convert_fails(voc, sbd, tmp_path / "out", list_file=tmp_path / "missing.txt")
    assert f"list file {tmp_path / 'missing.txt'} does not exist (--list=" in message
    message = _convert_fails(voc, sbd, tmp_path / "out", list_file=list_file,
                             list_split="seg11-valid")
    assert "--list_split=seg11-valid" in message
    assert left_behind(tmp_path / "out") == []


# ----------------------------------------------------------------------------------------------
# Splits on the real, full list files (10,582 / 1,449 ids; the images are not there).
# ----------------------------------------------------------------------------------------------

def test_split_ids_on_full_lists(voc_sample_dir):
    voc = voc_sample_dir / "VOCdevkit" / "VOC2012"
    sbd = voc_sample_dir / "benchmark_RELEASE" / "dataset"
    splits = voc_sbd.split_ids(voc, sbd)
    assert len(splits["train"]) == 10582
    assert len(splits["val"]) == 1449
    assert splits["train"] == sorted(_read_ids(voc / "ImageSets/SegmentationAug/train_aug.txt"))
    assert splits["val"] == sorted(_read_ids(voc / "ImageSets/Segmentation/val.txt"))
    assert not set(splits["train"]) & set(splits["val"])


def test_split_ids_without_sbd(voc_sample_dir):
    voc = voc_sample_dir / "VOCdevkit" / "VOC2012"
    splits = voc_sbd.split_ids(voc)
    assert splits["train"] == sorted(_read_ids(voc / "ImageSets/Segmentation/train.txt"))
    assert len(splits["train"]) == 1464 and len(splits["val"]) == 1449


# ----------------------------------------------------------------------------------------------
# Bad input: a clear message, and nothing left in output_dir.
# ----------------------------------------------------------------------------------------------

def _convert_fails(voc, sbd, output_dir, num_workers=1, **kwargs) -> str:
    with pytest.raises(ConversionError) as error:
        convert.convert(voc, sbd, output_dir, num_workers=num_workers, progress_stream=None,
                        **kwargs)
    return str(error.value)


def test_missing_voc_root(roots, tmp_path):
    _, sbd = roots
    missing = tmp_path / "nowhere" / "VOC2012"
    message = _convert_fails(missing, sbd, tmp_path / "out")
    assert f"--voc_root={missing}" in message and "does not exist" in message
    assert left_behind(tmp_path / "out") == []


def test_missing_sbd_root(roots, tmp_path):
    voc, _ = roots
    missing = tmp_path / "benchmark_RELEASE" / "dataset"
    message = _convert_fails(voc, missing, tmp_path / "out")
    assert f"--sbd_root={missing}" in message and "does not exist" in message
    assert left_behind(tmp_path / "out") == []


@pytest.mark.parametrize("which", ["voc_val", "sbd_train"])
def test_missing_list_file(roots, tmp_path, which):
    voc, sbd = roots
    path, flag = {"voc_val": (voc / "ImageSets/Segmentation/val.txt", "--voc_root"),
                  "sbd_train": (sbd / "train.txt", "--sbd_root")}[which]
    path.unlink()
    message = _convert_fails(voc, sbd, tmp_path / "out")
    assert str(path) in message and "does not exist" in message and flag in message
    assert left_behind(tmp_path / "out") == []


def test_ids_without_image_or_label(roots, tmp_path):
    voc, sbd = roots
    no_image = [f"2099_{i:06d}" for i in range(7)]
    for example_id in no_image:  # a label but no image
        shutil.copy(voc / "SegmentationClass/2007_000032.png",
                    voc / "SegmentationClass" / f"{example_id}.png")
    (voc / "JPEGImages/2007_000039.jpg").unlink()
    (voc / "SegmentationClass/2007_000063.png").unlink()
    with open(voc / "ImageSets/Segmentation/train.txt", "a") as f:
        f.write("".join(f"{i}\n" for i in no_image))
    message = _convert_fails(voc, sbd, tmp_path / "out")
    assert "8 of 25 train ids have no image" in message
    assert "2007_000039, 2099_000000, 2099_000001, 2099_000002, 2099_000003, ..." in message
    assert "1 of 25 train ids have no label" in message and "2007_000063" in message
    assert "--voc_root" in message and "--sbd_root" in message
    assert left_behind(tmp_path / "out") == []


# The last id of each split, so that earlier shards were already written when the error comes.
LAST_TRAIN_ID, LAST_VAL_ID = "2011_003151", "2011_003030"


@pytest.mark.parametrize("num_workers", [1, 2])
def test_image_label_size_mismatch(roots, tmp_path, num_workers):
    voc, sbd = roots
    label_path = voc / "SegmentationClass" / f"{LAST_VAL_ID}.png"
    label = Image.open(label_path)
    width, height = label.size
    label.crop((0, 0, width, height - 1)).save(label_path)
    message = _convert_fails(voc, sbd, tmp_path / "out", num_workers=num_workers)
    assert LAST_VAL_ID in message
    assert f"{width}x{height}" in message and f"{width}x{height - 1}" in message
    assert left_behind(tmp_path / "out") == []


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_jpeg_that_does_not_decode(roots, tmp_path, damage):
    voc, sbd = roots
    image_path = voc / "JPEGImages" / f"{LAST_TRAIN_ID}.jpg"
    data = image_path.read_bytes()
    image_path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\0" * 1000)
    message = _convert_fails(voc, sbd, tmp_path / "out")
    assert str(image_path) in message and "does not decode" in message
    assert left_behind(tmp_path / "out") == []


def test_label_values_outside_the_classes(roots, tmp_path):
    voc, sbd = roots
    label_path = voc / "SegmentationClass" / f"{LAST_VAL_ID}.png"
    label = np.array(Image.open(label_path))
    label[0, :3] = [21, 100, 254]
    Image.fromarray(label).save(label_path)  # a grayscale PNG, like the "L" redistributions
    message = _convert_fails(voc, sbd, tmp_path / "out")
    assert str(label_path) in message and "[21, 100, 254]" in message
    assert left_behind(tmp_path / "out") == []


def test_sbd_label_values_outside_the_classes(roots, tmp_path):
    voc, sbd = roots
    mat_path = sbd / "cls" / f"{SBD_IDS[1]}.mat"
    segmentation = scipy.io.loadmat(mat_path, struct_as_record=False,
                                    squeeze_me=True)["GTcls"].Segmentation.copy()
    segmentation[5, 5] = 42
    scipy.io.savemat(mat_path, {"GTcls": {"Segmentation": segmentation}})
    message = _convert_fails(voc, sbd, tmp_path / "out")
    assert str(mat_path) in message and "[42]" in message
    assert left_behind(tmp_path / "out") == []


def test_output_dir_with_records_needs_overwrite(roots, tmp_path):
    voc, sbd = roots
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    (output_dir / "train-00000-of-00001.tfrecord").write_bytes(b"old")
    message = _convert_fails(voc, sbd, output_dir)
    assert str(output_dir) in message and "--overwrite" in message
    assert left_behind(output_dir) == ["notes.txt", "train-00000-of-00001.tfrecord"]
    assert (output_dir / "train-00000-of-00001.tfrecord").read_bytes() == b"old"


def test_failed_overwrite_keeps_old_records(roots, tmp_path):
    voc, sbd = roots
    output_dir = tmp_path / "out"
    convert.convert(voc, sbd, output_dir, num_workers=1, progress_stream=None)
    before = {p.name: p.read_bytes() for p in output_dir.iterdir()}
    (voc / "JPEGImages" / f"{LAST_VAL_ID}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    _convert_fails(voc, sbd, output_dir, overwrite=True)
    assert {p.name: p.read_bytes() for p in output_dir.iterdir()} == before


# ----------------------------------------------------------------------------------------------
# The command-line wrapper.
# ----------------------------------------------------------------------------------------------

def _run_tool(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make_tfrecords.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_tool_reports_bad_input_without_traceback(tmp_path):
    missing = tmp_path / "VOC2012"
    result = _run_tool(f"--voc_root={missing}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert f"--voc_root={missing}" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_tool_with_flagfile(roots, tmp_path):
    voc, sbd = roots
    flagfile = tmp_path / "convert.flags"
    flagfile.write_text(f"--voc_root={voc}\n--sbd_root={sbd}\n--output_dir={tmp_path / 'out'}\n"
                        "--train_shards=2\n--val_shards=1\n--num_workers=1\n")
    result = _run_tool(f"--flagfile={flagfile}")
    assert result.returncode == 0, result.stderr
    assert "train: 18/18 images" in result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [9, 9]
    assert manifest["splits"]["val"]["shards"] == [
        {"file": "val-00000-of-00001.tfrecord", "count": 15}]


def test_tool_with_a_list(roots, tmp_path):
    voc, sbd = roots
    list_file = tmp_path / "seg11valid.txt"
    list_file.write_text("".join(f"{i}\n" for i in _expected_ids(voc)["val"][:3]))
    result = _run_tool(f"--voc_root={voc}", f"--list={list_file}",
                       f"--output_dir={tmp_path / 'out'}", "--num_workers=1")
    assert result.returncode == 0, result.stderr
    assert f"Wrote val 3 examples to {tmp_path / 'out'} (manifest.json)." in result.stdout
    assert "aeroplane" in result.stdout and "(void)" in result.stdout  # the pixel table


def test_converter_modules_import_no_tensorflow():
    # The worker processes import them: without TensorFlow each starts in a fraction of a second.
    code = ("import sys, fcn8s_tf.data.convert, fcn8s_tf.data.convert.folders, "
            "fcn8s_tf.data.convert.voc_sbd; "
            "print([m for m in ('tensorflow', 'keras') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
