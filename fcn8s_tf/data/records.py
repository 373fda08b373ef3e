"""TFRecord format: the keys, the writer's side and the reader's side, in one module.

Keys follow TF Model Garden's segmentation decoder
(official/vision/dataloaders/segmentation_input.py), so its tools read our records and ours read
theirs. The image is the dataset's original JPEG bytes, unchanged; the label is a single-channel PNG
of class indices with IGNORE_LABEL (255) as void.

The reader's side of a converted folder is here too: list_files, count_examples, read_manifest,
read_classes, and the checks that turn a broken file into one line naming it (DataError). The
folder's layout (shard names, manifest and its class metadata) is fcn8s_tf.data.convert.layout's:
the converter writes it, and imports no TensorFlow.

A TFRecord file is a sequence of records, each framed as: uint64 length, uint32 masked CRC-32C of
the length, the data, uint32 masked CRC-32C of the data. list_files walks that framing (the 12-byte
headers, not the data) of every local file, so a truncated or overwritten file fails before
training starts, naming the file and the record; a flipped bit inside a record's data is only seen
when tf.data reads the record, and find_broken_record then says which file and record it was.
"""

import bisect
import functools
import json
import os
import re
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from fcn8s_tf.class_info import VOC_CLASSES, VOC_PALETTE
# the folder layout; imports no TensorFlow
from fcn8s_tf.data.convert import layout as convert_layout

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
    # The stored size must be the decoded one (a reshape would take a record with height and
    # width swapped, the same pixel count, and scramble its pixels).
    size = tf.stack([height, width])
    checks = [tf.debugging.assert_equal(
        tf.shape(decoded)[:2], size, message=f"{what} of this record is not image/height x "
        "image/width (written with the two swapped, or with another image)")
        for what, decoded in (("the image", image), ("the label", label))]
    with tf.control_dependencies(checks):
        image = tf.ensure_shape(tf.identity(image), [None, None, 3])
        label = tf.ensure_shape(tf.identity(label), [None, None, 1])
    return image, label, features[IMAGE_FILENAME]


# ----------------------------------------------------------------------------------------------
# The converted folder (its layout is fcn8s_tf.data.convert.layout's).
# ----------------------------------------------------------------------------------------------

class DataError(Exception):
    """Records that cannot be read or used; the message is one line naming the file (and record)."""


def read_manifest(directory: str) -> Optional[dict]:
    """The manifest.json of a converted folder (any tf.io.gfile path), or None when it has none.

    Raises:
      DataError: the manifest exists but is not a JSON object.
    """
    path = os.path.join(str(directory), convert_layout.MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} does not parse as JSON ({e}); convert the data again with "
                        "tools/make_tfrecords.py") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a converter manifest (a JSON object)")
    return manifest


_GLOB_CHARACTERS = re.compile(r"[*?[]")


def read_classes(file_pattern: str) -> Optional[dict]:
    """The class metadata of the manifest beside the files of a pattern.

    Args:
      file_pattern: a glob such as "data/tfrecords/train-*.tfrecord" (any tf.io.gfile path). The
        manifest read is the one in the pattern's folder; where the folder part holds a wildcard,
        those of the folders of the matching files, which must then agree.
    Returns:
      {"names": [str, ...], "palette": [[r, g, b], ...], "ignore_label": 255}, one palette colour
      per class, as the converter wrote it; None when there is no manifest or it has no classes.
      A manifest of converter versions before the class metadata (a bare list of VOC names)
      gives the same dict, with the VOC colours.
    Raises:
      DataError: a manifest does not parse, its classes are malformed (the message names the
        file and what is wrong), or two folders of the pattern disagree.
    """
    directory = os.path.dirname(file_pattern)
    if _GLOB_CHARACTERS.search(directory):
        directories = sorted({os.path.dirname(p) for p in tf.io.gfile.glob(file_pattern)})
    else:
        directories = [directory]
    found = {}
    for folder in directories:
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("classes") is None:
            continue
        path = os.path.join(folder, convert_layout.MANIFEST_NAME)
        classes = _classes_of(manifest)
        problem = convert_layout.classes_problem(classes)
        if problem:
            raise DataError(f"{path}: {problem}; convert the data again with "
                            "tools/make_tfrecords.py")
        found[path] = classes
    if len({json.dumps(c, sort_keys=True) for c in found.values()}) > 1:
        raise DataError(f"the manifests of {file_pattern!r} disagree on the classes: "
                        f"{', '.join(found)}")
    return next(iter(found.values()), None)


def _classes_of(manifest: dict):
    """A manifest's "classes"; older versions wrote VOC's names as a list, and "ignore_label"."""
    classes = manifest["classes"]
    if isinstance(classes, list) and classes == list(VOC_CLASSES):
        return convert_layout.classes_entry(VOC_CLASSES, VOC_PALETTE[:len(VOC_CLASSES)].tolist())
    return classes


# ----------------------------------------------------------------------------------------------
# TFRecord framing: find the broken file and record.
# ----------------------------------------------------------------------------------------------

def _crc32c_table() -> Tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C; pure Python, meant for the 8-byte length fields only."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _is_local(path: str) -> bool:
    return "://" not in path


@functools.lru_cache(maxsize=4096)
def _record_offsets_cached(path: str, size: int, mtime_ns: int) -> Tuple[int, ...]:
    del mtime_ns  # part of the cache key only: a rewritten file is walked again
    offsets = []
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        offset = 0
        while offset < size:
            index = len(offsets)
            header = os.pread(fd, 12, offset)
            if len(header) < 12:
                raise DataError(f"{path}: truncated TFRecord file: record {index} at byte "
                                f"{offset} has {len(header)} of its 12 header bytes (an "
                                "interrupted copy or conversion?)")
            (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if _masked_crc32c(header[:8]) != crc:
                hint = (" (not a TFRecord file, or a compressed one?)" if index == 0 else
                        " (overwritten or damaged data)")
                raise DataError(f"{path}: corrupt record {index} at byte {offset}: its length "
                                f"field fails its checksum{hint}")
            end = offset + 12 + length + 4
            if end > size:
                raise DataError(f"{path}: truncated TFRecord file: record {index} at byte "
                                f"{offset} ends at byte {end}, the file has {size} bytes (an "
                                "interrupted copy or conversion?)")
            offsets.append(offset)
            offset = end
    return tuple(offsets)


def record_offsets(path: str) -> Tuple[int, ...]:
    """The byte offset of every record in a local TFRecord file, from its framing alone.

    Reads the 12-byte header of each record (one pread per record), checks the length field's
    checksum and that the last record ends exactly at the end of the file; does not read or check
    the data. Cached by (path, size, modification time).

    Raises:
      DataError: the file is truncated or a header is corrupt; names the file, record and byte.
    """
    stat = os.stat(path)
    return _record_offsets_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


_TF_RECORD_ERROR = re.compile(r"(corrupted|truncated) record at (\d+)")


def find_broken_record(paths: Sequence[str]) -> Optional[str]:
    """Reads every record of every file, checksums included; the first problem, or None.

    This reads all the data (tf.data's reader checks each record's CRC-32C): the cost of reading
    the files once. Meant for after a tf.errors.DataLossError, which does not say which file.

    Returns:
      One line naming the file, the record index and the byte offset, or None when every
      record reads.
    """
    for path in paths:
        offsets: Sequence[int] = ()
        if _is_local(path):
            try:
                offsets = record_offsets(path)
            except DataError as e:
                return str(e)
        try:
            tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
        except tf.errors.DataLossError as e:
            match = _TF_RECORD_ERROR.search(e.message)
            if not match:
                return f"{path}: does not read as TFRecords ({e.message.splitlines()[0]})"
            offset = int(match.group(2))  # where the failing read began: a header or data
            if offsets:
                index = bisect.bisect_right(offsets, offset) - 1
                where = f"record {index} (at byte {offsets[index]})"
            else:
                where = f"the record read at byte {offset}"
            reason = ("corrupt: its data fails its checksum" if match.group(1) == "corrupted"
                      else "truncated: the file ends inside it")
            return f"{path}: {where} is {reason}"
    return None


def _check_not_replacing(directories: Sequence[str]) -> None:
    for directory in directories:
        journal = os.path.join(directory, convert_layout.REPLACING_NAME)
        if tf.io.gfile.exists(journal):
            raise DataError(
                f"{directory}: the converter was replacing these records and did not finish "
                f"({journal} is there); run tools/make_tfrecords.py with --output_dir={directory} "
                "again: it completes the replacement before anything else")


def list_files(file_pattern: str, check: bool = True) -> List[str]:
    """The files matching file_pattern, sorted, after checking that they can be read.

    Args:
      file_pattern: a glob, e.g. "data/tfrecords/train-*.tfrecord" (any tf.io.gfile path).
      check: refuse a folder the converter did not finish replacing, and walk the framing of
        every local file (record_offsets: a truncated or overwritten file fails here, not hours
        into training), comparing its record count with the folder's manifest.json where that
        lists it (a file cut at a record boundary has a valid framing). Remote files (gs://...)
        are not walked: that would cost one request per record.
    Returns:
      The matching paths, sorted.
    Raises:
      FileNotFoundError: nothing matches file_pattern (the message names the pattern).
      DataError: a folder is mid-replacement, a file is truncated or corrupt, or it holds another
        number of records than the manifest says.
    """
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    if check:
        directories = sorted({os.path.dirname(path) for path in files})
        _check_not_replacing(directories)
        listed = {directory: _manifest_counts_or_none(directory) for directory in directories
                  if _is_local(directory)}
        for path in files:
            if not _is_local(path):
                continue
            count = len(record_offsets(path))
            directory, name = os.path.split(path)
            expected = (listed.get(directory) or {}).get(name)
            if expected is not None and expected != count:
                raise DataError(
                    f"{path} holds {count} records but {convert_layout.MANIFEST_NAME} beside it "
                    f"says {expected} (cut at a record boundary, or replaced by another file?)")
    return files


def _manifest_counts_or_none(directory: str) -> Optional[Dict[str, int]]:
    """{file: count} of the folder's manifest; None if it has none or it is not the converter's
    (the files are still checked by their framing)."""
    try:
        manifest = read_manifest(directory)
    except DataError:
        return None
    return convert_layout.manifest_files(manifest) if manifest else None


def count_examples(file_pattern: str) -> int:
    """The number of records behind a pattern.

    Local files: counted from their framing (record_offsets; exact, reads 12 bytes per record).
    Remote files: the count of the folder's manifest.json where it lists the file, else counted by
    reading the file.

    Raises:
      FileNotFoundError, DataError: as list_files.
    """
    total = 0
    manifests: Dict[str, Dict[str, int]] = {}
    for path in list_files(file_pattern):
        if _is_local(path):
            total += len(record_offsets(path))
            continue
        directory, name = os.path.split(path)
        if directory not in manifests:
            manifest = read_manifest(directory)
            manifests[directory] = convert_layout.manifest_files(manifest) if manifest else {}
        if name in manifests[directory]:
            total += manifests[directory][name]
        else:
            total += int(tf.data.TFRecordDataset(path).reduce(
                tf.constant(0, tf.int64), lambda n, _: n + 1))
    return total
