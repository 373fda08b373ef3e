"""Masks -> class ids: single-channel masks of ids, or colour masks mapped through class colours.

Used by the folders source (folders) in the worker processes: no TensorFlow here.
  - Single-channel masks (8-, 16- or 1-bit grayscale) hold class ids; MaskRules.ignore_value is
    void. A palette PNG is read the same way, by its indices, when the classes have no colours.
  - Colour masks (RGB, or a palette PNG read by its palette's colours when the classes have
    colours) map each colour to the class of that colour; MaskRules.ignore_colour is void.
Anything else (a value or colour of no class, a lossy or transparent mask) is an error naming
the file. The result holds void as 255 (class_info.IGNORE_LABEL), whatever the mask used.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from fcn8s_tf.class_info import IGNORE_LABEL
from fcn8s_tf.data.convert.examples import check_label_values, label_histogram
from fcn8s_tf.data.convert.layout import ConversionError

Colour = Tuple[int, int, int]
_ID_MODES = ("L", "1", "I;16", "I;16B", "I")  # single-channel masks: the values are class ids


@dataclasses.dataclass(frozen=True)
class MaskRules:
    """How mask values become class ids; the same for every example."""
    num_classes: int
    colours: Optional[Tuple[Colour, ...]]  # each class's colour, or None: masks hold ids
    ignore_value: int  # void in id masks
    ignore_colour: Optional[Colour]  # void in colour masks
    classes_file: str


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) uint32 0xRRGGBB."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _ids_of_colours(packed: np.ndarray, rules: MaskRules, path: str) -> np.ndarray:
    """The class id (or 255, void) of each packed colour; unknown colours are an error."""
    lookup = {int(c): i for i, c in enumerate(_pack(np.array(rules.colours, np.uint8)))}
    if rules.ignore_colour is not None:
        lookup[int(_pack(np.array(rules.ignore_colour, np.uint8)))] = IGNORE_LABEL
    unknown = [int(c) for c in packed if int(c) not in lookup]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:8])
        hint = ("" if rules.ignore_colour is not None
                else "; void pixels' colour goes in --ignore_color=R,G,B")
        raise ConversionError(f"mask {path} has colours that are no class's in "
                              f"{rules.classes_file}: {shown}{' ...' if len(unknown) > 8 else ''}"
                              f"{hint}")
    return np.array([lookup[int(c)] for c in packed], np.uint8)


def _colour_mask(mask: Image.Image, rules: MaskRules, path: str) -> np.ndarray:
    if rules.colours is None:
        raise ConversionError(
            f"mask {path} is a colour ({mask.mode}) PNG but {rules.classes_file} gives no "
            "colours: write `name r g b` on each of its lines, or give masks of class ids.")
    if mask.mode == "P":  # its palette's colours count, not its indices
        indices = np.array(mask)
        palette = np.array(mask.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
        used = np.flatnonzero(label_histogram(indices))
        if used.size and used[-1] >= len(palette):
            raise ConversionError(f"mask {path} uses palette index {used[-1]} but its palette "
                                  f"has {len(palette)} colours.")
        lut = np.zeros(256, np.uint8)
        lut[used] = _ids_of_colours(_pack(palette[used]), rules, path)
        return lut[indices]
    rgba = np.array(mask.convert("RGBA"))
    if rgba[..., 3].size and rgba[..., 3].min() < 255:
        raise ConversionError(f"mask {path} has transparent pixels; a mask's colours must be "
                              "opaque.")
    colours, inverse = np.unique(_pack(rgba[..., :3]), return_inverse=True)
    return _ids_of_colours(colours, rules, path)[inverse.reshape(-1)].reshape(rgba.shape[:2])


def read_mask(path: str, rules: MaskRules) -> np.ndarray:
    """A mask file as a (H, W) uint8 map of class ids, 255 = void.

    Raises:
      ConversionError: the file is not a PNG or does not decode, holds ids outside the classes
        (and not --ignore_value), colours that are no class's (and not --ignore_color), or is a
        colour PNG when the classes have no colours.
    """
    try:
        mask = Image.open(path)
        mask.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise ConversionError(f"mask {path} does not decode: {e}") from None
    if mask.format != "PNG":
        raise ConversionError(f"mask {path} is a {mask.format} file; masks must be PNG (a lossy "
                              "format changes class ids along every edge).")
    if mask.mode in ("RGB", "RGBA") or (mask.mode == "P" and rules.colours is not None):
        return _colour_mask(mask, rules, path)
    if mask.mode not in _ID_MODES + ("P",):
        raise ConversionError(f"mask {path} has mode {mask.mode}; expected a single-channel PNG "
                              "of class ids, or an RGB or palette PNG of class colours.")
    values = np.array(mask)  # "P" here: no colours given, so its indices are the ids
    values = values.astype(np.uint8) if values.dtype == bool else values
    present = (np.flatnonzero(label_histogram(values)) if values.dtype == np.uint8
               else np.unique(values))
    check_label_values(present, rules.num_classes, rules.ignore_value, path, what="mask")
    lut = np.arange(256, dtype=np.uint8)
    lut[rules.ignore_value] = IGNORE_LABEL
    return lut[values]
