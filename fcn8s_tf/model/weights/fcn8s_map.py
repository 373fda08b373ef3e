"""FCN-8s from a weights file: which format it is, which layers it must hold, the Keras model.

Mapping (Caffe -> keras, layer names as in model/fcn8s.build_fcn8s):
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
"""


import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fcn8s_tf.model.weights.caffemodel import read_caffemodel
from fcn8s_tf.model.weights.layers import Layer, WeightsError, WeightsFile, check_readable
from fcn8s_tf.model.weights.npz import NPZ_KEY_STYLES, read_npz


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
    expand beyond npz._MAX_NPZ_EXPANSION).

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
