"""Broken records are named in one line: truncated, overwritten or bit-rotten shards, labels outside
the classes, a folder the converter is still replacing. Train and eval datasets both, built and
iterated as the trainer and the evaluator do (inside input_pipeline.data_errors_named).

Shards hold 4 examples each, 3 shards (contiguous blocks: shard j holds ex_{4j}..ex_{4j+3}).
records.py's own functions (the framing walk, find_broken_record, count_examples, the manifest and
its classes) are tested on their own in tests/test_records.py.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data import records
from fcn8s_tf.data.convert import layout as convert_layout

import record_utils

NUM_CLASSES = 3
NUM_EXAMPLES, NUM_SHARDS = 12, 3


def _example(k, bad_values=()):
    height, width = 6 + k % 3, 9
    image = np.full((height, width, 3), 10 * k, np.uint8)
    label = np.full((height, width), k % NUM_CLASSES, np.uint8)
    label[0, 0] = 255  # void is always fine
    for i, value in enumerate(bad_values):
        label[1, i] = value
    return record_utils.example(image, label, f"ex_{k:03d}")


def _write(directory, bad=None):
    """bad: {k: label values outside the classes put into example k}."""
    examples = [_example(k, (bad or {}).get(k, ())) for k in range(NUM_EXAMPLES)]
    pattern = record_utils.write_shards(directory, "train", examples, NUM_SHARDS)
    return pattern, record_utils.shard_files(pattern)


def _train(pattern, **kwargs):
    return input_pipeline.train_dataset(pattern, 2, base_size=(8, 8), seed=0, shuffle_buffer=4,
                                        num_classes=NUM_CLASSES, **kwargs)


def _eval(pattern, **kwargs):
    return input_pipeline.eval_dataset(pattern, num_classes=NUM_CLASSES, **kwargs)


def _iterate(dataset, limit=40):
    for _ in dataset.take(limit):
        pass


def _one_line(error) -> str:
    """The error's message, checked to be one line of reasonable length (paths not counted: a
    test's temporary folder is longer under pytest-xdist)."""
    message = str(error.value)
    assert "\n" not in message and len(re.sub(r"/\S+", "<path>", message)) < 400, message
    return message


# ----------------------------------------------------------------------------------------------
# Files whose framing is broken: found when the dataset is built, before any step.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", ["train_dataset", "train_dataset_fn", "eval_dataset",
                                   "count_examples"])
def test_truncated_shard_is_named_when_the_dataset_is_built(tmp_path, build):
    pattern, files = _write(tmp_path)
    record_utils.truncate(files[1], 10)  # cuts into the data of its last record, record 3
    make = {"train_dataset": lambda: _train(pattern),
            "train_dataset_fn": lambda: input_pipeline.train_dataset_fn(pattern, 2),
            "eval_dataset": lambda: _eval(pattern),
            "count_examples": lambda: records.count_examples(pattern)}[build]
    with pytest.raises(records.DataError) as error:
        make()
    message = _one_line(error)
    assert message.startswith(f"{files[1]}: truncated TFRecord file: record 3 at byte ")


def test_overwritten_header_is_named(tmp_path):
    pattern, files = _write(tmp_path)
    offsets = records.record_offsets(files[0])
    record_utils.flip_byte(files[0], offsets[2] + 3)  # inside record 2's length field
    with pytest.raises(records.DataError) as error:
        _eval(pattern)
    assert _one_line(error) == (f"{files[0]}: corrupt record 2 at byte {offsets[2]}: its length "
                                "field fails its checksum (overwritten or damaged data)")


def test_folder_mid_replacement_is_refused(tmp_path):
    pattern, _ = _write(tmp_path)
    (tmp_path / convert_layout.REPLACING_NAME).write_text("{}")
    with pytest.raises(records.DataError) as error:
        _train(pattern)
    assert "the converter was replacing these records and did not finish" in _one_line(error)


# ----------------------------------------------------------------------------------------------
# Records whose data fails its checksum: found by tf.data, named by data_errors_named.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["train", "eval"])
def test_corrupt_record_is_named_while_iterating(tmp_path, which):
    pattern, files = _write(tmp_path)
    offsets = records.record_offsets(files[2])
    record_utils.flip_byte(files[2], offsets[1] + 40)  # inside record 1's data
    dataset = _train(pattern) if which == "train" else _eval(pattern)  # builds: framing is fine
    with pytest.raises(tf.errors.DataLossError):  # what tf.data says: no file name
        _iterate(dataset)
    with pytest.raises(records.DataError) as error:
        with input_pipeline.data_errors_named(pattern):
            _iterate(dataset)
    assert _one_line(error) == (f"{files[2]}: record 1 (at byte {offsets[1]}) is corrupt: its "
                                "data fails its checksum")


# ----------------------------------------------------------------------------------------------
# Label values outside [0, num_classes) and 255.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["train", "eval"])
def test_label_outside_the_classes_is_named(tmp_path, which):
    pattern, files = _write(tmp_path, bad={6: (7, 3, 7, 200, 4, 5, 6, 8)})  # ex_006: shard 1, #2
    dataset = _train(pattern) if which == "train" else _eval(pattern)
    with pytest.raises(records.DataError) as error:
        with input_pipeline.data_errors_named(pattern):
            _iterate(dataset)
    assert _one_line(error) == (
        f"{files[1]}: record 2 (image/filename ex_006): label values [3 4 5 6 7] outside 0..2 "
        "and 255 (is --num_classes=3 right for these records?)")


def test_labels_are_not_checked_without_num_classes(tmp_path):
    pattern, _ = _write(tmp_path, bad={0: (9,)})
    _iterate(input_pipeline.eval_dataset(pattern))
    _iterate(input_pipeline.train_dataset(pattern, 2, base_size=(8, 8), seed=0))


def test_check_label_values_eagerly_and_in_tf_data():
    good = tf.constant([[[0], [2], [255]]], tf.uint8)
    bad = tf.constant([[[0], [3], [255]]], tf.uint8)
    where = (tf.constant("a.tfrecord"), tf.constant(5, tf.int64), tf.constant("id_5"))
    expected = ("a.tfrecord: record 5 (image/filename id_5): label values [3] outside 0..2 and "
                "255 (is --num_classes=3 right for these records?)")
    # Eagerly.
    np.testing.assert_array_equal(input_pipeline.check_label_values(good, 3, *where), good)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        input_pipeline.check_label_values(bad, 3, *where)
    assert input_pipeline.describe_data_error(error.value, []) == expected
    # Inside tf.data (a graph).
    dataset = tf.data.Dataset.from_tensors(good).map(
        lambda label: input_pipeline.check_label_values(label, 3, *where))
    np.testing.assert_array_equal(next(iter(dataset)), good)
    dataset = tf.data.Dataset.from_tensors(bad).map(
        lambda label: input_pipeline.check_label_values(label, 3, *where))
    with pytest.raises(records.DataError, match=r"^a\.tfrecord: record 5 .*\[3\]"):
        with input_pipeline.data_errors_named():
            next(iter(dataset))


def test_other_errors_pass_through(tmp_path):
    pattern, _ = _write(tmp_path)
    with pytest.raises(ValueError, match="not ours"):
        with input_pipeline.data_errors_named(pattern):
            raise ValueError("not ours")
    with pytest.raises(tf.errors.InvalidArgumentError, match="some op failed"):
        with input_pipeline.data_errors_named(pattern):
            raise tf.errors.InvalidArgumentError(None, None, "some op failed")
    # A DataLossError that is not about a record (e.g. a checkpoint file).
    with pytest.raises(tf.errors.DataLossError, match="Unable to open table file"):
        with input_pipeline.data_errors_named(pattern):
            raise tf.errors.DataLossError(None, None, "Unable to open table file ckpt-3.index")
