"""Fake TFRecord shards for tests, named and laid out as the converter writes them.

The one place tests make records (the habit of TF Model Garden's `tfexample_utils`): examples go
through fcn8s_tf.data.records.encode_example, files are named by convert_layout.shard_name and split
into contiguous blocks by convert_layout.shard_bounds, so a change of format or layout reaches every
test.

    examples = [record_utils.example(image, label, f"ex_{k:03d}") for k, (image, label) in ...]
    pattern = record_utils.write_shards(tmp_path, "train", examples, num_shards=3)

It also holds the faults tests inject into written files (truncate, flip_byte).
"""

import dataclasses
import io
import os
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from PIL import Image
import tensorflow as tf

from fcn8s_tf.data import records
from fcn8s_tf.data.convert import layout as convert_layout

PathLike = Union[str, os.PathLike]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) (grayscale: label indices) or (H, W, 3) array."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 (H, W, 3) array."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Example:
    """One record's content, encoded."""
    image: bytes
    label_png: bytes
    height: int
    width: int
    filename: str
    image_format: str = "png"


def example(image: Union[np.ndarray, bytes], label: Union[np.ndarray, bytes], filename: str,
            image_format: str = "png") -> Example:
    """An Example from arrays or already encoded bytes.

    Args:
      image: uint8 (H, W, 3) RGB, encoded as image_format; or encoded bytes, written as they are.
      label: uint8 (H, W) class indices (any values: tests of bad labels need bad ones), encoded
        as a single-channel PNG; or PNG bytes.
      filename: the image/filename feature (the example id).
      image_format: "png" or "jpeg".
    """
    if isinstance(label, np.ndarray):
        height, width = label.shape
        label = encode_png(label)
    else:
        width, height = Image.open(io.BytesIO(label)).size
    if isinstance(image, np.ndarray):
        image = encode_jpeg(image) if image_format == "jpeg" else encode_png(image)
    return Example(image, label, height, width, filename, image_format)


def write_shards(directory: PathLike, split: str, examples: Sequence[Example],
                 num_shards: int = 1) -> str:
    """Writes examples, in order, into num_shards shards; returns the split's glob.

    Shard i holds the i-th contiguous block (as the converter), so reading the sorted files front
    to back gives the examples in order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for index, (start, stop) in enumerate(convert_layout.shard_bounds(len(examples), num_shards)):
        with tf.io.TFRecordWriter(str(directory / convert_layout.shard_name(split, index,
                                                                            num_shards))) as writer:
            for item in examples[start:stop]:
                writer.write(records.encode_example(item.image, item.label_png, item.height,
                                                    item.width, item.filename,
                                                    image_format=item.image_format))
    return convert_layout.shard_pattern(directory, split)


def shard_files(pattern: str) -> List[str]:
    """The files of a pattern, sorted (no checks)."""
    return sorted(tf.io.gfile.glob(pattern))


def truncate(path: PathLike, num_bytes: int) -> None:
    """Cuts the last num_bytes off a file, as an interrupted copy does."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - num_bytes)


def flip_byte(path: PathLike, offset: int) -> None:
    """Inverts one byte of a file (a negative offset counts from the end), as bit rot does."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        position = f.tell()
        value = f.read(1)[0]
        f.seek(position)
        f.write(bytes([value ^ 0xFF]))
