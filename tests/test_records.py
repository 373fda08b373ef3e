"""Tests for fcn8s_tf.data.records: the TFRecord keys and the reader's side of a converted folder.

Covers encode_example/decode_example (eagerly and inside tf.data), read_manifest, read_classes,
the framing walk (record_offsets) and the errors it names, find_broken_record, list_files and
count_examples, on a few tiny records written to tmp_path (local files, and ram:// standing for
gs://). How a broken record surfaces while a dataset is built or iterated is
tests/test_data_faults.py's.

A TFRecord record is framed as: uint64 length, uint32 CRC of the length, the data, uint32 CRC of the
data; so a record of n bytes takes 12 + n + 4 bytes of its file.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf.class_info import VOC_CLASSES, VOC_PALETTE
from fcn8s_tf.data import records
from fcn8s_tf.data.convert import convert
from fcn8s_tf.data.convert import layout as convert_layout

import record_utils

NUM_EXAMPLES, NUM_SHARDS = 12, 3


def _write(directory, num_examples=NUM_EXAMPLES, num_shards=NUM_SHARDS):
    """Writes num_examples tiny examples into num_shards shards; returns (pattern, sorted files)."""
    examples = [record_utils.example(np.full((6, 9, 3), 10 * k, np.uint8),
                                     np.full((6, 9), k % 3, np.uint8), f"ex_{k:03d}")
                for k in range(num_examples)]
    pattern = record_utils.write_shards(directory, "train", examples, num_shards)
    return pattern, record_utils.shard_files(pattern)


def _write_raw(path, payloads):
    """A TFRecord file holding these byte strings as its records (any tf.io.gfile path)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in payloads:
            writer.write(payload)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.fixture
def demo_output(tmp_path):
    """A real converter output (manifest included) of a tiny synthetic VOC + SBD tree."""
    from fcn8s_tf.data import demo_data
    roots = demo_data.make_demo_dataset(tmp_path / "demo", num_train=8, num_val=3,
                                        image_size=(16, 16))
    output_dir = tmp_path / "records"
    convert.convert(roots["voc_root"], roots["sbd_root"], output_dir,
                    num_shards={"train": 2, "val": 1}, num_workers=1, progress_stream=None)
    return output_dir


# ----------------------------------------------------------------------------------------------
# encode_example / decode_example: the keys and the round trip.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["eager", "tf.data"])
def test_encode_decode_round_trip(where):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (5, 7), dtype=np.uint8)
    label[0, :] = 255
    png, jpeg = record_utils.encode_png(image), record_utils.encode_jpeg(image)
    serialized = [records.encode_example(png, record_utils.encode_png(label), 5, 7, "ex_png",
                                         image_format="png"),
                  records.encode_example(jpeg, record_utils.encode_png(label), 5, 7, "ex_jpeg")]
    if where == "eager":
        decoded = [records.decode_example(tf.constant(s)) for s in serialized]
    else:  # a graph: big_vision's "you'd be surprised how much these two differ"
        decoded = list(tf.data.Dataset.from_tensor_slices(serialized).map(records.decode_example))
    for (out_image, out_label, filename), name in zip(decoded, ["ex_png", "ex_jpeg"]):
        assert out_image.dtype == tf.uint8 and out_image.shape == (5, 7, 3)
        assert out_label.dtype == tf.uint8 and out_label.shape == (5, 7, 1)
        np.testing.assert_array_equal(out_label[:, :, 0], label)
        assert filename.numpy().decode() == name
    np.testing.assert_array_equal(decoded[0][0], image)  # PNG: lossless
    # JPEG: the dataset's own bytes are stored unchanged, so decoding gives their pixels exactly.
    np.testing.assert_array_equal(decoded[1][0], tf.io.decode_jpeg(jpeg))


def test_encoded_image_is_stored_unchanged_under_model_garden_keys():
    jpeg = record_utils.encode_jpeg(np.full((4, 6, 3), 90, np.uint8))
    label_png = record_utils.encode_png(np.ones((4, 6), np.uint8))
    features = tf.train.Example.FromString(
        records.encode_example(jpeg, label_png, 4, 6, "2007_000032")).features.feature
    # The literal keys of TF Model Garden's segmentation decoder, not the module's constants.
    assert features["image/encoded"].bytes_list.value == [jpeg]
    assert features["image/format"].bytes_list.value == [b"jpeg"]
    assert features["image/height"].int64_list.value == [4]
    assert features["image/width"].int64_list.value == [6]
    assert features["image/filename"].bytes_list.value == [b"2007_000032"]
    assert features["image/segmentation/class/encoded"].bytes_list.value == [label_png]
    assert features["image/segmentation/class/format"].bytes_list.value == [b"png"]


def test_decode_example_of_another_tools_record_with_only_the_required_keys():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    label = np.array([[0, 1, 255], [2, 0, 1]], np.uint8)

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    serialized = tf.train.Example(features=tf.train.Features(feature={
        records.IMAGE_ENCODED: feature(record_utils.encode_png(image)),
        records.IMAGE_HEIGHT: feature(2), records.IMAGE_WIDTH: feature(3),
        records.LABEL_ENCODED: feature(record_utils.encode_png(label))})).SerializeToString()
    out_image, out_label, filename = records.decode_example(tf.constant(serialized))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label[:, :, 0], label)
    assert filename.numpy() == b""  # no image/filename: empty, not an error
    raw = records.parse_example(tf.constant(serialized))
    assert raw[records.IMAGE_FORMAT].numpy() == b"jpeg"  # the defaults: Model Garden's
    assert raw[records.LABEL_FORMAT].numpy() == b"png"


def test_decode_example_refuses_a_size_that_disagrees_with_the_image():
    image = record_utils.encode_png(np.zeros((4, 6, 3), np.uint8))
    label = record_utils.encode_png(np.zeros((4, 6), np.uint8))
    serialized = records.encode_example(image, label, 5, 6, "wrong_height", image_format="png")
    with pytest.raises(tf.errors.InvalidArgumentError, match="not image/height x image/width"):
        records.decode_example(tf.constant(serialized))
    # Height and width swapped: the same pixel count, so only a shape check can tell.
    serialized = records.encode_example(image, label, 6, 4, "swapped", image_format="png")
    with pytest.raises(tf.errors.InvalidArgumentError, match="written with the two swapped"):
        records.decode_example(tf.constant(serialized))


# ----------------------------------------------------------------------------------------------
# read_manifest / read_classes: the converter's manifest beside the records.
# ----------------------------------------------------------------------------------------------

def test_read_manifest(tmp_path):
    assert records.read_manifest(str(tmp_path)) is None  # none there
    manifest = {"splits": {"train": {"shards": [{"file": "train-00000-of-00001.tfrecord",
                                                 "count": 3}]}}}
    (tmp_path / convert_layout.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert records.read_manifest(str(tmp_path)) == manifest
    (tmp_path / convert_layout.MANIFEST_NAME).write_text('["not", "a", "manifest"]')
    with pytest.raises(records.DataError) as error:
        records.read_manifest(str(tmp_path))
    assert _one_line(error) == (f"{tmp_path / convert_layout.MANIFEST_NAME} is not a converter "
                                "manifest (a JSON object)")


def test_manifest_that_does_not_parse(tmp_path):
    (tmp_path / convert_layout.MANIFEST_NAME).write_text('{"splits": ')
    with pytest.raises(records.DataError, match="manifest.json does not parse as JSON"):
        records.read_manifest(str(tmp_path))
    pattern, _ = _write(tmp_path)  # the shards themselves are still read
    assert records.count_examples(pattern) == NUM_EXAMPLES


VOC_ENTRY = {"names": list(VOC_CLASSES), "palette": VOC_PALETTE[:21].tolist(), "ignore_label": 255}


def test_read_classes_of_a_converted_folder(demo_output, tmp_path):
    assert records.read_classes(convert_layout.shard_pattern(demo_output, "train")) == VOC_ENTRY
    assert records.read_classes(convert_layout.shard_pattern(demo_output, "val")) == VOC_ENTRY
    # A wildcard in the folder part: the manifests of the folders with matching files.
    assert records.read_classes(str(demo_output.parent / "rec*" / "train-*.tfrecord")) == \
        VOC_ENTRY
    pattern, _ = _write(tmp_path / "bare")
    assert records.read_classes(pattern) is None  # no manifest
    (tmp_path / "bare" / convert_layout.MANIFEST_NAME).write_text('{"splits": {}}')
    assert records.read_classes(pattern) is None  # a manifest without classes
    # What converter versions before the class metadata wrote: VOC's names, a top-level ignore.
    (tmp_path / "bare" / convert_layout.MANIFEST_NAME).write_text(
        json.dumps({"classes": list(VOC_CLASSES), "ignore_label": 255}))
    assert records.read_classes(pattern) == VOC_ENTRY


@pytest.mark.parametrize("classes, expected", [
    (["cat", "dog"], '"classes" is a list, not an object'),
    ({"names": [], "palette": [], "ignore_label": 255}, '"names" is not a non-empty list'),
    ({"names": ["a", "a"], "palette": [[0, 0, 0]] * 2, "ignore_label": 255}, "repeats a name"),
    ({"names": ["a", "b"], "palette": [[0, 0, 0]], "ignore_label": 255},
     "does not hold one colour for each of the 2 classes"),
    ({"names": ["a"], "palette": [[0, 0, 256]], "ignore_label": 255}, "holds [0, 0, 256]"),
    ({"names": ["a"], "palette": [[0, 0]], "ignore_label": 255}, "holds [0, 0]"),
    ({"names": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "ignore_label": 1},
     '"ignore_label" is 1; expected an integer in 2..255'),
    ({"names": ["a"], "palette": [[0, 0, 0]]}, '"ignore_label" is None'),
])
def test_read_classes_refuses_a_malformed_manifest(tmp_path, classes, expected):
    pattern, _ = _write(tmp_path)
    (tmp_path / convert_layout.MANIFEST_NAME).write_text(json.dumps({"classes": classes}))
    with pytest.raises(records.DataError) as error:
        records.read_classes(pattern)
    message = _one_line(error)
    assert (message.startswith(f"{tmp_path / convert_layout.MANIFEST_NAME}: ")
            and expected in message)


def test_read_classes_of_folders_that_disagree(tmp_path):
    for name, names in [("a", ["x", "y"]), ("b", ["x", "z"])]:
        _write(tmp_path / name)
        (tmp_path / name / convert_layout.MANIFEST_NAME).write_text(json.dumps({"classes": {
            "names": names, "palette": [[0, 0, 0], [1, 1, 1]], "ignore_label": 255}}))
    with pytest.raises(records.DataError, match="disagree on the classes"):
        records.read_classes(str(tmp_path / "*" / "train-*.tfrecord"))


# ----------------------------------------------------------------------------------------------
# record_offsets: the framing walk, and the broken files it names.
# ----------------------------------------------------------------------------------------------

def test_record_offsets_follow_the_framing(tmp_path):
    path = tmp_path / "a.tfrecord"
    _write_raw(path, [b"", b"a", b"x" * 300])
    # 12 + 0 + 4 = 16 bytes, then 12 + 1 + 4 = 17, then 12 + 300 + 4 = 316: 349 in all.
    assert records.record_offsets(str(path)) == (0, 16, 33)
    assert os.path.getsize(path) == 349
    _write_raw(tmp_path / "empty.tfrecord", [])
    assert records.record_offsets(str(tmp_path / "empty.tfrecord")) == ()


def test_record_offsets_of_a_rewritten_file_are_walked_again(tmp_path):
    path = tmp_path / "a.tfrecord"
    _write_raw(path, [b"ab", b"cd"])  # 2 x (12 + 2 + 4) = 36 bytes
    assert records.record_offsets(str(path)) == (0, 18)
    _write_raw(path, [b"z" * 20])  # 12 + 20 + 4 = 36 bytes too: only the mtime tells
    os.utime(path, ns=(10**18, 10**18))
    assert records.record_offsets(str(path)) == (0,)


def test_header_cut_short_is_named(tmp_path):
    path = tmp_path / "a.tfrecord"
    _write_raw(path, [b"ab", b"cd"])
    record_utils.truncate(path, 13)  # leaves 5 of record 1's 12 header bytes (it starts at 18)
    with pytest.raises(records.DataError) as error:
        records.record_offsets(str(path))
    assert _one_line(error) == (f"{path}: truncated TFRecord file: record 1 at byte 18 has 5 of "
                                "its 12 header bytes (an interrupted copy or conversion?)")


def test_not_a_tfrecord_file(tmp_path):
    pattern, files = _write(tmp_path)
    with open(files[2], "wb") as f:
        f.write(b"\x1f\x8b" + bytes(100))  # e.g. a GZIP-compressed file
    with pytest.raises(records.DataError, match="record 0 at byte 0.*not a TFRecord file"):
        records.list_files(pattern)


# ----------------------------------------------------------------------------------------------
# find_broken_record: reads every record, checksums included.
# ----------------------------------------------------------------------------------------------

def test_find_broken_record_on_sound_files(tmp_path):
    _, files = _write(tmp_path)
    assert records.find_broken_record(files) is None


def test_find_broken_record_returns_a_framing_error_as_its_line(tmp_path):
    _, files = _write(tmp_path)
    record_utils.truncate(files[1], 10)  # into the data of its last record, record 3
    line = records.find_broken_record(files)  # a line to report, not an exception
    assert line.startswith(f"{files[1]}: truncated TFRecord file: record 3 at byte "), line


@pytest.mark.parametrize("damage, expected", [
    ("flip", "is corrupt: its data fails its checksum"),
    ("cut", "is truncated: the file ends inside it"),
])
def test_find_broken_record_in_a_remote_file(tmp_path, damage, expected):
    # ram:// stands for gs://: no framing walk there, so the byte offset of tf.data's failing
    # read is all there is to name (not a record index).
    folder = f"ram://{tmp_path.name}/records"
    tf.io.gfile.makedirs(folder)
    sound, broken = f"{folder}/a.tfrecord", f"{folder}/b.tfrecord"
    _write_raw(sound, [b"ab" * 10] * 3)  # records of 12 + 20 + 4 = 36 bytes, at 0, 36 and 72
    with tf.io.gfile.GFile(sound, "rb") as f:
        data = bytearray(f.read())
    if damage == "flip":
        data[36 + 12 + 3] ^= 0xFF  # inside record 1's data, which tf.data reads from byte 48
        where = 48
    else:
        data = data[:-10]  # into record 2's data; tf.data's read of it begins at 72
        where = 72
    with tf.io.gfile.GFile(broken, "wb") as f:
        f.write(bytes(data))
    assert records.find_broken_record([sound, broken]) == \
        f"{broken}: the record read at byte {where} {expected}"


# ----------------------------------------------------------------------------------------------
# list_files / count_examples.
# ----------------------------------------------------------------------------------------------

def test_list_files_sorted_or_names_the_pattern(tmp_path):
    for name in ["train-00002-of-00003.tfrecord", "train-00000-of-00003.tfrecord",
                 "train-00001-of-00003.tfrecord"]:
        _write_raw(tmp_path / name, [b"x"])
    pattern = convert_layout.shard_pattern(tmp_path, "train")
    assert records.list_files(pattern) == [
        str(tmp_path / f"train-0000{i}-of-00003.tfrecord") for i in range(3)]
    with pytest.raises(FileNotFoundError) as error:
        records.list_files(str(tmp_path / "val-*.tfrecord"))
    assert str(error.value) == f"no TFRecord files match {str(tmp_path / 'val-*.tfrecord')!r}"


def test_list_files_without_check_takes_a_broken_file(tmp_path):
    pattern, files = _write(tmp_path)
    record_utils.truncate(files[0], 3)
    (tmp_path / convert_layout.REPLACING_NAME).write_text("{}")
    assert records.list_files(pattern, check=False) == files
    with pytest.raises(records.DataError, match="did not finish"):
        records.list_files(pattern)


def test_list_files_checks_the_framing_when_the_manifest_is_not_the_converters(tmp_path):
    pattern, files = _write(tmp_path)
    (tmp_path / convert_layout.MANIFEST_NAME).write_text('["someone", "else\'s"]')
    assert records.list_files(pattern) == files  # no counts to compare; the framing is sound
    record_utils.truncate(files[2], 3)
    with pytest.raises(records.DataError, match=f"^{files[2]}: truncated TFRecord file"):
        records.list_files(pattern)


def test_list_files_does_not_walk_remote_files(tmp_path):
    # One request per record on gs://: a remote file's framing is left to tf.data.
    folder = f"ram://{tmp_path.name}/records"
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(f"{folder}/train-00000-of-00001.tfrecord", "wb") as f:
        f.write(b"\x1f\x8b" + bytes(100))  # what would fail a local walk (test_not_a_tfrecord_file)
    assert records.list_files(convert_layout.shard_pattern(folder, "train")) == [
        f"{folder}/train-00000-of-00001.tfrecord"]


def test_count_examples_with_an_empty_shard(tmp_path):
    pattern, files = _write(tmp_path, num_examples=2, num_shards=3)  # shard 0 holds none
    assert [len(records.record_offsets(f)) for f in files] == [0, 1, 1]
    assert records.count_examples(pattern) == 2


def test_shard_cut_at_a_record_boundary_disagrees_with_the_manifest(tmp_path, demo_output):
    # A file cut exactly between two records has a valid framing; the manifest's count tells.
    shard = demo_output / "train-00001-of-00002.tfrecord"
    offsets = records.record_offsets(str(shard))
    record_utils.truncate(shard, os.path.getsize(shard) - offsets[-1])
    pattern = convert_layout.shard_pattern(demo_output, "train")
    with pytest.raises(records.DataError) as error:
        records.count_examples(pattern)
    assert _one_line(error) == (
        f"{shard} holds {len(offsets) - 1} records but manifest.json beside it says "
        f"{len(offsets)} (cut at a record boundary, or replaced by another file?)")


def test_count_examples_of_a_converted_folder(demo_output, tmp_path):
    assert records.count_examples(convert_layout.shard_pattern(demo_output, "train")) == 8
    assert records.count_examples(convert_layout.shard_pattern(demo_output, "val")) == 3
    # Any glob, across folders too.
    _write(tmp_path / "more")
    assert records.count_examples(str(tmp_path / "*" / "train-*.tfrecord")) == 8 + NUM_EXAMPLES


def test_count_examples_of_remote_files_uses_the_manifest(tmp_path):
    # ram:// stands for gs:// and the like: no framing walk there (one request per record).
    folder = f"ram://{tmp_path.name}/records"
    tf.io.gfile.makedirs(folder)
    for name, count in [("train-00000-of-00002.tfrecord", 3), ("train-00001-of-00002.tfrecord", 2)]:
        with tf.io.TFRecordWriter(f"{folder}/{name}") as writer:
            for _ in range(count):
                writer.write(b"x")
    pattern = convert_layout.shard_pattern(folder, "train")
    assert records.count_examples(pattern) == 5  # read, no manifest
    with tf.io.gfile.GFile(f"{folder}/{convert_layout.MANIFEST_NAME}", "w") as f:
        json.dump({"splits": {"train": {"shards": [
            {"file": "train-00000-of-00002.tfrecord", "count": 30}]}}}, f)
    assert records.count_examples(pattern) == 30 + 2  # the manifest where it lists the file
