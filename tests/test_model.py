"""Tests of fcn8s_tf.model.fcn8s: geometry, net surgery, bilinear kernels, serialisation,
preprocessing.

Most tests build the net with a narrow fc6/fc7 (fc_units=8..16) and few classes: shapes, crops,
dtypes and serialisation do not depend on those widths, and the 4096-wide fc6 alone holds 103M
parameters (seconds to initialise on this CPU). Only the parameter count and the fc1/fc2 -> fc6/fc7
surgery need the full size; those are marked slow.
"""

import logging

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf import pixels
from fcn8s_tf.model import fcn8s as model_lib

SMALL_FC = 16  # Narrow fc6/fc7: see the module docstring.


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(0)
    return model_lib.build_fcn8s(num_classes=3, fc_units=SMALL_FC)


@pytest.fixture
def bf16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _randomise_scores(model, rng):
    """Score layers start at zero (as the reference); random values make outputs non-trivial."""
    for name in ("score_fr", "score_pool4", "score_pool3"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(size=kernel.shape), rng.normal(size=bias.shape)])


# --- Shapes and dtypes.


@pytest.mark.parametrize(
    "height, width",
    # Tiny, odd, even, non-square; each costs a ~200 px VGG16 pass (the 100 px pad), so few.
    [(1, 1), (2, 3), (17, 23), (32, 32), (100, 37)],
)
def test_output_shape_equals_input_shape(small_model, height, width):
    images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
    logits = small_model(images, training=False)
    assert logits.shape == (2, height, width, 3)
    assert logits.dtype == tf.float32
    # Score layers are zero-initialised as in the reference, so a fresh net outputs zero logits.
    np.testing.assert_array_equal(logits.numpy(), 0.0)


def test_output_shape_voc_sized_image(small_model):
    logits = small_model(np.zeros((1, 375, 500, 3), np.float32), training=False)
    assert logits.shape == (1, 375, 500, 3)


def test_fixed_input_shape_gives_static_output_shape():
    net = model_lib.build_fcn8s(num_classes=2, fc_units=8, input_shape=(17, 23, 3))
    assert net.output.shape == (None, 17, 23, 2)


def test_logits_are_float32_under_mixed_bfloat16(bf16_policy):
    net = model_lib.build_fcn8s(num_classes=3, fc_units=SMALL_FC)
    assert net.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert net.get_layer("upscore8").compute_dtype == "bfloat16"
    _randomise_scores(net, np.random.default_rng(0))
    logits = net(np.random.default_rng(1).normal(size=(2, 21, 30, 3)).astype(np.float32))
    assert logits.dtype == tf.float32
    assert logits.shape == (2, 21, 30, 3)
    assert np.all(np.isfinite(logits.numpy()))


def test_layer_names_and_trainability():
    net = model_lib.build_fcn8s(num_classes=2, fc_units=8)
    names = {layer.name for layer in net.layers}
    vgg_convs = [
        f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for c in range(1, n + 1)
    ]
    caffe = ["fc6", "fc7", "score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3",
             "upscore8"]
    assert set(vgg_convs + [f"block{b}_pool" for b in range(1, 6)] + caffe) <= names
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert not net.get_layer(name).trainable  # Caffe reference: fixed bilinear.
    learnable = model_lib.build_fcn8s(num_classes=2, fc_units=8, learnable_upsampling=True)
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert learnable.get_layer(name).trainable


@pytest.mark.slow
def test_full_size_parameter_count():
    net = model_lib.build_fcn8s(num_classes=21)
    assert net.count_params() == 134_489_759
    # The three bilinear layers (2 * 4*4*21*21 + 16*16*21*21 weights) are fixed by default.
    fixed = 2 * 4 * 4 * 21 * 21 + 16 * 16 * 21 * 21
    trainable = sum(int(np.prod(v.shape)) for v in net.trainable_weights)
    assert trainable == 134_489_759 - fixed
    assert net.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    assert net.get_layer("fc7").kernel.shape == (1, 1, 4096, 4096)


# --- Crop geometry.
#
# Two independent checks that the offsets 5, 9, 31 align every fused map with the input.
#
# 1. Coordinate maps on the built graph (what Caffe's coord_map.py does to derive the offsets).
#    Index i of every tensor sits at input pixel a * i + b. Reading each layer's real configuration
#    (kernel, stride, padding, crop) we propagate (a, b) from the input and require that both inputs
#    of each Add, and the logits, have the same map, the logits the identity. An offset off by one
#    moves b by a (16 px, 8 px or 1 px), so the test fails.
#
# 2. Behaviour: with every kernel symmetric under 180-degree rotation, the net must commute with
#    rotating the image by 180 degrees when H, W = 26 (mod 32). For those sizes every tensor is
#    symmetric about the image centre: pad 100 on both sides, every pooling input has even size
#    (so 'same' pooling pads nothing), and each crop removes equally much from both ends (e.g.
#    score_pool4 on a 26 px side: 14 rows, 4 kept, 5 + 5 dropped). A wrong offset makes a crop
#    lopsided, shifting that stream by one cell against the input, and rotation equivariance breaks.
#    Each class has one stream only (class 0: score_fr, 1: score_pool4, 2: score_pool3; the
#    upsampling kernels never mix classes), so each stream is checked on its own, at its own scale.
#    `test_geometry_checks_catch_off_by_one_offsets` proves the check fails on every wrong offset.


def _coordinate_maps(net):
    """{tensor id: (a, b)}: index i of the tensor sits at input pixel a * i + b (rows = cols)."""
    maps = {}
    for layer in net.layers:
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        if isinstance(layer, keras.layers.InputLayer):
            maps[id(layer.output)] = (1.0, 0.0)
            continue
        a, b = maps[id(inputs[0])]
        if isinstance(layer, keras.layers.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            assert top == bottom == left == right
            b -= a * top
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D)):
            assert not isinstance(layer, keras.layers.Conv2DTranspose)
            if isinstance(layer, keras.layers.Conv2D):
                (k, k2), (s, s2) = layer.kernel_size, layer.strides
            else:
                (k, k2), (s, s2) = layer.pool_size, layer.strides
            assert k == k2 and s == s2
            if layer.padding == "valid":
                pad_before = 0
            elif s == 1:
                pad_before = (k - 1) // 2  # 'same', stride 1, odd kernel: symmetric.
            else:
                assert (k, s) == (2, 2), layer.name  # 'same' 2x2/2: pads at most 1, at the end.
                pad_before = 0
            # Output j reads inputs s*j - pad_before ... s*j - pad_before + k - 1, centred on
            # s*j + (k - 1)/2 - pad_before.
            a, b = a * s, b + a * ((k - 1) / 2 - pad_before)
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            (k, _), (s, _) = layer.kernel_size, layer.strides
            assert layer.padding == "valid"
            # Input i spreads over outputs s*i ... s*i + k - 1, centred on s*i + (k-1)/2.
            a, b = a / s, b - a * (k - 1) / 2 / s
        elif isinstance(layer, keras.layers.Cropping2D):
            (top, _), (left, _) = layer.cropping
            assert top == left
            b += a * top
        elif isinstance(layer, keras.layers.Add):
            assert maps[id(inputs[0])] == maps[id(inputs[1])], (
                layer.name, maps[id(inputs[0])], maps[id(inputs[1])]
            )
        elif not isinstance(
            layer,
            (model_lib.CropToReference, keras.layers.Dropout, keras.layers.Rescaling,
             keras.layers.Activation),
        ):
            raise AssertionError(f"no coordinate rule for {layer.name} ({type(layer).__name__})")
        maps[id(layer.output)] = (a, b)
    return maps


def _check_coordinate_maps(net):
    maps = _coordinate_maps(net)  # Asserts at each Add.
    assert maps[id(net.output)] == (1.0, 0.0), maps[id(net.output)]


def _symmetric_net(seed):
    """An FCN whose kernels are all 180-degree symmetric; class c is fed by one stream only."""
    keras.utils.set_random_seed(seed)
    net = model_lib.build_fcn8s(num_classes=3, fc_units=8)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        # Biases stay zero (keras's init): random ones add a uniform part to every feature map that
        # leaves the coarse score_fr stream nearly constant, and a constant map cannot show a shift.
        if type(layer) is keras.layers.Conv2D and layer.name.startswith(("block", "fc")):
            kernel, bias = layer.get_weights()
            if layer.name == "fc6":
                # fc6's 7x7 windows over a small pool5 nearly coincide (cells 32 px apart, 224 px
                # wide), which leaves score_fr almost flat; its centre tap alone keeps them apart.
                kernel[:3], kernel[4:], kernel[:, :3], kernel[:, 4:] = 0, 0, 0, 0
            layer.set_weights([(kernel + kernel[::-1, ::-1]) / 2, bias])
    for cls, name in enumerate(("score_fr", "score_pool4", "score_pool3")):
        layer = net.get_layer(name)
        kernel = np.zeros(layer.kernel.shape, np.float32)
        kernel[0, 0, :, cls] = rng.normal(size=kernel.shape[2])
        layer.set_weights([kernel, np.zeros(layer.bias.shape, np.float32)])
    return net


def _check_rotation_equivariance(net, height=26, width=58):
    images = np.random.default_rng(1).normal(scale=50.0, size=(1, height, width, 3))
    # White noise alone gives statistically uniform coarse features (score_fr nearly constant);
    # a bright block off-centre gives every stream structure at its own scale.
    images[:, : height // 2, : width // 3] += 200.0
    images = np.concatenate([images, images[:, ::-1, ::-1]]).astype(np.float32)
    logits = net(images, training=False).numpy()
    for cls, stream in enumerate(("score_fr", "score_pool4", "score_pool3")):
        out, out_of_rotated = logits[0, ..., cls], logits[1, ..., cls]
        scale = np.abs(out).max()
        assert scale > 0, stream
        # Non-trivial: the output itself is far from symmetric, so a misaligned stream would show.
        assert np.abs(out - out[::-1, ::-1]).max() > 0.05 * scale, stream
        error = np.abs(out_of_rotated - out[::-1, ::-1]).max()
        assert error <= 1e-4 * scale, f"{stream} stream misaligned: {error / scale:.2e}"


def test_crop_offsets_align_coordinate_maps(small_model):
    _check_coordinate_maps(small_model)


def test_crop_offsets_make_net_rotation_equivariant():
    _check_rotation_equivariance(_symmetric_net(seed=0))


# Each offset once, both directions covered; each case builds and runs a net (about 3 s here).
@pytest.mark.parametrize(
    "constant, delta",
    [("POOL4_CROP_OFFSET", 1), ("POOL3_CROP_OFFSET", -1), ("FINAL_CROP_OFFSET", 1)],
)
def test_geometry_checks_catch_off_by_one_offsets(monkeypatch, constant, delta):
    monkeypatch.setattr(model_lib, constant, getattr(model_lib, constant) + delta)
    net = _symmetric_net(seed=0)
    with pytest.raises(AssertionError):
        _check_coordinate_maps(net)
    with pytest.raises(AssertionError, match="misaligned"):
        _check_rotation_equivariance(net)


# --- Bilinear upsampling.


def _reference_upsample_filt(size):
    """surgery.upsample_filt from the FCN reference code (shelhamer/fcn.berkeleyvision.org)."""
    factor = (size + 1) // 2
    if size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 16, 32])
def test_bilinear_kernel_matches_reference(size):
    kernel = model_lib.bilinear_kernel(size, 3)
    assert kernel.shape == (size, size, 3, 3)
    for i in range(3):
        for j in range(3):
            expected = _reference_upsample_filt(size) if i == j else 0.0
            np.testing.assert_allclose(kernel[:, :, i, j], expected, rtol=0, atol=1e-7)


def test_upsampling_layers_start_bilinear(small_model):
    for name, size in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        np.testing.assert_array_equal(
            small_model.get_layer(name).kernel.numpy(), model_lib.bilinear_kernel(size, 3)
        )


@pytest.mark.parametrize("name, stride", [("upscore2", 2), ("upscore8", 8)])
def test_bilinear_upsampling_keeps_a_constant_map_constant(small_model, name, stride):
    layer = small_model.get_layer(name)
    constant = np.full((1, 5, 7, 3), 2.5, np.float32)
    up = layer(constant).numpy()
    k = layer.kernel_size[0]
    assert up.shape == (1, 4 * stride + k, 6 * stride + k, 3)
    # Away from the edges each output pixel gets two taps per axis whose weights sum to 1.
    np.testing.assert_allclose(up[:, stride:-stride, stride:-stride], 2.5, rtol=1e-6)


# --- Serialisation.


def test_keras_save_and_load_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    net = model_lib.build_fcn8s(num_classes=3, fc_units=SMALL_FC, learnable_upsampling=True)
    _randomise_scores(net, np.random.default_rng(0))
    images = np.random.default_rng(1).normal(scale=50.0, size=(2, 19, 27, 3)).astype(np.float32)
    expected = net(images, training=False).numpy()
    assert np.abs(expected).max() > 0

    path = tmp_path / "fcn8s.keras"
    net.save(path)
    loaded = keras.models.load_model(path)  # No custom_objects: the layers are registered.
    np.testing.assert_array_equal(loaded(images, training=False).numpy(), expected)
    assert loaded.get_layer("upscore8").trainable
    assert isinstance(loaded.get_layer("score_pool4c"), model_lib.CropToReference)
    # Other sizes still work after reloading (the crop remainder is computed at run time).
    assert loaded(np.zeros((1, 5, 3, 3), np.float32)).shape == (1, 5, 3, 3)


# --- Net surgery.


def _randomise_biases(vgg, rng):
    """keras initialises biases to zero; random ones show that biases are copied too."""
    for layer in vgg.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(scale=0.1, size=bias.shape)])


def _write_legacy_h5(vgg, path):
    """The layout of Keras's own downloads (vgg16_weights_tf_dim_ordering_tf_kernels*.h5)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, vgg)


def _assert_conv_weights_equal(fcn, vgg):
    convs = [layer for layer in vgg.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13
    for layer in convs:
        for got, want in zip(fcn.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def vgg16_top(tmp_path_factory):
    """A random VGG16 with top, written in Keras 3 and in legacy (download) format."""
    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(weights=None, include_top=True)
    _randomise_biases(vgg, np.random.default_rng(0))
    directory = tmp_path_factory.mktemp("vgg16_top")
    paths = {"weights_h5": directory / "vgg16.weights.h5", "legacy_h5": directory / "vgg16.h5"}
    vgg.save_weights(paths["weights_h5"])
    _write_legacy_h5(vgg, paths["legacy_h5"])
    return vgg, paths


@pytest.mark.slow
@pytest.mark.parametrize("file_format", ["legacy_h5", "weights_h5"])
def test_net_surgery_reproduces_vgg16_fc_activations(vgg16_top, file_format):
    vgg, paths = vgg16_top
    fcn = model_lib.build_fcn8s(num_classes=21, weights=str(paths[file_format]))
    _assert_conv_weights_equal(fcn, vgg)

    # VGG16 on a 224x224 image: pool5 is 7x7x512, fc1/fc2 see it flattened. The FCN's fc6 (7x7
    # valid) and fc7 (1x1) applied to that pool5 must give the same numbers at their single cell.
    images = np.random.default_rng(1).normal(scale=50.0, size=(2, 224, 224, 3)).astype(np.float32)
    probe = keras.Model(vgg.input, [vgg.get_layer(n).output for n in ("block5_pool", "fc1", "fc2")])
    pool5, fc1, fc2 = (t.numpy() for t in probe(images))
    fc6 = fcn.get_layer("fc6")(pool5).numpy()
    fc7 = fcn.get_layer("fc7")(fc6).numpy()
    assert fc6.shape == (2, 1, 1, 4096) and fc7.shape == (2, 1, 1, 4096)
    assert np.abs(fc1).max() > 0 and np.abs(fc2).max() > 0
    np.testing.assert_allclose(fc6[:, 0, 0], fc1, rtol=1e-4, atol=1e-4 * np.abs(fc1).max())
    np.testing.assert_allclose(fc7[:, 0, 0], fc2, rtol=1e-4, atol=1e-4 * np.abs(fc2).max())


def test_no_top_weights_load_trunk_and_warn(tmp_path, caplog):
    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    _randomise_biases(vgg, np.random.default_rng(0))
    path = tmp_path / "vgg16_notop.weights.h5"
    vgg.save_weights(path)

    with caplog.at_level(logging.WARNING):
        # fc_units is free here: a no-top file leaves fc6/fc7 random whatever their width.
        fcn = model_lib.build_fcn8s(num_classes=2, fc_units=8, weights=str(path))
    assert any("no top" in r.getMessage() and "published accuracy" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    _assert_conv_weights_equal(fcn, vgg)

    # The trunk is VGG16's on the input zero-padded by 100: for a 26 px image every pooling input
    # has even size (26 + 200 - 2 = 224, then 112, 56, 28, 14), so keras's rounding-down pools and
    # our rounding-up ones agree exactly. keras's block1_conv1 pads 1 itself, hence tf.pad by 99.
    images = np.random.default_rng(1).normal(scale=50.0, size=(1, 26, 26, 3)).astype(np.float32)
    padded = tf.pad(images, [[0, 0], [99, 99], [99, 99], [0, 0]])
    want = vgg(padded).numpy()
    trunk = keras.Model(fcn.input, fcn.get_layer("block5_pool").output)
    got = trunk(images).numpy()
    assert got.shape == want.shape == (1, 7, 7, 512)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "vgg16.h5"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        model_lib.build_fcn8s(num_classes=2, fc_units=8, weights=str(path))


def test_non_hdf5_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes\.h5.*VGG16"):
        model_lib.build_fcn8s(num_classes=2, fc_units=8, weights=str(path))


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, before it gives up.
def test_foreign_weights_file_is_a_clear_error(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(ValueError, match=r"other\.weights\.h5.*VGG16"):
        model_lib.build_fcn8s(num_classes=2, fc_units=8, weights=str(path))


def test_with_top_file_needs_fc_units_4096(tmp_path):
    # A file with datasets shaped like fc1/fc2; h5py allocates them lazily, so it stays small.
    path = tmp_path / "fake_top.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("fc1/kernel", shape=(25088, 4096), dtype="f4")
        f.create_dataset("fc2/kernel", shape=(4096, 4096), dtype="f4")
    with pytest.raises(ValueError, match=r"fake_top\.h5.*fc_units=4096.*fc_units=8"):
        model_lib.build_fcn8s(num_classes=2, fc_units=8, weights=str(path))


# --- Preprocessing.


def test_preprocess_swaps_to_bgr_and_subtracts_mean():
    pixel = np.array([[[10, 20, 30]]], np.uint8)  # R=10, G=20, B=30.
    out = pixels.preprocess(pixel)
    assert out.dtype == tf.float32
    b, g, r = pixels.BGR_MEAN
    np.testing.assert_allclose(out.numpy()[0, 0], [30 - b, 20 - g, 10 - r], rtol=1e-6)
    assert pixels.preprocess(pixel, tf.bfloat16).dtype == tf.bfloat16


def test_demo_levers_skip_scales_and_frozen_backbone():
    # The CPU demo's two non-reference settings: the defaults stay the paper's.
    default = model_lib.build_fcn8s(num_classes=2, fc_units=8)
    assert default.get_layer("scale_pool4").get_config()["scale"] == pytest.approx(0.01)
    assert default.get_layer("scale_pool3").get_config()["scale"] == pytest.approx(0.0001)
    assert default.get_layer("block1_conv1").trainable

    demo = model_lib.build_fcn8s(num_classes=2, fc_units=8, skip_scales=(1.0, 1.0),
                                 train_backbone=False)
    assert demo.get_layer("scale_pool4").get_config()["scale"] == 1.0
    assert demo.get_layer("scale_pool3").get_config()["scale"] == 1.0
    trainable = {v.path.split("/")[0] for v in demo.trainable_variables}
    assert not any(name.startswith("block") for name in trainable)
    assert {"fc6", "fc7", "score_fr", "score_pool4", "score_pool3"} <= trainable
    with pytest.raises(ValueError, match="skip_scales"):
        model_lib.build_fcn8s(num_classes=2, fc_units=8, skip_scales=(1.0,))
