"""PASCAL VOC facts shared by every stage (class names, palette, ignore label), and ClassInfo,
the same facts for any dataset."""

import dataclasses
from typing import Tuple

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


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """A dataset's classes: names in label-index order, their colours, and the ignore value.

    VOC's by default; a converted dataset's manifest.json ("classes", written by the converter)
    gives its own. Training copies it into model_config.json and the SavedModel (an asset and the
    `metadata` signature), so evaluate, predict and a TF Serving client name and colour classes
    the way the data did. `ignore_label` is the void value in the records, always IGNORE_LABEL
    (255): the converter maps a dataset's own void value or colour to it (manifest.json keeps
    the source's under "created").
    """
    names: Tuple[str, ...]
    colours: Tuple[Tuple[int, int, int], ...]  # one RGB colour per class
    ignore_label: int = IGNORE_LABEL

    def __post_init__(self):
        if len(self.names) != len(self.colours):
            raise ValueError(f"{len(self.names)} class names but {len(self.colours)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def palette(self) -> np.ndarray:
        """(256, 3) uint8 for palette PNGs: the class colours, then VOC's for the other indices
        (255, void, stays VOC's cream)."""
        palette = VOC_PALETTE.copy()
        palette[:self.num_classes] = np.asarray(self.colours, np.uint8).reshape(-1, 3)
        palette[IGNORE_LABEL] = VOC_PALETTE[IGNORE_LABEL]
        return palette

    @classmethod
    def default(cls, num_classes: int = NUM_CLASSES) -> "ClassInfo":
        """VOC's names for 21 classes, class_<i> otherwise; VOC's colours."""
        names = VOC_CLASSES if num_classes == NUM_CLASSES else tuple(
            f"class_{i}" for i in range(num_classes))
        return cls(tuple(names), tuple(tuple(int(c) for c in VOC_PALETTE[i])
                                       for i in range(num_classes)))

    @classmethod
    def from_json(cls, payload: dict) -> "ClassInfo":
        """From {"names": [...], "palette": [[r, g, b], ...], "ignore_label": int}."""
        names = tuple(str(n) for n in payload["names"])
        colours = payload.get("palette") or ClassInfo.default(len(names)).colours
        return cls(names, tuple(tuple(int(c) for c in rgb) for rgb in colours),
                   int(payload.get("ignore_label", IGNORE_LABEL)))

    def to_json(self) -> dict:
        return {"names": list(self.names), "palette": [list(c) for c in self.colours],
                "ignore_label": self.ignore_label}
