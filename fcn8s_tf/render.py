"""Pictures of labels: palette mask PNGs, overlays with a legend, the confusion-matrix PNG.

The one owner of rendering, for `predict` (masks and overlays of served answers) and `evaluate`
(saved predictions, the confusion matrix). numpy and PIL only.
"""

import math
import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcn8s_tf.class_info import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE, ClassInfo


def write_mask_png(labels: np.ndarray, path: str, palette: np.ndarray = VOC_PALETTE) -> None:
    """Writes a (H, W) label map as a palette PNG: values are class ids, `palette` (256, 3)
    colours them (the VOC palette by default; ClassInfo.palette for a model's own)."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8))  # mode "L"
    image.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())  # -> mode "P"
    image.save(path, format="PNG")


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5,
            palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Blends the colourised labels into the image; IGNORE_LABEL pixels keep the image as is.

    Args:
      rgb: uint8 (H, W, 3).
      labels: (H, W) class ids.
      alpha: weight of the mask colour.
      palette: (256, 3) uint8 class colours.
    Returns:
      uint8 (H, W, 3).
    """
    colour = np.asarray(palette, np.uint8)[np.asarray(labels, np.uint8)].astype(np.float32)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour
    blend = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return np.where((np.asarray(labels) != IGNORE_LABEL)[..., None], blend, rgb)


def class_fractions(labels: np.ndarray,
                    class_names: Sequence[str] = VOC_CLASSES) -> List[Tuple[str, float]]:
    """(class name, fraction of the pixels) for each class present, largest first."""
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    total = counts.sum()
    found = [(class_names[i] if 0 <= i < len(class_names) else f"class_{i}", c / total)
             for i, c in zip(ids.tolist(), counts.tolist())]
    return sorted(found, key=lambda item: -item[1])


def legend(rgb: np.ndarray, labels: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """The picture with a strip below naming each class present, next to its colour swatch."""
    present = [int(i) for i in np.unique(labels) if 0 <= i < classes.num_classes]
    font = ImageFont.load_default()
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, row, x = [], 0, 4
    width = rgb.shape[1]
    for i in present:  # lay the entries out in rows that fit the picture's width
        w = 18 + int(scratch.textlength(classes.names[i], font=font)) + 12
        if x + w > width and x > 4:
            row, x = row + 1, 4
        entries.append((i, x, row))
        x += w
    strip = Image.new("RGB", (width, 18 * (row + 1) + 4), "white")
    draw = ImageDraw.Draw(strip)
    for i, x, r in entries:
        y = 4 + 18 * r
        draw.rectangle((x, y, x + 12, y + 12), fill=tuple(classes.palette[i]), outline="black")
        draw.text((x + 16, y), classes.names[i], fill="black", font=font)
    return np.concatenate([rgb, np.asarray(strip)], axis=0)


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


