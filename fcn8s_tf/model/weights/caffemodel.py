"""Published FCN-8s weights into the project's Keras FCN-8s, with no Caffe installed.

    python tools/import_weights.py --weights=fcn8s-heavy-pascal.caffemodel \
        --workdir=runs/fcn8s_caffe

Two file formats are read; nothing in either is ever executed:
  .caffemodel  Caffe's binary `NetParameter` (src/caffe/proto/caffe.proto), parsed here by a small
               protobuf wire-format reader over a read-only mmap. Only the blob arrays are copied
               out; every length is checked against the bytes that are really there before anything
               is allocated, so a truncated or hostile file fails with a message, never with a
               2 GB allocation. Both layer formats are read: `layer` (field 100, Caffe since 2015)
               and the deprecated V1 `layers` (field 2); and both blob shape forms: `shape`
               (field 7) and the legacy num/channels/height/width (fields 1-4; a bias may then be
               (1, 1, 1, N)). The protobuf runtime is not used: its parser takes the whole file
               as one bytes object and then holds every value again as a Python repeated field
               (two copies of ~513 MB), and protobuf's default message-size limit is why Caffe
               itself raises it (kProtoReadBytesLimit in src/caffe/util/io.cpp).
  .npz         a numpy archive, `np.load(allow_pickle=False)`, keys in one of two conventions:
                 Chainer (wkentaro/fcn's fcn8s_from_caffe.npz):  conv1_1/W, conv1_1/b, upscore2/W
                 PyTorch state_dict (wkentaro/pytorch-fcn):      conv1_1.weight, conv1_1.bias
               with the Caffe layer names (conv1_1 ... conv5_3, fc6, fc7, score_fr, upscore2,
               score_pool4, upscore_pool4, score_pool3, upscore8) and Caffe's array layouts (both
               ports use them). Optional scale_pool4/W and scale_pool3/W (or .weight) carry the
               skip scales; those ports apply the at-once net's 0.01/0.0001 in code, so an .npz
               without them needs the scales from the user (`skip_scales`).
               To write one from pytorch-fcn:
                 np.savez("fcn8s.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
Both readers first declare what a file holds (layer names and types, blob shapes) and hand that to
a `check` before any array is read. The import's, check_fcn8s, lets through only FCN-8s's layers at
FCN-8s's shapes, so memory is bounded by the real net's size, not by what a file claims: an .npz
member may inflate a thousandfold (an .npz declaring more than 4x its size is refused outright),
and a caffemodel may carry layers FCN-8s has not. Values a caffemodel stores unpacked (5 bytes a
float) are copied one by one into one array, never held as an object apiece.

Mapping (Caffe -> keras, layer names as in model.build_fcn8s):
  Convolution    blob (out, in, kh, kw) -> kernel (kh, kw, in, out); conv1_1..conv5_3 become
                 keras.applications' block1_conv1..block5_conv3, the FCN layers keep their names.
  Deconvolution  blob (C_in, C_out/group, kh, kw) -> Conv2DTranspose kernel (kh, kw, C_out, C_in).
                 Both frameworks cross-correlate: no spatial flip (tests check this on random
                 asymmetric kernels against a numpy Caffe Deconvolution).
  Scale          scale_pool4/scale_pool3 (at-once net): a constant blob becomes the model's skip
                 scale; a non-constant one (or a Scale bias) is folded into score_pool4/score_pool3,
                 W x (s * x + b) = (W s) x + W b, and that skip scale becomes 1. The staged net
                 has no Scale layers: its skips are unscaled (1, 1).
num_classes and the fc6/fc7 width are read from the blobs (score_fr, fc6).

Stages below: protobuf wire format, caffemodel, npz, FCN-8s mapping, model and workdir.
"""

import dataclasses
import functools
import hashlib
import math
import mmap
import os
import shutil
import tempfile
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fcn8s_tf.protobuf import FIXED32, FIXED64, LENGTH, VARINT, WireError, decode_varint, fields


class WeightsError(ValueError):
    """A weights file that cannot be read, or that does not hold an FCN-8s; the message says why."""


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


@dataclasses.dataclass(frozen=True)
class DeclaredBlob:
    """A blob as its file declares it, before any of its values is read.

    read_weights hands a net of these to its `check`, so that names and shapes are judged before
    memory is spent: what a file declares is not what it costs (an .npz member may inflate a
    thousandfold, and a caffemodel layer FCN-8s does not have is never needed).

    Attributes:
      shape: the declared shape (Caffe's layout).
      read: returns the values, float32, in that shape.
    """
    shape: Tuple[int, ...]
    read: Callable[[], np.ndarray]


@dataclasses.dataclass
class Layer:
    """One layer of a weights file.

    Attributes:
      name: the layer name ("conv1_1").
      type: Caffe's type name ("Convolution"); "" where the file does not say (npz).
      blobs: its parameter arrays, float32, in the shape the file declares (Caffe layouts); while
        read_weights's `check` runs, DeclaredBlobs (shapes only) in their place.
      group: convolution_param.group (1 unless the file says otherwise).
    """
    name: str
    type: str
    blobs: list
    group: int = 1


@dataclasses.dataclass
class WeightsFile:
    """What a weights file holds: its format in words, the net's name, and its layers in order."""
    path: str
    format: str
    layers: List[Layer]
    net_name: str = ""


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
        _read_checked(net, check)
    return net


def _read_checked(net: WeightsFile, check: Optional[Callable[[WeightsFile], None]]) -> None:
    """Runs `check` on the declared net, then reads each DeclaredBlob's values in its place."""
    if check is not None:
        check(net)
    for layer in net.layers:
        layer.blobs = [blob.read() for blob in layer.blobs]


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


# ------------------------------------------------------------------------------------ npz --
# Key suffixes of (weight, bias) per convention; the prefix is the Caffe layer name.
IMPORTED_FROM_FILE = "imported_from.json"  # what a workdir was imported from
NPZ_KEY_STYLES = {"Chainer": ("/W", "/b"), "PyTorch": (".weight", ".bias")}
_NPY_VERSIONS = ((1, 0), (2, 0))
# Deflate cannot expand data by more than ~1032x: a larger declared size is a lie (zip bomb).
_MAX_DEFLATE_RATIO = 1032
# Trained float32 weights are noise to deflate (it saves 7% on them, 40% on a net half zeros), so
# an archive that declares more than 4x its size holds mostly constants, not trained weights: a
# 2 MB file of zeros that declares 2 GiB is refused before a byte of it is inflated.
_MAX_NPZ_EXPANSION = 4


def _npz_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """Every member's array shape (key -> shape) from its .npy header, only the headers inflated.

    Raises:
      WeightsError: a member that is not a float .npy, or whose declared sizes the archive
        cannot hold or that add up to more than _MAX_NPZ_EXPANSION times the archive.
    """
    file_size = os.path.getsize(path)
    shapes, total = {}, 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            where = f"{path}: member {info.filename!r}"
            if not info.filename.endswith(".npy"):
                raise WeightsError(f"{where} is not a .npy array, so this is not a numpy .npz "
                                   "(a PyTorch .pt/.pth is a zip of pickles and is never "
                                   "unpickled here: save its state_dict with np.savez)")
            limit = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                     else _MAX_DEFLATE_RATIO * info.compress_size)
            if info.compress_size > file_size or info.file_size > limit:
                raise WeightsError(f"{where} declares {info.file_size} bytes, more than the "
                                   f"{file_size}-byte archive can hold")
            with archive.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    if version not in _NPY_VERSIONS:
                        raise ValueError(f"unsupported .npy version {version}")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                except ValueError as e:
                    raise WeightsError(f"{where}: not a readable .npy header ({e})") from None
                if dtype.hasobject or dtype.kind != "f":
                    raise WeightsError(f"{where} holds {dtype} values; weights must be floats "
                                       "(object arrays would need pickle, never used here)")
                declared = math.prod(shape) * dtype.itemsize
                if declared != info.file_size - f.tell():
                    raise WeightsError(f"{where} declares shape {shape} ({declared} bytes) but "
                                       f"holds {info.file_size - f.tell()} bytes")
            shapes[info.filename[:-len(".npy")]] = tuple(shape)
            total += declared
    if total > _MAX_NPZ_EXPANSION * file_size:
        raise WeightsError(f"{path} declares {total} bytes of arrays in {file_size} bytes "
                           f"({total / file_size:.0f}x): trained weights do not compress beyond "
                           f"{_MAX_NPZ_EXPANSION}x, so this is mostly constants, not an FCN-8s")
    return shapes


def read_npz(path: str, check: Optional[Callable[[WeightsFile], None]] = None) -> WeightsFile:
    """Reads an .npz of FCN-8s weights keyed as in the module docstring (Chainer or PyTorch).

    Args:
      path: the .npz file.
      check: called with the net as declared by the .npy headers (DeclaredBlobs) before any
        array is inflated; it raises to stop there (check_fcn8s). Arrays are then read one at a
        time and cast to float32.
    Raises:
      WeightsError: not a readable .npz of float arrays, keys in neither convention or mixed.
    """
    try:
        shapes = _npz_shapes(path)
        with np.load(path, allow_pickle=False) as archive:
            net = _npz_layers(path, shapes, archive)
            _read_checked(net, check)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise WeightsError(f"{path} is not a readable .npz (truncated?): {e}") from None
    return net


def _npz_layers(path: str, shapes: Dict[str, Tuple[int, ...]], archive) -> WeightsFile:
    """The layers the keys name (DeclaredBlobs reading from the open `archive`)."""
    styles, unknown, layers = set(), [], {}
    for key in sorted(shapes):
        for style, suffixes in NPZ_KEY_STYLES.items():
            matched = [i for i, s in enumerate(suffixes) if key.endswith(s) and len(key) > len(s)]
            if matched:
                styles.add(style)
                name = key[:-len(suffixes[matched[0]])]
                layers.setdefault(name, {})[matched[0]] = DeclaredBlob(
                    shapes[key], functools.partial(_read_member, archive, key))
                break
        else:
            unknown.append(key)
    if unknown or len(styles) != 1:
        expected = " or ".join(f"<layer>{w}, <layer>{b}" for w, b in NPZ_KEY_STYLES.values())
        problem = (f"keys {unknown[:8]} fit neither convention" if unknown
                   else "it mixes both key conventions" if styles else "it is empty")
        more = " ..." if len(shapes) > 12 else ""
        raise WeightsError(f"{path}: {problem}; expected keys {expected} "
                           f"(keys found: {sorted(shapes)[:12]}{more})")
    style = styles.pop()
    result = []
    for name, parts in layers.items():
        if 0 not in parts:
            raise WeightsError(f"{path}: {name}{NPZ_KEY_STYLES[style][1]} has no "
                               f"{name}{NPZ_KEY_STYLES[style][0]}")
        result.append(Layer(name=name, type="", blobs=[parts[i] for i in sorted(parts)]))
    return WeightsFile(path=path, format=f"npz, {style} keys", layers=result)


def _read_member(archive, key: str) -> np.ndarray:
    """One array of an open np.load archive, as float32."""
    return archive[key].astype(np.float32, copy=False)


def check_readable(path: str) -> None:
    """Raises, in one line naming `path`, unless it is a file this process can read.

    Raises:
      FileNotFoundError: no such file. WeightsError: a folder, or not readable (permissions).
    """
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a folder; expected a .caffemodel or .npz file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise WeightsError(f"{path} cannot be read: {e.strerror}") from None


def read_weights(path: str, check: Optional[Callable[[WeightsFile], None]] = None
                 ) -> WeightsFile:
    """Reads a .caffemodel or an .npz, told apart by content (a zip archive is an .npz).

    Args:
      path: the file.
      check: called with the net as the file declares it (layer names, types, DeclaredBlob
        shapes) before any array is read or allocated; it raises to refuse the file. Pass
        check_fcn8s to read only what an FCN-8s holds.
    Raises:
      FileNotFoundError: no such file.
      WeightsError: anything else wrong with it (see read_caffemodel, read_npz).
    """
    check_readable(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic in (b"PK\x03\x04", b"PK\x05\x06"):
        return read_npz(path, check)
    if magic.startswith(b"\x93NUM"):
        raise WeightsError(f"{path} is a single .npy array; expected a .caffemodel or an .npz "
                           "with one array per layer")
    if magic.startswith(b"\x89HDF"):
        raise WeightsError(f"{path} is an HDF5 file; expected a .caffemodel or an .npz (VGG16 "
                           "Keras .h5 weights go to fcn8s_tf.train --backbone_weights)")
    return read_caffemodel(path, check)


# ------------------------------------------------------------------------ FCN-8s mapping --
# Caffe layer -> layer of model.build_fcn8s. The VGG16 convs take keras.applications' names.
CONV_LAYERS = {
    "conv1_1": "block1_conv1", "conv1_2": "block1_conv2",
    "conv2_1": "block2_conv1", "conv2_2": "block2_conv2",
    "conv3_1": "block3_conv1", "conv3_2": "block3_conv2", "conv3_3": "block3_conv3",
    "conv4_1": "block4_conv1", "conv4_2": "block4_conv2", "conv4_3": "block4_conv3",
    "conv5_1": "block5_conv1", "conv5_2": "block5_conv2", "conv5_3": "block5_conv3",
    "fc6": "fc6", "fc7": "fc7", "score_fr": "score_fr",
    "score_pool4": "score_pool4", "score_pool3": "score_pool3",
}
DECONV_LAYERS = ("upscore2", "upscore_pool4", "upscore8")
# The at-once net's Scale layers and the score layer each one feeds. Optional: the staged net has
# none (its skips are unscaled).
SCALE_LAYERS = {"scale_pool4": "score_pool4", "scale_pool3": "score_pool3"}
_EXPECTED_TYPE = {**{n: "Convolution" for n in CONV_LAYERS},
                  **{n: "Deconvolution" for n in DECONV_LAYERS},
                  **{n: "Scale" for n in SCALE_LAYERS}}
# VGG16's 3x3 convolutions, (input, output) channels, as in the published prototxts. With the
# file's own class count and fc width they give every blob's shape, so a file's declared shapes
# are judged before its values are read; build_model checks the kernels again against the model.
VGG16_CONVS = {
    "conv1_1": (3, 64), "conv1_2": (64, 64), "conv2_1": (64, 128), "conv2_2": (128, 128),
    "conv3_1": (128, 256), "conv3_2": (256, 256), "conv3_3": (256, 256),
    "conv4_1": (256, 512), "conv4_2": (512, 512), "conv4_3": (512, 512),
    "conv5_1": (512, 512), "conv5_2": (512, 512), "conv5_3": (512, 512),
}
# Deconvolution kernel sizes: twice the stride (x2, x2, x8), bilinear in the published nets.
DECONV_KERNELS = {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16}


@dataclasses.dataclass
class ImportedFCN8s:
    """FCN-8s weights read from a file, in keras layouts, ready for `build_model`.

    Attributes:
      source: WeightsFile.path; format: WeightsFile.format.
      num_classes: from score_fr's output channels.
      fc_units: fc6/fc7 width, from fc6's output channels.
      skip_scales: (pool4, pool3) factors for build_fcn8s.
      scale_notes: how each skip scale was obtained, in words.
      weights: keras layer name -> [kernel (, bias)] in keras layout, float32.
      caffe_names: keras layer name -> the file's layer name (for messages).
      layer_names: every layer name of the file, in order.
    """
    source: str
    format: str
    num_classes: int
    fc_units: int
    skip_scales: Tuple[float, float]
    scale_notes: List[str]
    weights: Dict[str, List[np.ndarray]]
    caffe_names: Dict[str, str]
    layer_names: List[str]

    def model_kwargs(self) -> Dict:
        """build_fcn8s arguments, as fcn8s_tf.train writes them to model_config.json."""
        return dict(num_classes=self.num_classes, fc_units=self.fc_units,
                    learnable_upsampling=False, dropout_rate=0.5,
                    skip_scales=list(self.skip_scales), train_backbone=True)


def _describe_layer(layer: Layer) -> str:
    shapes = ", ".join(str(tuple(b.shape)) for b in layer.blobs)
    kind = f"{layer.type}: " if layer.type else ""
    return f"{layer.name} ({kind}{shapes})" if layer.blobs else f"{layer.name} ({layer.type})"


def fcn8s_blob_shapes(num_classes: int, fc_units: int) -> Dict[str, Tuple[int, ...]]:
    """Caffe layer -> the shape of its weight blob in an FCN-8s (deconvolutions ungrouped)."""
    c, f = num_classes, fc_units
    shapes = {name: (c_out, c_in, 3, 3) for name, (c_in, c_out) in VGG16_CONVS.items()}
    shapes.update(fc6=(f, VGG16_CONVS["conv5_3"][1], 7, 7), fc7=(f, f, 1, 1),
                  score_fr=(c, f, 1, 1), score_pool4=(c, VGG16_CONVS["conv4_3"][1], 1, 1),
                  score_pool3=(c, VGG16_CONVS["conv3_3"][1], 1, 1))
    shapes.update({name: (c, c, k, k) for name, k in DECONV_KERNELS.items()})
    return shapes


def _is_vector(shape: Sequence[int], size: int) -> bool:
    """(size,), or size values in one non-1 dimension: a legacy bias is (1, 1, 1, N)."""
    return math.prod(shape) == size and sum(d != 1 for d in shape) <= 1


def _ungroup(blob: np.ndarray, group: int, where: str) -> np.ndarray:
    """Deconvolution blob (C_in, C_out/g, kh, kw) with g groups -> the full (C_in, C_out, kh, kw).

    Group g maps input channels [g C_in/G, (g+1) C_in/G) to outputs [g C_out/G, (g+1) C_out/G).
    """
    if group == 1:
        return blob
    c_in, c_out_per_group = blob.shape[:2]
    if group < 1 or c_in % group:
        raise WeightsError(f"{where} has group={group}, which does not divide its {c_in} inputs")
    full = np.zeros((c_in, c_out_per_group * group) + blob.shape[2:], np.float32)
    per_group = c_in // group
    for g in range(group):
        rows = slice(g * per_group, (g + 1) * per_group)
        full[rows, g * c_out_per_group:(g + 1) * c_out_per_group] = blob[rows]
    return full


def keras_kernel(blob: np.ndarray) -> np.ndarray:
    """Caffe 4-D weights -> keras kernel, one permutation for both kinds, no spatial flip.

    Convolution (out, in, kh, kw) -> Conv2D (kh, kw, in, out); Deconvolution (C_in, C_out, kh, kw)
    (after _ungroup) -> Conv2DTranspose (kh, kw, C_out, C_in). Both frameworks cross-correlate,
    and both transposed convolutions are the gradient of that, so the taps line up as they are.
    """
    return np.ascontiguousarray(blob.transpose(2, 3, 1, 0), dtype=np.float32)


def check_fcn8s(net: WeightsFile) -> None:
    """read_weights's `check` for an FCN-8s: its layer names, types and every blob's shape.

    Run on the declared net, it lets nothing but FCN-8s's blobs be read, each at the size that
    net gives it, so memory is bounded by the net's real size, not by what a file claims. The
    class count and fc width come from the file (score_fr, fc6) and size the rest; their own
    values are bounded by the bytes (a caffemodel's values must be in the file, an .npz may not
    expand beyond _MAX_NPZ_EXPANSION).

    Raises:
      WeightsError: as fcn8s_from, for the names and shapes.
    """
    _check_shapes(net, _fcn8s_layers(net))


def _fcn8s_layers(net: WeightsFile) -> Dict[str, Layer]:
    """FCN-8s's layers by name, after checking the file has them all and no others with weights."""
    is_npz = net.format.startswith("npz")
    by_name: Dict[str, Layer] = {}
    for layer in net.layers:
        if not layer.blobs:
            continue
        if layer.name in by_name:
            raise WeightsError(f"{net.path}: two layers with weights are named {layer.name!r}")
        by_name[layer.name] = layer
    required = list(CONV_LAYERS) + list(DECONV_LAYERS)
    missing = [n for n in required if n not in by_name]
    unexpected = [n for n in by_name if n not in _EXPECTED_TYPE]
    wrong_type = [f"{n} is {by_name[n].type}, expected {t}" for n, t in _EXPECTED_TYPE.items()
                  if n in by_name and by_name[n].type and by_name[n].type != t]
    if missing or unexpected or wrong_type:
        problems = []
        if missing:
            names = ([f"{n}{NPZ_KEY_STYLES[net.format.split()[1]][0]}" for n in missing]
                     if is_npz else missing)
            problems.append(f"missing {'keys' if is_npz else 'layers'} {', '.join(names)}")
        if unexpected:
            problems.append(f"layers with weights FCN-8s does not have: {', '.join(unexpected)}")
        problems.extend(wrong_type)
        found = "; ".join(_describe_layer(layer) for layer in net.layers) or "none"
        raise WeightsError(f"{net.path} is not an FCN-8s: {'; '.join(problems)}. "
                           f"Layers found ({len(net.layers)}): {found}")
    return by_name


def _check_shapes(net: WeightsFile, by_name: Dict[str, Layer]) -> None:
    """Raises WeightsError naming every blob whose count or shape does not fit FCN-8s.

    Reads `.shape` only, so it judges DeclaredBlobs (check_fcn8s) as it judges arrays.
    """
    # The class count and fc width, read from the output channels of score_fr and fc6.
    widths = [(tuple(by_name[name].blobs[0].shape) or (0,))[0] for name in ("score_fr", "fc6")]
    if min(widths) < 1:
        raise WeightsError(f"{net.path}: misshapen FCN-8s layers: score_fr and fc6 weights "
                           f"have shapes {by_name['score_fr'].blobs[0].shape} and "
                           f"{by_name['fc6'].blobs[0].shape}, expected (out, in, kh, kw)")
    shapes = fcn8s_blob_shapes(*widths)
    errors: List[str] = []
    for name, expected in shapes.items():
        layer = by_name[name]
        deconv = name in DECONV_LAYERS
        allowed = (1, 2) if deconv else (2,)  # a deconvolution's bias is optional (and zero)
        if len(layer.blobs) not in allowed:
            errors.append(f"{name} has {len(layer.blobs)} blobs, expected "
                          f"{' or '.join(map(str, allowed))}")
            continue
        outputs = expected[1] if deconv else expected[0]
        if deconv:  # (C_in, C_out / group, kh, kw)
            if layer.group < 1 or expected[0] % layer.group:
                errors.append(f"{name} has group={layer.group}, which does not divide its "
                              f"{expected[0]} inputs")
                continue
            expected = (expected[0], expected[1] // layer.group) + expected[2:]
        if tuple(layer.blobs[0].shape) != expected:
            errors.append(f"{name} has shape {tuple(layer.blobs[0].shape)}, expected {expected}")
        if len(layer.blobs) == 2 and not _is_vector(layer.blobs[1].shape, outputs):
            errors.append(f"{name} bias has shape {tuple(layer.blobs[1].shape)}, expected "
                          f"({outputs},)")
    for scale_name, score_name in SCALE_LAYERS.items():
        if scale_name not in by_name:
            continue
        blobs = by_name[scale_name].blobs
        c_in = shapes[score_name][1]
        if len(blobs) not in (1, 2) or any(math.prod(b.shape) not in (1, c_in) for b in blobs):
            errors.append(f"{scale_name} blobs {[tuple(b.shape) for b in blobs]}, expected "
                          f"({c_in},) (the channels of {score_name}'s input) or a scalar, and an "
                          "optional bias of the same size")
    if errors:
        raise WeightsError(f"{net.path}: misshapen FCN-8s layers: {'; '.join(errors)}")


def fcn8s_from(net: WeightsFile,
               skip_scales: Optional[Sequence[float]] = None) -> ImportedFCN8s:
    """Checks that a weights file is an FCN-8s and converts its weights to keras layouts.

    Args:
      net: from read_weights.
      skip_scales: (pool4, pool3), only for an .npz without scale_pool4/scale_pool3 entries (the
        ports that wrote those apply the scales in code); a .caffemodel's come from its file.
    Returns:
      The ImportedFCN8s. Every blob's shape has been checked against FCN-8s's (check_fcn8s);
      build_model checks the kernels again, against the model itself.
    Raises:
      WeightsError: not an FCN-8s (the message names missing, unexpected and misshapen layers,
        and lists the layers found), or skip_scales given where the file has them / missing.
    """
    by_name = _fcn8s_layers(net)
    _check_shapes(net, by_name)
    caffe_weights: Dict[str, List[np.ndarray]] = {}
    for name in CONV_LAYERS:
        kernel, bias = by_name[name].blobs
        caffe_weights[name] = [kernel, bias.reshape(kernel.shape[0])]
    for name in DECONV_LAYERS:
        layer = by_name[name]
        if len(layer.blobs) == 2 and np.any(layer.blobs[1]):
            # A deconvolution bias would add a border-dependent constant after the later
            # upsamplings: not foldable into another layer, and FCN-8s has none.
            raise WeightsError(f"{net.path}: misshapen FCN-8s layers: {name} has a non-zero "
                               "bias; FCN-8s's deconvolutions have none")
        caffe_weights[name] = [_ungroup(layer.blobs[0], layer.group, name)]

    fc_units = caffe_weights["fc6"][0].shape[0]
    num_classes = caffe_weights["score_fr"][0].shape[0]
    scales, notes = _skip_scales(net, by_name, caffe_weights, skip_scales,
                                 net.format.startswith("npz"))

    weights, caffe_names = {}, {}
    for name, blobs in caffe_weights.items():
        keras_name = CONV_LAYERS.get(name, name)
        weights[keras_name] = [keras_kernel(blobs[0])] + blobs[1:]
        caffe_names[keras_name] = name
    return ImportedFCN8s(source=net.path, format=net.format, num_classes=int(num_classes),
                         fc_units=int(fc_units), skip_scales=scales, scale_notes=notes,
                         weights=weights, caffe_names=caffe_names,
                         layer_names=[layer.name for layer in net.layers])


def _skip_scales(net: WeightsFile, by_name: Dict[str, Layer],
                 caffe_weights: Dict[str, List[np.ndarray]],
                 given: Optional[Sequence[float]], is_npz: bool):
    """The model's (pool4, pool3) scales; folds non-constant Scale layers into caffe_weights."""
    present = [n for n in SCALE_LAYERS if n in by_name]
    if given is not None:
        if not is_npz or present:
            raise WeightsError(f"{net.path} carries its own skip scales "
                               f"({', '.join(present) or 'no Scale layers: unscaled, 1'}); "
                               "skip_scales is only for an .npz without scale_pool4/scale_pool3")
        if len(given) != 2:
            raise WeightsError(f"skip_scales must be (pool4, pool3), got {tuple(given)}")
        return (float(given[0]), float(given[1])), [f"pool4 {given[0]:g}, pool3 {given[1]:g}: "
                                                    "given by the user"]
    if is_npz and not present:
        raise WeightsError(
            f"{net.path} has no scale_pool4/scale_pool3 entries: the code that wrote it applies "
            "the skip scales itself, so they must be given (--skip_scales): 0.01,0.0001 for the "
            "at-once net (fcn8s-atonce_from_caffe.npz, pytorch-fcn FCN8sAtOnce), 1,1 for the "
            "staged net (fcn8s_from_caffe.npz, pytorch-fcn FCN8s)")
    scales, notes = [], []
    for scale_name, score_name in SCALE_LAYERS.items():
        if scale_name not in by_name:
            scales.append(1.0)
            notes.append(f"{scale_name}: absent, 1 (the staged net scales no skip)")
            continue
        layer = by_name[scale_name]
        kernel, bias = caffe_weights[score_name]
        c_in = kernel.shape[1]  # the blobs' sizes are checked (_check_shapes)
        scale = np.broadcast_to(layer.blobs[0].reshape(-1), (c_in,)).astype(np.float64)
        folded = []
        if len(layer.blobs) == 2 and np.any(layer.blobs[1]):
            # W (s x + b) + c = W (s x) + (W b + c): the Scale bias moves into the score bias.
            shift = np.broadcast_to(layer.blobs[1].reshape(-1), (c_in,)).astype(np.float64)
            bias = (bias + kernel[:, :, 0, 0].astype(np.float64) @ shift).astype(np.float32)
            folded.append("bias")
        if np.all(scale == scale[0]):
            # The float32's shortest decimal (0.01, not 0.009999999776): what --skip_scales gives
            # for the same net, so model_config.json matches a fine-tuning run's flags.
            scales.append(float(str(layer.blobs[0].reshape(-1)[0])))
        else:
            kernel = (kernel * scale[None, :, None, None]).astype(np.float32)
            scales.append(1.0)
            folded.insert(0, f"per-channel scale (min {scale.min():g}, max {scale.max():g})")
        caffe_weights[score_name] = [kernel, bias]
        notes.append(f"{scale_name}: " + (f"{' and '.join(folded)} folded into {score_name}, "
                                          f"skip scale {scales[-1]:g}" if folded
                                          else f"constant {scales[-1]:g}"))
    return (scales[0], scales[1]), notes


def describe(imported: ImportedFCN8s) -> str:
    """What was read, in a few lines: format, layers, classes, widths, scales."""
    lines = [f"Read {imported.source}",
             f"  format       {imported.format}",
             f"  layers       {len(imported.layer_names)} in the file, {len(imported.weights)} "
             f"with FCN-8s weights: {', '.join(imported.caffe_names.values())}",
             f"  num_classes  {imported.num_classes}",
             f"  fc6/fc7      {imported.fc_units} wide",
             f"  skip scales  pool4 {imported.skip_scales[0]:g}, pool3 "
             f"{imported.skip_scales[1]:g}"]
    lines += [f"               {note}" for note in imported.scale_notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------- model and workdir --
def build_model(imported: ImportedFCN8s):
    """An FCN-8s from model.build_fcn8s holding the imported weights (any input size, float32).

    Raises:
      WeightsError: a kernel's shape does not fit the model (naming the file's layer, its shape
        and the shape expected, both in the file's layout).
    """
    from fcn8s_tf.model import fcn8s as model_lib  # TensorFlow only once a file has been read

    model = model_lib.build_fcn8s(weights=None, **imported.model_kwargs())
    errors = []
    for keras_name, values in imported.weights.items():
        target = model.get_layer(keras_name).kernel.shape
        if tuple(values[0].shape) != tuple(target):
            to_caffe = lambda s: (s[3], s[2], s[0], s[1])  # the inverse of (2, 3, 1, 0)
            errors.append(f"{imported.caffe_names[keras_name]} has shape "
                          f"{to_caffe(values[0].shape)}, expected {to_caffe(target)}")
    if errors:
        raise WeightsError(f"{imported.source}: misshapen FCN-8s layers "
                           f"(num_classes {imported.num_classes}, fc width {imported.fc_units}, "
                           f"read from score_fr and fc6): {'; '.join(errors)}")
    for keras_name, values in imported.weights.items():
        model.get_layer(keras_name).set_weights(values)
    return model


def file_sha1(path: str) -> str:
    """SHA-1 of a file, read in 16 MB pieces."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            digest.update(piece)
    return digest.hexdigest()


# An import in progress: <parent>/.import_weights.tmp-p<pid>-<workdir name>-XXXXXXXX holds the
# workdir being written (new/) and, during the swap, the one it replaces (old/). The pid lets a
# later import remove what a killed one left (workdir.remove_stale_temp_dirs) and leave alone the
# folder of one still running.
IMPORT_TMP_PREFIX = ".import_weights.tmp-"


def import_weights(weights_path: str, workdir: str, *, sha1: Optional[str] = None,
                   overwrite: bool = False, skip_scales: Optional[Sequence[float]] = None,
                   log=print) -> Tuple[ImportedFCN8s, str]:
    """Reads published FCN-8s weights and writes a workdir the rest of the project understands.

    The workdir gets what fcn8s_tf.train writes and fcn8s_tf.training.workdir.load_model reads:
    model_config.json (build_fcn8s arguments), checkpoints/ckpt-0 (tf.train.Checkpoint(model=)),
    and export/1 (the TF Serving SavedModel of serving/export.py), plus imported_from.json
    (the file, its SHA-1 and what was read). It is written into a temporary folder beside it and
    renamed into place, so an error, Ctrl-C or SIGTERM (which tools/import_weights.py turns into an
    exception) leaves no half-written workdir, no temporary folder, and with overwrite the old
    workdir as it was; a later import removes what a SIGKILL left. Its mode is 0777 less the umask,
    as os.makedirs gives a trained one, so other users can serve the export where they could
    serve a trained one.

    Args:
      weights_path: a .caffemodel or .npz (see the module docstring).
      workdir: the directory to create; must not exist or be empty unless overwrite.
      sha1: if given, the file's SHA-1 must equal it (checked before parsing).
      overwrite: replace an existing run directory (one with model_config.json and checkpoints/);
        any other non-empty folder is refused.
      skip_scales: (pool4, pool3) for an .npz without scale entries (see fcn8s_from).
      log: where the summary lines go.
    Returns:
      (the ImportedFCN8s, the export version directory).
    Raises:
      FileNotFoundError: no weights file. FileExistsError: a non-empty workdir without overwrite,
        one that is not a run directory, or a run a live trainer holds. PermissionError: the
        workdir cannot be created there.
      WeightsError: an unreadable or bad file, a SHA-1 mismatch, not an FCN-8s.
    """
    workdir = os.path.abspath(workdir)
    _check_workdir(workdir, overwrite)
    check_readable(weights_path)
    digest = file_sha1(weights_path)
    if sha1 is not None and digest != sha1.strip().lower():
        raise WeightsError(f"{weights_path} has SHA-1 {digest}, not the expected {sha1} "
                           "(an incomplete or different download?)")
    imported = fcn8s_from(read_weights(weights_path, check=check_fcn8s), skip_scales)
    log(describe(imported))
    model = build_model(imported)

    import tensorflow as tf
    from fcn8s_tf.serving import export as export_lib
    from fcn8s_tf.training import workdir as workdir_lib
    from fcn8s_tf.data.convert.publish import signals_deferred

    staging = _make_staging(workdir, log)
    try:
        new = os.path.join(staging, "new")
        os.mkdir(new)  # 0777 less the umask, as os.makedirs (mkdtemp's own folder is 0700)
        workdir_lib.write_model_config(new, imported.model_kwargs())
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), workdir_lib.path(new, workdir_lib.CHECKPOINT_DIR),
            max_to_keep=1)
        manager.save(checkpoint_number=0)
        export_dir = export_lib.export_saved_model(
            model, workdir_lib.path(new, workdir_lib.EXPORT_DIR))
        workdir_lib.write_json(os.path.join(new, IMPORTED_FROM_FILE), {
            "weights": os.path.abspath(weights_path), "sha1": digest, "format": imported.format,
            "num_classes": imported.num_classes, "fc_units": imported.fc_units,
            "skip_scales": list(imported.skip_scales), "scale_notes": imported.scale_notes,
            "layers": imported.layer_names})
        with signals_deferred():  # a signal between the two renames would strand both runs
            _replace_dir(new, workdir, aside=os.path.join(staging, "old"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    export_dir = os.path.join(workdir, os.path.relpath(export_dir, new))
    log(f"Wrote {workdir}: model_config.json, checkpoints/, "
        f"{os.path.relpath(export_dir, workdir)}/ (SavedModel), imported_from.json")
    return imported, export_dir


def _check_workdir(workdir: str, overwrite: bool) -> None:
    """Refuses, before any work, a workdir this import may not write; a refused one is untouched.

    overwrite replaces only a run directory, told by what every run holds (the names
    fcn8s_tf/training/workdir.py owns): the replaced folder is deleted whole, and `--workdir=.` once
    deleted a source tree that way. A run a live trainer holds (workdir.RunLock) is refused too.
    """
    from fcn8s_tf.training import workdir as workdir_lib  # imports TensorFlow

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise FileExistsError(f"--workdir={workdir} exists and is not a directory")
    try:
        entries = os.listdir(workdir) if os.path.isdir(workdir) else []
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} cannot be listed: {e.strerror}") from None
    if entries and not overwrite:
        raise FileExistsError(f"--workdir={workdir} exists and is not empty; choose another or "
                              "pass --overwrite to replace it")
    if entries:
        config, checkpoints = workdir_lib.CONFIG_FILE, workdir_lib.CHECKPOINT_DIR
        if not (os.path.isfile(workdir_lib.path(workdir, config))
                and os.path.isdir(workdir_lib.path(workdir, checkpoints))):
            raise FileExistsError(f"--workdir={workdir} is not a run directory (it has no "
                                  f"{config} and {checkpoints}/), and --overwrite replaces only "
                                  "a run directory; choose a new or empty --workdir")
        try:
            with workdir_lib.RunLock(workdir):
                pass
        except workdir_lib.WorkdirInUseError as e:
            raise FileExistsError(str(e)) from None
    ancestor = os.path.dirname(workdir)  # the nearest that exists must take the new folders
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"--workdir={workdir} cannot be created: {ancestor} is not a "
                              "writable folder")


def _make_staging(workdir: str, log: Callable[[str], None]) -> str:
    """A new IMPORT_TMP_PREFIX folder beside workdir, once those of killed imports are removed."""
    import tensorflow as tf
    from fcn8s_tf.training import workdir as workdir_lib

    parent = os.path.dirname(workdir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} cannot be created: {e}") from None
    try:
        workdir_lib.remove_stale_temp_dirs(
            parent, lambda name: name.startswith(IMPORT_TMP_PREFIX), log=log)
    except (OSError, tf.errors.OpError) as e:  # another user's, say: not ours to remove
        log(f"note: a killed import's folder in {parent} could not be removed: {e}")
    try:
        return tempfile.mkdtemp(dir=parent, prefix=f"{IMPORT_TMP_PREFIX}p{os.getpid()}-"
                                                   f"{os.path.basename(workdir)}-")
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} cannot be created in {parent}: "
                              f"{e.strerror}") from None


def _replace_dir(new: str, target: str, aside: str) -> None:
    """Renames new to target; an existing target is first renamed to `aside`, deleted with it.

    Two renames: a SIGKILL between them (microseconds) leaves no target, and both runs in the
    temporary folder that the next import removes.
    """
    if os.path.isdir(target):
        os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        if os.path.isdir(aside):
            os.rename(aside, target)
        raise
