"""PASCAL VOC facts shared by every stage: class names, palette, ignore label."""

import numpy as np

# Background + the 20 VOC object classes, in label-index order.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)  # 21
# Void / object boundary band in VOC labels; ignored by the loss, the metric and padding.
IGNORE_LABEL = 255


def _voc_palette() -> np.ndarray:
    """The standard VOC colour map (bit-interleaved), as in the devkit's labelcolormap.m."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


# (256, 3) uint8; VOC_PALETTE[15] == (192, 128, 128), VOC_PALETTE[255] == (224, 224, 192).
VOC_PALETTE = _voc_palette()


def colorize(label: np.ndarray) -> np.ndarray:
    """Maps a (H, W) uint8 label map to a (H, W, 3) uint8 RGB picture in the VOC palette."""
    return VOC_PALETTE[np.asarray(label, dtype=np.uint8)]
