"""Export: a SavedModel in TF Serving's layout, `<base>/<version>/saved_model.pb`.

    python -m fcn8s_tf.export --workdir=runs/voc [--export_dir=runs/voc/export] [--version=N] \
        [--max_image_pixels=4194304] [--max_output_bytes=536870912] [--precision=auto]

What the export contains (signatures, limits, the warmup file) is the serving contract, owned by
fcn8s_tf/serving/contract.py; this module turns a trained model into such an export, atomically.
"""

import os
import shutil
import tempfile
import time
from typing import Dict, Optional

from absl import app
from absl import flags
from absl import logging
import keras
import tensorflow as tf

from fcn8s_tf import config as config_lib
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.serving import contract as serving
from fcn8s_tf import class_info
from fcn8s_tf.training import workdir as workdir_lib


TMP_PREFIX = ".tmp-"  # an export being written: <base>/.tmp-<version>-p<pid>-<time>


def serving_twin(model: keras.Model, model_kwargs: Optional[Dict],
                 dtype: str = "float32") -> keras.Model:
    """A model for any input size with `model`'s weights computing in `dtype`, or `model` itself
    if it is one already.

    Training may build the net for its fixed crop size (faster, BENCHMARKS.md) and under a
    mixed-precision policy; evaluation and serving need every image size. dtype "float32", or
    "bfloat16": the twin's variables are bfloat16 too (Keras policy "bfloat16", not
    "mixed_bfloat16"), so that a forward pass does not cast 134 M float32 weights on every call.
    model_kwargs are the build_fcn8s arguments (None: use `model` as it is; float32 only).
    """
    dynamic = all(d is None for d in model.input_shape[1:3])
    if dynamic and model.dtype_policy.name == dtype:
        return model
    if model_kwargs is None:
        if dtype != "float32":
            raise ValueError(f"a {dtype} twin of {model.name} needs its build_fcn8s arguments")
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(dtype)
    try:
        twin = model_lib.build_fcn8s(weights=None, **model_kwargs)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(model.get_weights())
    return twin


def export_saved_model(model: keras.Model, export_base: str, version: Optional[int] = None,
                       model_kwargs: Optional[Dict] = None,
                       max_image_pixels: int = serving.DEFAULT_MAX_IMAGE_PIXELS,
                       classes: Optional[class_info.ClassInfo] = None,
                       max_output_bytes: int = serving.DEFAULT_MAX_OUTPUT_BYTES,
                       precision: str = "float32") -> str:
    """Writes `model` as `<export_base>/<version>/` (TF Serving layout) and returns that path.

    Args:
      model: an FCN-8s (mixed-precision or fixed-size models are exported as a float32, any-size
        twin when model_kwargs, the build_fcn8s arguments, are given).
      export_base: the model base path TF Serving watches.
      version: numeric version; default one more than the highest present.
      model_kwargs: build_fcn8s arguments (needed only for the twin).
      max_image_pixels: the net's budget per image: larger images (padding counted) are downscaled
        at serve time, and ones over 4x this many pixels refused (serving.Budget).
      max_output_bytes: requests whose answer would be larger are refused (serving.Budget).
      precision: "float32", "bfloat16" or "auto" (config.resolve_export_precision): the dtype the
        served net computes in; the `metadata` signature says which. float32 by default here, so
        that training's and the importer's exports answer as their evaluation did; the export CLI
        defaults to auto.
      classes: the classes the model predicts (names, colours), for the `metadata` signature and
        assets/class_names.txt; default VOC's (or class_<i>) for its class count.
    Returns:
      The version directory, holding the SavedModel and assets.extra/tf_serving_warmup_requests.
      It appears complete or not at all: it is written to a temporary sibling and renamed, since
      TF Serving loads any numeric directory it sees.
    """
    version = serving.next_version(export_base) if version is None else int(version)
    final = os.path.join(export_base, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"Export version directory already exists: {final}")
    tf.io.gfile.makedirs(export_base)
    workdir_lib.remove_stale_temp_dirs(export_base, lambda name: name.startswith(TMP_PREFIX),
                                       log=logging.info)
    tmp = os.path.join(export_base, f"{TMP_PREFIX}{version}-p{os.getpid()}-{int(time.time())}")
    dtype, why = config_lib.resolve_export_precision(precision)
    logging.info("Export precision %s (precision=%s: %s)", dtype, precision, why)
    twin = serving_twin(model, model_kwargs, dtype)
    classes = classes or class_info.ClassInfo.default(twin.output_shape[-1])
    if classes.num_classes != twin.output_shape[-1]:
        raise ValueError(f"{classes.num_classes} class names for a model of "
                         f"{twin.output_shape[-1]} classes")
    signatures = serving.serving_signatures(twin, max_image_pixels, classes, max_output_bytes,
                                            precision=dtype)
    names_dir = tempfile.mkdtemp(prefix="fcn8s_export_assets_")
    names_file = os.path.join(names_dir, serving.CLASS_NAMES_ASSET)
    with open(names_file, "w") as f:
        f.write("".join(name + "\n" for name in classes.names))
    try:
        tf.saved_model.save(serving.serving_root(signatures, names_file), tmp,
                            signatures=signatures)
        serving.write_warmup_file(tmp)
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    finally:
        shutil.rmtree(names_dir, ignore_errors=True)
    return final


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    export_base = FLAGS.export_dir or workdir_lib.path(FLAGS.workdir, workdir_lib.EXPORT_DIR)
    try:
        model, _ = workdir_lib.load_model(FLAGS.workdir)
        path = export_saved_model(model, export_base, FLAGS.version,
                                  model_kwargs=workdir_lib.read_model_config(FLAGS.workdir),
                                  precision=FLAGS.precision,
                                  max_image_pixels=FLAGS.max_image_pixels,
                                  max_output_bytes=FLAGS.max_output_bytes,
                                  classes=workdir_lib.read_classes(FLAGS.workdir))
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
            ValueError) as e:
        raise SystemExit(f"fcn8s_tf.export: {e}") from None
    except tf.errors.OpError as e:  # e.g. an --export_dir TensorFlow cannot write
        raise SystemExit(f"fcn8s_tf.export: {type(e).__name__}: {e.message}") from None
    print(path)


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, so importing defines none."""
    flags.DEFINE_string("workdir", None, "Training run directory (model_config.json, "
                        "checkpoints/).", required=True)
    flags.DEFINE_string("export_dir", "", "Export base directory; default <workdir>/export.")
    flags.DEFINE_integer("version", None, "Numeric version; default: one more than the highest.")
    flags.DEFINE_integer("max_image_pixels", serving.DEFAULT_MAX_IMAGE_PIXELS,
                         "Serving budget per image: an image whose padded area exceeds that of a "
                         "square of this many pixels is downscaled at serve time; one of more than "
                         "4x this many pixels is refused.", lower_bound=1)
    flags.DEFINE_integer("max_output_bytes", serving.DEFAULT_MAX_OUTPUT_BYTES,
                         "Serving budget per request: a request whose answer (labels, plus "
                         "probabilities where asked for) would take more bytes is refused.",
                         lower_bound=1)
    flags.DEFINE_enum("precision", "auto", list(config_lib.EXPORT_PRECISIONS),
                      "The dtype the served net computes in. auto (default): bfloat16 where this "
                      "machine runs bf16 natively (Ampere+ GPUs, AMX/AVX512_BF16 CPUs), else "
                      "float32; export on the kind of machine that will serve, or say which.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
