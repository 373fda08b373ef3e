"""A trained FCN-8s -> a SavedModel in TF Serving's layout, `<base>/<version>/saved_model.pb`.

What the export contains (signatures, budget, metadata, the warmup file) is the serving contract,
owned by fcn8s_tf/serving/contract.py; this module writes such an export, atomically. Its command
line is `python -m fcn8s_tf.export` (fcn8s_tf/export.py); training and the weights importer call
export_saved_model directly.
"""

import os
import shutil
import tempfile
import time
from typing import Dict, Optional

from absl import logging
import keras
import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf import files
from fcn8s_tf import precision as precision_lib
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.serving import budget as serving_budget
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import warmup as serving_warmup


TMP_PREFIX = ".tmp-"  # an export being written: <base>/.tmp-<version>-p<pid>-<time>


def export_saved_model(model: keras.Model, export_base: str, version: Optional[int] = None,
                       model_kwargs: Optional[Dict] = None,
                       max_image_pixels: int = serving_budget.DEFAULT_MAX_IMAGE_PIXELS,
                       classes: Optional[class_info.ClassInfo] = None,
                       max_output_bytes: int = serving_budget.DEFAULT_MAX_OUTPUT_BYTES,
                       precision: str = "float32") -> str:
    """Writes `model` as `<export_base>/<version>/` (TF Serving layout) and returns that path.

    Args:
      model: an FCN-8s (mixed-precision or fixed-size models are exported as a float32, any-size
        twin when model_kwargs, the build_fcn8s arguments, are given).
      export_base: the model base path TF Serving watches.
      version: numeric version; default one more than the highest present.
      model_kwargs: build_fcn8s arguments (needed only for the twin).
      max_image_pixels: the net's budget per image: larger images (padding counted) are downscaled
        at serve time, and ones over 4x this many pixels refused (serving_budget.Budget).
      max_output_bytes: requests whose answer would be larger are refused (serving_budget.Budget).
      precision: "float32", "bfloat16" or "auto" (precision.resolve_export_precision): the dtype the
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
    files.remove_stale_temp_dirs(export_base, lambda name: name.startswith(TMP_PREFIX),
                                 log=logging.info)
    tmp = os.path.join(export_base, f"{TMP_PREFIX}{version}-p{os.getpid()}-{int(time.time())}")
    dtype, why = precision_lib.resolve_export_precision(precision)
    logging.info("Export precision %s (precision=%s: %s)", dtype, precision, why)
    twin = model_lib.serving_twin(model, model_kwargs, dtype)
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
        serving_warmup.write_warmup_file(tmp)
        files.publish_dir(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    finally:
        shutil.rmtree(names_dir, ignore_errors=True)
    return final
