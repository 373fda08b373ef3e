"""Tests for fcn8s_tf.evaluation.metrics: a confusion matrix worked out by hand, and the reference
scores."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcn8s_tf.class_info import IGNORE_LABEL, NUM_CLASSES
from fcn8s_tf.evaluation import metrics

# Ten pixels, three classes, two of them void (255):
#
#   label:      0  0  0  0  1  1  1  2  255 255
#   prediction: 0  0  0  1  1  1  2  0    2   0
#
# The void pixels are dropped, leaving 8. Rows = ground truth, columns = prediction:
#
#             pred 0  pred 1  pred 2   | GT total
#   GT 0         3       1       0     |    4
#   GT 1         0       2       1     |    3
#   GT 2         1       0       0     |    1
#   ---------------------------------
#   pred total   4       3       1         8
#
# pixel accuracy = (3 + 2 + 0) / 8                     = 5/8   = 0.625
# class accuracy = 3/4, 2/3, 0/1; mean = (3/4 + 2/3) / 3 = 17/36
# union          = GT + pred - diag = 4+4-3, 3+3-2, 1+1-0 = 5, 4, 2
# IU             = 3/5, 2/4, 0/2; mean = (0.6 + 0.5 + 0) / 3 = 11/30
# freq           = 4/8, 3/8, 1/8
# fw IU          = 0.5 * 0.6 + 0.375 * 0.5 + 0.125 * 0 = 39/80 = 0.4875
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 255, 255], np.uint8)
PREDICTIONS = np.array([0, 0, 0, 1, 1, 1, 2, 0, 2, 0], np.int64)
EXPECTED_CM = np.array([[3, 1, 0],
                        [0, 2, 1],
                        [1, 0, 0]], np.int64)


def test_hand_worked_confusion_matrix_eager():
    cm = metrics.confusion_matrix(LABELS, PREDICTIONS, 3)
    assert cm.dtype == tf.int64
    np.testing.assert_array_equal(cm.numpy(), EXPECTED_CM)


def test_hand_worked_confusion_matrix_in_tf_function_with_image_shapes():
    # As a trainer or evaluator calls it: (B, H, W, 1) uint8 labels, (B, H, W) int predictions,
    # unknown shapes at trace time.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8),
                                  tf.TensorSpec([None, None, None], tf.int32)])
    def step(labels, predictions):
        return metrics.confusion_matrix(labels, predictions, 3)

    labels = LABELS.reshape(1, 2, 5, 1)
    predictions = PREDICTIONS.astype(np.int32).reshape(1, 2, 5)
    np.testing.assert_array_equal(step(labels, predictions).numpy(), EXPECTED_CM)


def test_confusion_matrix_compiles_with_xla():
    # The trainer may keep the metric inside a jit-compiled step: no dynamic shapes in it.
    step = tf.function(lambda l, p: metrics.confusion_matrix(l, p, 3), jit_compile=True)
    np.testing.assert_array_equal(step(LABELS, PREDICTIONS).numpy(), EXPECTED_CM)


def test_update_confusion_matrix_accumulates_in_a_variable():
    total = tf.Variable(tf.zeros([3, 3], tf.int64))

    @tf.function
    def accumulate(labels, predictions):
        total.assign(metrics.update_confusion_matrix(total, labels, predictions, 3))

    accumulate(LABELS, PREDICTIONS)
    accumulate(LABELS, PREDICTIONS)
    np.testing.assert_array_equal(total.numpy(), 2 * EXPECTED_CM)


def test_void_and_out_of_range_labels_are_dropped():
    labels = np.array([IGNORE_LABEL, 7, 3, 0], np.int32)  # 7 and 3 are >= num_classes = 3
    predictions = np.array([1, 2, 0, 0], np.int32)
    cm = metrics.confusion_matrix(labels, predictions, 3).numpy()
    assert cm.sum() == 1 and cm[0, 0] == 1


def test_prediction_out_of_range_on_a_valid_pixel_raises():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside \[0, 3\)"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, IGNORE_LABEL]), 3)
    # ...but an out-of-range prediction on a void pixel is not looked at.
    cm = metrics.confusion_matrix(np.array([0, IGNORE_LABEL]), np.array([0, IGNORE_LABEL]), 3)
    assert cm.numpy().sum() == 1


def test_hand_worked_scores_exactly():
    result = metrics.scores(EXPECTED_CM)
    assert result["pixel_accuracy"] == pytest.approx(5 / 8, abs=1e-15)
    assert result["mean_accuracy"] == pytest.approx(17 / 36, abs=1e-15)
    assert result["mean_iou"] == pytest.approx(11 / 30, abs=1e-15)
    assert result["frequency_weighted_iou"] == pytest.approx(39 / 80, abs=1e-15)
    assert result["per_class_iou"] == pytest.approx([3 / 5, 2 / 4, 0.0], abs=1e-15)
    assert result["per_class_accuracy"] == pytest.approx([3 / 4, 2 / 3, 0.0], abs=1e-15)
    assert result["per_class_gt_pixels"] == [4, 3, 1]
    assert result["num_pixels"] == 8
    assert result["num_classes_in_mean_iou"] == 3


def test_class_with_empty_union_is_left_out_of_the_means():
    # The same pixels with num_classes = 4: class 3 is neither in the GT nor predicted, so its IU
    # is 0/0 and none of the means change (the reference's nanmean).
    cm = metrics.confusion_matrix(LABELS, PREDICTIONS, 4).numpy()
    result = metrics.scores(cm)
    assert result["per_class_iou"][3] is None and result["per_class_accuracy"][3] is None
    assert result["mean_iou"] == pytest.approx(11 / 30, abs=1e-15)
    assert result["mean_accuracy"] == pytest.approx(17 / 36, abs=1e-15)
    assert result["frequency_weighted_iou"] == pytest.approx(39 / 80, abs=1e-15)
    assert result["num_classes_in_mean_iou"] == 3


def test_class_predicted_but_absent_from_gt_counts_as_zero_iou():
    # Add one pixel of class 0 predicted as class 3 (4 classes). Class 3 now has a union of 1 and
    # IU 0, so it enters the mean IU; it has no GT pixel, so it stays out of the mean accuracy.
    #   cm row 0 becomes 3 1 0 1 (GT 5); column 3 total 1; 9 pixels.
    #   IU = 3/(5+4-3), 2/4, 0/2, 0/1 = 1/2, 1/2, 0, 0 -> mean 1/4
    #   acc = 3/5, 2/3, 0 -> mean (3/5 + 2/3)/3 = 19/45
    labels = np.append(LABELS, 0)
    predictions = np.append(PREDICTIONS, 3)
    result = metrics.scores(metrics.confusion_matrix(labels, predictions, 4).numpy())
    assert result["per_class_iou"] == pytest.approx([1 / 2, 1 / 2, 0.0, 0.0], abs=1e-15)
    assert result["mean_iou"] == pytest.approx(1 / 4, abs=1e-15)
    assert result["per_class_accuracy"][3] is None
    assert result["mean_accuracy"] == pytest.approx(19 / 45, abs=1e-15)
    assert result["num_classes_in_mean_iou"] == 4


def test_empty_confusion_matrix_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        metrics.scores(np.zeros((3, 3), np.int64))


def test_keras_mean_iou_agrees_with_the_reference_mean_iu():
    # Random labels with void pixels and classes 19, 20 never present nor predicted (empty union).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, size=(4, 33, 47)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = IGNORE_LABEL
    predictions = np.where(rng.random(labels.shape) < 0.6, labels,
                           rng.integers(0, 19, size=labels.shape)).astype(np.int32)
    predictions[labels == IGNORE_LABEL] = rng.integers(0, 19)  # whatever the net says there

    keras_miou = keras.metrics.MeanIoU(num_classes=NUM_CLASSES, ignore_class=IGNORE_LABEL,
                                       sparse_y_pred=True)
    keras_miou.update_state(labels, predictions)
    ours = metrics.scores(metrics.confusion_matrix(labels, predictions, NUM_CLASSES).numpy())
    assert ours["num_classes_in_mean_iou"] == 19
    np.testing.assert_array_equal(keras_miou.total_cm.numpy(),
                                  metrics.confusion_matrix(labels, predictions, NUM_CLASSES))
    # Keras returns float32 with an epsilon in the denominator; otherwise the same definition.
    assert float(keras_miou.result()) == pytest.approx(ours["mean_iou"], rel=1e-5)
