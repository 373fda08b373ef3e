"""The serving contract: SavedModel layout, signatures, request limits and the TF Serving warmup file.

This module is the one owner of what a deployed FCN-8s looks like from outside. `export.py` builds
exports with it; `serving/client.py`, `evaluation/evaluator.py` and the benchmark find and call exports through the names
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
      project; precision string (): the dtype the net computes in, float32 or bfloat16.
Images of a string batch run through the net one at a time at their own size: FCN-8s sees ~400 px of
context, so padding an image to its batch-mates' size would change its answer. A batch of zero images
gives outputs with a zero batch dimension.

Bounded work per request (class Budget; BUILD.md states it for deployers): what a request costs is
decided before any image is decoded, from the headers. An image runs through the net at a size whose
padded area (the net pads 100 px on every side) is at most that of a max_image_pixels square, so a
1 x 50000 strip costs what a 2048 x 2048 image does, not more; a larger image is downscaled (aspect
kept, antialiased), segmented, and its labels and probabilities are resized back to the full size
with nearest neighbour. An image declaring more than 4 x max_image_pixels pixels, or a request whose
answer (every item padded to the largest) would exceed max_output_bytes, is refused with an
InvalidArgumentError that names the item or the sizes. Images within the budget are answered
exactly. serving_uint8 runs its batch one image at a time for the same reason.

Bad input fails the request, never the server: empty strings, bytes that are not JPEG/PNG/GIF/BMP,
truncated JPEG/PNG files and images over the budget raise InvalidArgumentError naming the item's
index in the batch.

Why the variables are tracked by hand: a Keras 3 variable is a wrapper around a tf.Variable. Saved as
part of a Keras model, each wrapper exports a *copy* of its tf.Variable (`keras.Variable.
_export_to_saved_model_graph` makes `tf.Variable(object_map[self.value])`); the saver's restore op
fills the copies while the signature functions read the originals, which nothing restores. The
object-based loader (`tf.saved_model.load`) binds captures by object and hides this; the session-based
loader that TF Serving uses fails with "Could not find variable ...". Keras's own ExportArchive avoids it
the same way as here: the root object tracks the tf.Variables the traced functions capture, and not
the Keras model (which would also double the size of the variables file).
"""

import math
import os
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import tensorflow as tf

from fcn8s_tf import class_info

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

# The per-request budget (class Budget). 2048 x 2048 covers VOC images (500 x 375) and common photo
# sizes after one downscale step; the float32 forward of a 2048 x 2048 image peaks at ~4 GB on a CPU.
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048
# 512 MiB of answer: 134 M pixels of labels, or 1.5 M pixels of 21-class probabilities (a 2048 x
# 2048 image's are 369 MB; a 12 MP photo's, 1.06 GB, are refused: ask serving_default for labels).
DEFAULT_MAX_OUTPUT_BYTES = 512 * 2 ** 20
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


def _bytes_at(data: tf.Tensor, size: int) -> tf.Tensor:
    """The first `size` bytes of a scalar string as int64 (size,), zero-filled past its end."""
    head = tf.strings.substr(tf.strings.join([data, b"\0" * size]), 0, size)
    return tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """(2,) int64 height and width that an encoded image's header declares, read without decoding.

    JPEG: the SOF marker (tf.image.extract_jpeg_shape reads the header only); PNG: the IHDR chunk;
    GIF: the logical screen (what tf.io.decode_gif returns); BMP: the info header (a negative
    height means top-down rows). (0, 0) for anything else. Run it after check_encoded_image.
    """
    b = _bytes_at(data, 26)
    shift = tf.bitwise.left_shift

    def unsigned(offset, length, big_endian):
        value = tf.constant(0, tf.int64)
        for k in range(length):
            value = value + shift(b[offset + k], 8 * ((length - 1 - k) if big_endian else k))
        return value

    bmp_height = unsigned(22, 4, False)
    bmp_height = tf.abs(tf.where(bmp_height >= 2 ** 31, bmp_height - 2 ** 32, bmp_height))
    by_format = [
        (tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"),
         lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n"),
         lambda: tf.stack([unsigned(20, 4, True), unsigned(16, 4, True)])),
        (tf.equal(tf.strings.substr(data, 0, 4), b"GIF8"),
         lambda: tf.stack([unsigned(8, 2, False), unsigned(6, 2, False)])),
        (tf.equal(tf.strings.substr(data, 0, 2), b"BM"),
         lambda: tf.stack([bmp_height, unsigned(18, 4, False)])),
    ]
    return tf.case(by_format, default=lambda: tf.zeros([2], tf.int64))


def net_input_size(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """(2,) int32 size at which the net sees an image: its own, or scaled down to the net budget.

    The net pads its input by model.INPUT_PAD on every side, so an image costs what its padded area
    (H + 200)(W + 200) does: a 1 x 50000 strip does the work of a 3200 x 3200 image. The budget is the
    padded area of a sqrt(max_pixels)-square image; an image over it is scaled by the factor s that
    solves (sH + 200)(sW + 200) = budget (keeping its aspect ratio), each side at least 1 pixel.
    """
    from fcn8s_tf.model import fcn8s as model_lib  # pylint: disable=import-outside-toplevel
    pad = tf.constant(2.0 * model_lib.INPUT_PAD, tf.float64)
    budget = tf.constant((math.sqrt(max_pixels) + 2.0 * model_lib.INPUT_PAD) ** 2, tf.float64)
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    over = (h + pad) * (w + pad) > budget
    # The positive root of h*w*s^2 + pad*(h+w)*s + pad^2 - budget = 0.
    a, b, c = tf.maximum(h * w, 1.0), pad * (h + w), pad * pad - budget
    s = (-b + tf.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
    small_h = tf.maximum(tf.floor(s * h), 1.0)
    small_w = tf.maximum(tf.floor(s * w), 1.0)
    # A side clamped up to 1 pixel leaves less room for the other one.
    small_w = tf.maximum(tf.minimum(small_w, tf.floor(budget / (small_h + pad)) - pad), 1.0)
    small_h = tf.maximum(tf.minimum(small_h, tf.floor(budget / (small_w + pad)) - pad), 1.0)
    small = tf.cast(tf.stack([small_h, small_w]), tf.int32)
    return tf.where(over, small, tf.cast(tf.stack([height, width]), tf.int32))


class Budget:
    """What one request may cost; BUILD.md ("Bounded work per request") states it for deployers.

    net: every image runs through the net at a padded area of at most that of a
      sqrt(max_image_pixels)-square image (net_input_size); larger ones are downscaled.
    decode: an image whose header declares more than DECODE_FACTOR x max_image_pixels pixels is
      refused before it is decoded (a 600-byte JPEG can declare 13000 x 13000).
    output: a request whose answer (B x Hmax x Wmax labels, plus the probabilities where the
      signature returns them) would exceed max_output_bytes is refused before any image is decoded.
    """

    DECODE_FACTOR = 4  # 4 x 2048^2 = 16.8 MP: 12 MP phone photos are downscaled, not refused

    def __init__(self, max_image_pixels: int, max_output_bytes: int, num_classes: int):
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
        if max_output_bytes < 1:
            raise ValueError(f"max_output_bytes must be >= 1, got {max_output_bytes}")
        self.max_image_pixels = int(max_image_pixels)
        self.max_decoded_pixels = self.DECODE_FACTOR * self.max_image_pixels
        self.max_output_bytes = int(max_output_bytes)
        self.num_classes = int(num_classes)

    def bytes_per_pixel(self, with_probabilities: bool) -> int:
        """Answer bytes per pixel: int32 labels, plus float32 probabilities for every class."""
        return 4 + (4 * self.num_classes if with_probabilities else 0)

    def checks(self, sizes: tf.Tensor, with_probabilities: bool, item: str) -> List[tf.Operation]:
        """Assertions that a request of images of `sizes` (n, 2) int64 is within the budget.

        item: how the messages name an image, e.g. "image_bytes" -> "image_bytes[3] declares ...".
        """
        pixels = sizes[:, 0] * sizes[:, 1]
        too_big = pixels > self.max_decoded_pixels
        # The first item over the limit; a sentinel row keeps the message's ops valid for n = 0.
        first = tf.argmax(tf.concat([tf.cast(too_big, tf.int32), [1]], 0), output_type=tf.int32)
        culprit = tf.concat([sizes, tf.zeros([1, 2], tf.int64)], 0)[first]
        n = tf.cast(tf.shape(sizes)[0], tf.int64)
        # Every item's answer is padded to the largest height and width (0 x 0 when there are none).
        max_h, max_w = tf.unstack(
            tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int64)], 0), 0))
        answer_bytes = n * max_h * max_w * self.bytes_per_pixel(with_probabilities)
        text = tf.strings.as_string
        image_message = tf.strings.join([
            f"{item}[", text(first), "] is ", text(culprit[0]), " x ", text(culprit[1]), " = ",
            text(culprit[0] * culprit[1]), " pixels, over the limit of ",
            f"{self.max_decoded_pixels} pixels per image ({self.DECODE_FACTOR} x "
            f"max_image_pixels={self.max_image_pixels}): send it downscaled"])
        advice = ("send fewer or smaller images per request" +
                  (f", or ask {SIGNATURE_DEFAULT} for labels only" if with_probabilities else ""))
        per_pixel = self.bytes_per_pixel(with_probabilities)
        request_message = tf.strings.join([
            "the answer to this request would take ", text(answer_bytes), " bytes (", text(n),
            " images padded to ", text(max_h), " x ", text(max_w), f" pixels x {per_pixel} bytes), "
            f"over the limit of {self.max_output_bytes} bytes per request: {advice}"])
        return [tf.debugging.Assert(~tf.reduce_any(too_big), [image_message]),
                tf.debugging.Assert(answer_bytes <= self.max_output_bytes, [request_message])]


class _Predictor:
    """The model's forward pass as the signatures run it. Not a Trackable: see the module docstring."""

    def __init__(self, model: "keras.Model", budget: Budget):
        from fcn8s_tf.model import fcn8s as model_lib  # pylint: disable=import-outside-toplevel
        self._preprocess = model_lib.preprocess
        self._model = model
        self._budget = budget
        self.num_classes = model.output_shape[-1]

    def __call__(self, image: tf.Tensor, with_probabilities: bool) -> Dict[str, tf.Tensor]:
        """uint8 (1, H, W, 3) RGB -> labels int32 (1, H, W) [, probabilities float32 (1, H, W, C)].

        One image at a time: the net's memory is bounded per image (Budget), not per batch.
        """
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        size = net_input_size(height, width, self._budget.max_image_pixels)
        resized = tf.reduce_any(tf.not_equal(size, tf.stack([height, width])))
        net_input = tf.cond(resized,
                            lambda: tf.image.resize(image, size, antialias=True),
                            lambda: tf.cast(image, tf.float32))
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

    def batch(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """uint8 (B, H, W, 3) -> labels (B, H, W), probabilities (B, H, W, C), within the budget."""
        shape = tf.shape(images, out_type=tf.int64)
        n = tf.shape(images)[0]
        sizes = tf.tile(shape[tf.newaxis, 1:3], [n, 1])
        with tf.control_dependencies(self._budget.checks(sizes, True, UINT8_INPUT)):
            images = tf.identity(images)

        def one(image):
            return {k: v[0] for k, v in self(image[tf.newaxis], True).items()}

        def each():
            return tf.map_fn(one, images, parallel_iterations=1, fn_output_signature={
                "labels": tf.TensorSpec([None, None], tf.int32),
                "probabilities": tf.TensorSpec([None, None, self.num_classes], tf.float32)})

        def none():
            return {"labels": tf.zeros(tf.stack([0, shape[1], shape[2]]), tf.int32),
                    "probabilities": tf.zeros(tf.stack([0, shape[1], shape[2],
                                                        self.num_classes]), tf.float32)}

        return tf.cond(n > 0, each, none)

    def per_image(self, image_bytes: tf.Tensor, with_probabilities: bool) -> Dict[str, tf.Tensor]:
        """Decodes and segments each image alone; returns padded labels (and probabilities).

        Every item is checked and its header read before any is decoded, so that a request over
        the budget is refused at next to no cost.
        """
        n = tf.shape(image_bytes)[0]
        declared = tf.TensorArray(tf.int64, size=n, element_shape=[2])
        for i in tf.range(n):
            with tf.control_dependencies(check_encoded_image(image_bytes[i], i)):
                declared = declared.write(i, declared_size(image_bytes[i]))
        declared = tf.reshape(declared.stack(), [-1, 2])
        with tf.control_dependencies(
                self._budget.checks(declared, with_probabilities, BYTES_INPUT)):
            image_bytes = tf.identity(image_bytes)
        flat_labels = tf.TensorArray(tf.int32, size=n, infer_shape=False, element_shape=[None])
        flat_probs = tf.TensorArray(tf.float32, size=n, infer_shape=False, element_shape=[None])
        heights = tf.TensorArray(tf.int32, size=n, element_shape=[])
        widths = tf.TensorArray(tf.int32, size=n, element_shape=[])
        for i in tf.range(n):
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

        outputs = {"labels": padded(flat_labels, None, class_info.IGNORE_LABEL, tf.int32),
                   "height": heights, "width": widths}
        if with_probabilities:
            outputs["probabilities"] = padded(flat_probs, self.num_classes, 0.0, tf.float32)
        return outputs


def serving_signatures(model: "keras.Model", max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       classes: Optional[class_info.ClassInfo] = None,
                       max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                       precision: str = "float32") -> Dict[str, object]:
    """The signatures of the contract above, traced for `model` (a float32 any-size FCN-8s).

    classes: the model's class_info.ClassInfo (default: VOC's, or class_<i>, for its class count).
    max_image_pixels, max_output_bytes: the per-request Budget.
    precision: the dtype `model` computes in, reported by the `metadata` signature.
    """
    num_classes = model.output_shape[-1]
    predictor = _Predictor(model, Budget(max_image_pixels, max_output_bytes, num_classes))
    bytes_spec = [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
    uint8_spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=UINT8_INPUT)]
    functions = {
        SIGNATURE_DEFAULT: (lambda image_bytes: predictor.per_image(image_bytes, False),
                            bytes_spec),
        SIGNATURE_PROBABILITIES: (lambda image_bytes: predictor.per_image(image_bytes, True),
                                  bytes_spec),
        SIGNATURE_UINT8: (predictor.batch, uint8_spec),
    }
    signatures = {name: tf.function(fn, input_signature=spec).get_concrete_function()
                  for name, (fn, spec) in functions.items()}
    signatures[SIGNATURE_METADATA] = metadata_signature(
        classes or class_info.ClassInfo.default(predictor.num_classes), precision)
    return signatures


def metadata_signature(classes: class_info.ClassInfo, precision: str = "float32"):
    """The `metadata` signature: the classes and the compute dtype as constants of the graph."""
    names = tf.constant(list(classes.names), tf.string)
    dtype = tf.constant(precision, tf.string)
    colours = tf.constant(np.asarray(classes.colours, np.uint8).reshape(-1, 3))
    ignore = tf.constant(classes.ignore_label, tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name=METADATA_INPUT)])
    def metadata(unused):
        del unused
        return {"class_names": tf.identity(names), "palette": tf.identity(colours),
                "ignore_label": tf.identity(ignore), "precision": tf.identity(dtype)}

    return metadata.get_concrete_function()


def read_metadata(loaded) -> Optional[class_info.ClassInfo]:
    """The classes of a SavedModel loaded with tf.saved_model.load (None for exports without)."""
    if SIGNATURE_METADATA not in loaded.signatures:
        return None
    out = loaded.signatures[SIGNATURE_METADATA](**{METADATA_INPUT: tf.constant(0)})
    return class_info.ClassInfo(tuple(n.decode() for n in out["class_names"].numpy()),
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
