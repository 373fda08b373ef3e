"""The serving contract: SavedModel layout, signatures, request limits and the TF Serving warmup
file.

This module is the one owner of what a deployed FCN-8s looks like from outside. `export.py` builds
exports with it; `serving/client.py`, `evaluation/evaluator.py` and the benchmark find and call
exports through the names defined here. Nothing in an export needs project code at serve time:
preprocessing (RGB->BGR, mean), decoding and the per-request limit are in the graph.

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
context, so padding an image to its batch-mates' size would change its answer. A batch of zero
images gives outputs with a zero batch dimension.

Bounded work per request (serving/budget.py; BUILD.md states it for deployers): what a request costs
is decided before any image is decoded, from the headers. An image runs through the net at a size
whose padded area (the net pads 100 px on every side) is at most that of a max_image_pixels square,
so a 1 x 50000 strip costs what a 2048 x 2048 image does, not more; a larger image is downscaled
(aspect kept, antialiased), segmented, and its labels and probabilities are resized back to the full
size with nearest neighbour. An image declaring more than 4 x max_image_pixels pixels, or a request
whose answer (every item padded to the largest) would exceed max_output_bytes, is refused with an
InvalidArgumentError that names the item or the sizes. Images within the budget are answered
exactly. serving_uint8 runs its batch one image at a time for the same reason.

Bad input fails the request, never the server: empty strings, bytes that are not JPEG/PNG/GIF/BMP,
truncated JPEG/PNG files and images over the budget raise InvalidArgumentError naming the item's
index in the batch.

Why the variables are tracked by hand: a Keras 3 variable is a wrapper around a tf.Variable. Saved
as part of a Keras model, each wrapper exports a *copy* of its tf.Variable (`keras.Variable.
_export_to_saved_model_graph` makes `tf.Variable(object_map[self.value])`); the saver's restore op
fills the copies while the signature functions read the originals, which nothing restores. The
object-based loader (`tf.saved_model.load`) binds captures by object and hides this; the
session-based loader that TF Serving uses fails with "Could not find variable ...". Keras's own
ExportArchive avoids it the same way as here: the root object tracks the tf.Variables the traced
functions capture, and not the Keras model (which would also double the size of the variables file).
"""

import os
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np
import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf import pixels
from fcn8s_tf.serving import budget as budget_lib

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


# ------------------------------------------------------------------------------ graph functions --
class _Predictor:
    """The model's forward pass as the signatures run it. Not a Trackable: see the module
    docstring."""

    def __init__(self, model: "keras.Model", budget: budget_lib.Budget):
        self._preprocess = pixels.preprocess
        self._model = model
        self._budget = budget
        self.num_classes = model.output_shape[-1]

    def __call__(self, image: tf.Tensor, with_probabilities: bool) -> Dict[str, tf.Tensor]:
        """uint8 (1, H, W, 3) RGB -> labels int32 (1, H, W) [, probabilities float32 (1, H, W, C)].

        One image at a time: the net's memory is bounded per image (Budget), not per batch.
        """
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        size = budget_lib.net_input_size(height, width, self._budget.max_image_pixels)
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
            checks = budget_lib.check_encoded_image(image_bytes[i], i, BYTES_INPUT)
            with tf.control_dependencies(checks):
                declared = declared.write(i, budget_lib.declared_size(image_bytes[i]))
        declared = tf.reshape(declared.stack(), [-1, 2])
        with tf.control_dependencies(
                self._budget.checks(declared, with_probabilities, BYTES_INPUT,
                                    SIGNATURE_DEFAULT)):
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
                    paddings = ([[0, max_h - h], [0, max_w - w]]
                                + ([] if depth is None else [[0, 0]]))
                    return tf.pad(tf.reshape(flat.read(i), shape), paddings, constant_values=fill)

                return tf.map_fn(pad, tf.range(n), fn_output_signature=dtype)

            empty = [0, 0, 0] if depth is None else [0, 0, 0, depth]
            return tf.cond(n > 0, pad_all, lambda: tf.zeros(empty, dtype))

        outputs = {"labels": padded(flat_labels, None, class_info.IGNORE_LABEL, tf.int32),
                   "height": heights, "width": widths}
        if with_probabilities:
            outputs["probabilities"] = padded(flat_probs, self.num_classes, 0.0, tf.float32)
        return outputs


def serving_signatures(model: "keras.Model",
                       max_image_pixels: int = budget_lib.DEFAULT_MAX_IMAGE_PIXELS,
                       classes: Optional[class_info.ClassInfo] = None,
                       max_output_bytes: int = budget_lib.DEFAULT_MAX_OUTPUT_BYTES,
                       precision: str = "float32") -> Dict[str, object]:
    """The signatures of the contract above, traced for `model` (a float32 any-size FCN-8s).

    classes: the model's class_info.ClassInfo (default: VOC's, or class_<i>, for its class count).
    max_image_pixels, max_output_bytes: the per-request Budget.
    precision: the dtype `model` computes in, reported by the `metadata` signature.
    """
    num_classes = model.output_shape[-1]
    budget = budget_lib.Budget(max_image_pixels, max_output_bytes, num_classes)
    predictor = _Predictor(model, budget)
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


def serving_root(signatures: Dict[str, object],
                 class_names_file: Optional[str] = None) -> tf.Module:
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




