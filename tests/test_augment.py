"""Tests for fcn8s_tf.data.augment: geometry, fill, value sets, randomness.

Every augmentation test runs three ways (eagerly, inside a tf.function, inside a tf.data map), since
graph-mode and tf.data tracing can differ from eager execution (static shapes, seeds, captures).
"""

import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf import pixels
from fcn8s_tf.class_info import IGNORE_LABEL, NUM_CLASSES
from fcn8s_tf.data import augment

MODES = ("eager", "function", "data")


@pytest.fixture(params=MODES)
def run(request):
    """Calls fn(*tensors) eagerly, in a tf.function, or in a tf.data map, returning numpy."""
    mode = request.param

    def call(fn, *tensors):
        tensors = tuple(tf.convert_to_tensor(t) for t in tensors)
        if mode == "eager":
            out = fn(*tensors)
        elif mode == "function":
            out = tf.function(fn)(*tensors)
        else:
            dataset = tf.data.Dataset.from_tensors(tensors).map(fn)
            out = next(iter(dataset))
        return tf.nest.map_structure(lambda t: t.numpy(), out)

    return call


def _random_batch(batch=2, height=24, width=30, seed=0):
    rs = np.random.RandomState(seed)
    images = rs.randint(0, 256, (batch, height, width, 3)).astype(np.uint8)
    values = np.array(list(range(NUM_CLASSES)) + [IGNORE_LABEL], np.uint8)
    labels = values[rs.randint(0, len(values), (batch, height, width, 1))]
    return images, labels


def _params(scales, flips, offsets):
    return (np.asarray(scales, np.float32), np.asarray(flips, bool),
            np.asarray(offsets, np.float32))


def _transform(crop_size, dtype=tf.float32):
    """fn(images, labels, scales, flips, offsets) -> transform_batch(...) for the runner."""
    return lambda i, l, s, f, o: augment.transform_batch(i, l, s, f, o, crop_size, dtype)


def _source_index(out_index, offset, scale):
    """The module's geometry, written independently: output centre -> source edge coordinate."""
    return (out_index + 0.5 + offset) / scale - 0.5


def _reference(images, labels, scale, flip, offset, crop_size):
    """Numpy model of one sample: (preprocessed bilinear image with fill 0, nearest label)."""
    source = pixels.preprocess(images[None]).numpy()[0].astype(np.float64)
    if flip:
        source, labels = source[:, ::-1], labels[:, ::-1]
    height, width = labels.shape[:2]
    ys = _source_index(np.arange(crop_size[0]), offset[0], scale)
    xs = _source_index(np.arange(crop_size[1]), offset[1], scale)

    def read(y, x):
        inside = (0 <= y) & (y < height) & (0 <= x) & (x < width)
        return np.where(inside[..., None], source[np.clip(y, 0, height - 1),
                                                  np.clip(x, 0, width - 1)], 0.0)

    y0, x0 = np.floor(ys).astype(int)[:, None], np.floor(xs).astype(int)[None, :]
    wy, wx = (ys[:, None] - y0)[..., None], (xs[None, :] - x0)[..., None]
    image = ((1 - wy) * ((1 - wx) * read(y0, x0) + wx * read(y0, x0 + 1))
             + wy * ((1 - wx) * read(y0 + 1, x0) + wx * read(y0 + 1, x0 + 1)))
    # Nearest: the source pixel whose footprint holds the output centre. Parameters that put an
    # output centre on a footprint edge (a rounding tie) would make the test depend on float error.
    for coords in (ys, xs):
        assert np.min(np.abs(coords + 0.5 - np.round(coords + 0.5))) > 1e-3, "tie: pick others"
    yn, xn = np.floor(ys + 0.5).astype(int)[:, None], np.floor(xs + 0.5).astype(int)[None, :]
    inside = (0 <= yn) & (yn < height) & (0 <= xn) & (xn < width)
    label = np.where(inside[..., None],
                     labels[np.clip(yn, 0, height - 1), np.clip(xn, 0, width - 1)], IGNORE_LABEL)
    return image, label


def test_identity_at_scale_one(run):
    images, labels = _random_batch(height=20, width=28)
    params = _params([1.0, 1.0], [False, False], [[0, 0], [0, 0]])
    out_images, out_labels = run(_transform((20, 28)), images, labels, *params)
    np.testing.assert_array_equal(out_images, pixels.preprocess(images).numpy())
    np.testing.assert_array_equal(out_labels, labels)


def test_flip_mirrors_and_twice_is_identity(run):
    images, labels = _random_batch(height=20, width=28)
    params = _params([1.0, 1.0], [True, True], [[0, 0], [0, 0]])
    out_images, out_labels = run(_transform((20, 28)), images, labels, *params)
    np.testing.assert_array_equal(out_images, pixels.preprocess(images).numpy()[:, :, ::-1])
    np.testing.assert_array_equal(out_labels, labels[:, :, ::-1])
    # Labels are not preprocessed, so they can go through the flip a second time.
    _, twice = run(_transform((20, 28)), images, out_labels, *params)
    np.testing.assert_array_equal(twice, labels)


def test_flip_is_mirror_of_source_at_any_scale(run):
    images, labels = _random_batch(batch=1, height=21, width=27, seed=1)
    params_flip = _params([1.7], [True], [[3.25, 5.5]])
    params_plain = _params([1.7], [False], [[3.25, 5.5]])
    flip_images, flip_labels = run(_transform((16, 18)), images, labels, *params_flip)
    ref_images, ref_labels = run(_transform((16, 18)), images[:, :, ::-1].copy(),
                                 labels[:, :, ::-1].copy(), *params_plain)
    np.testing.assert_allclose(flip_images, ref_images, atol=1e-3)
    np.testing.assert_array_equal(flip_labels, ref_labels)


def test_marked_pixel_lands_where_geometry_says(run):
    # Source pixel (r, c) covers [r, r + 1) x [c, c + 1); scaled by 2 it covers [2r, 2r + 2), and
    # the crop at offset (oy, ox) shifts that to rows 2r - oy .. 2r - oy + 1, same for columns.
    r, c, oy, ox = 3, 4, 1, 3
    images = np.full((1, 10, 12, 3), 100, np.uint8)
    images[0, r, c] = (200, 150, 250)
    labels = np.zeros((1, 10, 12, 1), np.uint8)
    labels[0, r, c] = 9
    params = _params([2.0], [False], [[oy, ox]])
    out_images, out_labels = run(_transform((16, 20)), images, labels, *params)
    expected = np.zeros((16, 20), bool)
    expected[2 * r - oy:2 * r - oy + 2, 2 * c - ox:2 * c - ox + 2] = True
    np.testing.assert_array_equal(out_labels[0, :, :, 0] == 9, expected)
    assert set(np.unique(out_labels)) == {0, 9}
    # Bilinear: the bump's intensity-weighted centre is the block's centre, (2r + 0.5 - oy, ...).
    bump = out_images[0, :, :, 0] - out_images[0, 0, 0, 0]  # channel 0 is blue after BGR
    assert bump.min() >= 0 and bump.max() > 0
    ys, xs = np.mgrid[0:16, 0:20]
    centre = (np.sum(bump * ys) / bump.sum(), np.sum(bump * xs) / bump.sum())
    np.testing.assert_allclose(centre, (2 * r + 0.5 - oy, 2 * c + 0.5 - ox), atol=1e-4)


def test_marked_pixel_flipped(run):
    r, c, width = 2, 1, 9
    labels = np.zeros((1, 6, width, 1), np.uint8)
    labels[0, r, c] = 5
    images = np.zeros((1, 6, width, 3), np.uint8)
    params = _params([2.0], [True], [[0, 0]])
    _, out_labels = run(_transform((12, 2 * width)), images, labels, *params)
    # The flip sends column c to width - 1 - c, which the scale then covers twice.
    mirrored = width - 1 - c
    ys, xs = np.nonzero(out_labels[0, :, :, 0] == 5)
    assert sorted(set(ys)) == [2 * r, 2 * r + 1]
    assert sorted(set(xs)) == [2 * mirrored, 2 * mirrored + 1]


@pytest.mark.parametrize("scale, flip, offset", [
    (1.5, False, (0.25, 0.75)),    # enlarge, crop inside
    (0.5, True, (-3.25, -2.75)),   # shrink, picture placed inside the crop with padding
    (1.3, True, (4.25, -1.35)),    # crop inside vertically, padding on the left
    (0.8, False, (2.2, 3.6)),      # crop runs off the bottom/right: padding there
])
def test_matches_numpy_reference(run, scale, flip, offset):
    images, labels = _random_batch(batch=1, height=17, width=23, seed=2)
    crop = (19, 21)
    out_images, out_labels = run(_transform(crop), images, labels,
                                 *_params([scale], [flip], [offset]))
    ref_image, ref_label = _reference(images[0], labels[0], scale, flip, offset, crop)
    np.testing.assert_allclose(out_images[0], ref_image, atol=2e-3)
    np.testing.assert_array_equal(out_labels[0], ref_label)


def test_padding_is_ignore_label_and_zero_image(run):
    # 16x16 source at scale 0.5 is 8x8, placed at (4, 4) inside a 16x16 crop.
    images, labels = _random_batch(batch=1, height=16, width=16, seed=3)
    labels = np.minimum(labels, 20)  # no 255 in the source, so every 255 out is padding
    out_images, out_labels = run(_transform((16, 16)), images, labels,
                                 *_params([0.5], [False], [[-4, -4]]))
    inside = np.zeros((16, 16), bool)
    inside[4:12, 4:12] = True
    np.testing.assert_array_equal(out_labels[0, :, :, 0] == IGNORE_LABEL, ~inside)
    # Outside the picture the image is the mean colour, i.e. exactly 0 after mean subtraction.
    np.testing.assert_array_equal(out_images[0][~inside], 0.0)
    assert np.all(np.abs(out_images[0][4:12, 4:12]).sum(-1) > 0)


def test_labels_hold_only_valid_values(run):
    images, labels = _random_batch(batch=4, height=40, width=50, seed=4)
    out_images, out_labels = run(
        lambda i, l: augment.augment_batch(i, l, crop_size=(33, 37), seed=11), images, labels)
    assert out_images.shape == (4, 33, 37, 3) and out_images.dtype == np.float32
    assert out_labels.shape == (4, 33, 37, 1) and out_labels.dtype == np.uint8
    assert set(np.unique(out_labels)) <= set(range(NUM_CLASSES)) | {IGNORE_LABEL}


def test_int32_labels_keep_dtype(run):
    images, labels = _random_batch(batch=2, height=20, width=20, seed=5)
    _, out_labels = run(lambda i, l: augment.augment_batch(i, l, crop_size=(15, 15), seed=1),
                        images, labels.astype(np.int32))
    assert out_labels.dtype == np.int32
    assert set(np.unique(out_labels)) <= set(range(NUM_CLASSES)) | {IGNORE_LABEL}


def test_constant_class_kept_where_visible(run):
    images = np.empty((4, 30, 30, 3), np.uint8)
    images[...] = (10, 200, 30)
    labels = np.full((4, 30, 30, 1), 7, np.uint8)
    for seed in range(3):
        out_images, out_labels = run(
            lambda i, l: augment.augment_batch(i, l, crop_size=(25, 25), seed=seed),
            images, labels)
        assert set(np.unique(out_labels)) <= {7, IGNORE_LABEL}
        assert np.any(out_labels == 7)
    # Scales large enough that the crop always lies inside the picture: no padding anywhere.
    out_images, out_labels = run(
        lambda i, l: augment.augment_batch(i, l, crop_size=(25, 25), scale_range=(1.0, 1.3),
                                           seed=0), images, labels)
    assert np.all(out_labels == 7)
    colour = pixels.preprocess(images[:1, :1, :1]).numpy()
    np.testing.assert_allclose(out_images, np.broadcast_to(colour, out_images.shape), atol=1e-3)


def test_seed_reproducible(run):
    images, labels = _random_batch(batch=3, height=30, width=26, seed=6)
    fn = lambda seed: (lambda i, l: augment.augment_batch(i, l, crop_size=(21, 21), seed=seed))
    first = run(fn(42), images, labels)
    again = run(fn(42), images, labels)
    other = run(fn(43), images, labels)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # A (2,) seed tensor works too, e.g. [seed, step] to vary per step.
    pair_fn = lambda step: (lambda i, l: augment.augment_batch(  # noqa: E731
        i, l, crop_size=(21, 21), seed=[42, step]))
    pair, pair_again = run(pair_fn(7), images, labels), run(pair_fn(7), images, labels)
    next_step = run(pair_fn(8), images, labels)
    np.testing.assert_array_equal(pair[0], pair_again[0])
    np.testing.assert_array_equal(pair[1], pair_again[1])
    assert not np.array_equal(pair[0], next_step[0])  # the step varies the augmentation
    np.testing.assert_array_equal(run(pair_fn(0), images, labels)[0], first[0])  # 42 == [42, 0]


def test_generator_reproducible(run):
    images, labels = _random_batch(batch=3, height=30, width=26, seed=7)
    outputs = []
    for _ in range(2):
        rng = tf.random.Generator.from_seed(5)
        fn = lambda i, l: augment.augment_batch(i, l, crop_size=(21, 21), rng=rng)
        outputs.append((run(fn, images, labels), run(fn, images, labels)))
    (a1, a2), (b1, b2) = outputs
    np.testing.assert_array_equal(a1[0], b1[0])  # same seed, same sequence
    np.testing.assert_array_equal(a2[1], b2[1])
    assert not np.array_equal(a1[0], a2[0])      # the generator advances between calls


def test_global_random_state_and_defaults(run):
    images, labels = _random_batch(batch=2, height=330, width=340, seed=8)
    out_images, out_labels = run(augment.augment_batch, images, labels)
    assert out_images.shape == (2, 321, 321, 3) and out_labels.shape == (2, 321, 321, 1)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
def test_float_input_and_output_dtype(run, dtype):
    images, labels = _random_batch(batch=2, height=20, width=24, seed=9)
    fn = lambda i, l: augment.augment_batch(i, l, crop_size=(16, 16), seed=3, dtype=dtype)
    from_uint8 = run(fn, images, labels)
    from_float = run(fn, images.astype(np.float32), labels)
    assert from_uint8[0].dtype == dtype.as_numpy_dtype
    np.testing.assert_array_equal(from_uint8[0], from_float[0])
    np.testing.assert_array_equal(from_uint8[1], from_float[1])


def test_sample_params_ranges():
    scales, flips, offsets = augment.sample_params(2000, tf.constant([100, 200]), (120, 150),
                                                   (0.5, 1.3), 0.5, seed=0)
    scales, flips, offsets = scales.numpy(), flips.numpy(), offsets.numpy()
    assert scales.min() >= 0.5 and scales.max() < 1.3
    assert 0.45 < flips.mean() < 0.55
    for axis, (size, crop) in enumerate([(100, 120), (200, 150)]):
        room = scales * size - crop  # > 0: crop inside the picture; < 0: picture inside the crop
        assert np.all(offsets[:, axis] >= np.minimum(room, 0) - 1e-4)
        assert np.all(offsets[:, axis] <= np.maximum(room, 0) + 1e-4)
    _, never, _ = augment.sample_params(100, tf.constant([10, 10]), (5, 5), flip_prob=0.0, seed=1)
    assert not never.numpy().any()


def test_rejects_seed_and_rng_together():
    images, labels = _random_batch()
    with pytest.raises(ValueError, match="seed or rng"):
        augment.augment_batch(images, labels, seed=1, rng=tf.random.Generator.from_seed(1))


def test_rejects_bad_label_shape():
    images, labels = _random_batch()
    with pytest.raises(ValueError, match="labels must be"):
        augment.augment_batch(images, labels[..., 0])
