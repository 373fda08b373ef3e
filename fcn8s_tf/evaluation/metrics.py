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

import math
from typing import Any, Dict

import numpy as np
import tensorflow as tf


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
