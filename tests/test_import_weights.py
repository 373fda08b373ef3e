"""Importing published FCN-8s weights: the caffemodel reader, the mapping, the tool, --init_from.

The published files (~513 MB) cannot be downloaded here, so the tests write synthetic caffemodels
with random weights in every form the reader must handle (NetParameter.layer and the V1 .layers,
`shape` and legacy 4-D blobs, the at-once net with Scale layers and the staged net without) and
compare the imported Keras model with an independent numpy implementation of the Caffe net (pad
100, ceil-mode pools, Caffe's Deconvolution written from its definition, crops 5/9/31). The conv
layers are VGG16's full widths (the builder fixes them); fc6/fc7 are 8 wide and there are 3
classes, which keeps each file ~59 MB and each forward pass about a second. The genuine Caffe file
in ../shared/caffe_sample (LeNet) checks the reader against bytes Caffe itself wrote. The tool is
tested as a user meets it: tools/import_weights.py in a subprocess, killed with real signals, its
memory measured on crafted hostile files.
"""

import hashlib
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from fcn8s_tf import config as config_lib
from fcn8s_tf.data import records
from fcn8s_tf.model import run_dir
from fcn8s_tf.model.weights import caffemodel, fcn8s_map, layers, npz
from fcn8s_tf.training import imported_run
from fcn8s_tf.training import loop as train_lib
from fcn8s_tf.training import step as step_lib
from fcn8s_tf.training import workdir as workdir_lib

from helpers import REPO

IMPORT_CLI = REPO / "tools" / "import_weights.py"
LENET = REPO.parent / "shared" / "caffe_sample" / "lenet_iter_10000.caffemodel"
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # voc_layers.py of the reference
NUM_CLASSES, FC_UNITS = 3, 8
IMAGE_SIZES = ((20, 27), (37, 45))  # neither a multiple of 32
VGG = (("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
       ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
       ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
       ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512))


# ------------------------------------------------------------ a caffemodel writer for tests --
# Field numbers of caffe.proto; test_writer_matches_protobuf_runtime checks these bytes against
# the protobuf runtime's own serialisation.
V1_TYPES = {"Convolution": 4, "Deconvolution": 39, "Pooling": 17, "ReLU": 18, "Dropout": 6,
            "Eltwise": 25, "Data": 5}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def encode_blob(array: np.ndarray, legacy: bool) -> bytes:
    """BlobProto: legacy num/channels/height/width (padded with 1s in front) or `shape`."""
    out = b""
    if legacy:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        out += b"".join(_int_field(n, d) for n, d in zip((1, 2, 3, 4), dims))
    out += _field(5, np.asarray(array, "<f4").tobytes())
    if not legacy:
        out += _field(7, _field(1, b"".join(_varint(d) for d in array.shape)))
    return out


def encode_layer(name: str, kind: str, blobs=(), v1=False, legacy=False, group=None,
                 bottom=(), top=()) -> bytes:
    """LayerParameter (or V1LayerParameter), with bottom/top that the reader must skip."""
    if v1:
        out = b"".join(_field(2, b.encode()) for b in bottom)
        out += b"".join(_field(3, t.encode()) for t in top)
        out += _field(4, name.encode()) + _int_field(5, V1_TYPES[kind])
        out += b"".join(_field(6, encode_blob(b, legacy)) for b in blobs)
        conv_param = 10
    else:
        out = _field(1, name.encode()) + _field(2, kind.encode())
        out += b"".join(_field(3, b.encode()) for b in bottom)
        out += b"".join(_field(4, t.encode()) for t in top)
        out += b"".join(_field(7, encode_blob(b, legacy)) for b in blobs)
        conv_param = 106
    if group is not None:
        out += _field(conv_param, _int_field(5, group))
    return out


def write_caffemodel(path: Path, weights: dict, v1=False, legacy=False, groups=None) -> Path:
    """An FCN-8s NetParameter as Caffe lays it out, weight layers between weightless ones."""
    groups = groups or {}
    layer_field = 2 if v1 else 100
    layers = [encode_layer("data", "Data", v1=v1, top=["data"])]
    for name, blobs in weights.items():
        kind = ("Deconvolution" if name.startswith("upscore") else
                "Scale" if name.startswith("scale") else "Convolution")
        layers.append(encode_layer(name, kind, blobs, v1=v1, legacy=legacy,
                                   group=groups.get(name), bottom=["x"], top=[name]))
        if kind == "Convolution":
            layers.append(encode_layer(f"relu_{name}", "ReLU", v1=v1))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            layers.append(encode_layer(f"pool_{name}", "Pooling", v1=v1))
    if not v1:
        layers.append(encode_layer("score", "Crop"))
    body = _field(1, b"FCN8s-test") + b"".join(_field(layer_field, layer) for layer in layers)
    path.write_bytes(body)
    return path


def random_fcn8s(seed: int, skip_scales=(0.01, 0.0001), vgg=None) -> dict:
    """Random FCN-8s weights in Caffe layouts, ordered as the net; deconvolutions asymmetric.

    He-scaled so activations stay O(input) through the 13 convs, and the score layers scaled so
    that the three streams contribute alike to the logits (a wrong skip would not hide).
    """
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return rng.normal(0.0, std, shape).astype(np.float32)

    weights = dict(vgg) if vgg is not None else {
        name: [normal((cout, cin, 3, 3), np.sqrt(2.0 / (9 * cin))), normal((cout,), 0.1)]
        for name, cin, cout in VGG}
    c, f = NUM_CLASSES, FC_UNITS
    weights["fc6"] = [normal((f, 512, 7, 7), np.sqrt(2.0 / (49 * 512))), normal((f,), 0.1)]
    weights["fc7"] = [normal((f, f, 1, 1), np.sqrt(2.0 / f)), normal((f,), 0.1)]
    weights["score_fr"] = [normal((c, f, 1, 1), np.sqrt(1.0 / f)), normal((c,), 0.1)]
    weights["upscore2"] = [normal((c, c, 4, 4), 0.5)]
    weights["score_pool4"] = [normal((c, 512, 1, 1), 1.0 / (skip_scales[0] * np.sqrt(512))),
                              normal((c,), 0.1)]
    weights["upscore_pool4"] = [normal((c, c, 4, 4), 0.5)]
    weights["score_pool3"] = [normal((c, 256, 1, 1), 1.0 / (skip_scales[1] * np.sqrt(256))),
                              normal((c,), 0.1)]
    weights["upscore8"] = [normal((c, c, 16, 16), 0.25)]
    return weights


def with_scale_layers(weights: dict, scale_pool4, scale_pool3) -> dict:
    """The at-once net: Scale layers inserted before score_pool4/score_pool3."""
    out = {}
    for name, blobs in weights.items():
        if name == "score_pool4":
            out["scale_pool4"] = scale_pool4
        if name == "score_pool3":
            out["scale_pool3"] = scale_pool3
        out[name] = blobs
    return out


# ------------------------------------------------------- numpy reference of the Caffe net --
def ref_conv(x, w, b, pad):
    """Caffe Convolution, stride 1: x (C, H, W), w (O, C, kh, kw) -> (O, H', W'), float64."""
    kh, kw = w.shape[2:]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(padded, (kh, kw), axis=(1, 2))  # (C, H', W', kh, kw)
    return np.tensordot(w.astype(np.float64), windows, axes=([1, 2, 3], [0, 3, 4])) \
        + b.reshape(-1)[:, None, None]


def ref_max_pool(x):
    """Caffe MAX pooling 2x2/2, pad 0: ceil((H - 2) / 2) + 1 rows, the last window clipped."""
    c, h, w = x.shape
    out = np.full((c, -(-(h - 2) // 2) + 1, -(-(w - 2) // 2) + 1), -np.inf)
    for i in (0, 1):
        for j in (0, 1):
            part = x[:, i::2, j::2]
            view = out[:, :part.shape[1], :part.shape[2]]
            np.maximum(view, part, out=view)
    return out


def ref_deconv(x, w, stride, group=1):
    """Caffe Deconvolution, pad 0, from its definition (col2im of W^T x).

    x (C_in, h, w), w (C_in, C_out / group, k, k):
        out[o, s*y + i, s*x + j] += x[c, y, x] w[c, o', i, j]
    for every input channel c of o's group (o' is o's index within its group).
    """
    c_in, c_out_g, kh, kw = w.shape
    h, wd = x.shape[1:]
    out = np.zeros((c_out_g * group, stride * (h - 1) + kh, stride * (wd - 1) + kw))
    per_group = c_in // group
    for g in range(group):
        xs = x[g * per_group:(g + 1) * per_group]
        ws = w[g * per_group:(g + 1) * per_group].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                out[g * c_out_g:(g + 1) * c_out_g,
                    i:i + stride * (h - 1) + 1:stride,
                    j:j + stride * (wd - 1) + 1:stride] += np.einsum("chw,co->ohw", xs,
                                                                     ws[:, :, i, j])
    return out


def ref_crop(x, size, offset):
    return x[:, offset:offset + size[0], offset:offset + size[1]]


def ref_trunk(image, weights):
    """pool3, pool4, pool5 of the VGG16 part; image (H, W, 3) BGR minus mean."""
    x = np.asarray(image, np.float64).transpose(2, 0, 1)
    pools = []
    for name, _, _ in VGG:
        x = np.maximum(ref_conv(x, *weights[name], pad=100 if name == "conv1_1" else 1), 0)
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            x = ref_max_pool(x)
            pools.append(x)
    return pools[2:]


def ref_head(trunk, weights, size, groups=None):
    """The FCN-8s part after pool5, Scale layers as Caffe computes them; -> (H, W, C) logits."""
    groups = groups or {}
    pool3, pool4, pool5 = trunk

    def scale(x, name):
        if name not in weights:
            return x
        blobs = [b.reshape(-1)[:, None, None].astype(np.float64) for b in weights[name]]
        return x * blobs[0] + (blobs[1] if len(blobs) > 1 else 0.0)

    fc6 = np.maximum(ref_conv(pool5, *weights["fc6"], pad=0), 0)
    fc7 = np.maximum(ref_conv(fc6, *weights["fc7"], pad=0), 0)
    score_fr = ref_conv(fc7, *weights["score_fr"], pad=0)
    upscore2 = ref_deconv(score_fr, weights["upscore2"][0], 2, groups.get("upscore2", 1))
    score_pool4 = ref_conv(scale(pool4, "scale_pool4"), *weights["score_pool4"], pad=0)
    fuse_pool4 = upscore2 + ref_crop(score_pool4, upscore2.shape[1:], 5)
    upscore_pool4 = ref_deconv(fuse_pool4, weights["upscore_pool4"][0], 2,
                               groups.get("upscore_pool4", 1))
    score_pool3 = ref_conv(scale(pool3, "scale_pool3"), *weights["score_pool3"], pad=0)
    fuse_pool3 = upscore_pool4 + ref_crop(score_pool3, upscore_pool4.shape[1:], 9)
    upscore8 = ref_deconv(fuse_pool3, weights["upscore8"][0], 8, groups.get("upscore8", 1))
    return ref_crop(upscore8, size, 31).transpose(1, 2, 0)


def preprocess(images_rgb: np.ndarray) -> np.ndarray:
    """As the reference's data layer: RGB -> BGR, minus the mean, float32."""
    return (images_rgb[..., ::-1].astype(np.float32) - np.float32(CAFFE_MEAN_BGR))


def assert_logits_close(actual, expected):
    """float32 against float64 through ~20 layers: within 1e-5 of the logits' magnitude.

    Measured: 5e-7 (AMD EPYC, 2 cores); a flipped deconvolution or a dropped Scale bias is off by
    ~1, so the margin hides nothing.
    """
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale)


# ---------------------------------------------------------------------------- fixtures --
@pytest.fixture(scope="module")
def images():
    """uint8 RGB images of the IMAGE_SIZES."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in IMAGE_SIZES]


@pytest.fixture(scope="module")
def vgg_weights():
    """VGG16 conv weights shared by the test nets, so the reference trunk is computed once."""
    return {k: v for k, v in random_fcn8s(seed=1).items() if k.startswith("conv")}


@pytest.fixture(scope="module")
def reference_trunks(images, vgg_weights):
    return [ref_trunk(preprocess(image), vgg_weights) for image in images]


@pytest.fixture(scope="module")
def at_once_weights(vgg_weights):
    """At-once net: constant Scale blobs 0.01 (512,) and 0.0001 (256,), as published."""
    return with_scale_layers(random_fcn8s(seed=2, vgg=vgg_weights),
                             [np.full(512, 0.01, np.float32)], [np.full(256, 1e-4, np.float32)])


@pytest.fixture(scope="module")
def at_once_file(tmp_path_factory, at_once_weights):
    return write_caffemodel(tmp_path_factory.mktemp("atonce") / "atonce.caffemodel",
                            at_once_weights)


# ------------------------------------------------------------------------- wire format --
def caffe_proto_classes():
    """Message classes for a subset of caffe.proto, built in code for the protobuf runtime."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe_subset",
                                               syntax="proto2")

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, extra in fields:
            f = m.field.add(name=field_name, number=number, type=kind,
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if extra == "packed":
                f.options.packed = True
            elif extra:
                f.type_name = f".caffe_subset.{extra}"

    message("BlobShape", ("dim", 1, F.TYPE_INT64, True, "packed"))
    message("BlobProto", ("num", 1, F.TYPE_INT32, False, None),
            ("channels", 2, F.TYPE_INT32, False, None), ("height", 3, F.TYPE_INT32, False, None),
            ("width", 4, F.TYPE_INT32, False, None), ("data", 5, F.TYPE_FLOAT, True, "packed"),
            ("shape", 7, F.TYPE_MESSAGE, False, "BlobShape"),
            ("double_data", 8, F.TYPE_DOUBLE, True, "packed"))
    message("ConvolutionParameter", ("group", 5, F.TYPE_UINT32, False, None))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, False, None),
            ("type", 2, F.TYPE_STRING, False, None), ("bottom", 3, F.TYPE_STRING, True, None),
            ("top", 4, F.TYPE_STRING, True, None), ("blobs", 7, F.TYPE_MESSAGE, True, "BlobProto"),
            ("convolution_param", 106, F.TYPE_MESSAGE, False, "ConvolutionParameter"))
    message("V1LayerParameter", ("bottom", 2, F.TYPE_STRING, True, None),
            ("top", 3, F.TYPE_STRING, True, None), ("name", 4, F.TYPE_STRING, False, None),
            ("type", 5, F.TYPE_INT32, False, None), ("blobs", 6, F.TYPE_MESSAGE, True, "BlobProto"),
            ("convolution_param", 10, F.TYPE_MESSAGE, False, "ConvolutionParameter"))
    message("NetParameter", ("name", 1, F.TYPE_STRING, False, None),
            ("layers", 2, F.TYPE_MESSAGE, True, "V1LayerParameter"),
            ("layer", 100, F.TYPE_MESSAGE, True, "LayerParameter"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"caffe_subset.{name}"))
            for name in ("NetParameter", "BlobProto")}


def test_lenet_parsed_exactly_as_the_protobuf_runtime_reads_it():
    if not LENET.is_file():
        pytest.skip(f"needs the genuine Caffe file {LENET} (../shared/caffe_sample)")
    net = fcn8s_map.read_weights(str(LENET))
    # SOURCES.md: names, types and blob shapes as Caffe wrote them.
    assert net.format.startswith("caffemodel, NetParameter.layer ")
    assert net.net_name == "LeNet"
    assert [(layer.name, layer.type, [b.shape for b in layer.blobs]) for layer in net.layers] == [
        ("mnist", "Data", []), ("conv1", "Convolution", [(20, 1, 5, 5), (20,)]),
        ("pool1", "Pooling", []), ("conv2", "Convolution", [(50, 20, 5, 5), (50,)]),
        ("pool2", "Pooling", []), ("ip1", "InnerProduct", [(500, 800), (500,)]),
        ("relu1", "ReLU", []), ("ip2", "InnerProduct", [(10, 500), (10,)]),
        ("loss", "SoftmaxWithLoss", [])]
    # Every value, against the official parser on the same bytes.
    official = caffe_proto_classes()["NetParameter"].FromString(LENET.read_bytes())
    assert len(official.layer) == len(net.layers) and not official.layers
    for theirs, ours in zip(official.layer, net.layers):
        assert (theirs.name, theirs.type) == (ours.name, ours.type)
        for blob, array in zip(theirs.blobs, ours.blobs, strict=True):
            assert tuple(blob.shape.dim) == array.shape
            np.testing.assert_array_equal(np.array(blob.data, np.float32), array.reshape(-1))


def test_writer_matches_protobuf_runtime_and_reader_reads_both_forms(tmp_path):
    classes = caffe_proto_classes()
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(2, 3, 1, 2)).astype(np.float32)
    bias = rng.normal(size=(2,)).astype(np.float32)
    for v1, legacy in ((False, False), (False, True), (True, True), (True, False)):
        net = classes["NetParameter"](name="t")
        layer = (net.layers if v1 else net.layer).add(name="conv", bottom=["a"], top=["b"])
        layer.type = 4 if v1 else "Convolution"
        for array in (weight, bias):
            blob = layer.blobs.add()
            if legacy:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + \
                    array.shape
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.reshape(-1).tolist())
        layer.convolution_param.group = 1
        ours = _field(1, b"t") + _field(2 if v1 else 100, encode_layer(
            "conv", "Convolution", (weight, bias), v1=v1, legacy=legacy, group=1, bottom=["a"],
            top=["b"]))
        assert ours == net.SerializeToString(), (v1, legacy)
        path = tmp_path / f"{v1}{legacy}.caffemodel"
        path.write_bytes(ours)
        read = caffemodel.read_caffemodel(str(path))
        assert ("V1" in read.format) == v1
        (conv,) = read.layers
        assert (conv.name, conv.type, conv.group) == ("conv", "Convolution", 1)
        np.testing.assert_array_equal(conv.blobs[0].reshape(2, 3, 1, 2), weight)
        assert conv.blobs[1].shape == ((1, 1, 1, 2) if legacy else (2,))  # as declared
        np.testing.assert_array_equal(conv.blobs[1].reshape(-1), bias)


def test_reader_edge_cases(tmp_path):
    # Unpacked floats, a packed array in two pieces, double_data (wins over data, as in Caffe),
    # unpacked dims, and unknown fields of every wire type in between.
    values = np.arange(6, dtype=np.float32)
    unknown = (_int_field(20, 5) + _varint(21 << 3 | 1) + b"\0" * 8
               + _varint(22 << 3 | 5) + b"\0" * 4)
    blob_unpacked = (unknown
                     + b"".join(_varint(5 << 3 | 5) + np.float32(v).tobytes() for v in values)
                     + _field(7, _int_field(1, 2) + _int_field(1, 3)))
    blob_pieces = (_field(5, values[:2].tobytes()) + unknown + _field(5, values[2:].tobytes())
                   + _field(7, _field(1, _varint(6))))
    blob_double = (_field(5, np.zeros(2, "<f4").tobytes())
                   + _field(8, values[:2].astype("<f8").tobytes())
                   + _field(7, _field(1, _varint(2))))
    layer = (_field(1, b"x") + unknown + _field(2, b"Scale") + _field(7, blob_unpacked)
             + _field(7, blob_pieces) + _field(7, blob_double) + _field(150, b"\x01\x02"))
    path = tmp_path / "edge.caffemodel"
    path.write_bytes(unknown + _field(100, layer))
    (read,) = caffemodel.read_caffemodel(str(path)).layers
    np.testing.assert_array_equal(read.blobs[0], values.reshape(2, 3))
    np.testing.assert_array_equal(read.blobs[1], values)
    np.testing.assert_array_equal(read.blobs[2], values[:2])

    # A blob whose shape disagrees with its values, a negative dim, a V0-format net.
    cases = {
        "declares shape (4,)": _field(7, _field(5, values.tobytes())
                                      + _field(7, _field(1, _varint(4)))),
        "negative shape": _field(7, _int_field(1, -1) + _int_field(2, 1) + _int_field(3, 1)
                                 + _int_field(4, 1)),
    }
    for message, blob in cases.items():
        path.write_bytes(_field(100, _field(1, b"bad") + blob))
        with pytest.raises(layers.WeightsError,
                           match=f"layer 'bad' blob 0: .*{re.escape(message)}"):
            caffemodel.read_caffemodel(str(path))
    path.write_bytes(_field(2, _field(1, b"v0 layer")))
    with pytest.raises(layers.WeightsError, match="V0 format"):
        caffemodel.read_caffemodel(str(path))


# ------------------------------------------------------------------------------ mapping --
@pytest.mark.parametrize("group", [1, NUM_CLASSES])
def test_deconvolution_mapping_matches_caffe_without_flip(group):
    """A random asymmetric kernel through keras Conv2DTranspose equals Caffe's Deconvolution.

    The published nets' bilinear kernels are symmetric and diagonal, so they hide a transposed or
    flipped mapping; this kernel does not, and the flipped mapping is shown to fail.
    """
    import keras

    rng = np.random.default_rng(3)
    c, k, stride = NUM_CLASSES, 4, 2
    blob = rng.normal(size=(c, c // group, k, k)).astype(np.float32)
    x = rng.normal(size=(5, 7, c)).astype(np.float32)  # (h, w, C_in)
    expected = ref_deconv(x.transpose(2, 0, 1), blob, stride, group).transpose(1, 2, 0)

    layer = keras.layers.Conv2DTranspose(c, k, strides=stride, padding="valid", use_bias=False)
    layer.build((None, None, None, c))
    layer.set_weights([fcn8s_map.keras_kernel(fcn8s_map._ungroup(blob, group, "upscore"))])
    actual = np.asarray(layer(x[None]))[0]
    assert actual.shape == expected.shape == (2 * 4 + k, 2 * 6 + k, c)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

    flipped = fcn8s_map._ungroup(blob, group, "upscore")[:, :, ::-1, ::-1]
    layer.set_weights([fcn8s_map.keras_kernel(flipped)])
    assert not np.allclose(np.asarray(layer(x[None]))[0], expected, atol=1e-2)


def _import(path, skip_scales=None):
    imported = fcn8s_map.fcn8s_from(fcn8s_map.read_weights(str(path)), skip_scales)
    return imported, fcn8s_map.build_model(imported)


def test_at_once_net_matches_caffe_reference(at_once_file, at_once_weights, images,
                                             reference_trunks):
    imported, model = _import(at_once_file)
    assert imported.format == "caffemodel, NetParameter.layer (Caffe since 2015)"
    assert (imported.num_classes, imported.fc_units) == (NUM_CLASSES, FC_UNITS)
    assert imported.skip_scales == (0.01, 1e-4)  # as --skip_scales would write them
    assert "scale_pool4: constant 0.01" in "\n".join(imported.scale_notes)
    for image, trunk in zip(images, reference_trunks):
        logits = np.asarray(model(preprocess(image)[None], training=False))[0]
        assert_logits_close(logits, ref_head(trunk, at_once_weights, image.shape[:2]))


def test_staged_v1_legacy_net_matches_caffe_reference(tmp_path, vgg_weights, images,
                                                      reference_trunks):
    # The staged net (no Scale layers: skips unscaled) in the deprecated V1 format with legacy
    # 4-D blob shapes, biases stored as (1, 1, 1, N).
    weights = random_fcn8s(seed=4, skip_scales=(1.0, 1.0), vgg=vgg_weights)
    path = write_caffemodel(tmp_path / "staged.caffemodel", weights, v1=True, legacy=True)
    imported, model = _import(path)
    assert imported.format == "caffemodel, NetParameter.layers (V1, deprecated)"
    assert imported.skip_scales == (1.0, 1.0)
    for image, trunk in zip(images, reference_trunks):
        logits = np.asarray(model(preprocess(image)[None], training=False))[0]
        assert_logits_close(logits, ref_head(trunk, weights, image.shape[:2]))


def test_per_channel_scales_and_grouped_deconvolution_fold_exactly(tmp_path, vgg_weights, images,
                                                                   reference_trunks):
    # Non-constant Scale blobs (one with a bias, stored in legacy form) are folded into the score
    # layers; upscore8 is a grouped (depthwise) deconvolution, group = classes.
    rng = np.random.default_rng(5)
    weights = random_fcn8s(seed=6, vgg=vgg_weights)
    weights["upscore8"] = [rng.normal(0, 0.25, (NUM_CLASSES, 1, 16, 16)).astype(np.float32)]
    weights = with_scale_layers(
        weights, [rng.uniform(0.005, 0.02, 512).astype(np.float32)],
        [rng.uniform(5e-5, 2e-4, 256).astype(np.float32),
         rng.normal(0, 0.05, 256).astype(np.float32)])
    groups = {"upscore8": NUM_CLASSES}
    path = write_caffemodel(tmp_path / "folded.caffemodel", weights, legacy=True, groups=groups)
    imported, model = _import(path)
    assert imported.skip_scales == (1.0, 1.0)
    notes = "\n".join(imported.scale_notes)
    assert "per-channel scale" in notes and "bias folded into score_pool3" in notes
    for image, trunk in zip(images, reference_trunks):
        logits = np.asarray(model(preprocess(image)[None], training=False))[0]
        assert_logits_close(logits, ref_head(trunk, weights, image.shape[:2], groups))


def _write_npz(path, weights, style, scales=True):
    weight_suffix, bias_suffix = npz.NPZ_KEY_STYLES[style]
    arrays = {}
    for name, blobs in weights.items():
        if name.startswith("scale") and not scales:
            continue
        arrays[name + weight_suffix] = blobs[0]
        if len(blobs) > 1:
            arrays[name + bias_suffix] = blobs[1]
    np.savez(path, **arrays)
    return path


def test_npz_imports_the_same_weights(tmp_path, at_once_file, at_once_weights):
    from_caffe = fcn8s_map.fcn8s_from(fcn8s_map.read_weights(str(at_once_file)))
    chainer = _write_npz(tmp_path / "chainer.npz", at_once_weights, "Chainer", scales=False)
    pytorch = _write_npz(tmp_path / "pytorch.npz", at_once_weights, "PyTorch", scales=True)
    with pytest.raises(layers.WeightsError,
                       match="no scale_pool4/scale_pool3 entries.*0.01,0.0001"):
        fcn8s_map.fcn8s_from(fcn8s_map.read_weights(str(chainer)))
    for path, skip_scales in ((chainer, (0.01, 1e-4)), (pytorch, None)):
        imported = fcn8s_map.fcn8s_from(fcn8s_map.read_weights(str(path)), skip_scales)
        assert imported.skip_scales == pytest.approx(from_caffe.skip_scales, rel=1e-7)
        assert imported.weights.keys() == from_caffe.weights.keys()
        for name, values in from_caffe.weights.items():
            for theirs, ours in zip(imported.weights[name], values, strict=True):
                np.testing.assert_array_equal(theirs, ours)
    assert fcn8s_map.read_weights(str(pytorch)).format == "npz, PyTorch keys"
    with pytest.raises(layers.WeightsError, match="carries its own skip scales"):
        fcn8s_map.fcn8s_from(fcn8s_map.read_weights(str(pytorch)), (1.0, 1.0))


def test_misshapen_and_foreign_layers_are_named(tmp_path, at_once_weights, monkeypatch):
    weights = dict(at_once_weights)
    weights["conv3_2"] = [np.zeros((256, 128, 3, 3), np.float32), np.zeros(256, np.float32)]
    weights["fc8"] = [np.zeros((2, 2, 1, 1), np.float32), np.zeros(2, np.float32)]
    path = write_caffemodel(tmp_path / "foreign.caffemodel", weights)
    with pytest.raises(layers.WeightsError, match="FCN-8s does not have: fc8"):
        fcn8s_map.fcn8s_from(fcn8s_map.read_weights(str(path)))
    del weights["fc8"]
    path = write_caffemodel(tmp_path / "misshapen.caffemodel", weights)
    misshapen = r"conv3_2 has shape \(256, 128, 3, 3\), expected \(256, 256, 3, 3\)"
    with pytest.raises(layers.WeightsError, match=misshapen):
        _import(path)
    # The import's own reading finds it from the declared shapes, before a value is read.
    monkeypatch.setattr(caffemodel, "_read_values", lambda *_: pytest.fail("a value was read"))
    with pytest.raises(layers.WeightsError, match=misshapen):
        fcn8s_map.read_weights(str(path), check=fcn8s_map.check_fcn8s)


# -------------------------------------------------------------------------------- the tool --
def test_lenet_rejected_as_not_fcn8s_by_the_cli(tmp_path):
    if not LENET.is_file():
        pytest.skip(f"needs the genuine Caffe file {LENET} (../shared/caffe_sample)")
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "tools/import_weights.py", f"--weights={LENET}",
                           f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "is not an FCN-8s: missing layers conv1_1" in proc.stderr
    assert "conv1 (Convolution: (20, 1, 5, 5), (20,))" in proc.stderr  # what it found
    assert not workdir.exists() and list(tmp_path.iterdir()) == []


def run_cli(*flags: str, cwd=REPO, umask=None, timeout=300) -> subprocess.CompletedProcess:
    """tools/import_weights.py as a user types it; `umask` is set by the shell first."""
    command = [sys.executable, str(IMPORT_CLI), *flags]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 1 and one `import_weights: error:` line, no traceback, naming each of `named`."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("import_weights: error: "), proc.stderr[-3000:]
    for text in named:
        assert text in line, line
    return line


def make_run_dir(workdir: Path) -> Path:
    """A run directory as a training run leaves it (model_config.json, checkpoints/, ...)."""
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "model_config.json").write_text("{}")
    (workdir / "stale.txt").write_text("from an earlier run")
    return workdir


def signal_mid_import(weights: Path, workdir: Path, signum: int, *flags: str):
    """Starts the CLI and sends `signum` once its temporary folder holds part of the new workdir.

    Returns (exit status, stderr, the temporary folder).
    """
    log = workdir.parent / f"stderr-{signum}.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(IMPORT_CLI), f"--weights={weights}",
                                 f"--workdir={workdir}", *flags], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline, temp = time.monotonic() + 240, None
        while temp is None or not (temp / "new" / "model_config.json").exists():
            assert proc.poll() is None, f"the import ended first: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no temporary folder after 240 s"
            temp = next(workdir.parent.glob(imported_run.IMPORT_TMP_PREFIX + "*"), None)
            time.sleep(0.02)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    text = log.read_text()
    log.unlink()
    return proc.returncode, text, temp


@pytest.fixture(scope="module")
def imported_workdir(tmp_path_factory, at_once_file):
    """The at-once file imported by the CLI as the README types it, with --overwrite over an earlier
    run, under umask 027, beside what a SIGKILLed import left and the temporary folder of an
    import still running (this process's pid stands for it)."""
    root = tmp_path_factory.mktemp("imported")
    status, _, killed = signal_mid_import(at_once_file, root / "killed", signal.SIGKILL)
    assert status == -signal.SIGKILL and killed.is_dir()  # what SIGKILL leaves: no handler runs
    running = root / f"{imported_run.IMPORT_TMP_PREFIX}p{os.getpid()}-other-k2j3h4g5"
    running.mkdir()
    workdir = make_run_dir(root / "fcn8s_caffe")
    sha1 = hashlib.sha1(at_once_file.read_bytes()).hexdigest()
    proc = run_cli(f"--weights={at_once_file}", f"--workdir={workdir}", f"--sha1={sha1}",
                   "--overwrite", umask=0o027)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return types.SimpleNamespace(workdir=workdir, stdout=proc.stdout, killed=killed,
                                 running=running)


def test_cli_writes_a_workdir_the_project_reads(imported_workdir, at_once_weights, images,
                                                reference_trunks):
    workdir, stdout = imported_workdir.workdir, imported_workdir.stdout
    for text in ("caffemodel, NetParameter.layer", "num_classes  3", "fc6/fc7      8 wide",
                 "pool4 0.01, pool3 0.0001", "scale_pool3: constant 0.0001", "export/1/"):
        assert text in stdout
    assert sorted(p.name for p in workdir.iterdir()) == [
        "checkpoints", "export", "imported_from.json", "model_config.json"]
    # The killed import's folder is gone (its pid is dead), the running one's is not touched.
    assert f"removed {imported_workdir.killed}, left by an interrupted run" in stdout
    assert sorted(workdir.parent.iterdir()) == [imported_workdir.running, workdir]
    # Modes as the umask (027) makes them, as for a trained workdir: not mkdtemp's 0700.
    for path in [workdir, *workdir.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path
    config = json.loads((workdir / "model_config.json").read_text())
    assert (config["num_classes"], config["fc_units"]) == (NUM_CLASSES, FC_UNITS)

    # The checkpoint restores where evaluation and export look for it...
    model, _ = run_dir.load_model(str(workdir))
    image, trunk = images[0], reference_trunks[0]
    expected = ref_head(trunk, at_once_weights, image.shape[:2])
    assert_logits_close(np.asarray(model(preprocess(image)[None]))[0], expected)
    # ...and the SavedModel, preprocessing in its graph, answers as the Caffe net does.
    loaded = tf.saved_model.load(str(workdir / "export" / "1"))
    out = loaded.signatures["serving_uint8"](images=tf.constant(image[None]))
    exp = np.exp(expected - expected.max(-1, keepdims=True))
    # Logits of ~1000 with float32 error ~5e-4 move a near-tie's probability by up to ~1e-4.
    np.testing.assert_allclose(out["probabilities"].numpy()[0], exp / exp.sum(-1, keepdims=True),
                               atol=1e-3)


def test_sigterm_mid_import_leaves_the_old_run_and_nothing_else(tmp_path, at_once_file):
    out = tmp_path / "out"
    workdir = make_run_dir(out / "run")
    status, stderr, temp = signal_mid_import(at_once_file, workdir, signal.SIGTERM, "--overwrite")
    assert status == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith(
        "import_weights: interrupted by SIGTERM: temporary folder removed"), stderr[-3000:]
    assert not temp.exists() and list(out.iterdir()) == [workdir]
    assert sorted(p.name for p in workdir.iterdir()) == [
        "checkpoints", "model_config.json", "stale.txt"]


@pytest.mark.parametrize("where", ["folder", "cwd"])
def test_overwrite_replaces_only_a_run_directory(tmp_path, at_once_file, where):
    # `--workdir=. --overwrite` in a folder of one's own once deleted everything in it.
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "src" / "main.py").write_text("print('mine')")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in [mine, *mine.rglob("*")])
    flag = f"--workdir={mine}" if where == "folder" else "--workdir=."
    proc = run_cli(f"--weights={at_once_file}", flag, "--overwrite", cwd=mine)
    assert_one_line_error(proc, f"--workdir={mine} is not a run directory",
                          "model_config.json and checkpoints/")
    assert sorted((str(p), p.stat().st_mtime_ns) for p in [mine, *mine.rglob("*")]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def _unwritable(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o555)
    return path / "run"


@pytest.mark.parametrize("case", ["weights_is_a_folder", "weights_unreadable",
                                  "parent_is_a_file", "parent_read_only"])
def test_unreadable_weights_or_unwritable_parent_is_one_line(tmp_path, at_once_file, case):
    if case in ("weights_unreadable", "parent_read_only") and os.geteuid() == 0:
        pytest.skip("root reads and writes whatever the mode bits say; the folder cases in this "
                    "test check the same one-line error as root")
    weights, workdir, named = at_once_file, tmp_path / "out" / "run", None
    if case == "weights_is_a_folder":
        weights = named = tmp_path / "weights.caffemodel"
        weights.mkdir()
    elif case == "weights_unreadable":
        weights = named = tmp_path / "weights.caffemodel"
        weights.write_bytes(b"\0")
        weights.chmod(0)
    elif case == "parent_is_a_file":
        named = tmp_path / "out"
        named.write_text("a file")
    else:
        workdir = _unwritable(tmp_path / "out")
        named = workdir.parent
    before = sorted(tmp_path.rglob("*"))
    proc = run_cli(f"--weights={weights}", f"--workdir={workdir}")
    assert_one_line_error(proc, str(named))
    assert sorted(tmp_path.rglob("*")) == before


# ------------------------------------------------------------------- memory of bad files --
# A peak measured around one subprocess: RUSAGE_CHILDREN of a fresh wrapper covers that one only.
PEAK_RSS = ("import resource, subprocess, sys; proc = subprocess.run(sys.argv[1:], "
            "capture_output=True, text=True); sys.stdout.write(proc.stdout); "
            "sys.stderr.write(proc.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mb(*command: str):
    """Runs `command`; returns (its peak resident memory in MB, its stdout, its stderr)."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    stdout, _, peak_kb = proc.stdout.rstrip("\n").rpartition("\n")
    return int(peak_kb) / 1024, stdout, proc.stderr


def _zip_bomb(path: Path) -> Path:
    """2 GiB of float32 zeros as fc6/W, deflated into ~2 MB (within deflate's 1032x)."""
    zeros = bytes(1 << 24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("fc6/W.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (1 << 29,)})
            for _ in range((1 << 31) // len(zeros)):
                member.write(zeros)
    return path


def _unpacked_caffemodel(path: Path, name: str, count: int) -> Path:
    """One Convolution layer whose blob holds `count` floats unpacked: 5 bytes each (tag, value)."""
    values = np.zeros(count, [("tag", "u1"), ("value", "<f4")])
    values["tag"] = 5 << 3 | 5  # BlobProto.data, wire type fixed32
    values["value"] = np.arange(count) % 1000
    blob = values.tobytes() + _field(7, _field(1, _varint(count)))
    path.write_bytes(_field(100, _field(1, name.encode()) + _field(2, b"Convolution")
                            + _field(7, blob)))
    return path


def test_cli_refuses_a_zip_bomb_before_inflating_it(tmp_path):
    baseline, _, _ = peak_rss_mb(sys.executable, str(IMPORT_CLI),
                                 f"--weights={_random_bytes(tmp_path / 'junk.caffemodel')}",
                                 f"--workdir={tmp_path / 'run'}")
    bomb = _zip_bomb(tmp_path / "bomb.npz")
    assert bomb.stat().st_size < 3 << 20
    peak, _, stderr = peak_rss_mb(sys.executable, str(IMPORT_CLI), f"--weights={bomb}",
                                  f"--workdir={tmp_path / 'run'}")
    assert "declares 2147483648 bytes of arrays in" in stderr.strip().splitlines()[-1]
    # Measured: +2 MB over the baseline (TensorFlow, ~620 MB); before the check, 4.2 GB.
    assert peak - baseline < 32, (peak, baseline)


# What the memory tests' children import before their baseline is measured.
_IMPORT_READERS = "from fcn8s_tf.model.weights import caffemodel, fcn8s_map"


@pytest.mark.parametrize("case", ["unpacked_foreign_layer", "npz_foreign_key"])
def test_names_are_checked_before_anything_is_read(tmp_path, case):
    # The reading of the CLI (read_weights with check_fcn8s) without TensorFlow, whose ~620 MB
    # would hide these: a file that is not an FCN-8s costs no more memory than its bytes mapped.
    if case == "unpacked_foreign_layer":  # 3 M floats in 15 MB
        path = _unpacked_caffemodel(tmp_path / "x.caffemodel", "conv1_1", 3_000_000)
    else:  # 96 MB of doubles under a name FCN-8s does not have, stored (no compression)
        path = tmp_path / "x.npz"
        np.savez(path, **{"fc8/W": np.zeros(12_000_000)})
    read = (f"{_IMPORT_READERS}; fcn8s_map.read_weights({str(path)!r}, "
            "check=fcn8s_map.check_fcn8s)")
    baseline, _, _ = peak_rss_mb(sys.executable, "-c", _IMPORT_READERS)
    peak, _, stderr = peak_rss_mb(sys.executable, "-c", read)
    assert "WeightsError" in stderr and "is not an FCN-8s: missing" in stderr, stderr[-2000:]
    # Measured: +15 MB (the caffemodel's pages, mapped and scanned); before, +600 and +140 MB.
    assert peak - baseline < 32, (peak, baseline)


def test_unpacked_floats_are_read_into_one_array(tmp_path):
    path = _unpacked_caffemodel(tmp_path / "x.caffemodel", "conv1_1", 3_000_000)
    read = (f"{_IMPORT_READERS}; (layer,) = caffemodel.read_caffemodel({str(path)!r}).layers; "
            "blob = layer.blobs[0]; print(blob.shape, blob.dtype, blob.sum(dtype='float64'))")
    baseline, _, _ = peak_rss_mb(sys.executable, "-c", _IMPORT_READERS)
    peak, stdout, stderr = peak_rss_mb(sys.executable, "-c", read)
    expected_sum = float((np.arange(3_000_000) % 1000).sum())
    assert stdout.strip() == f"(3000000,) float32 {expected_sum}", stderr[-2000:]
    # 12 MB of float32 and the 15 MB file mapped: measured +26 MB; before, ~200 bytes a value.
    assert peak - baseline < 48, (peak, baseline)


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(100_000))
    return path


def _truncated(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.6)])
    return path


def _npz_missing_key(path: Path, weights: dict) -> Path:
    weights = {k: v for k, v in weights.items() if k != "score_pool3"}
    return _write_npz(path, weights, "Chainer")


@pytest.mark.parametrize("case,message", [
    ("truncated", r"not a readable \.caffemodel.*declares \d+ bytes but only \d+ remain"),
    ("random", r"not a readable \.caffemodel"),
    ("npz_missing_key", r"is not an FCN-8s: missing keys score_pool3/W"),
    ("sha1", r"has SHA-1 [0-9a-f]{40}, not the expected 0000"),
])
def test_bad_files_fail_clearly_and_leave_no_workdir(tmp_path, at_once_file, at_once_weights,
                                                     case, message):
    make = {"truncated": lambda p: _truncated(p, at_once_file),
            "random": _random_bytes,
            "npz_missing_key": lambda p: _npz_missing_key(p.with_suffix(".npz"), at_once_weights),
            "sha1": lambda p: at_once_file}
    weights = make[case](tmp_path / "weights.caffemodel")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(layers.WeightsError, match=message):
        imported_run.import_weights(str(weights), str(out / "run"), log=lambda _: None,
                             sha1="0" * 40 if case == "sha1" else None)
    assert list(out.iterdir()) == []


def test_existing_workdir_refused_and_kept(tmp_path, at_once_file):
    workdir = make_run_dir(tmp_path / "run")
    with pytest.raises(FileExistsError, match="--overwrite"):
        imported_run.import_weights(str(at_once_file), str(workdir), log=lambda _: None)
    # With --overwrite, a failed import leaves the old workdir as it was.
    broken = _truncated(tmp_path / "broken.caffemodel", at_once_file)
    with pytest.raises(layers.WeightsError):
        imported_run.import_weights(str(broken), str(workdir), overwrite=True, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.caffemodel", "run"]
    assert (workdir / "stale.txt").read_text() == "from an earlier run"
    # A run a live trainer holds is not replaced either (its lock names this live process).
    with workdir_lib.RunLock(str(workdir)):
        with pytest.raises(FileExistsError, match=f"is in use by pid {os.getpid()}"):
            imported_run.import_weights(str(at_once_file), str(workdir), overwrite=True,
                                        log=lambda _: None)


# ------------------------------------------------------------------------- --init_from --
def _write_png_records(directory: Path, images, labels) -> str:
    """PNG images (lossless, so the training batch holds exactly these pixels) in one shard."""
    directory.mkdir(parents=True)
    path = directory / "train-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for n, (image, label) in enumerate(zip(images, labels)):
            image_png, label_png = io.BytesIO(), io.BytesIO()
            Image.fromarray(image).save(image_png, format="PNG")
            Image.fromarray(label, mode="L").save(label_png, format="PNG")
            writer.write(records.encode_example(image_png.getvalue(), label_png.getvalue(),
                                                *label.shape, f"ex_{n}", image_format="png"))
    return str(directory / "train-*.tfrecord")


def test_init_from_starts_from_the_imported_weights(tmp_path, imported_workdir):
    workdir = imported_workdir.workdir
    rng = np.random.default_rng(8)
    size = 24
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]
    labels = [rng.integers(0, NUM_CLASSES, (size, size), dtype=np.uint8) for _ in range(2)]
    labels[0][:5] = 255
    # One step whose batch is the whole (2-image) set (shuffle_buffer=1: the records in file
    # order), without augmentation or dropout, in float32 (precision=auto picks bfloat16 on a CPU
    # with AVX512_BF16, 1e-3 off): the step-0 loss is the imported net's loss on exactly these
    # pixels.
    config = config_lib.TrainConfig(
        train_data=_write_png_records(tmp_path / "records", images, labels),
        workdir=str(tmp_path / "finetune"), init_from=str(workdir), base_size=size,
        crop_size=size, scale_range=(1.0, 1.0), flip_prob=0.0, num_classes=NUM_CLASSES,
        backbone_weights=None, fc_units=FC_UNITS, dropout_rate=0.0, skip_scales=(0.01, 1e-4),
        train_steps=1, batch_size=2, learning_rate=1e-4, log_every=1, shuffle_buffer=1,
        export=False, precision="float32")
    result = train_lib.train(config)

    model, _ = run_dir.load_model(str(workdir))
    logits = model(preprocess(np.stack(images)), training=False)
    loss_sum, count = step_lib.masked_cross_entropy(logits, np.stack(labels))
    expected = float(loss_sum / count)
    assert abs(expected - np.log(NUM_CLASSES)) > 0.1  # not the zero-logit loss of a fresh net
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)

    # A net the checkpoint's model_config.json does not describe is refused, naming the flag.
    config.workdir, config.skip_scales = str(tmp_path / "other"), (1.0, 1.0)
    with pytest.raises(ValueError, match=r"--skip_scales=1,1 here, 0.01,0.0001 in "):
        train_lib.train(config)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_init_from_takes_a_checkpoint_path_and_names_what_does_not_fit(tmp_path,
                                                                       imported_workdir):
    from fcn8s_tf.model import fcn8s as model_lib

    workdir = imported_workdir.workdir
    checkpoint = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    kwargs = json.loads((workdir / "model_config.json").read_text())
    model = model_lib.build_fcn8s(**kwargs)
    assert workdir_lib.init_model_from(model, checkpoint, kwargs) == checkpoint
    imported, _ = run_dir.load_model(str(workdir))
    for theirs, ours in zip(imported.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(theirs, ours)

    with pytest.raises(FileNotFoundError, match="nothing.index does not exist"):
        workdir_lib.init_model_from(model, str(tmp_path / "nothing"), kwargs)
    wider = dict(kwargs, fc_units=2 * FC_UNITS)
    with pytest.raises(ValueError, match="does not hold the weights of this model"):
        workdir_lib.init_model_from(model_lib.build_fcn8s(**wider), checkpoint, wider)
