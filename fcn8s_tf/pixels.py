"""What the net expects of a pixel: RGB 0-255 in, BGR minus the Caffe VGG16 mean out.

Base stage, because three stages apply it and must agree: augmentation (data/augment.py, which
subtracts the mean before its transform so that padding is 0 = the mean), the model's callers
(evaluation, serving/contract.py), and the tests and benchmark that feed the net directly.
"""

import tensorflow as tf

# Per-channel mean of the Caffe VGG16 training set, BGR order, on 0-255 pixels: the convention of
# the weights keras.applications.VGG16 ships (which expect BGR, mean-subtracted, not scaled).
BGR_MEAN = (104.00699, 116.66877, 122.67892)


def preprocess(images: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
    """RGB 0-255 images -> BGR, mean-subtracted, in `dtype`. The one place this happens.

    Args:
      images: (..., 3) uint8 or float RGB on the 0-255 scale.
      dtype: output dtype (e.g. the compute dtype of a mixed-precision policy).
    Returns:
      (..., 3) BGR minus BGR_MEAN.
    """
    bgr = tf.reverse(tf.cast(images, tf.float32), axis=[-1])
    return tf.cast(bgr - tf.constant(BGR_MEAN, tf.float32), dtype)
