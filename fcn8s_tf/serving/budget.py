"""What one request may cost, and what an encoded image may be: checks inside the serving graph.

The serving signatures (serving/contract.py) run these before any image is decoded: each item must
be a whole JPEG, PNG, GIF or BMP (check_encoded_image), its header says its size (declared_size),
and the request must fit the Budget (net work per image, pixels per image, bytes of answer).
BUILD.md ("Bounded work per request") states the budget for deployers; docs/DESIGN.md says why
downscale first and refuse after. Messages name the item, as `<input>[<index>]`.
"""

import math
from typing import Dict, List

import tensorflow as tf

# The per-request budget (class Budget). 2048 x 2048 covers VOC images (500 x 375) and common photo
# sizes after one downscale step; the float32 forward of a 2048 x 2048 image peaks at ~4 GB on a
# CPU.
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048


# 512 MiB of answer: 134 M pixels of labels, or 1.5 M pixels of 21-class probabilities (a 2048 x
# 2048 image's are 369 MB; a 12 MP photo's, 1.06 GB, are refused: ask serving_default for labels).
DEFAULT_MAX_OUTPUT_BYTES = 512 * 2 ** 20


def _starts(raw: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """Boolean (n,) marking where `pattern` starts in the uint8 vector `raw` (False near the
    end)."""
    n = tf.shape(raw)[0]
    k = len(pattern)
    hits = tf.ones([tf.maximum(n - k + 1, 0)], tf.bool)
    for j, byte in enumerate(pattern):
        hits = hits & tf.equal(raw[j:tf.maximum(n - k + 1 + j, j)], byte)
    return hits


def _last(mask: tf.Tensor) -> tf.Tensor:
    """Index of the last True in a boolean vector, -1 when there is none."""
    where = tf.where(mask)[:, 0]
    return tf.reduce_max(tf.concat([tf.constant([-1], tf.int64), where], axis=0))


# The formats tf.io.decode_image reads, by the magic bytes they start with.
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n", "gif": b"GIF8", "bmp": b"BM"}


def _format_of(data: tf.Tensor) -> Dict[str, tf.Tensor]:
    """{format: boolean scalar}: whether the scalar string starts as that format's files do."""
    return {name: tf.equal(tf.strings.substr(data, 0, len(magic)), magic)
            for name, magic in _MAGIC.items()}


def check_encoded_image(data: tf.Tensor, index: tf.Tensor, item: str) -> List[tf.Operation]:
    """Assertions that a scalar string holds a whole JPEG, PNG, GIF or BMP; messages name `index`.

    The decoder's own errors do not say which item of a batch failed, and a truncated PNG may decode
    partially; these checks catch the common cases first. A JPEG is complete when its last
    end-of-image marker (FF D9) follows its last start-of-scan (FF DA): entropy-coded data cannot
    hold either (FF is byte-stuffed there), an EXIF thumbnail's EOI comes before the main scan, and
    trailers some phones append after the EOI are allowed. A PNG is complete when it holds IEND.
    """
    empty = tf.equal(tf.strings.length(data), 0)
    is_format = _format_of(data)
    is_jpeg, is_png = is_format["jpeg"], is_format["png"]
    raw = tf.io.decode_raw(data, tf.uint8)
    jpeg_whole = _last(_starts(raw, b"\xff\xd9")) > _last(_starts(raw, b"\xff\xda"))
    png_whole = tf.reduce_any(_starts(raw, b"IEND"))
    item = tf.strings.join([f"{item}[", tf.strings.as_string(index), "] "])

    def check(condition, problem):
        return tf.debugging.Assert(condition, [tf.strings.join([item, problem])])

    return [
        # Each problem fails exactly one check (an empty string is not also "not an image"), so
        # the message does not depend on which assertion the executor happens to run first.
        check(~empty, "is an empty string"),
        check(empty | tf.reduce_any(tf.stack(list(is_format.values()))),
              "is not a JPEG, PNG, GIF or BMP image"),
        check(~is_jpeg | jpeg_whole, "is a truncated JPEG (no end-of-image marker after its data)"),
        check(~is_png | png_whole, "is a truncated PNG (no IEND chunk)"),
    ]


def _bytes_at(data: tf.Tensor, size: int) -> tf.Tensor:
    """The first `size` bytes of a scalar string as int64 (size,), zero-filled past its end."""
    head = tf.strings.substr(tf.strings.join([data, b"\0" * size]), 0, size)
    return tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """(2,) int64 height and width that an encoded image's header declares, read without decoding.

    JPEG: the SOF marker (tf.image.extract_jpeg_shape reads the header only); PNG: the IHDR chunk;
    GIF: the logical screen (what tf.io.decode_gif returns); BMP: the info header (a negative
    height means top-down rows). (0, 0) for anything else. Run it after check_encoded_image.
    """
    b = _bytes_at(data, 26)
    shift = tf.bitwise.left_shift

    def unsigned(offset, length, big_endian):
        value = tf.constant(0, tf.int64)
        for k in range(length):
            value = value + shift(b[offset + k], 8 * ((length - 1 - k) if big_endian else k))
        return value

    bmp_height = unsigned(22, 4, False)
    bmp_height = tf.abs(tf.where(bmp_height >= 2 ** 31, bmp_height - 2 ** 32, bmp_height))
    is_format = _format_of(data)
    by_format = [
        (is_format["jpeg"], lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (is_format["png"], lambda: tf.stack([unsigned(20, 4, True), unsigned(16, 4, True)])),
        (is_format["gif"], lambda: tf.stack([unsigned(8, 2, False), unsigned(6, 2, False)])),
        (is_format["bmp"], lambda: tf.stack([bmp_height, unsigned(18, 4, False)])),
    ]
    return tf.case(by_format, default=lambda: tf.zeros([2], tf.int64))


def net_input_size(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """(2,) int32 size at which the net sees an image: its own, or scaled down to the net budget.

    The net pads its input by model.INPUT_PAD on every side, so an image costs what its padded area
    (H + 200)(W + 200) does: a 1 x 50000 strip does the work of a 3200 x 3200 image. The budget is
    the padded area of a sqrt(max_pixels)-square image; an image over it is scaled by the factor s
    that solves (sH + 200)(sW + 200) = budget (keeping its aspect ratio), each side at least 1
    pixel.
    """
    from fcn8s_tf.model import fcn8s as model_lib  # pylint: disable=import-outside-toplevel
    pad = tf.constant(2.0 * model_lib.INPUT_PAD, tf.float64)
    budget = tf.constant((math.sqrt(max_pixels) + 2.0 * model_lib.INPUT_PAD) ** 2, tf.float64)
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    over = (h + pad) * (w + pad) > budget
    # The positive root of h*w*s^2 + pad*(h+w)*s + pad^2 - budget = 0.
    a, b, c = tf.maximum(h * w, 1.0), pad * (h + w), pad * pad - budget
    s = (-b + tf.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
    small_h = tf.maximum(tf.floor(s * h), 1.0)
    small_w = tf.maximum(tf.floor(s * w), 1.0)
    # A side clamped up to 1 pixel leaves less room for the other one.
    small_w = tf.maximum(tf.minimum(small_w, tf.floor(budget / (small_h + pad)) - pad), 1.0)
    small_h = tf.maximum(tf.minimum(small_h, tf.floor(budget / (small_w + pad)) - pad), 1.0)
    small = tf.cast(tf.stack([small_h, small_w]), tf.int32)
    return tf.where(over, small, tf.cast(tf.stack([height, width]), tf.int32))


class Budget:
    """What one request may cost; BUILD.md ("Bounded work per request") states it for deployers.

    net: every image runs through the net at a padded area of at most that of a
      sqrt(max_image_pixels)-square image (net_input_size); larger ones are downscaled.
    decode: an image whose header declares more than DECODE_FACTOR x max_image_pixels pixels is
      refused before it is decoded (a 600-byte JPEG can declare 13000 x 13000).
    output: a request whose answer (B x Hmax x Wmax labels, plus the probabilities where the
      signature returns them) would exceed max_output_bytes is refused before any image is decoded.
    """

    DECODE_FACTOR = 4  # 4 x 2048^2 = 16.8 MP: 12 MP phone photos are downscaled, not refused

    def __init__(self, max_image_pixels: int, max_output_bytes: int, num_classes: int):
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
        if max_output_bytes < 1:
            raise ValueError(f"max_output_bytes must be >= 1, got {max_output_bytes}")
        self.max_image_pixels = int(max_image_pixels)
        self.max_decoded_pixels = self.DECODE_FACTOR * self.max_image_pixels
        self.max_output_bytes = int(max_output_bytes)
        self.num_classes = int(num_classes)

    def bytes_per_pixel(self, with_probabilities: bool) -> int:
        """Answer bytes per pixel: int32 labels, plus float32 probabilities for every class."""
        return 4 + (4 * self.num_classes if with_probabilities else 0)

    def checks(self, sizes: tf.Tensor, with_probabilities: bool, item: str,
               labels_only: str = "") -> List[tf.Operation]:
        """Assertions that a request of images of `sizes` (n, 2) int64 is within the budget.

        item: how the messages name an image, e.g. "image_bytes" -> "image_bytes[3] is ...".
        labels_only: a signature that answers labels alone, suggested when probabilities are over.
        """
        pixels = sizes[:, 0] * sizes[:, 1]
        too_big = pixels > self.max_decoded_pixels
        # The first item over the limit; a sentinel row keeps the message's ops valid for n = 0.
        first = tf.argmax(tf.concat([tf.cast(too_big, tf.int32), [1]], 0), output_type=tf.int32)
        culprit = tf.concat([sizes, tf.zeros([1, 2], tf.int64)], 0)[first]
        n = tf.cast(tf.shape(sizes)[0], tf.int64)
        # Every item's answer is padded to the largest height and width (0 x 0 when there are none).
        max_h, max_w = tf.unstack(
            tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int64)], 0), 0))
        answer_bytes = n * max_h * max_w * self.bytes_per_pixel(with_probabilities)
        text = tf.strings.as_string
        image_message = tf.strings.join([
            f"{item}[", text(first), "] is ", text(culprit[0]), " x ", text(culprit[1]), " = ",
            text(culprit[0] * culprit[1]), " pixels, over the limit of ",
            f"{self.max_decoded_pixels} pixels per image ({self.DECODE_FACTOR} x "
            f"max_image_pixels={self.max_image_pixels}): send it downscaled"])
        advice = ("send fewer or smaller images per request" +
                  (f", or ask {labels_only} for labels only" if with_probabilities and labels_only
                   else ""))
        per_pixel = self.bytes_per_pixel(with_probabilities)
        request_message = tf.strings.join([
            "the answer to this request would take ", text(answer_bytes), " bytes (", text(n),
            " images padded to ", text(max_h), " x ", text(max_w), f" pixels x {per_pixel} bytes), "
            f"over the limit of {self.max_output_bytes} bytes per request: {advice}"])
        return [tf.debugging.Assert(~tf.reduce_any(too_big), [image_message]),
                tf.debugging.Assert(answer_bytes <= self.max_output_bytes, [request_message])]


