"""Caffe's .caffemodel (a serialized NetParameter) read with no Caffe and no protobuf runtime.

The file is parsed by the project's protobuf wire-format reader (fcn8s_tf/protobuf.py) over a
read-only mmap; nothing in it is ever executed. Only the blob arrays are copied out; every length is
checked against the bytes that are really there before anything is allocated, so a truncated or
hostile file fails with a message, never with a 2 GB allocation. Both layer formats are read:
`layer` (field 100, Caffe since 2015) and the deprecated V1 `layers` (field 2); and both blob shape
forms: `shape` (field 7) and the legacy num/channels/height/width (fields 1-4; a bias may then be
(1, 1, 1, N)). Values stored unpacked (5 bytes a float) are copied one by one into one array, never
held as an object apiece.

The protobuf runtime is not used: its parser takes the whole file as one bytes object and then
holds every value again as a Python repeated field (two copies of ~513 MB), and protobuf's default
message-size limit is why Caffe itself raises it (kProtoReadBytesLimit in src/caffe/util/io.cpp).
"""


import functools
import math
import mmap
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from fcn8s_tf.model.weights.layers import (DeclaredBlob, Layer, WeightsError, WeightsFile,
                                           read_checked)
from fcn8s_tf.protobuf import FIXED32, FIXED64, LENGTH, VARINT, WireError, decode_varint, fields


# ---------------------------------------------------------------------------- wire format --
# The wire format itself (varints, fields) is fcn8s_tf/protobuf.py's; what follows is Caffe's.
def _expect(wire: int, expected: int, what: str, at: int) -> None:
    if wire != expected:
        raise WireError(f"{what} at byte {at} has wire type {wire}, expected {expected}")


def _string(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _int32(value: int) -> int:
    """A varint read as protobuf int32/int64 (negative numbers are 10-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# ----------------------------------------------------------------------------- caffemodel --
# caffe.proto field numbers (BVLC/caffe master, src/caffe/proto/caffe.proto).
_NET_NAME, _NET_LAYERS_V1, _NET_LAYER = 1, 2, 100
# LayerParameter / V1LayerParameter: (name, type, blobs, convolution_param).
_LAYER_FIELDS = (1, 2, 7, 106)
_V1_LAYER_FIELDS = (4, 5, 6, 10)
_V1_V0_LAYER = 1  # V1LayerParameter.layer: the even older V0 format nested inside.
# Far above any real net (ResNet-152's deploy net has ~900): each layer costs ~300 bytes to hold,
# so millions of empty 5-byte layers would cost more than FCN-8s's weights.
_MAX_LAYERS = 100_000
_CONV_GROUP = 5  # ConvolutionParameter.group
# BlobProto: legacy num/channels/height/width, data (float), shape (BlobShape), double_data.
_BLOB_LEGACY = (1, 2, 3, 4)
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1  # BlobShape.dim, packed int64
# V1LayerParameter.LayerType -> the type name Caffe's upgrade_proto.cpp gives it.
_V1_TYPES = {
    0: "", 35: "AbsVal", 1: "Accuracy", 30: "ArgMax", 2: "BNLL", 3: "Concat",
    37: "ContrastiveLoss", 4: "Convolution", 39: "Deconvolution", 5: "Data", 6: "Dropout",
    32: "DummyData", 7: "EuclideanLoss", 25: "Eltwise", 38: "Exp", 8: "Flatten", 9: "HDF5Data",
    10: "HDF5Output", 28: "HingeLoss", 11: "Im2col", 12: "ImageData", 13: "InfogainLoss",
    14: "InnerProduct", 15: "LRN", 29: "MemoryData", 16: "MultinomialLogisticLoss", 34: "MVN",
    17: "Pooling", 26: "Power", 18: "ReLU", 19: "Sigmoid", 27: "SigmoidCrossEntropyLoss",
    36: "Silence", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 33: "Slice", 23: "TanH",
    24: "WindowData", 31: "Threshold",
}


# BlobProto's value fields: their dtype, and the wire type of one value written unpacked.
_VALUE_FIELDS = {_BLOB_DATA: ("<f4", FIXED32), _BLOB_DOUBLE_DATA: ("<f8", FIXED64)}


def _value_count(wire: int, value, field: int) -> int:
    """How many values one occurrence of data/double_data holds: packed (a span) or a single one."""
    dtype, single_wire = _VALUE_FIELDS[field]
    if wire == single_wire:
        return 1
    if wire != LENGTH:
        raise WireError(f"a {dtype} array field has wire type {wire}")
    begin, stop = value
    itemsize = np.dtype(dtype).itemsize
    if (stop - begin) % itemsize:
        raise WireError(f"a packed {dtype} array of {stop - begin} bytes at byte {begin} is not "
                         f"a multiple of {itemsize}")
    return (stop - begin) // itemsize



def _read_shape(buf, span) -> List[int]:
    dims = []
    for number, wire, value, at in fields(buf, *span):
        if number != _SHAPE_DIM:
            continue
        if wire == VARINT:
            dims.append(_int32(value))
        else:
            _expect(wire, LENGTH, "BlobShape.dim", at)
            pos, stop = value
            while pos < stop:
                dim, pos = decode_varint(buf, pos, stop)
                dims.append(_int32(dim))
    return dims


def _declare_blob(buf, span) -> DeclaredBlob:
    """A BlobProto's shape, checked against the number of values it holds; nothing is copied."""
    legacy: Dict[int, int] = {}
    dims: Optional[List[int]] = None
    counts = {field: 0 for field in _VALUE_FIELDS}
    present = set()
    for number, wire, value, at in fields(buf, *span):
        if number in _BLOB_LEGACY:
            _expect(wire, VARINT, f"BlobProto field {number}", at)
            legacy[number] = _int32(value)
        elif number == _BLOB_SHAPE:
            _expect(wire, LENGTH, "BlobProto.shape", at)
            dims = _read_shape(buf, value)
        elif number in _VALUE_FIELDS:
            counts[number] += _value_count(wire, value, number)
            present.add(number)
    # As Caffe's Blob::FromProto: the legacy fields win when any is set; double_data over data.
    if legacy:
        shape = tuple(legacy.get(n, 0) for n in _BLOB_LEGACY)
    else:
        shape = tuple(dims or ())
    if any(d < 0 for d in shape):
        raise WireError(f"a blob declares a negative shape {shape}")
    field = _BLOB_DOUBLE_DATA if _BLOB_DOUBLE_DATA in present else _BLOB_DATA
    count = math.prod(shape)  # Python ints: a hostile shape cannot overflow
    if counts[field] != count:
        raise WireError(f"a blob declares shape {shape} ({count} values) but holds "
                         f"{counts[field]}")
    return DeclaredBlob(shape, functools.partial(_read_values, buf, span, field, shape))


def _read_values(buf, span, field: int, shape: Tuple[int, ...]) -> np.ndarray:
    """A declared blob's values as float32, copied out of the buffer (the mmap closes).

    The array is allocated once at the declared size and filled piece by piece: values written
    unpacked (one field each, 5 bytes a float; legal, though Caffe packs) are never held as a
    numpy array apiece, which cost ~200 bytes a value (3 M of them in 15 MB took 636 MB).
    """
    dtype, _ = _VALUE_FIELDS[field]
    itemsize = np.dtype(dtype).itemsize
    values = np.empty(math.prod(shape), np.float32)
    filled = 0
    for number, _, value, _ in fields(buf, *span):
        if number != field:
            continue
        begin, stop = value
        count = (stop - begin) // itemsize
        if count:
            values[filled:filled + count] = np.frombuffer(buf, dtype, count, begin)
            filled += count
    return values.reshape(shape)


def _read_layer(buf, span, v1: bool) -> Layer:
    name_field, type_field, blobs_field, conv_field = _V1_LAYER_FIELDS if v1 else _LAYER_FIELDS
    name, type_name, group, blob_spans = "", "", 1, []
    for number, wire, value, at in fields(buf, *span):
        if number == name_field:
            _expect(wire, LENGTH, "layer name", at)
            name = _string(buf, value)
        elif number == type_field:
            if v1:
                _expect(wire, VARINT, "V1 layer type", at)
                type_name = _V1_TYPES.get(value, f"V1 type {value}")
            else:
                _expect(wire, LENGTH, "layer type", at)
                type_name = _string(buf, value)
        elif number == blobs_field:
            _expect(wire, LENGTH, "layer blob", at)
            blob_spans.append(value)
        elif number == conv_field:
            _expect(wire, LENGTH, "convolution_param", at)
            for sub, sub_wire, sub_value, sub_at in fields(buf, *value):
                if sub == _CONV_GROUP:
                    _expect(sub_wire, VARINT, "convolution_param.group", sub_at)
                    group = sub_value
        elif v1 and number == _V1_V0_LAYER:
            raise WireError("the layers are in Caffe's V0 format (before 2014), which is not "
                             "read here; upgrade the file with Caffe's upgrade_net_proto_binary")
    blobs = []
    for i, blob_span in enumerate(blob_spans):
        try:
            blobs.append(_declare_blob(buf, blob_span))
        except WireError as e:
            raise WireError(f"layer {name!r} blob {i}: {e}") from None
    return Layer(name=name, type=type_name, blobs=blobs, group=group)


def read_caffemodel(path: str, check: Optional[Callable[[WeightsFile], None]] = None
                    ) -> WeightsFile:
    """Parses a binary .caffemodel (a Caffe NetParameter) without Caffe.

    Args:
      path: the .caffemodel file.
      check: called with the net as declared (DeclaredBlobs, shapes only) before any value is
        copied; it raises to stop there (check_fcn8s).
    Returns:
      A WeightsFile with every layer in file order (layers without weights included, blobs []).
    Raises:
      WeightsError: the file is empty, truncated, or not a NetParameter with layers.
    """
    size = os.path.getsize(path)
    not_caffe = f"{path} is not a readable .caffemodel (truncated, or not a caffemodel at all)"
    if size == 0:
        raise WeightsError(f"{not_caffe}: the file is empty")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        layers, v1_layers, net_name, where = [], [], "", "the NetParameter"
        try:
            for number, wire, value, at in fields(buf, 0, size):
                if number == _NET_NAME and wire == LENGTH:
                    net_name = _string(buf, value)
                elif number in (_NET_LAYER, _NET_LAYERS_V1):
                    where = f"the layer at byte {at}"
                    _expect(wire, LENGTH, f"NetParameter field {number}", at)
                    if len(layers) + len(v1_layers) == _MAX_LAYERS:
                        raise WireError(f"more than {_MAX_LAYERS} layers, far more than any "
                                         "real net has")
                    if number == _NET_LAYER:
                        layers.append(_read_layer(buf, value, v1=False))
                    else:
                        v1_layers.append(_read_layer(buf, value, v1=True))
                    where = "the NetParameter"
        except WireError as e:
            hint = _text_hint(buf)
            raise WeightsError(f"{not_caffe}: in {where}: {e} (file size {size} bytes){hint}") \
                from None
        if not layers and not v1_layers:
            raise WeightsError(f"{not_caffe}: it holds no NetParameter.layer (field 100) or "
                               f".layers (field 2)")
        if layers and v1_layers:
            raise WeightsError(f"{path} mixes both layer formats (NetParameter.layer and the V1 "
                               ".layers), which Caffe itself refuses")
        fmt = ("caffemodel, NetParameter.layer (Caffe since 2015)" if layers
               else "caffemodel, NetParameter.layers (V1, deprecated)")
        net = WeightsFile(path=path, format=fmt, layers=layers or v1_layers, net_name=net_name)
        read_checked(net, check)
    return net


def _text_hint(buf) -> str:
    """A hint when the bytes look like text: the prototxt (net definition) given by mistake."""
    head = bytes(buf[:256])
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return ""
    if all(c.isprintable() or c.isspace() for c in text):
        return ("; it looks like text: a .prototxt describes a net but holds no weights, the "
                ".caffemodel is the binary file")
    return ""
