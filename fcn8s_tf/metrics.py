"""Segmentation scores as the reference FCN `score.py`: one confusion matrix, four numbers.

The confusion matrix is accumulated over the whole split at each image's original resolution,
rows = ground truth, columns = prediction, pixels labelled IGNORE_LABEL (255) dropped. From it:

    acc      = diag.sum() / cm.sum()                   pixel accuracy
    acc_cls  = nanmean(diag / cm.sum(1))               mean accuracy (classes with GT pixels)
    iu       = diag / (cm.sum(1) + cm.sum(0) - diag)   per-class IU
    mean_iu  = nanmean(iu)                             mean IU
    freq     = cm.sum(1) / cm.sum()
    fwavacc  = (freq[freq > 0] * iu[freq > 0]).sum()   frequency-weighted IU

Mean IU averages over the classes with a non-empty union (GT pixels or predicted pixels): a class
that is neither in the ground truth nor ever predicted has IU 0/0 and is left out, as nanmean does
in the reference. A class that is predicted but absent from the ground truth has IU 0 and counts.

keras.metrics.MeanIoU(num_classes, ignore_class=255, sparse_y_pred=True) gives the same mean IU (it
also averages over the classes with a non-zero denominator; tests/test_metrics.py checks agreement).
It differs in small ways only: it returns float32 with an epsilon (1e-7) added to each
denominator, and it silently drops predictions outside [0, num_classes), which `confusion_matrix`
here rejects.
"""

import json
import math
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont


# ----------------------------------------------------------------------------------------------
# Confusion matrix in TensorFlow (graph-safe: usable in tf.function, tf.data and strategy steps).
# ----------------------------------------------------------------------------------------------

def confusion_matrix(labels: tf.Tensor, predictions: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Counts (ground truth, prediction) pairs over all valid pixels.

    Pixels whose label is outside [0, num_classes) are dropped: that covers IGNORE_LABEL (255) and
    any other void value, exactly as the reference `fast_hist` does. A prediction outside
    [0, num_classes) on a valid pixel is a caller bug (e.g. a padded serving output that was not
    cropped) and raises InvalidArgumentError rather than being dropped silently; inside an
    XLA-compiled function, where assertions are no-ops, such a pixel is not counted.

    Static shapes only (no boolean_mask), so it runs in tf.function, tf.data, strategy steps and
    jit-compiled functions alike.

    Args:
      labels: integer tensor of any shape, e.g. (B, H, W) or (H, W, 1); values {0..C-1, 255}.
      predictions: integer tensor with the same number of elements as `labels`, values {0..C-1}.
      num_classes: C.
    Returns:
      (C, C) int64 tensor; [i, j] = number of pixels of class i predicted as j.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
    valid = tf.logical_and(labels >= 0, labels < num_classes)
    in_range = tf.logical_and(predictions >= 0, predictions < num_classes)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.logical_or(tf.logical_not(valid), in_range)),
        [f"confusion_matrix: a predicted class id outside [0, {num_classes}) on a labelled pixel"])
    with tf.control_dependencies([check]):
        counted = tf.logical_and(valid, in_range)
    index = tf.where(counted, labels * num_classes + predictions, 0)
    # Per call the counts fit in int32 (< 2**31 pixels); int64 only for the accumulated total.
    counts = tf.math.unsorted_segment_sum(tf.cast(counted, tf.int32), index,
                                          num_classes * num_classes)
    return tf.reshape(tf.cast(counts, tf.int64), [num_classes, num_classes])


def update_confusion_matrix(cm: tf.Tensor, labels: tf.Tensor, predictions: tf.Tensor,
                            num_classes: int) -> tf.Tensor:
    """Returns `cm + confusion_matrix(labels, predictions, num_classes)` ((C, C) int64).

    `cm` may be a tensor or an int64 tf.Variable (then use `cm.assign_add(confusion_matrix(...))`
    inside a replica step if you want the update in place).
    """
    return tf.cast(cm, tf.int64) + confusion_matrix(labels, predictions, num_classes)


# ----------------------------------------------------------------------------------------------
# Scores from an accumulated confusion matrix (numpy, float64).
# ----------------------------------------------------------------------------------------------

def _none_if_nan(values: np.ndarray):
    return [None if math.isnan(v) else float(v) for v in values]


def scores(cm: np.ndarray) -> Dict[str, Any]:
    """The reference FCN scores from a (C, C) confusion matrix (rows = GT, cols = prediction).

    Args:
      cm: (C, C) integer counts, e.g. the sum of `confusion_matrix` over a split.
    Returns:
      A JSON-ready dict:
        pixel_accuracy, mean_accuracy, mean_iou, frequency_weighted_iou: floats;
        per_class_iou: list of C floats, None where the class's union is empty (left out of
          mean_iou);
        per_class_accuracy: list of C floats, None where the class has no GT pixels (left out of
          mean_accuracy);
        per_class_gt_pixels: list of C ints;
        num_pixels: total counted (non-ignored) pixels;
        num_classes_in_mean_iou: how many classes mean_iou averages over.
    Raises:
      ValueError: if `cm` is not square or counts no pixel at all.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    total = cm.sum()
    if total <= 0:
        raise ValueError("confusion matrix is empty: no pixel with a label in [0, num_classes) "
                         "was counted (all void, or no images)")
    diag = np.diag(cm)
    gt = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = gt + predicted - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        class_accuracy = diag / gt        # NaN where the class has no GT pixel
        iou = diag / union                # NaN where the union is empty
    freq = gt / total
    # Classes with GT pixels always have a non-empty union, so neither nanmean sees only NaNs.
    return {
        "pixel_accuracy": float(diag.sum() / total),
        "mean_accuracy": float(np.nanmean(class_accuracy)),
        "mean_iou": float(np.nanmean(iou)),
        "frequency_weighted_iou": float((freq[freq > 0] * iou[freq > 0]).sum()),
        "per_class_iou": _none_if_nan(iou),
        "per_class_accuracy": _none_if_nan(class_accuracy),
        "per_class_gt_pixels": [int(v) for v in gt],
        "num_pixels": int(total),
        "num_classes_in_mean_iou": int(np.count_nonzero(union > 0)),
    }


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
    for name, class_iou, class_acc, pixels in zip(class_names, iou, result["per_class_accuracy"],
                                                  result["per_class_gt_pixels"]):
        lines.append(f"{name:<{width}}  {fmt(class_iou)}  {fmt(class_acc)}  {pixels:>12d}")
    lines.append("-" * (width + 32))
    lines.append(f"{'pixel accuracy':<{width}}  {result['pixel_accuracy']:6.4f}")
    lines.append(f"{'mean accuracy':<{width}}  {result['mean_accuracy']:6.4f}")
    lines.append(f"{'mean IU':<{width}}  {result['mean_iou']:6.4f}"
                 f"   (over {result['num_classes_in_mean_iou']} classes with a non-empty union)")
    lines.append(f"{'fw IU':<{width}}  {result['frequency_weighted_iou']:6.4f}")
    return "\n".join(lines)


def _json_safe(value):
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, result: Dict[str, Any], class_names: Optional[Sequence[str]] = None,
               **extra: Any) -> None:
    """Writes the scores (plus `extra` fields) as JSON, atomically (temp file + rename).

    With `class_names`, adds "per_class": {name: {"iou", "accuracy", "gt_pixels"}}.
    NaN becomes null.
    """
    payload = dict(result)
    if class_names is not None:
        if len(class_names) != len(result["per_class_iou"]):
            raise ValueError(f"{len(class_names)} class names for "
                             f"{len(result['per_class_iou'])} classes")
        payload["per_class"] = {
            name: {"iou": iou, "accuracy": acc, "gt_pixels": pixels}
            for name, iou, acc, pixels in zip(class_names, result["per_class_iou"],
                                              result["per_class_accuracy"],
                                              result["per_class_gt_pixels"])}
    payload.update(extra)
    text = json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# Confusion-matrix picture (PIL only).
# ----------------------------------------------------------------------------------------------

_LOW = np.array([247, 251, 255], np.float64)    # white-blue for 0
_HIGH = np.array([8, 48, 107], np.float64)      # dark blue for 1
_EMPTY_ROW = (220, 220, 220)                    # rows with no GT pixel


def _shade(fraction: float):
    return tuple(int(round(c)) for c in _LOW + (_HIGH - _LOW) * fraction)


def confusion_matrix_png(cm: np.ndarray, path: str, class_names: Sequence[str],
                         cell: int = 24) -> None:
    """Draws the row-normalised confusion matrix as a PNG heat map.

    Each row (a ground-truth class) is divided by its pixel count, so cell [i, j] is the fraction
    of class i's pixels predicted as j; the diagonal is the per-class accuracy. Cells show the
    percentage when it is at least 1%; rows without GT pixels are grey. A colour bar on the right
    maps 0..100%.

    Args:
      cm: (C, C) counts, rows = ground truth.
      path: where to write the PNG.
      class_names: C names for the axes.
      cell: cell size in pixels.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}x{n} confusion matrix")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)

    font = ImageFont.load_default()
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(math.ceil(scratch.textlength(s, font=font)))  # noqa: E731
    name_w = max(text_w(name) for name in class_names) + 8
    title_h = 16
    left, top = name_w + 14, name_w + title_h
    bar_w, gap = 14, 16
    right = gap + bar_w + text_w("100%") + 8
    bottom = 24
    width = left + n * cell + right
    height = top + n * cell + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    # Axis titles.
    draw.text((left, 2), "columns: prediction", fill="black", font=font)
    draw.text((2, top + n * cell + 6), "rows: ground truth (row-normalised)", fill="black",
              font=font)
    # Row labels (ground truth) and rotated column labels (prediction).
    for i, name in enumerate(class_names):
        draw.text((left - 6 - text_w(name), top + i * cell + (cell - 10) // 2), name,
                  fill="black", font=font)
        label = Image.new("L", (name_w, cell), 0)
        ImageDraw.Draw(label).text((4, (cell - 10) // 2), name, fill=255, font=font)
        label = label.rotate(90, expand=True)  # reads bottom-to-top
        image.paste((0, 0, 0), (left + i * cell, title_h, left + (i + 1) * cell,
                                title_h + name_w), label)
    # Cells.
    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            value = normalised[i, j]
            colour = _EMPTY_ROW if np.isnan(value) else _shade(value)
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=colour,
                           outline=(255, 255, 255))
            if not np.isnan(value) and value >= 0.01:
                text = f"{int(round(100 * value))}"
                ink = "white" if value > 0.5 else "black"
                draw.text((x0 + (cell - text_w(text)) // 2, y0 + (cell - 10) // 2), text,
                          fill=ink, font=font)
    # Colour bar: 100% at the top, 0% at the bottom.
    bar_x = left + n * cell + gap
    bar_h = n * cell
    for y in range(bar_h):
        draw.line((bar_x, top + y, bar_x + bar_w - 1, top + y),
                  fill=_shade(1.0 - y / max(bar_h - 1, 1)))
    draw.rectangle((bar_x, top, bar_x + bar_w - 1, top + bar_h - 1), outline="black")
    draw.text((bar_x + bar_w + 4, top - 4), "100%", fill="black", font=font)
    draw.text((bar_x + bar_w + 4, top + bar_h - 8), "0%", fill="black", font=font)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    image.save(path, format="PNG")
