"""Export: a SavedModel in TF Serving's layout, `<base>/<version>/saved_model.pb`.

`python -m fcn8s_tf.export --workdir=runs/voc [--export_dir=runs/voc/export] [--version=N]`

The SavedModel needs no project code at serve time: preprocessing (RGB->BGR, mean) is in the
graph, and `tf.saved_model.load` / `saved_model_cli run` / `tensorflow_model_server` load it as is.
Signatures:
  serving_default(image_bytes: string (B,)) ->
      labels int32 (B, Hmax, Wmax), 255 beyond each image's own size; height, width int32 (B,).
  serving_probabilities(image_bytes: string (B,)) ->
      labels, height, width as above, and probabilities float32 (B, Hmax, Wmax, C), 0 beyond
      each image.
      (Separate because a 500x375 image's probabilities are ~16 MB of JSON over REST.)
  serving_uint8(images: uint8 (B, H, W, 3) RGB) ->
      labels int32 (B, H, W), probabilities float32 (B, H, W, C).
Images of a string batch run through the net one at a time at their own size: FCN-8s sees ~400 px
of context, so padding an image to its batch-mates' size would change its answer.
"""

import json
import os
import time
from typing import Dict, Optional

from absl import app
from absl import flags
from absl import logging
import keras
import tensorflow as tf

from fcn8s_tf import model as model_lib
from fcn8s_tf import voc


class _ServingModule(tf.Module):
    """Holds the model and the traced signatures."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.model = model

    def _logits(self, images_uint8):
        return tf.cast(self.model(model_lib.preprocess(images_uint8), training=False), tf.float32)

    def _per_image(self, image_bytes, with_probabilities: bool):
        """Decodes and segments each image alone; returns padded labels (and probabilities)."""
        n = tf.shape(image_bytes)[0]
        num_classes = self.model.output_shape[-1]
        flat_labels = tf.TensorArray(tf.int32, size=n, infer_shape=False, element_shape=[None])
        flat_probs = tf.TensorArray(tf.float32, size=n, infer_shape=False, element_shape=[None])
        heights = tf.TensorArray(tf.int32, size=n)
        widths = tf.TensorArray(tf.int32, size=n)
        for i in tf.range(n):
            image = tf.io.decode_image(image_bytes[i], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            logits = self._logits(image[tf.newaxis])[0]
            flat_labels = flat_labels.write(i, tf.reshape(
                tf.argmax(logits, axis=-1, output_type=tf.int32), [-1]))
            if with_probabilities:
                flat_probs = flat_probs.write(i, tf.reshape(tf.nn.softmax(logits), [-1]))
            heights = heights.write(i, tf.shape(image)[0])
            widths = widths.write(i, tf.shape(image)[1])
        heights, widths = heights.stack(), widths.stack()
        max_h, max_w = tf.reduce_max(heights), tf.reduce_max(widths)

        def pad(flat, i, depth, fill):
            h, w = heights[i], widths[i]
            shape = tf.stack([h, w]) if depth is None else tf.stack([h, w, depth])
            paddings = [[0, max_h - h], [0, max_w - w]] + ([] if depth is None else [[0, 0]])
            return tf.pad(tf.reshape(flat.read(i), shape), paddings, constant_values=fill)

        labels = tf.map_fn(lambda i: pad(flat_labels, i, None, voc.IGNORE_LABEL), tf.range(n),
                           fn_output_signature=tf.int32)
        outputs = {"labels": labels, "height": heights, "width": widths}
        if with_probabilities:
            outputs["probabilities"] = tf.map_fn(
                lambda i: pad(flat_probs, i, num_classes, 0.0), tf.range(n),
                fn_output_signature=tf.float32)
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(self, image_bytes):
        return self._per_image(image_bytes, with_probabilities=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_probabilities(self, image_bytes):
        return self._per_image(image_bytes, with_probabilities=True)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_uint8(self, images):
        logits = self._logits(images)
        return {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
                "probabilities": tf.nn.softmax(logits)}


def serving_twin(model: keras.Model, model_kwargs: Optional[Dict]) -> keras.Model:
    """A float32 model for any input size with `model`'s weights, or `model` if it is one already.

    Training may build the net for its fixed crop size (faster, BENCHMARKS.md) and under a
    mixed-precision policy; evaluation and serving need every image size and, on CPUs and in TF
    Serving, float32. model_kwargs are the build_fcn8s arguments (None: use `model` as it is).
    """
    dynamic = all(d is None for d in model.input_shape[1:3])
    if model_kwargs is None or (dynamic and model.dtype_policy.name == "float32"):
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        twin = model_lib.build_fcn8s(weights=None, **model_kwargs)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(model.get_weights())
    return twin


def next_version(export_base: str) -> int:
    """One more than the highest numeric version under export_base (1 when there is none)."""
    versions = [int(d) for d in (tf.io.gfile.listdir(export_base)
                                 if tf.io.gfile.isdir(export_base) else [])
                if d.strip("/").isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(model: keras.Model, export_base: str, version: Optional[int] = None,
                       model_kwargs: Optional[Dict] = None) -> str:
    """Writes `model` as `<export_base>/<version>/` (TF Serving layout) and returns that path.

    Args:
      model: an FCN-8s (mixed-precision or fixed-size models are exported as a float32, any-size
        twin when model_kwargs, the build_fcn8s arguments, are given).
      export_base: the model base path TF Serving watches.
      version: numeric version; default one more than the highest present.
      model_kwargs: build_fcn8s arguments (needed only for the twin).
    Returns:
      The version directory. It appears complete or not at all: the SavedModel is written to a
      temporary sibling and renamed, since TF Serving loads any numeric directory it sees.
    """
    version = next_version(export_base) if version is None else int(version)
    final = os.path.join(export_base, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"Export version directory already exists: {final}")
    tf.io.gfile.makedirs(export_base)
    tmp = os.path.join(export_base, f".tmp-{version}-{int(time.time())}")
    module = _ServingModule(serving_twin(model, model_kwargs))
    signatures = {
        "serving_default": module.serving_default.get_concrete_function(),
        "serving_probabilities": module.serving_probabilities.get_concrete_function(),
        "serving_uint8": module.serving_uint8.get_concrete_function(),
    }
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    return final


def load_model_from_workdir(workdir: str, num_classes: Optional[int] = None):
    """Rebuilds the FCN-8s of a training workdir and restores its newest checkpoint.

    Args:
      workdir: holds model_config.json (build_fcn8s keyword arguments) and checkpoints/ (written
        by fcn8s_tf.train's tf.train.CheckpointManager).
      num_classes: if given, must equal the config's.
    Returns:
      (model, path of the checkpoint restored).
    Raises:
      FileNotFoundError: no model_config.json or no checkpoint.
      ValueError: num_classes disagrees with the config, or the checkpoint does not fit the model.
    """
    config_path = os.path.join(workdir, "model_config.json")
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not found (a training workdir has "
                                "model_config.json and checkpoints/)")
    with tf.io.gfile.GFile(config_path) as f:
        config = json.load(f)
    config.pop("weights", None)  # the checkpoint supplies every weight
    config_classes = config.get("num_classes", voc.NUM_CLASSES)
    if num_classes is not None and num_classes != config_classes:
        raise ValueError(f"num_classes={num_classes} was asked for but {config_path} says "
                         f"num_classes={config_classes}")
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint found")
    model = model_lib.build_fcn8s(weights=None, **config)
    try:
        status = tf.train.Checkpoint(model=model).restore(latest)
        status.expect_partial()  # the optimizer and step are in the file, not needed here
        status.assert_existing_objects_matched()  # ...but every model weight must be
    except (AssertionError, ValueError) as e:  # a missing weight, or one of another shape
        raise ValueError(f"{latest} does not hold the weights of the model in {config_path}: "
                         f"{str(e)[:500]}") from None
    logging.info("Restored %s", latest)
    return model, latest


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    export_base = FLAGS.export_dir or os.path.join(FLAGS.workdir, "export")
    try:
        model, _ = load_model_from_workdir(FLAGS.workdir)
        path = export_saved_model(model, export_base, FLAGS.version)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"fcn8s_tf.export: {e}") from None
    print(path)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training run directory (model_config.json, checkpoints/).",
                        required=True)
    flags.DEFINE_string("export_dir", "", "Export base directory; default <workdir>/export.")
    flags.DEFINE_integer("version", None, "Numeric version; default: one more than the highest.")
    app.run(main)
