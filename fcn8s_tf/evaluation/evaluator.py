"""Evaluation: the one loop that scores a model over a split, and what it reports.

The library of `python -m fcn8s_tf.evaluate` (whose docstring gives the command, what --model may
be and the class check); training calls the same `evaluate()` with hooks for its loss and
TensorBoard pictures. Each image is segmented alone at its original resolution (no resizing, no
padding) and one confusion matrix is accumulated over the whole split (evaluation/metrics.py has
the definitions). load_predict_fn wraps what serving/loader.py loads, a SavedModel (its
`serving_uint8` signature) or a training workdir; scoring_classes decides which classes a run is
scored with.
"""

import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf import pixels
from fcn8s_tf import render
from fcn8s_tf.data.convert import layout as convert_layout
from fcn8s_tf.evaluation import metrics
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import loader

# uint8 (H, W, 3) RGB image -> {"labels": int32 (H, W)[, "logits": float (H, W, C)]}.
PredictFn = Callable[[tf.Tensor], Dict[str, tf.Tensor]]
# Called once per image: (index, image uint8 (H, W, 3), label uint8 (H, W, 1), outputs, filename).
Hook = Callable[[int, tf.Tensor, tf.Tensor, Dict[str, tf.Tensor], str], None]


# ------------------------------------------------------------------------------------- models --
def model_predict_fn(model, with_logits: bool = False) -> PredictFn:
    """The predict function of an in-memory Keras FCN-8s (one trace, any image size)."""
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def predict_fn(image):
        logits = model(pixels.preprocess(image[tf.newaxis]), training=False)[0]
        outputs = {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}
        if with_logits:
            outputs["logits"] = tf.cast(logits, tf.float32)
        return outputs

    return predict_fn


def saved_model_predict_fn(model: loader.LoadedModel) -> PredictFn:
    """Wraps an export's `serving_uint8` signature (uint8 (B, H, W, 3) -> labels int32
    (B, H, W))."""
    signature = model.signature(serving.SIGNATURE_UINT8)

    def predict_fn(image):
        outputs = signature(**{serving.UINT8_INPUT: image[tf.newaxis]})
        return {"labels": outputs["labels"][0]}

    predict_fn.loaded = model.saved_model  # a signature holds its variables only weakly
    return predict_fn


def load_predict_fn(model_path: str) -> Tuple[PredictFn, str, Optional[class_info.ClassInfo]]:
    """A predict function for an export or a training workdir (serving/loader.py loads it).

    Returns:
      (predict_fn, a description of what loaded, the model's classes (names, colours; None when
      an export does not say)).
    Raises:
      loader.ModelLoadError: nothing loadable at model_path (the message says why).
    """
    model = loader.load(model_path)
    if model.keras_model is not None:
        return model_predict_fn(model.keras_model), model.description, model.classes
    return saved_model_predict_fn(model), model.description, model.classes


# ------------------------------------------------------------------------------------ classes --
def _names_are_placeholders(classes: class_info.ClassInfo) -> bool:
    """True for the class_<i> names ClassInfo.default gives a model that does not name its classes
    (VOC's 21 names, the other default, are real names: such models are VOC's)."""
    return (classes.num_classes != class_info.NUM_CLASSES
            and classes.names == class_info.ClassInfo.default(classes.num_classes).names)


def _count_and_names(classes: class_info.ClassInfo) -> str:
    """E.g. "3 classes (background, circle, square)"; the first few names of a long list."""
    return f"{classes.num_classes} classes ({convert_layout.format_names(classes.names)})"


def scoring_classes(model: Optional[class_info.ClassInfo], data: Optional[class_info.ClassInfo], *,
                    allow_class_mismatch: bool = False, model_name: str = "the model",
                    data_name: str = "the records") -> Optional[class_info.ClassInfo]:
    """The classes a model is scored with on some records, after checking that they agree.

    Args:
      model: the model's classes (None when it does not say).
      data: the records' classes, from their manifest (records.read_classes; None without one).
      allow_class_mismatch: accept other names for the same count (class i of the model is
        taken to be class i of the records).
      model_name, data_name: how error messages name the two.
    Returns:
      The model's classes where the names agree or the records say nothing; the records' where
      the model does not name its classes (class_<i>), or other names are allowed (they are the
      ground truth that the rows of the confusion matrix count); None when neither says.
    Raises:
      ValueError: the counts differ, or the names do without allow_class_mismatch.
    """
    if data is None or model is None:
        return model or data
    if model.num_classes != data.num_classes:
        hint = (" (--allow_class_mismatch only covers other names for as many classes)"
                if allow_class_mismatch else "")
        raise ValueError(
            f"{model_name} predicts {_count_and_names(model)} but {data_name} hold "
            f"{_count_and_names(data)} by their manifest.json: evaluate a model trained on these "
            f"classes, or records converted with the model's{hint}")
    if model.names == data.names:
        return model
    if _names_are_placeholders(model):  # a model that does not name its classes
        return data
    differ = [f"id {i}: {m!r} vs {d!r}"
              for i, (m, d) in enumerate(zip(model.names, data.names)) if m != d]
    shown = ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
    message = (f"{model_name} names its {_count_and_names(model)} otherwise than {data_name} "
               f"in their manifest.json ({convert_layout.format_names(data.names)}; {shown})")
    if not allow_class_mismatch:
        raise ValueError(f"{message}; if each id is the same class in both, pass "
                         "--allow_class_mismatch to score with the records' names")
    logging.warning("%s; scoring with the records' names (--allow_class_mismatch)", message)
    return data


# --------------------------------------------------------------------------------- evaluation --
def evaluate(predict_fn: PredictFn, dataset: tf.data.Dataset, num_classes: int, *,
             max_images: int = 0, hooks: Sequence[Hook] = (), log_every: int = 100,
             print_fn=print) -> Tuple[Dict[str, Any], np.ndarray]:
    """Segments every image of `dataset` and scores the split with one confusion matrix.

    Args:
      predict_fn: uint8 (H, W, 3) RGB image -> {"labels": (H, W) integer class ids, ...}.
      dataset: unbatched (image uint8 (H, W, 3), label uint8 (H, W, 1), filename string), e.g.
        input_pipeline.eval_dataset(pattern).
      num_classes: C; labels outside [0, C) (255) are not counted.
      max_images: score only the first N images (0: all).
      hooks: called with every image and its outputs (training computes its loss and keeps
        TensorBoard pictures this way; the CLI saves coloured predictions).
      log_every: a progress line every N images (0: none).
      print_fn: where progress lines go.
    Returns:
      (scores, cm): metrics.scores of the total confusion matrix plus "num_images"; and that
      (C, C) int64 matrix, rows = ground truth.
    Raises:
      ValueError: a prediction's size differs from its label's, or the split holds no pixel.
    """
    if max_images:
        dataset = dataset.take(max_images)
    cm = np.zeros((num_classes, num_classes), np.int64)
    start = time.perf_counter()
    count = 0
    for image, label, filename in dataset:
        outputs = predict_fn(image)
        prediction = outputs["labels"]
        name = filename.numpy().decode("utf-8", errors="replace")
        if tuple(prediction.shape) != tuple(label.shape[:2]):
            raise ValueError(f"{name or f'image {count}'}: prediction of shape "
                             f"{tuple(prediction.shape)} for a label of shape "
                             f"{tuple(label.shape[:2])}")
        cm += metrics.confusion_matrix(label, prediction, num_classes).numpy()
        for hook in hooks:
            hook(count, image, label, outputs, name)
        count += 1
        if log_every and count % log_every == 0:
            print_fn(f"evaluated {count} images, {count / (time.perf_counter() - start):.2f} "
                     "images/s")
    if count == 0:
        raise ValueError("the dataset holds no image")
    if log_every and count % log_every:
        print_fn(f"evaluated {count} images, {count / (time.perf_counter() - start):.2f} images/s")
    result = metrics.scores(cm)
    result["num_images"] = count
    return result, cm


def save_predictions_hook(directory: str, count: int, palette=class_info.VOC_PALETTE) -> Hook:
    """A hook writing `<directory>/<filename id>.png` (palette PNG) for the first `count` images."""
    os.makedirs(directory, exist_ok=True)

    def hook(index, image, label, outputs, name):
        if index < count:
            stem = os.path.splitext(os.path.basename(name))[0] or f"{index:06d}"
            render.write_mask_png(np.asarray(outputs["labels"]),
                                  os.path.join(directory, f"{stem}.png"), palette)

    return hook


# ---------------------------------------------------------------------------------- reporting --
def metrics_payload(result: Dict[str, Any], class_names: Sequence[str],
                    **extra: Any) -> Dict[str, Any]:
    """The scores plus "per_class": {name: {"iou", "accuracy", "gt_pixels"}} and `extra`."""
    if len(class_names) != len(result["per_class_iou"]):
        raise ValueError(f"{len(class_names)} class names for "
                         f"{len(result['per_class_iou'])} classes")
    payload = dict(result)
    payload["per_class"] = {
        name: {"iou": iou, "accuracy": acc, "gt_pixels": pixels}
        for name, iou, acc, pixels in zip(class_names, result["per_class_iou"],
                                          result["per_class_accuracy"],
                                          result["per_class_gt_pixels"])}
    payload.update(extra)
    return payload


def summary_line(result: Dict[str, Any]) -> str:
    """One line with the four headline numbers."""
    return (f"mean IU {result['mean_iou']:.4f} | pixel acc {result['pixel_accuracy']:.4f} | "
            f"mean acc {result['mean_accuracy']:.4f} | "
            f"fw IU {result['frequency_weighted_iou']:.4f}")


def format_table(result: Dict[str, Any], class_names: Sequence[str]) -> str:
    """A per-class table (IU, accuracy, GT pixels) followed by the summary numbers.

    Classes with an empty union show "-" (they are not in the mean).
    """
    iou = result["per_class_iou"]
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} classes")
    width = max(14, max(len(name) for name in class_names))  # >= len("pixel accuracy")
    fmt = lambda v: "     -" if v is None else f"{v:6.4f}"  # noqa: E731
    lines = [f"{'class':<{width}}  {'IU':>6}  {'acc':>6}  {'GT pixels':>12}",
             "-" * (width + 32)]
    for name, class_iou, class_acc, gt_pixels in zip(class_names, iou, result["per_class_accuracy"],
                                                     result["per_class_gt_pixels"]):
        lines.append(f"{name:<{width}}  {fmt(class_iou)}  {fmt(class_acc)}  {gt_pixels:>12d}")
    lines.append("-" * (width + 32))
    lines.append(f"{'pixel accuracy':<{width}}  {result['pixel_accuracy']:6.4f}")
    lines.append(f"{'mean accuracy':<{width}}  {result['mean_accuracy']:6.4f}")
    lines.append(f"{'mean IU':<{width}}  {result['mean_iou']:6.4f}"
                 f"   (over {result['num_classes_in_mean_iou']} classes with a non-empty union)")
    lines.append(f"{'fw IU':<{width}}  {result['frequency_weighted_iou']:6.4f}")
    return "\n".join(lines)
