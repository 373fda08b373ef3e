"""TFRecord format: the keys, the writer's side and the reader's side, in one module.

Keys follow TF Model Garden's segmentation decoder
(official/vision/dataloaders/segmentation_input.py), so its tools read our records and ours read
theirs. The image is the dataset's original JPEG bytes, unchanged; the label is a single-channel PNG
of class indices with IGNORE_LABEL (255) as void.
"""

from typing import Dict

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_FILENAME = "image/filename"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"

_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64),
    IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
    LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string),
    LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def encode_example(image_bytes: bytes, label_png_bytes: bytes, height: int, width: int,
                   filename: str, image_format: str = "jpeg") -> bytes:
    """Serialises one image/label pair as a tf.train.Example.

    Args:
      image_bytes: the encoded image exactly as read from the dataset (not re-encoded).
      label_png_bytes: a single-channel PNG of class indices, 255 = void.
      height, width: the image size in pixels (equal to the label's).
      filename: the example id (e.g. "2007_000032"), carried for reports.
      image_format: "jpeg" or "png".
    Returns:
      The serialised Example.
    """
    feature = {
        IMAGE_ENCODED: _bytes(image_bytes),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        IMAGE_HEIGHT: _int64(height),
        IMAGE_WIDTH: _int64(width),
        IMAGE_FILENAME: _bytes(filename.encode()),
        LABEL_ENCODED: _bytes(label_png_bytes),
        LABEL_FORMAT: _bytes(b"png"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Parses one serialised Example into its raw features (scalar tensors keyed as above)."""
    return tf.io.parse_single_example(serialized, _FEATURES)


def decode_example(serialized: tf.Tensor):
    """Parses and decodes one record; graph-safe, for tf.data maps.

    Returns:
      image: uint8 (H, W, 3) RGB.
      label: uint8 (H, W, 1) class indices, 255 = void.
      filename: string scalar (the example id).
    """
    features = parse_example(serialized)
    # decode_image handles JPEG and PNG; expand_animations=False gives a rank-3 tensor.
    image = tf.io.decode_image(features[IMAGE_ENCODED], channels=3, expand_animations=False)
    label = tf.io.decode_png(features[LABEL_ENCODED], channels=1)
    height = tf.cast(features[IMAGE_HEIGHT], tf.int32)
    width = tf.cast(features[IMAGE_WIDTH], tf.int32)
    image = tf.ensure_shape(tf.reshape(image, tf.stack([height, width, 3])), [None, None, 3])
    label = tf.ensure_shape(tf.reshape(label, tf.stack([height, width, 1])), [None, None, 1])
    return image, label, features[IMAGE_FILENAME]
