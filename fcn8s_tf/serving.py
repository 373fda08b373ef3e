"""The serving contract: SavedModel layout, signatures, request limits and the TF Serving warmup file.

This module is the one owner of what a deployed FCN-8s looks like from outside. `export.py` builds
exports with it; `predict.py`, `evaluate.py` and the benchmark find and call exports through the names
defined here. Nothing in an export needs project code at serve time: preprocessing (RGB->BGR, mean),
decoding and the per-request limit are in the graph.

Layout (TF Serving's): `<base>/<version>/saved_model.pb`, numeric versions, the highest served, and
`<base>/<version>/assets.extra/tf_serving_warmup_requests`, one PredictionLog per signature.

Signatures:
  serving_default(image_bytes: string (B,)) ->
      labels int32 (B, Hmax, Wmax), 255 beyond each image's own size; height, width int32 (B,).
  serving_probabilities(image_bytes: string (B,)) ->
      labels, height, width as above, and probabilities float32 (B, Hmax, Wmax, C), 0 beyond
      each image. (Separate because a 500x375 image's probabilities are ~16 MB of JSON over REST.)
  serving_uint8(images: uint8 (B, H, W, 3) RGB) ->
      labels int32 (B, H, W), probabilities float32 (B, H, W, C).
  metadata(unused: int32 scalar, any value) ->
      class_names string (C,), palette uint8 (C, 3) RGB, ignore_label int32 (): the classes the
      model was trained on, also in assets/class_names.txt, so a client names them without the
      project.
Images of a string batch run through the net one at a time at their own size: FCN-8s sees ~400 px of
context, so padding an image to its batch-mates' size would change its answer. A batch of zero images
gives outputs with a zero batch dimension.

Bounded work per request: an image larger than `max_image_pixels` (H * W) is downscaled (area-
preserving aspect, antialiased) to fit the limit, segmented, and its labels and probabilities are
resized back to the full size with nearest neighbour, so a 4000x3000 phone photo costs what a
2048x2048 one does instead of ~9 GB. Images within the limit are untouched (exact answers).

Bad input fails the request, never the server: empty strings, bytes that are not JPEG/PNG/GIF/BMP, and
truncated JPEG/PNG files raise InvalidArgumentError naming the item's index in the batch.

Why the variables are tracked by hand: a Keras 3 variable is a wrapper around a tf.Variable. Saved as
part of a Keras model, each wrapper exports a *copy* of its tf.Variable (`keras.Variable.
_export_to_saved_model_graph` makes `tf.Variable(object_map[self.value])`); the saver's restore op
fills the copies while the signature functions read the originals, which nothing restores. The
object-based loader (`tf.saved_model.load`) binds captures by object and hides this; the session-based
loader that TF Serving uses fails with "Could not find variable ...". Keras's own ExportArchive avoids it
the same way as here: the root object tracks the tf.Variables the traced functions capture, and not
the Keras model (which would also double the size of the variables file).
"""

import os
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import tensorflow as tf

from fcn8s_tf import voc

if TYPE_CHECKING:  # predict and evaluate use this module without importing Keras
    import keras

SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_PROBABILITIES = "serving_probabilities"
SIGNATURE_UINT8 = "serving_uint8"
SIGNATURES = (SIGNATURE_DEFAULT, SIGNATURE_PROBABILITIES, SIGNATURE_UINT8)  # the image ones
SIGNATURE_METADATA = "metadata"
ALL_SIGNATURES = SIGNATURES + (SIGNATURE_METADATA,)
BYTES_INPUT = "image_bytes"  # TF Serving's REST API takes {"b64": ...} for inputs named *_bytes
UINT8_INPUT = "images"
# TF Serving's REST API refuses a signature without inputs, so metadata takes one it ignores.
METADATA_INPUT = "unused"
CLASS_NAMES_ASSET = "class_names.txt"  # one name per line, in label-index order

# 2048 x 2048 covers VOC images (500 x 375) and common photo sizes after one downscale step; the
# float32 forward of a 2048 x 2048 image needs ~3.5 GB on a CPU.
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_IMAGE_SIZE = (64, 64)


# -------------------------------------------------------------------------------------- layout --
def next_version(export_base: str) -> int:
    """One more than the highest numeric version under export_base (1 when there is none)."""
    versions = [int(d.strip("/")) for d in (tf.io.gfile.listdir(export_base)
                                            if tf.io.gfile.isdir(export_base) else [])
                if d.strip("/").isdigit()]
    return max(versions, default=0) + 1


def find_saved_model(path: str) -> Optional[str]:
    """The SavedModel directory at `path`, or None if there is none.

    Accepts a version directory (holding saved_model.pb) or a TF Serving base directory
    `<base>/<numeric version>/saved_model.pb`, of which the highest version is taken, as TF Serving
    itself serves by default.
    """
    if not tf.io.gfile.isdir(path):
        return None
    if tf.saved_model.contains_saved_model(path):
        return path
    versions = []
    for name in tf.io.gfile.listdir(path):
        name = name.rstrip("/")
        if name.isdigit() and tf.saved_model.contains_saved_model(os.path.join(path, name)):
            versions.append(int(name))
    if versions:
        return os.path.join(path, str(max(versions)))
    return None


def resolve_saved_model_dir(path: str) -> str:
    """Like find_saved_model, but raises an error naming `path` when it holds no SavedModel.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: `path` exists but holds no SavedModel in either layout.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no such directory")
    found = find_saved_model(path)
    if found is None:
        raise ValueError(f"{path} is not a SavedModel: no saved_model.pb in it nor in a numeric "
                         "version subdirectory (TF Serving layout <base>/<version>/saved_model.pb)")
    return found


# ------------------------------------------------------------------------------ graph functions --
def _starts(raw: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """Boolean (n,) marking where `pattern` starts in the uint8 vector `raw` (False near the end)."""
    n = tf.shape(raw)[0]
    k = len(pattern)
    hits = tf.ones([tf.maximum(n - k + 1, 0)], tf.bool)
    for j, byte in enumerate(pattern):
        hits = hits & tf.equal(raw[j:tf.maximum(n - k + 1 + j, j)], byte)
    return hits


def _last(mask: tf.Tensor) -> tf.Tensor:
    """Index of the last True in a boolean vector, -1 when there is none."""
    where = tf.where(mask)[:, 0]
    return tf.reduce_max(tf.concat([tf.constant([-1], tf.int64), where], axis=0))


def check_encoded_image(data: tf.Tensor, index: tf.Tensor) -> List[tf.Operation]:
    """Assertions that a scalar string holds a whole JPEG, PNG, GIF or BMP; messages name `index`.

    The decoder's own errors do not say which item of a batch failed, and a truncated PNG may decode
    partially; these checks catch the common cases first. A JPEG is complete when its last
    end-of-image marker (FF D9) follows its last start-of-scan (FF DA): entropy-coded data cannot hold
    either (FF is byte-stuffed there), an EXIF thumbnail's EOI comes before the main scan, and
    trailers some phones append after the EOI are allowed. A PNG is complete when it holds IEND.
    """
    empty = tf.equal(tf.strings.length(data), 0)
    head = tf.strings.substr(data, 0, 8)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(head, b"\x89PNG\r\n\x1a\n")
    is_gif = tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    raw = tf.io.decode_raw(data, tf.uint8)
    jpeg_whole = _last(_starts(raw, b"\xff\xd9")) > _last(_starts(raw, b"\xff\xda"))
    png_whole = tf.reduce_any(_starts(raw, b"IEND"))
    item = tf.strings.join([f"{BYTES_INPUT}[", tf.strings.as_string(index), "] "])

    def check(condition, problem):
        return tf.debugging.Assert(condition, [tf.strings.join([item, problem])])

    return [
        # Each problem fails exactly one check (an empty string is not also "not an image"), so
        # the message does not depend on which assertion the executor happens to run first.
        check(~empty, "is an empty string"),
        check(empty | is_jpeg | is_png | is_gif | is_bmp, "is not a JPEG, PNG, GIF or BMP image"),
        check(~is_jpeg | jpeg_whole, "is a truncated JPEG (no end-of-image marker after its data)"),
        check(~is_png | png_whole, "is a truncated PNG (no IEND chunk)"),
    ]


def net_input_size(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """(2,) int32 size at which the net sees an image: its own, or scaled down to <= max_pixels."""
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    limit = tf.constant(max_pixels, tf.float64)
    scale = tf.sqrt(limit / tf.maximum(h * w, limit))
    small = tf.cast(tf.maximum(tf.floor(tf.stack([h, w]) * scale), 1.0), tf.int32)
    return tf.where(h * w > limit, small, tf.stack([height, width]))


class _Predictor:
    """The model's forward pass as the signatures run it. Not a Trackable: see the module docstring."""

    def __init__(self, model: "keras.Model", max_image_pixels: int):
        from fcn8s_tf import model as model_lib  # pylint: disable=import-outside-toplevel
        self._preprocess = model_lib.preprocess
        self._model = model
        self._max_pixels = int(max_image_pixels)
        self.num_classes = model.output_shape[-1]

    def __call__(self, images: tf.Tensor, with_probabilities: bool) -> Dict[str, tf.Tensor]:
        """uint8 (B, H, W, 3) RGB -> labels int32 (B, H, W) [, probabilities float32 (B, H, W, C)]."""
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        size = net_input_size(height, width, self._max_pixels)
        resized = tf.reduce_any(tf.not_equal(size, tf.stack([height, width])))
        net_input = tf.cond(resized,
                            lambda: tf.image.resize(images, size, antialias=True),
                            lambda: tf.cast(images, tf.float32))
        logits = tf.cast(self._model(self._preprocess(net_input), training=False), tf.float32)
        outputs = {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32)[..., tf.newaxis]}
        if with_probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits)

        def full_size(x):
            return tf.cond(resized,
                           lambda: tf.image.resize(x, [height, width], method="nearest"),
                           lambda: x)

        outputs = {k: full_size(v) for k, v in outputs.items()}
        outputs["labels"] = outputs["labels"][..., 0]
        return outputs

    def per_image(self, image_bytes: tf.Tensor, with_probabilities: bool) -> Dict[str, tf.Tensor]:
        """Decodes and segments each image alone; returns padded labels (and probabilities)."""
        n = tf.shape(image_bytes)[0]
        flat_labels = tf.TensorArray(tf.int32, size=n, infer_shape=False, element_shape=[None])
        flat_probs = tf.TensorArray(tf.float32, size=n, infer_shape=False, element_shape=[None])
        heights = tf.TensorArray(tf.int32, size=n, element_shape=[])
        widths = tf.TensorArray(tf.int32, size=n, element_shape=[])
        for i in tf.range(n):
            with tf.control_dependencies(check_encoded_image(image_bytes[i], i)):
                image = tf.io.decode_image(image_bytes[i], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            out = self(image[tf.newaxis], with_probabilities)
            flat_labels = flat_labels.write(i, tf.reshape(out["labels"], [-1]))
            if with_probabilities:
                flat_probs = flat_probs.write(i, tf.reshape(out["probabilities"], [-1]))
            heights = heights.write(i, tf.shape(image)[0])
            widths = widths.write(i, tf.shape(image)[1])
        heights, widths = heights.stack(), widths.stack()

        def padded(flat, depth, fill, dtype):
            def pad_all():
                max_h, max_w = tf.reduce_max(heights), tf.reduce_max(widths)

                def pad(i):
                    h, w = heights[i], widths[i]
                    shape = tf.stack([h, w]) if depth is None else tf.stack([h, w, depth])
                    paddings = [[0, max_h - h], [0, max_w - w]] + ([] if depth is None else [[0, 0]])
                    return tf.pad(tf.reshape(flat.read(i), shape), paddings, constant_values=fill)

                return tf.map_fn(pad, tf.range(n), fn_output_signature=dtype)

            empty = [0, 0, 0] if depth is None else [0, 0, 0, depth]
            return tf.cond(n > 0, pad_all, lambda: tf.zeros(empty, dtype))

        outputs = {"labels": padded(flat_labels, None, voc.IGNORE_LABEL, tf.int32),
                   "height": heights, "width": widths}
        if with_probabilities:
            outputs["probabilities"] = padded(flat_probs, self.num_classes, 0.0, tf.float32)
        return outputs


def serving_signatures(model: "keras.Model", max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       classes: Optional[voc.ClassInfo] = None) -> Dict[str, object]:
    """The signatures of the contract above, traced for `model` (a float32 any-size FCN-8s).

    classes: the model's voc.ClassInfo (default: VOC's, or class_<i>, for its class count).
    """
    if max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
    predictor = _Predictor(model, max_image_pixels)
    bytes_spec = [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
    uint8_spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=UINT8_INPUT)]
    functions = {
        SIGNATURE_DEFAULT: (lambda image_bytes: predictor.per_image(image_bytes, False),
                            bytes_spec),
        SIGNATURE_PROBABILITIES: (lambda image_bytes: predictor.per_image(image_bytes, True),
                                  bytes_spec),
        SIGNATURE_UINT8: (lambda images: predictor(images, True), uint8_spec),
    }
    signatures = {name: tf.function(fn, input_signature=spec).get_concrete_function()
                  for name, (fn, spec) in functions.items()}
    signatures[SIGNATURE_METADATA] = metadata_signature(
        classes or voc.ClassInfo.default(predictor.num_classes))
    return signatures


def metadata_signature(classes: voc.ClassInfo):
    """The `metadata` signature: the classes as constants of the graph."""
    names = tf.constant(list(classes.names), tf.string)
    colours = tf.constant(np.asarray(classes.colours, np.uint8).reshape(-1, 3))
    ignore = tf.constant(classes.ignore_label, tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name=METADATA_INPUT)])
    def metadata(unused):
        del unused
        return {"class_names": tf.identity(names), "palette": tf.identity(colours),
                "ignore_label": tf.identity(ignore)}

    return metadata.get_concrete_function()


def read_metadata(loaded) -> Optional[voc.ClassInfo]:
    """The classes of a SavedModel loaded with tf.saved_model.load (None for exports without)."""
    if SIGNATURE_METADATA not in loaded.signatures:
        return None
    out = loaded.signatures[SIGNATURE_METADATA](**{METADATA_INPUT: tf.constant(0)})
    return voc.ClassInfo(tuple(n.decode() for n in out["class_names"].numpy()),
                         tuple(tuple(int(c) for c in rgb) for rgb in out["palette"].numpy()),
                         int(out["ignore_label"].numpy()))


def serving_root(signatures: Dict[str, object], class_names_file: Optional[str] = None) -> tf.Module:
    """The object tf.saved_model.save writes: the signatures' captured tf.Variables, and the class
    names file as an asset (copied to assets/class_names.txt), nothing else."""
    root = tf.Module()
    if class_names_file is not None:
        root.class_names = tf.saved_model.Asset(class_names_file)
    seen, captured = set(), []
    for function in signatures.values():
        for variable in function.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                captured.append(variable)
    root.captured_variables = captured
    return root


# ----------------------------------------------------------------------------------- warm-up --
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature_name: str, inputs: Dict[str, np.ndarray]) -> bytes:
    """A serialized tensorflow.serving.PredictionLog holding one PredictRequest.

    Written by hand (six fields of protobuf wire format) because the generated classes come with
    `tensorflow-serving-api`, which depends on the full `tensorflow` distribution and would install a
    second TensorFlow beside tensorflow-cpu. Field numbers, from tensorflow_serving/apis/*.proto:
    PredictionLog.predict_log = 6; PredictLog.request = 1; PredictRequest.model_spec = 1,
    .inputs = 2 (map<string, TensorProto>: entry key = 1, value = 2); ModelSpec.name = 1,
    .signature_name = 3. tests/test_serving.py parses the file back with the generated classes.
    """
    spec = _field(1, model_name.encode()) + _field(3, signature_name.encode())
    request = _field(1, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[key]).SerializeToString()
        request += _field(2, _field(1, key.encode()) + _field(2, tensor))
    return _field(6, _field(1, request))


def warmup_requests(model_name: str = "fcn8s") -> Dict[str, bytes]:
    """One small request per signature: a mid-grey 64x64 image, as JPEG bytes or uint8 pixels."""
    pixels = np.full((1, *WARMUP_IMAGE_SIZE, 3), 128, np.uint8)
    jpeg = tf.io.encode_jpeg(pixels[0]).numpy()
    return {
        SIGNATURE_METADATA: prediction_log(
            model_name, SIGNATURE_METADATA, {METADATA_INPUT: np.array(0, np.int32)}),
        SIGNATURE_DEFAULT: prediction_log(
            model_name, SIGNATURE_DEFAULT, {BYTES_INPUT: np.array([jpeg], dtype=object)}),
        SIGNATURE_PROBABILITIES: prediction_log(
            model_name, SIGNATURE_PROBABILITIES, {BYTES_INPUT: np.array([jpeg], dtype=object)}),
        SIGNATURE_UINT8: prediction_log(model_name, SIGNATURE_UINT8, {UINT8_INPUT: pixels}),
    }


def write_warmup_file(saved_model_dir: str, model_name: str = "fcn8s") -> str:
    """Writes `<saved_model_dir>/assets.extra/tf_serving_warmup_requests`; returns its path."""
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for record in warmup_requests(model_name).values():
            writer.write(record)
    return path
