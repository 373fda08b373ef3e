"""Tests for fcn8s_tf.data.input_pipeline on shards written with tests/record_utils.py.

Each example k has a constant image colour that encodes k and a label of class k % 21 with a 255
border, so a test can tell which example an element came from and that image and label stayed
paired through the shuffles.
"""

import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf.class_info import IGNORE_LABEL, NUM_CLASSES
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data.convert import layout as convert_layout

import record_utils

NUM_EXAMPLES = 12
NUM_SHARDS = 3
SIZES = [(20, 30), (17, 23), (31, 26)]


def _colour(k):
    return (10 * k + 5, 250 - 10 * k, 7 * k)


def _example_id(colour_pixel):
    """Inverse of _colour on the red channel (exact for PNG, within JPEG error otherwise)."""
    return int(round((float(colour_pixel[0]) - 5) / 10))


def _make_example(k, constant=True):
    height, width = SIZES[k % len(SIZES)]
    rs = np.random.RandomState(k)
    if constant:
        image = np.empty((height, width, 3), np.uint8)
        image[...] = _colour(k)
    else:
        image = rs.randint(0, 256, (height, width, 3)).astype(np.uint8)
    label = np.full((height, width), k % NUM_CLASSES, np.uint8)
    label[0, :] = IGNORE_LABEL
    label[:, -1] = IGNORE_LABEL
    return image, label


def _write_shards(directory, split="train", num_shards=NUM_SHARDS, constant=True,
                  image_format="png"):
    """Writes NUM_EXAMPLES examples into shards (contiguous blocks, as the converter).

    Returns the pattern and {name: (image, label, image bytes, format, shard index)}.
    """
    bounds = convert_layout.shard_bounds(NUM_EXAMPLES, num_shards)
    items, examples = [], {}
    for k in range(NUM_EXAMPLES):
        image, label = _make_example(k, constant)
        fmt = "jpeg" if (image_format == "mixed" and k % 2) else image_format.replace("mixed",
                                                                                      "png")
        item = record_utils.example(image, label, f"ex_{k:03d}", image_format=fmt)
        shard = next(i for i, (start, stop) in enumerate(bounds) if start <= k < stop)
        items.append(item)
        examples[item.filename] = (image, label, item.image, fmt, shard)
    return record_utils.write_shards(directory, split, items, num_shards), examples


def _ids_seen(dataset, num_batches):
    ids = []
    for images, labels in dataset.take(num_batches):
        for image, label in zip(images.numpy(), labels.numpy()):
            k = _example_id(image[0, 0])
            ids.append(k)
            # The image's colour and the label's class come from the same example.
            assert set(np.unique(label)) <= {k % NUM_CLASSES, IGNORE_LABEL}
    return ids


def test_train_dataset_shapes_dtypes_values(tmp_path):
    pattern, _ = _write_shards(str(tmp_path))
    dataset = input_pipeline.train_dataset(pattern, 4, base_size=(24, 32), seed=0)
    assert dataset.element_spec[0].shape.as_list() == [4, 24, 32, 3]
    assert dataset.element_spec[1].shape.as_list() == [4, 24, 32, 1]
    images, labels = next(iter(dataset))
    assert images.dtype == tf.uint8 and labels.dtype == tf.uint8
    for image, label in zip(images.numpy(), labels.numpy()):
        k = _example_id(image[0, 0])
        # Constant colour stays exactly constant under bilinear resizing.
        np.testing.assert_array_equal(image, np.broadcast_to(_colour(k), image.shape))
        # Nearest: only source values, both of them present (the border survives resizing).
        assert set(np.unique(label)) == {k % NUM_CLASSES, IGNORE_LABEL}
    # Several epochs: every example is seen, pairing kept throughout.
    assert set(_ids_seen(dataset, 40)) == set(range(NUM_EXAMPLES))


def test_train_dataset_reads_jpeg_and_png_records(tmp_path):
    pattern, _ = _write_shards(str(tmp_path), image_format="mixed")
    images, labels = next(iter(input_pipeline.train_dataset(pattern, 6, base_size=(16, 16),
                                                            seed=1)))
    assert images.shape == (6, 16, 16, 3) and labels.shape == (6, 16, 16, 1)
    for image in images.numpy():
        k = _example_id(image[0, 0])
        # JPEG of a flat colour decodes to within a few grey levels of it.
        assert np.abs(image.astype(int) - np.array(_colour(k))).max() <= 4


def test_train_dataset_same_seed_same_order(tmp_path):
    pattern, _ = _write_shards(str(tmp_path))
    first = [_ids_seen(input_pipeline.train_dataset(pattern, 3, base_size=(8, 8), seed=s), 8)
             for s in (7, 7, 8)]
    assert first[0] == first[1]
    assert first[0] != first[2]


def test_resize_helpers_match_tf_image_resize():
    rs = np.random.RandomState(0)
    for in_size, out_size in [((375, 500), (321, 321)), ((13, 7), (30, 31)), ((9, 9), (9, 9))]:
        label = tf.constant(rs.randint(0, 22, in_size + (1,)).astype(np.uint8))
        image = tf.constant(rs.randint(0, 256, in_size + (3,)).astype(np.uint8))
        expected_label = tf.image.resize(label, out_size, method="nearest")
        np.testing.assert_array_equal(input_pipeline.resize_label(label, out_size),
                                      expected_label)
        # Rounded half up (np.round would round half to even).
        expected_image = np.floor(
            tf.image.resize(image, out_size, method="bilinear").numpy() + 0.5)
        np.testing.assert_array_equal(input_pipeline.resize_image(image, out_size),
                                      expected_image.astype(np.uint8))


def _context(num_pipelines, pipeline_id):
    return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                      input_pipeline_id=pipeline_id,
                                      num_replicas_in_sync=num_pipelines)


@pytest.mark.parametrize("num_shards, num_pipelines", [(3, 2), (1, 2), (2, 3)])
def test_pipelines_see_disjoint_examples(tmp_path, num_shards, num_pipelines):
    # 3 shards, 2 pipelines: by file. 1 or 2 shards for 2 or 3 pipelines: by record.
    pattern, examples = _write_shards(str(tmp_path), num_shards=num_shards)
    seen = []
    for pipeline_id in range(num_pipelines):
        dataset = input_pipeline.train_dataset(pattern, 2 * num_pipelines, base_size=(8, 8),
                                               seed=pipeline_id,
                                               input_context=_context(num_pipelines, pipeline_id))
        # Global batch 2n over n replicas: 2 per replica.
        assert dataset.element_spec[0].shape.as_list() == [2, 8, 8, 3]
        seen.append(set(_ids_seen(dataset, 40)))  # enough draws to meet every example
    for a in range(num_pipelines):
        for b in range(a + 1, num_pipelines):
            assert not seen[a] & seen[b]
    assert set().union(*seen) == set(range(NUM_EXAMPLES))
    if num_shards >= num_pipelines:  # by file: each pipeline reads whole shards
        for pipeline_seen in seen:
            shards = {examples[f"ex_{k:03d}"][4] for k in pipeline_seen}
            assert all(examples[f"ex_{k:03d}"][4] in shards for k in pipeline_seen)
            assert pipeline_seen == {k for k in range(NUM_EXAMPLES)
                                     if examples[f"ex_{k:03d}"][4] in shards}


def test_train_dataset_fn_with_strategy(tmp_path):
    pattern, _ = _write_shards(str(tmp_path))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    dataset_fn = input_pipeline.train_dataset_fn(pattern, 4, base_size=(8, 8), seed=0)
    images, labels = next(iter(strategy.distribute_datasets_from_function(dataset_fn)))
    assert images.shape == (4, 8, 8, 3) and labels.shape == (4, 8, 8, 1)


def test_eval_dataset_original_pixels_order_and_names(tmp_path):
    pattern, examples = _write_shards(str(tmp_path), constant=False, image_format="mixed")
    elements = list(input_pipeline.eval_dataset(pattern))
    # Files in sorted order, each front to back: contiguous blocks give the examples in order.
    expected_names = [f"ex_{k:03d}" for k in range(NUM_EXAMPLES)]
    assert [name.numpy().decode() for _, _, name in elements] == expected_names
    for image, label, name in elements:
        source_image, source_label, image_bytes, fmt, _ = examples[name.numpy().decode()]
        assert image.dtype == tf.uint8 and label.dtype == tf.uint8
        assert image.shape == source_image.shape and label.shape == source_label.shape + (1,)
        np.testing.assert_array_equal(label.numpy()[:, :, 0], source_label)
        if fmt == "png":
            np.testing.assert_array_equal(image.numpy(), source_image)
        else:  # the JPEG's own decoded pixels, unchanged
            np.testing.assert_array_equal(image.numpy(), tf.io.decode_jpeg(image_bytes).numpy())


def test_eval_dataset_batched_and_sharded(tmp_path):
    pattern, _ = _write_shards(str(tmp_path))
    image, label, name = next(iter(input_pipeline.eval_dataset(pattern, batch=True)))
    assert image.shape[0] == 1 and label.shape[0] == 1 and name.shape == (1,)
    names = [set(n.numpy().decode() for _, _, n in
                 input_pipeline.eval_dataset(pattern, input_context=_context(2, i)))
             for i in range(2)]
    assert not names[0] & names[1]
    assert len(names[0] | names[1]) == NUM_EXAMPLES


def test_no_matching_files_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    for make in (lambda: input_pipeline.train_dataset(pattern, 2),
                 lambda: input_pipeline.train_dataset_fn(pattern, 2),
                 lambda: input_pipeline.eval_dataset(pattern)):
        with pytest.raises(FileNotFoundError, match="nothing-"):
            make()
