"""What a source hands the converter (a Plan), and the work on one example: read, check, encode.

A source (voc_sbd, folders) finds the examples and their classes and returns a Plan;
convert.write writes it. The functions here that touch one example run in the converter's
worker processes: no TensorFlow in this module or its imports.

Each record holds the image bytes and the label re-encoded as a single-channel PNG of class
indices, 255 = void (see records.py for the keys). A JPEG is stored exactly as read; any other
image is decoded and re-encoded as PNG, which keeps every pixel (8-bit RGB or grayscale; an image
that would lose something, such as transparency or 16-bit depth, is refused instead).
"""

import dataclasses
import io
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
from PIL import Image

from fcn8s_tf.class_info import IGNORE_LABEL
from fcn8s_tf.data.convert.layout import ConversionError, classes_entry


@dataclasses.dataclass(frozen=True)
class Classes:
    """The classes of a dataset: names in id order and one (r, g, b) colour each."""
    names: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]

    def manifest_entry(self) -> dict:
        return classes_entry(self.names, self.palette)


@dataclasses.dataclass
class PreparedExample:
    """One example ready to serialise; what a worker process returns."""
    example_id: str
    image_bytes: bytes
    image_format: str  # as stored: "jpeg" (the file's bytes) or "png" (re-encoded)
    source_format: str  # the file's own format as PIL names it: "JPEG", "PNG", "BMP", ...
    label_png: bytes
    height: int
    width: int
    label_histogram: np.ndarray  # (256,) int64 pixel counts per label value, after mapping


@dataclasses.dataclass
class Plan:
    """Everything a source found, checked before a byte is written; what convert writes."""
    splits: Dict[str, List[Any]]  # split -> example sources in id order, each with .example_id
    prepare: Callable[[Any], PreparedExample]  # one source -> its example; picklable (workers)
    classes: Classes
    created: dict  # the source's part of the manifest's "created" (roots, flags)
    split_info: Dict[str, dict]  # more fields of each split's manifest entry (list files, ...)
    notes: List[str] = dataclasses.field(default_factory=list)  # logged before the work starts


def read_id_list(path: Path, hint: str) -> List[str]:
    """Reads one id per line (first token; blank lines skipped); hint follows a missing path."""
    if not path.is_file():
        raise ConversionError(f"list file {path} does not exist{hint}.")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ImageRead:
    """An image as it goes into a record."""
    data: bytes
    image_format: str  # "jpeg" or "png"
    source_format: str
    width: int
    height: int


def _open_image(data: bytes, path: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise ConversionError(f"image {path} does not decode: {e}") from None


def _checked_jpeg(image: Image.Image, data: bytes, path: str) -> ImageRead:
    if image.mode not in ("RGB", "L"):
        raise ConversionError(f"JPEG {path} has colour mode {image.mode}; expected RGB "
                              "(or grayscale).")
    width, height = image.size
    try:
        # Decoding at 1/8 scale still entropy-decodes the whole stream, which is where truncated or
        # corrupt data is found, and skips most of the inverse DCT (~40% faster than a full decode).
        image.draft(image.mode, (1, 1))
        image.load()
    except Exception as e:
        raise ConversionError(f"JPEG {path} does not decode: {e}") from None
    return ImageRead(data, "jpeg", "JPEG", width, height)


def read_jpeg(path: str) -> ImageRead:
    """A JPEG's bytes as they are, after checking that they decode; anything else is an error."""
    data = Path(path).read_bytes()
    image = _open_image(data, path)
    if image.format != "JPEG":
        raise ConversionError(f"image {path} is a {image.format} file, not a JPEG.")
    return _checked_jpeg(image, data, path)


def _opaque(image: Image.Image, path: str) -> Image.Image:
    """image without its alpha channel; an error if that would change a pixel."""
    alpha = np.asarray(image.getchannel("A"))
    if alpha.size and alpha.min() < 255:
        raise ConversionError(f"image {path} has transparent pixels, which a record cannot keep; "
                              "flatten it onto a background first.")
    return image.convert("L" if image.mode == "LA" else "RGB")


def read_image(path: str) -> ImageRead:
    """A JPEG's bytes as they are; any other image decoded and re-encoded losslessly as PNG.

    Raises:
      ConversionError: the file does not decode, has several frames, or its pixels cannot be kept
        in an 8-bit RGB or grayscale PNG (16-bit, CMYK, transparency).
    """
    data = Path(path).read_bytes()
    image = _open_image(data, path)
    if image.format == "JPEG":
        return _checked_jpeg(image, data, path)
    source_format = image.format or "unknown"
    try:
        if getattr(image, "n_frames", 1) > 1:
            raise ConversionError(f"image {path} has {image.n_frames} frames; expected one.")
        image.load()
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("RGBA", "LA"):
            image = _opaque(image, path)
        elif image.mode == "1":
            image = image.convert("L")
        elif image.mode not in ("RGB", "L"):
            raise ConversionError(f"image {path} has colour mode {image.mode}; expected 8-bit RGB, "
                                  "grayscale or palette (its pixels would change in a PNG of "
                                  "those).")
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"image {path} does not decode: {e}") from None
    width, height = image.size
    return ImageRead(buffer.getvalue(), "png", source_format, width, height)


# ----------------------------------------------------------------------------------------------
# Labels.
# ----------------------------------------------------------------------------------------------

def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_label_png(label: np.ndarray) -> bytes:
    """Encodes a (H, W) uint8 label map as an 8-bit grayscale PNG.

    Written directly rather than with PIL: PIL tries all five PNG row filters on every row, which
    costs more than the rest of an example's work here; label maps are long runs of one value, so
    no filter plus zlib's run-length strategy is ~3x faster and about as small.
    """
    label = np.asarray(label)
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"expected a (H, W) uint8 label map, got {label.dtype} {label.shape}")
    height, width = label.shape
    rows = np.zeros((height, width + 1), np.uint8)  # column 0: the row's filter type, 0 = none
    rows[:, 1:] = label
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = compressor.compress(rows) + compressor.flush()
    # IHDR: width, height, bit depth 8, colour type 0 (grayscale), deflate, adaptive, no interlace.
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def label_histogram(label: np.ndarray) -> np.ndarray:
    """The 256 value counts of a (H, W) uint8 label map (PIL's: twice as fast as np.bincount)."""
    return np.asarray(Image.fromarray(label).histogram(), np.int64)


def check_label_values(values: Iterable[int], num_classes: int, ignore_value: int,
                       path: str, what: str = "label") -> None:
    """Raises ConversionError naming the label file when a value is neither a class nor void."""
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_value)]
    if bad:
        raise ConversionError(f"{what} {path} has values outside {{0..{num_classes - 1}, "
                              f"{ignore_value}}}: {bad[:20]}{' ...' if len(bad) > 20 else ''}")


def finish_example(example_id: str, image_path: str, image: ImageRead, label_path: str,
                   label: np.ndarray, histogram: np.ndarray) -> PreparedExample:
    """Checks that image and label agree in size, and encodes the label: an example's last step.

    Args:
      label: (H, W) uint8 class ids, IGNORE_LABEL = void, values already checked.
      histogram: (256,) its value counts.
    """
    label_height, label_width = label.shape
    if (label_height, label_width) != (image.height, image.width):
        raise ConversionError(
            f"{example_id}: image {image_path} is {image.width}x{image.height} (WxH) but label "
            f"{label_path} is {label_width}x{label_height}.")
    return PreparedExample(example_id, image.data, image.image_format, image.source_format,
                           encode_label_png(label), image.height, image.width, histogram)


def class_pixels(histogram: np.ndarray, num_classes: int) -> Dict[str, Any]:
    """A split's manifest fields for its label histogram: pixels per class, and void pixels."""
    return {"class_pixels": [int(n) for n in histogram[:num_classes]],
            "ignore_pixels": int(histogram[IGNORE_LABEL])}


def count_values(values: Sequence[str]) -> Dict[str, int]:
    """{value: how often} in first-seen order, for the manifest's per-split tallies."""
    counts: Dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
