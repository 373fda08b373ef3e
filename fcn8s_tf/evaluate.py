"""Evaluation: the reference FCN scores of a SavedModel or a training run over a split's records.

    python -m fcn8s_tf.evaluate --model=runs/voc/export --data='data/tfrecords/val-*.tfrecord' \
        --output_dir=runs/voc/eval [--num_classes=21] [--confusion_png] [--save_predictions=20]

--model is either a SavedModel (a version dir with saved_model.pb, or a TF Serving base dir whose
highest numeric version is used; its `serving_uint8` signature is called) or a training workdir
(`model_config.json` + `checkpoints/`: the FCN-8s is rebuilt and its newest checkpoint restored).

Each image is segmented alone at its original resolution (no resizing, no padding) and one confusion
matrix is accumulated over the whole split (metrics.py has the definitions). Writes
`<output_dir>/metrics.json`, and optionally `confusion_matrix.png` and coloured predictions
`predictions/<id>.png` (palette PNGs: values are class ids, colours the VOC palette).
"""

import os
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from fcn8s_tf import input_pipeline
from fcn8s_tf import metrics
from fcn8s_tf import predict as predict_lib
from fcn8s_tf import serving
from fcn8s_tf.voc import NUM_CLASSES, VOC_CLASSES

# uint8 (H, W, 3) RGB image -> int32 (H, W) class ids.
PredictFn = Callable[[tf.Tensor], tf.Tensor]


# ------------------------------------------------------------------------------------- models --
def saved_model_predict_fn(export_dir: str) -> PredictFn:
    """Wraps the `serving_uint8` signature (images uint8 (B, H, W, 3) -> labels int32 (B, H, W))."""
    loaded = tf.saved_model.load(export_dir)
    if serving.SIGNATURE_UINT8 not in loaded.signatures:
        raise ValueError(f"{export_dir}: the SavedModel has no 'serving_uint8' signature "
                         f"(it has {sorted(loaded.signatures)})")
    signature = loaded.signatures[serving.SIGNATURE_UINT8]

    def predict_fn(image):
        return signature(images=image[tf.newaxis])["labels"][0]

    predict_fn.loaded = loaded  # a signature holds its variables only weakly: keep them alive
    return predict_fn


def checkpoint_predict_fn(workdir: str, num_classes: Optional[int] = None) -> Tuple[PredictFn, str]:
    """A predict function for a training workdir's newest checkpoint.

    Loading, and its errors, are `export.load_model_from_workdir`'s. Returns (predict_fn, the path
    of the checkpoint restored).
    """
    from fcn8s_tf import export  # the Keras model only when a checkpoint is evaluated
    from fcn8s_tf import model as model_lib

    model, latest = export.load_model_from_workdir(workdir, num_classes)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def predict_fn(image):
        logits = model(model_lib.preprocess(image[tf.newaxis]), training=False)
        return tf.argmax(logits, axis=-1, output_type=tf.int32)[0]

    return predict_fn, latest


def load_predict_fn(model_path: str, num_classes: Optional[int] = None) -> Tuple[PredictFn, str]:
    """A predict function for a SavedModel or a training workdir, and a description of what loaded.

    Raises:
      FileNotFoundError: model_path does not exist, or a workdir without checkpoint.
      ValueError: model_path is neither a SavedModel nor a training workdir.
    """
    if not tf.io.gfile.exists(model_path):
        raise FileNotFoundError(f"{model_path}: no such file or directory")
    export_dir = serving.find_saved_model(model_path)
    if export_dir is not None:
        return saved_model_predict_fn(export_dir), f"SavedModel {export_dir}"
    workdir = model_path
    if (not tf.io.gfile.exists(os.path.join(workdir, "model_config.json"))
            and os.path.basename(os.path.normpath(workdir)) == "checkpoints"):
        workdir = os.path.dirname(os.path.normpath(workdir))  # <workdir>/checkpoints given
    if tf.io.gfile.exists(os.path.join(workdir, "model_config.json")):
        predict_fn, checkpoint = checkpoint_predict_fn(workdir, num_classes)
        return predict_fn, f"checkpoint {checkpoint}"
    raise ValueError(f"{model_path} is neither a SavedModel (saved_model.pb in it, or in "
                     "a numeric version subdirectory) nor a training workdir (model_config.json "
                     "and checkpoints/)")


# --------------------------------------------------------------------------------- evaluation --
def evaluate(predict_fn: PredictFn, dataset: tf.data.Dataset, num_classes: int, *,
             prediction_dir: Optional[str] = None, save_predictions: int = 0,
             log_every: int = 100, print_fn=print) -> Tuple[Dict, np.ndarray]:
    """Segments every image of `dataset` and scores the split with one confusion matrix.

    Args:
      predict_fn: uint8 (H, W, 3) RGB image -> (H, W) integer class ids.
      dataset: unbatched (image uint8 (H, W, 3), label uint8 (H, W, 1), filename string), e.g.
        input_pipeline.eval_dataset(pattern).
      num_classes: C; labels outside [0, C) (255) are not counted.
      prediction_dir: where the coloured predictions go (with save_predictions > 0).
      save_predictions: write `<prediction_dir>/<filename id>.png` for the first N images.
      log_every: a progress line every N images (0: none).
      print_fn: where progress lines go.
    Returns:
      (scores, cm): metrics.scores of the total confusion matrix plus "num_images"; and that
      (C, C) int64 matrix, rows = ground truth.
    Raises:
      ValueError: a prediction's size differs from its label's, or the split holds no pixel.
    """
    if save_predictions and not prediction_dir:
        raise ValueError("save_predictions needs a prediction_dir")
    if save_predictions:
        os.makedirs(prediction_dir, exist_ok=True)
    cm = np.zeros((num_classes, num_classes), np.int64)
    start = time.perf_counter()
    count = 0
    for image, label, filename in dataset:
        prediction = predict_fn(image)
        name = filename.numpy().decode("utf-8", errors="replace")
        if tuple(prediction.shape) != tuple(label.shape[:2]):
            raise ValueError(f"{name or f'image {count}'}: prediction of shape "
                             f"{tuple(prediction.shape)} for a label of shape "
                             f"{tuple(label.shape[:2])}")
        cm += metrics.confusion_matrix(label, prediction, num_classes).numpy()
        if count < save_predictions:
            stem = os.path.splitext(os.path.basename(name))[0] or f"{count:06d}"
            predict_lib.write_mask_png(np.asarray(prediction),
                                       os.path.join(prediction_dir, f"{stem}.png"))
        count += 1
        if log_every and count % log_every == 0:
            elapsed = time.perf_counter() - start
            print_fn(f"evaluated {count} images, {count / elapsed:.2f} images/s")
    if count == 0:
        raise ValueError("the dataset holds no image")
    elapsed = time.perf_counter() - start
    if log_every and count % log_every:
        print_fn(f"evaluated {count} images, {count / elapsed:.2f} images/s")
    result = metrics.scores(cm)
    result["num_images"] = count
    return result, cm


def class_names_for(num_classes: int) -> Sequence[str]:
    """VOC names for the 21 VOC classes, class_<i> otherwise."""
    if num_classes == NUM_CLASSES:
        return VOC_CLASSES
    return [f"class_{i}" for i in range(num_classes)]


# ---------------------------------------------------------------------------------------- main --
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    try:
        dataset = input_pipeline.eval_dataset(FLAGS.data)
        predict_fn, loaded = load_predict_fn(FLAGS.model, FLAGS.num_classes)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fcn8s_tf.evaluate: error: {e}") from None
    print(f"Evaluating {loaded} on {FLAGS.data}", flush=True)

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    try:
        result, cm = evaluate(
            predict_fn, dataset, FLAGS.num_classes,
            prediction_dir=os.path.join(FLAGS.output_dir, "predictions"),
            save_predictions=FLAGS.save_predictions,
            print_fn=lambda line: print(line, flush=True))
    except ValueError as e:  # wrong prediction size, no image, no labelled pixel
        raise SystemExit(f"fcn8s_tf.evaluate: error: {e}") from None
    except tf.errors.InvalidArgumentError as e:  # e.g. class ids >= --num_classes
        raise SystemExit(f"fcn8s_tf.evaluate: error: {e.message}") from None

    class_names = class_names_for(FLAGS.num_classes)
    print(metrics.format_table(result, class_names))
    print(f"{metrics.summary_line(result)} | {result['num_images']} images")
    json_path = os.path.join(FLAGS.output_dir, "metrics.json")
    metrics.write_json(json_path, result, class_names=class_names, model=FLAGS.model,
                       model_loaded=loaded, data=FLAGS.data, confusion_matrix=cm)
    print(f"Wrote {json_path}")
    if FLAGS.confusion_png:
        png_path = os.path.join(FLAGS.output_dir, "confusion_matrix.png")
        metrics.confusion_matrix_png(cm, png_path, class_names)
        print(f"Wrote {png_path}")
    if FLAGS.save_predictions:
        print(f"Wrote {min(FLAGS.save_predictions, result['num_images'])} predictions in "
              f"{os.path.join(FLAGS.output_dir, 'predictions')}")


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, so importing defines none."""
    flags.DEFINE_string("model", None, "SavedModel (version or TF Serving base dir) or training "
                        "workdir (model_config.json + checkpoints/).", required=True)
    flags.DEFINE_string("data", None, "File pattern of the TFRecords to evaluate on.",
                        required=True)
    flags.DEFINE_string("output_dir", None, "Where metrics.json (and the PNGs) go.", required=True)
    flags.DEFINE_integer("num_classes", NUM_CLASSES, "Classes including background.",
                         lower_bound=1)
    flags.DEFINE_bool("confusion_png", False, "Also write confusion_matrix.png (row-normalised).")
    flags.DEFINE_integer("save_predictions", 0, "Write coloured predictions of the first N "
                         "images to <output_dir>/predictions/<id>.png.", lower_bound=0)


if __name__ == "__main__":
    define_flags()
    app.run(main)
