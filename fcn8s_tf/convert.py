"""PASCAL VOC 2012 + SBD -> sharded TFRecords and a manifest: the first stage of the pipeline.

Splits (DESIGN.md): train = (SBD train ∪ SBD val ∪ VOC2012 seg train) − VOC2012 seg val, 10,582 ids
on the full data; val = VOC2012 seg val, 1,449 ids. Without an SBD root, train is VOC2012 seg train.
A label comes from VOC `SegmentationClass/<id>.png` when it exists (it carries the 255 boundary
band), else from SBD `cls/<id>.mat`; the image from VOC `JPEGImages/<id>.jpg`, else from SBD
`img/<id>.jpg`.

Each record holds the JPEG bytes exactly as read and the label re-encoded as a single-channel PNG of
class indices (see records.py for the keys). Examples are prepared (decoded, checked, PNG-encoded)
in `num_workers` spawned processes; the parent serialises them and appends them to the shards in id
order. The workers die with the parent, however it dies (prctl PR_SET_PDEATHSIG on Linux, and a
thread that watches the parent everywhere); on SIGINT (and on SIGTERM, which
tools/make_tfrecords.py turns into Interrupted) the parent kills them and removes its temporary
files before it exits.

Replacing a dataset. Readers take shards by a glob such as data/tfrecords/train-*.tfrecord, so
what they must never see is a mix of two conversions, or a partial set. The guarantee:
  - Until the new set is complete (every shard and the manifest written and fsync'ed), output_dir
    is not touched: a failure or a kill of any kind (SIGKILL, power loss) leaves the old set whole.
  - Then, on Linux where output_dir and its parent allow it (the usual case), the set goes in by
    one atomic step: the new set is built in a sibling folder, `.tmp-make_tfrecords-<name>-XXXXXXXX`
    beside output_dir; the entries of output_dir the converter did not write are given to it (hard
    links, so they never disappear; sub-folders are moved, so they are missing for the moment
    before the swap), and renameat2(RENAME_EXCHANGE) swaps the two folders. Every reader, ours or
    any other tool's, sees the whole old set before that instant and the whole new set after it.
    The folder swapped out, which now holds the old set, is emptied and removed.
  - Elsewhere (another OS, a file system without RENAME_EXCHANGE such as NFS, output_dir a mount
    point or its parent not writable), the fallback: the set is built in
    output_dir/.tmp-make_tfrecords-XXXXXXXX, a journal (REPLACING_NAME) is written atomically as
    the commit point, and the files are moved in one by one (old manifest removed first, new one
    moved in last). During those few renames, and after a kill among them, the folder holds a mix,
    but the journal says so: fcn8s_tf's readers (records.list_files, so training and evaluation)
    refuse it with a message, and the next converter run finishes the move before anything else.
  - Only files the converter wrote are deleted or replaced: those the previous manifest lists.
    Other files stay, *.tfrecord files included; one whose name a new shard would take is an error
    before any work.
  - Leftovers of interrupted runs (temporary folders in or beside output_dir, a half-done
    fallback move) are cleaned up, or finished, when the next run starts. A lock (flock) on
    output_dir keeps a second converter out of a folder in use.
A process that has the shards open keeps reading the files it opened. One that opens shards by
name later (tf.data opens them again every epoch) reads the new set from then on, or fails where a
shard name is gone: do not convert into the folder of a running training job. The swap gives
output_dir a new inode: a bind mount of output_dir itself (docker run -v data/tfrecords:/data)
keeps showing the old, emptied folder; mount its parent instead.

Only tools/make_tfrecords.py reads flags; the error messages name the flags because that is where
a user fixes them.
"""

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import datetime
import errno
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import stat
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, TextIO, Tuple, Union

try:
    import fcntl
except ImportError:  # Windows: no lock there
    fcntl = None

import numpy as np
from PIL import Image

import fcn8s_tf
from fcn8s_tf.voc import IGNORE_LABEL, NUM_CLASSES, VOC_CLASSES

# TensorFlow (and fcn8s_tf.records with it) is imported inside functions only: the spawned worker
# processes import this module, and without TensorFlow each starts in a fraction of a second
# instead of several seconds.

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "val")
DEFAULT_NUM_SHARDS = {"train": 16, "val": 4}
_SHARD_FLAGS = {"train": "--train_shards", "val": "--val_shards"}
_VALID_LABEL_VALUES = frozenset(range(NUM_CLASSES)) | {IGNORE_LABEL}
_MAX_IDS_SHOWN = 5


class ConversionError(Exception):
    """Bad input to the converter; the message names the file, the id or the flag to fix."""


# ----------------------------------------------------------------------------------------------
# Splits: which ids go where, read from the datasets' own list files.
# ----------------------------------------------------------------------------------------------

def _voc_list(voc_root: Path, split: str) -> Path:
    return voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"


def _sbd_list(sbd_root: Path, split: str) -> Path:
    return sbd_root / f"{split}.txt"


def _check_root(root: Path, flag: str, what: str) -> None:
    if not root.is_dir():
        raise ConversionError(
            f"{flag}={root}: the folder does not exist ({flag} should be {what}).")


def _read_id_list(path: Path, flag: str, root: Path) -> List[str]:
    """Reads one id per line (first token; blank lines skipped)."""
    if not path.is_file():
        raise ConversionError(
            f"list file {path} does not exist ({flag}={root}: is that the right folder?).")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


_VOC_WHAT = "the VOCdevkit/VOC2012 folder, holding JPEGImages/, SegmentationClass/ and ImageSets/"
_SBD_WHAT = "SBD's benchmark_RELEASE/dataset folder, holding img/, cls/, train.txt and val.txt"


def split_list_files(voc_root: PathLike,
                     sbd_root: Optional[PathLike] = None) -> Dict[str, Dict[str, List[Path]]]:
    """The list files each split is built from: {split: {"include": [...], "exclude": [...]}}.

    A split's ids are the union of its "include" lists minus the union of its "exclude" lists.
    """
    voc_root = Path(voc_root)
    train_include = [_voc_list(voc_root, "train")]
    if sbd_root is not None:
        sbd_root = Path(sbd_root)
        train_include = [_sbd_list(sbd_root, "train"), _sbd_list(sbd_root, "val")] + train_include
    return {
        "train": {"include": train_include, "exclude": [_voc_list(voc_root, "val")]},
        "val": {"include": [_voc_list(voc_root, "val")], "exclude": []},
    }


def split_ids(voc_root: PathLike, sbd_root: Optional[PathLike] = None) -> Dict[str, List[str]]:
    """Reads the list files and returns the sorted ids of each split; needs no image files.

    Args:
      voc_root: the VOCdevkit/VOC2012 folder (reads ImageSets/Segmentation/{train,val}.txt).
      sbd_root: SBD's benchmark_RELEASE/dataset folder (reads {train,val}.txt), or None.
    Returns:
      {"train": [...], "val": [...]}: 10,582 and 1,449 ids on the full VOC 2012 + SBD lists.
    Raises:
      ConversionError: a root or list file does not exist.
    """
    voc_root = Path(voc_root)
    _check_root(voc_root, "--voc_root", _VOC_WHAT)
    if sbd_root is not None:
        sbd_root = Path(sbd_root)
        _check_root(sbd_root, "--sbd_root", _SBD_WHAT)

    # Every list file once, with the flag that names its root in errors.
    owners = {_voc_list(voc_root, split): ("--voc_root", voc_root) for split in SPLITS}
    if sbd_root is not None:
        owners.update({_sbd_list(sbd_root, split): ("--sbd_root", sbd_root) for split in SPLITS})
    listed = {path: _read_id_list(path, *owner) for path, owner in owners.items()}

    result = {}
    for split, lists in split_list_files(voc_root, sbd_root).items():
        ids = set()
        for path in lists["include"]:
            ids.update(listed[path])
        for path in lists["exclude"]:
            ids.difference_update(listed[path])
        result[split] = sorted(ids)
    return result


# ----------------------------------------------------------------------------------------------
# Planning: where each id's image and label come from, checked before anything is written.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExampleSource:
    """Where one example's files are; what a worker process receives."""
    example_id: str
    image_path: str
    image_source: str  # "voc" or "sbd"
    label_path: str
    label_source: str  # "voc" (SegmentationClass PNG) or "sbd" (cls .mat)


def _format_ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_IDS_SHOWN])
    return shown + (", ..." if len(ids) > _MAX_IDS_SHOWN else "")


def plan_split(split: str, ids: Sequence[str], voc_root: PathLike,
               sbd_root: Optional[PathLike] = None) -> List[ExampleSource]:
    """Finds every id's image and label files, applying the VOC-over-SBD precedence.

    Raises:
      ConversionError: some ids have no image or no label; says how many and shows the first few.
    """
    voc_root = Path(voc_root)
    sbd_root = Path(sbd_root) if sbd_root is not None else None
    # One directory listing per folder instead of a stat per id and folder.
    def names(folder: Path) -> frozenset:
        return frozenset(os.listdir(folder)) if folder.is_dir() else frozenset()
    voc_images, voc_labels = names(voc_root / "JPEGImages"), names(voc_root / "SegmentationClass")
    sbd_images = names(sbd_root / "img") if sbd_root else frozenset()
    sbd_labels = names(sbd_root / "cls") if sbd_root else frozenset()

    sources, no_image, no_label = [], [], []
    for example_id in ids:
        if f"{example_id}.jpg" in voc_images:
            image = (str(voc_root / "JPEGImages" / f"{example_id}.jpg"), "voc")
        elif f"{example_id}.jpg" in sbd_images:
            image = (str(sbd_root / "img" / f"{example_id}.jpg"), "sbd")
        else:
            image = None
            no_image.append(example_id)
        if f"{example_id}.png" in voc_labels:
            label = (str(voc_root / "SegmentationClass" / f"{example_id}.png"), "voc")
        elif f"{example_id}.mat" in sbd_labels:
            label = (str(sbd_root / "cls" / f"{example_id}.mat"), "sbd")
        else:
            label = None
            no_label.append(example_id)
        if image and label:
            sources.append(ExampleSource(example_id, image[0], image[1], label[0], label[1]))

    problems = []
    where_sbd = f" or img/<id>.jpg under --sbd_root={sbd_root}" if sbd_root else ""
    if no_image:
        problems.append(
            f"{len(no_image)} of {len(ids)} {split} ids have no image (looked for "
            f"JPEGImages/<id>.jpg under --voc_root={voc_root}{where_sbd}): {_format_ids(no_image)}")
    where_sbd = f" or cls/<id>.mat under --sbd_root={sbd_root}" if sbd_root else ""
    if no_label:
        problems.append(
            f"{len(no_label)} of {len(ids)} {split} ids have no label (looked for "
            f"SegmentationClass/<id>.png under --voc_root={voc_root}{where_sbd}): "
            f"{_format_ids(no_label)}")
    if problems:
        raise ConversionError("\n".join(problems))
    return sources


# ----------------------------------------------------------------------------------------------
# One example: read, check, encode. Runs in the worker processes; no TensorFlow here.
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


def _read_jpeg(path: str) -> Tuple[bytes, Tuple[int, int]]:
    """Returns the file's bytes and its (width, height), after checking that it decodes."""
    data = Path(path).read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        if image.format != "JPEG":
            raise ConversionError(f"image {path} is a {image.format} file, not a JPEG.")
        if image.mode not in ("RGB", "L"):
            raise ConversionError(f"JPEG {path} has colour mode {image.mode}; expected RGB "
                                  "(or grayscale).")
        size = image.size
        # Decoding at 1/8 scale still entropy-decodes the whole stream, which is where truncated or
        # corrupt data is found, and skips most of the inverse DCT (~40% faster than a full decode).
        image.draft(image.mode, (1, 1))
        image.load()
    except ConversionError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise ConversionError(f"JPEG {path} does not decode: {e}") from None
    return data, size


def _read_voc_label(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns the (H, W) uint8 index map and its 256-bin histogram of a palette/grayscale PNG."""
    try:
        label = Image.open(path)
        # np.array on a "P" image gives the palette indices, which are the class ids; converting to
        # RGB first (a common bug) would give colours.
        if label.mode not in ("P", "L"):
            raise ConversionError(f"label {path} has mode {label.mode}; expected a palette (P) or "
                                  "grayscale (L) PNG of class indices.")
        label.load()
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"label {path} does not decode: {e}") from None
    histogram = np.asarray(label.histogram(), np.int64)  # P and L: counts of the raw index values
    return np.array(label), histogram


def _read_sbd_label(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns the (H, W) uint8 class map of an SBD cls .mat file and its 256-bin histogram."""
    import scipy.io  # here so that a VOC-only run never pays for it

    try:
        segmentation = scipy.io.loadmat(
            path, struct_as_record=False, squeeze_me=True)["GTcls"].Segmentation
    except Exception as e:
        raise ConversionError(f"SBD label {path} does not read as a MATLAB v5 file with "
                              f"GTcls.Segmentation: {e!r}") from None
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise ConversionError(f"SBD label {path}: GTcls.Segmentation has shape "
                              f"{segmentation.shape}; expected (H, W).")
    if segmentation.dtype != np.uint8:
        if not np.issubdtype(segmentation.dtype, np.number) or (
                segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255
                                       or np.any(segmentation != np.round(segmentation)))):
            bad = np.unique(segmentation)[:10]
            raise ConversionError(f"label {path} has values outside {{0..{NUM_CLASSES - 1}, "
                                  f"{IGNORE_LABEL}}}: {bad.tolist()}")
        segmentation = segmentation.astype(np.uint8)
    segmentation = np.ascontiguousarray(segmentation)  # loadmat gives Fortran order
    # PIL's histogram of an "L" image: the 256 value counts, twice as fast as np.bincount here.
    return segmentation, np.asarray(Image.fromarray(segmentation).histogram(), np.int64)


@dataclasses.dataclass
class PreparedExample:
    """One example ready to serialise; what a worker process returns."""
    example_id: str
    image_bytes: bytes
    label_png: bytes
    height: int
    width: int
    label_histogram: np.ndarray  # (256,) int64 pixel counts per label value


def prepare_example(source: ExampleSource) -> PreparedExample:
    """Reads and checks one example's files and encodes its label.

    Raises:
      ConversionError: the JPEG does not decode, the label does not read or holds values outside
        {0..20, 255}, or image and label differ in size.
    """
    image_bytes, (width, height) = _read_jpeg(source.image_path)
    if source.label_source == "voc":
        label, histogram = _read_voc_label(source.label_path)
    else:
        label, histogram = _read_sbd_label(source.label_path)
    bad_values = [value for value in np.flatnonzero(histogram) if value not in _VALID_LABEL_VALUES]
    if bad_values:
        raise ConversionError(
            f"label {source.label_path} has values outside {{0..{NUM_CLASSES - 1}, "
            f"{IGNORE_LABEL}}}: {[int(v) for v in bad_values]}")
    label_height, label_width = label.shape
    if (label_height, label_width) != (height, width):
        raise ConversionError(
            f"{source.example_id}: image {source.image_path} is {width}x{height} (WxH) but label "
            f"{source.label_path} is {label_width}x{label_height}.")
    return PreparedExample(source.example_id, image_bytes, encode_label_png(label), height, width,
                           histogram)


# ----------------------------------------------------------------------------------------------
# The layout of a converted folder. Readers (fcn8s_tf.records, the trainer, tools) take these names
# from here; this module is their owner because it writes them (and imports no TensorFlow).
# ----------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
# Present in output_dir only while the fallback mode moves a new set in (and after a kill there,
# until the next run finishes the move); readers refuse the folder while it is there.
REPLACING_NAME = ".make_tfrecords-replacing.json"
SHARD_SUFFIX = ".tfrecord"


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The file name of one shard, e.g. train-00003-of-00016.tfrecord."""
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_pattern(directory: PathLike, split: str) -> str:
    """The glob of one split's shards in a folder, e.g. data/tfrecords/train-*-of-*.tfrecord."""
    return os.path.join(str(directory), f"{split}-*-of-*{SHARD_SUFFIX}")


def shard_bounds(num_examples: int, num_shards: int) -> List[Tuple[int, int]]:
    """Shard i holds examples [start, stop) of the i-th contiguous block; sizes differ by <= 1."""
    edges = [num_examples * i // num_shards for i in range(num_shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def manifest_files(manifest: dict) -> Dict[str, int]:
    """{shard file name: record count} over every split of a manifest.

    Only plain names of files in the manifest's own folder count: an entry with a path in it is
    not the converter's and is left out.
    """
    counts = {}
    for split in (manifest.get("splits") or {}).values():
        for shard in (split or {}).get("shards") or ():
            name = shard.get("file") if isinstance(shard, dict) else None
            if (isinstance(name, str) and name not in ("", ".", "..")
                    and os.path.basename(name) == name):
                counts[name] = int(shard.get("count") or 0)
    return counts


# ----------------------------------------------------------------------------------------------
# Writing: shards, progress, manifest.
# ----------------------------------------------------------------------------------------------

class _Progress:
    """A one-line progress report: images done and images/s; redrawn in place on a terminal,
    a plain line every `interval` seconds otherwise (logs stay short)."""

    def __init__(self, split: str, total: int, stream: Optional[TextIO], interval: float = 10.0):
        self._split, self._total, self._stream = split, total, stream
        self._tty = bool(stream) and hasattr(stream, "isatty") and stream.isatty()
        self._interval = 0.2 if self._tty else interval
        self._start = self._last = time.monotonic()
        self.done = 0

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return (f"{self._split}: {self.done}/{self._total} images, {self.done / elapsed:.0f} "
                f"images/s, {elapsed:.1f} s")

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._stream and now - self._last >= self._interval:
            self._last = now
            line = "\r" + self._line() if self._tty else self._line() + "\n"
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        if self._stream:
            self._stream.write(("\r" if self._tty else "") + self._line() + "\n")
            self._stream.flush()


def _fsync(path: Path) -> None:
    """Flushes a file's or a folder's contents to disk (a rename is only durable after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: dict) -> None:
    """Writes JSON to path atomically: a reader (or a later run) sees the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_split(split: str, sources: List[ExampleSource], num_shards: int, tmp_dir: Path,
                 results: Iterable[PreparedExample], progress_stream: Optional[TextIO]) -> dict:
    """Writes one split's shards into tmp_dir from the prepared examples (in `sources` order)."""
    import tensorflow as tf  # see the note at the top
    from fcn8s_tf import records

    histogram = np.zeros(256, np.int64)
    shards = []
    progress = _Progress(split, len(sources), progress_stream)
    results = iter(results)
    for index, (start, stop) in enumerate(shard_bounds(len(sources), num_shards)):
        path = tmp_dir / shard_name(split, index, num_shards)
        try:
            with tf.io.TFRecordWriter(str(path)) as writer:
                for position in range(start, stop):
                    example = next(results)
                    assert example.example_id == sources[position].example_id
                    writer.write(records.encode_example(
                        example.image_bytes, example.label_png, example.height, example.width,
                        example.example_id, image_format="jpeg"))
                    histogram += example.label_histogram
                    progress.update()
            _fsync(path)
        except (tf.errors.OpError, OSError) as e:  # a full disk, a quota, a vanished folder
            message = e.message if isinstance(e, tf.errors.OpError) else e.strerror
            raise ConversionError(f"cannot write {path}: {message}") from None
        shards.append({"file": path.name, "count": stop - start})
    progress.close()

    def count(field: str, value: str) -> int:
        return sum(getattr(s, field) == value for s in sources)

    class_pixels = {name: int(histogram[i]) for i, name in enumerate(VOC_CLASSES)}
    class_pixels["ignore"] = int(histogram[IGNORE_LABEL])
    return {
        "num_examples": len(sources),
        "num_shards": num_shards,
        "shards": shards,
        "label_source": {"voc": count("label_source", "voc"), "sbd": count("label_source", "sbd")},
        "image_source": {"voc": count("image_source", "voc"), "sbd": count("image_source", "sbd")},
        "class_pixel_counts": class_pixels,
    }


def _check_num_shards(num_shards: Dict[str, int]) -> None:
    for split in SPLITS:
        value = num_shards.get(split)
        if not isinstance(value, int) or value < 1:
            raise ConversionError(f"{_SHARD_FLAGS[split]}={value}: the number of {split} shards "
                                  "must be an integer >= 1.")


# ----------------------------------------------------------------------------------------------
# Worker processes: they die with the converter, however it dies.
# ----------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_init(parent_pid: int) -> None:
    """Runs first in every worker process."""
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # The kernel SIGKILLs this process when its parent dies, SIGKILL of the parent included.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    # Everywhere else (and as a second line of defence): a thread that watches the parent.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _start_workers(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # 'spawn', not fork: the parent has TensorFlow's thread pools running.
    return concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(os.getpid(),))


def _stop_workers(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kills the workers at once (one may be blocked reading a file) and releases the pool."""
    if hasattr(executor, "kill_workers"):  # Python >= 3.14
        executor.kill_workers()
        processes = []
    else:  # the pool's own list of its processes: no public way to reach them before 3.14
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


class Interrupted(Exception):
    """The converter was asked to stop by a signal (make_tfrecords.py raises it on SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM wait until the block is done, then take effect as usual.

    Around the few renames that put a finished set in place: a handler that raised in the middle
    would leave the work half done for the next run to finish. SIGKILL cannot wait; the renames
    are ordered so that the next run can finish them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)


# ----------------------------------------------------------------------------------------------
# Replacing the set in output_dir: whole or not at all, whatever kills the process.
# ----------------------------------------------------------------------------------------------

_TMP_PREFIX = ".tmp-make_tfrecords-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_MAX_NAME_IN_TMP = 100
_MKDTEMP_SUFFIX = re.compile(r"[a-z0-9_]{8}")  # what tempfile.mkdtemp appends to the prefix


def _reached(stage: str) -> None:
    """A named point of the commit: a no-op; tests replace it to kill the process exactly there."""


def _exchange(a: Path, b: Path) -> None:
    """Swaps two folders in one step (Linux renameat2 RENAME_EXCHANGE).

    Raises:
      OSError: not Linux, no renameat2 in the C library (glibc < 2.28), or the file system does
        not support the exchange (EINVAL, e.g. NFS), or any rename error.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2(RENAME_EXCHANGE) is Linux-only")
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "this C library has no renameat2")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(a), None, str(b))


def _sibling_prefix(output_dir: Path) -> str:
    return f"{_TMP_PREFIX}{output_dir.name[:_MAX_NAME_IN_TMP]}-"


def _is_own_tmp(name: str) -> bool:
    """A temporary folder inside output_dir (the fallback mode's, and older versions')."""
    return name.startswith(_TMP_PREFIX) and bool(_MKDTEMP_SUFFIX.fullmatch(name[len(_TMP_PREFIX):]))


def _is_sibling_tmp(name: str, output_dir: Path) -> bool:
    prefix = _sibling_prefix(output_dir)
    return name.startswith(prefix) and bool(_MKDTEMP_SUFFIX.fullmatch(name[len(prefix):]))


def _lock(directory: Path) -> Optional[int]:
    """An exclusive lock on a folder (the open descriptor), or None where locks do not work.

    Raises:
      BlockingIOError: another process holds it.
    """
    if fcntl is None:
        return None
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # no flock on this file system: go on unlocked
        os.close(fd)
        return None
    return fd


def _take(output_dir: Path) -> Optional[int]:
    """The lock that keeps a second converter out of output_dir."""
    try:
        return _lock(output_dir)
    except BlockingIOError:
        raise ConversionError(f"--output_dir={output_dir}: another make_tfrecords is writing "
                              "it; wait for it to finish.") from None


def _unlock(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)


def _read_manifest_names(directory: Path) -> Optional[Set[str]]:
    """The shard names the manifest in directory lists; None if it has none or it does not parse."""
    try:
        with open(directory / MANIFEST_NAME, encoding="utf-8") as f:
            manifest = json.load(f)
        return set(manifest_files(manifest)) if isinstance(manifest, dict) else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _owned(directory: Path) -> Set[str]:
    """What the converter wrote in directory: the shards its manifest lists and the manifest."""
    return (_read_manifest_names(directory) or set()) | {MANIFEST_NAME, MANIFEST_NAME + ".tmp"}


def _same_file(a: str, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _empty_leftover(leftover: Path, output_dir: Path) -> List[str]:
    """Empties and removes a temporary folder of the exchange mode; returns the names it kept.

    The folder holds either a set that was being built (its manifest, written before any shard,
    lists it; plus, near the swap, what was carried over from output_dir), or, after the swap,
    the previous contents of output_dir. The same rule handles both:
      - a second name of a file that is in output_dir (a carried hard link): unlinked;
      - what the folder's manifest lists, and the manifest: deleted (the converter wrote them);
      - anything else (someone else's, carried over by a rename or added during the swap):
        moved back into output_dir, or kept if output_dir has something of that name.
    """
    owned = _owned(leftover)
    kept = []
    for entry in os.scandir(leftover):
        target = output_dir / entry.name
        if _same_file(entry.path, target):
            os.unlink(entry.path)
        elif entry.name in owned and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
            _reached("deleted_one")
        elif not os.path.lexists(target):
            os.rename(entry.path, target)
        else:
            kept.append(entry.name)
    if not kept:
        os.rmdir(leftover)
    return kept


def _roll_forward(output_dir: Path, journal: dict) -> None:
    """Finishes (or redoes: every step may run twice) a fallback-mode replacement."""
    tmp_dir = output_dir / journal["tmp_dir"]
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest describes a mixed set
    for name in journal["new"]:
        if (tmp_dir / name).exists():
            os.replace(tmp_dir / name, output_dir / name)
            _reached("moved_one")
    for name in sorted(set(journal["old"]) - set(journal["new"])):
        (output_dir / name).unlink(missing_ok=True)
    if (tmp_dir / MANIFEST_NAME).exists():
        os.replace(tmp_dir / MANIFEST_NAME, output_dir / MANIFEST_NAME)
    _fsync(output_dir)
    (output_dir / REPLACING_NAME).unlink()
    shutil.rmtree(tmp_dir, ignore_errors=True)


def _journal_is_sane(journal) -> bool:
    """Every name in it is a plain file name, and its folder one of the converter's."""
    def plain(name):
        return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST_NAME,
                                                         REPLACING_NAME)
                and os.path.basename(name) == name)
    return (isinstance(journal, dict) and isinstance(journal.get("tmp_dir"), str)
            and _is_own_tmp(journal["tmp_dir"])
            and isinstance(journal.get("new"), list) and isinstance(journal.get("old"), list)
            and all(plain(name) for name in journal["new"] + journal["old"]))


def recover(output_dir: PathLike, log: Callable[[str], None] = lambda line: None) -> None:
    """Finishes or undoes what an interrupted run left in output_dir and beside it.

    Called by convert() under the output_dir lock; safe to call at any time no converter runs.
      - A fallback-mode replacement that was past its commit point (REPLACING_NAME in
        output_dir) is finished: the new set goes in whole.
      - Temporary folders of earlier runs (.tmp-make_tfrecords-* in output_dir, from the fallback
        mode and from versions before the exchange; .tmp-make_tfrecords-<name>-* beside it, from
        the exchange mode) are removed, files that are not the converter's put back.
    Raises:
      ConversionError: the journal does not parse; names it.
    """
    output_dir = Path(output_dir)
    journal_path = output_dir / REPLACING_NAME
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            journal = e
        if not _journal_is_sane(journal):
            raise ConversionError(
                f"{journal_path} does not parse as the converter's replacement journal; the "
                f"records in {output_dir} may be a mix of two conversions: delete them, the "
                "journal and manifest.json, then convert again.")
        _roll_forward(output_dir, journal)
        log(f"finished the replacement of {output_dir} that an earlier run left half done")
    for entry in os.scandir(output_dir):
        if _is_own_tmp(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            log(f"removed {entry.path}, left by an interrupted run")
    parent = output_dir.parent
    if parent == output_dir:
        return
    for entry in os.scandir(parent):
        if not (_is_sibling_tmp(entry.name, output_dir) and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            fd = _lock(Path(entry.path))
        except BlockingIOError:
            continue  # a live run's (it swapped output_dir out and is emptying the old one)
        try:
            kept = _empty_leftover(Path(entry.path), output_dir)
        finally:
            _unlock(fd)
        if kept:
            log(f"kept {entry.path}, left by an interrupted run: {_format_ids(sorted(kept))} "
                f"are not the converter's and {output_dir} has entries of the same name")
        else:
            log(f"removed {entry.path}, left by an interrupted run")


def _exchange_unavailable(output_dir: Path) -> Optional[str]:
    """Why output_dir cannot be swapped with a sibling folder, or None when it can."""
    parent = output_dir.parent
    if parent == output_dir:
        return "it is the root folder"
    if not sys.platform.startswith("linux"):
        return "renameat2(RENAME_EXCHANGE) is Linux-only"
    st_dir, st_parent = os.stat(output_dir), os.stat(parent)
    if st_dir.st_dev != st_parent.st_dev:
        return "it is a mount point"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its parent {parent} is not writable"
    if (st_parent.st_mode & stat.S_ISVTX
            and os.geteuid() not in (0, st_parent.st_uid, st_dir.st_uid)):
        return f"its parent {parent} is sticky and neither it nor {output_dir} is yours"
    # The file system must support the exchange: try it on two empty folders.
    try:
        probe = [Path(tempfile.mkdtemp(prefix=_sibling_prefix(output_dir), dir=parent))
                 for _ in range(2)]
    except OSError as e:
        return f"cannot create a folder in {parent} ({e.strerror})"
    try:
        _exchange(*probe)
    except OSError as e:
        return f"renameat2(RENAME_EXCHANGE) failed on {parent}: {e.strerror}"
    finally:
        for path in probe:
            os.rmdir(path)
    return None


class _Staging:
    """Where a new set is written and how it is put in place.

    Exchange mode (Linux, where output_dir can be swapped with a sibling folder): the set is
    written into a sibling folder `.tmp-make_tfrecords-<name>-XXXXXXXX`, the entries of output_dir
    that the converter did not write are carried over (hard links; folders are moved), and one
    renameat2(RENAME_EXCHANGE) swaps the two folders: the only step readers can see. The folder
    swapped out is then emptied (the old shards and manifest deleted, anything else put back).

    Fallback mode (elsewhere: another OS, NFS, a mount point, a read-only parent): the set is
    written into `output_dir/.tmp-make_tfrecords-XXXXXXXX`; a journal (REPLACING_NAME) is written
    atomically (the commit point), then the old manifest removed, the shards moved in one by one,
    the old shards that are not overwritten deleted, the new manifest moved in, and the journal
    removed. A kill after the commit point leaves the journal: readers (records.list_files)
    refuse the folder, and the next run finishes the move before anything else.
    """

    def __init__(self, output_dir: Path, log: Callable[[str], None]):
        self.output_dir = output_dir
        self.past_commit_point = False
        self.mode_note = _exchange_unavailable(output_dir)
        if self.mode_note is None:
            self.path = Path(tempfile.mkdtemp(prefix=_sibling_prefix(output_dir),
                                              dir=output_dir.parent))
            self._fd = _lock(self.path)
            st = os.stat(output_dir)
            os.chmod(self.path, stat.S_IMODE(st.st_mode))
            try:  # keep the folder's owner and group (root can; a member of the group can)
                os.chown(self.path, st.st_uid if os.geteuid() == 0 else -1, st.st_gid)
            except OSError:
                pass
        else:
            log(f"note: {output_dir} will be replaced in place, file by file, behind a journal "
                f"({self.mode_note}); fcn8s_tf's readers refuse it during those renames")
            self.path = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=output_dir))
            self._fd = None

    @property
    def exchange(self) -> bool:
        return self.mode_note is None

    def commit(self, old_owned: Set[str], new_files: List[str]) -> None:
        """Puts the finished set in place; the old set stays whole until then."""
        _fsync(self.path)
        if self.exchange:
            try:
                self._commit_exchange(old_owned)
                return
            except _ExchangeFailed as e:
                # Unexpected where the probe passed; go on in the fallback mode.
                self.path = e.moved_to
                self.mode_note = f"renameat2(RENAME_EXCHANGE) failed: {e.__cause__}"
        self._commit_journal(old_owned, new_files)

    def _commit_exchange(self, old_owned: Set[str]) -> None:
        output_dir = self.output_dir
        to_move = []
        for entry in os.scandir(output_dir):
            if entry.name in old_owned or _is_own_tmp(entry.name):
                continue
            try:  # a second name: the file never leaves output_dir
                os.link(entry.path, self.path / entry.name, follow_symlinks=False)
            except OSError:  # a folder, or no hard links here: moved just before the swap
                to_move.append(entry.name)
        for name in to_move:
            os.rename(output_dir / name, self.path / name)
        _reached("exchange")
        try:
            _exchange(self.path, output_dir)
        except OSError as e:
            _empty_leftover_carried(self.path, output_dir)
            moved_to = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=output_dir))
            os.rmdir(moved_to)
            os.rename(self.path, moved_to)
            _unlock(self._fd)
            self._fd = None
            raise _ExchangeFailed(moved_to) from e
        _fsync(output_dir.parent)
        _reached("exchanged")
        kept = _empty_leftover(self.path, output_dir)  # the old set, now at self.path
        if kept:
            raise ConversionError(
                f"the new records are in {output_dir}, but {self.path} still holds "
                f"{_format_ids(sorted(kept))}: entries of output_dir that were replaced while "
                "the converter swapped it; look at them and delete the folder.")
        _unlock(self._fd)
        self._fd = None

    def _commit_journal(self, old_owned: Set[str], new_files: List[str]) -> None:
        journal = {"tmp_dir": self.path.name, "new": new_files,
                   "old": sorted(old_owned - {MANIFEST_NAME, MANIFEST_NAME + ".tmp"})}
        _write_json(self.output_dir / REPLACING_NAME, journal)
        self.past_commit_point = True  # from here on, only finishing the move is right
        _fsync(self.output_dir)
        _reached("journal")
        _roll_forward(self.output_dir, journal)

    def discard(self) -> None:
        """After a failure: removes the unfinished set, or leaves a begun move to recover()."""
        try:
            if self.path.exists() and not self.past_commit_point:
                if self.exchange:  # also right after the swap: then it empties the old set
                    _empty_leftover(self.path, self.output_dir)
                else:
                    shutil.rmtree(self.path, ignore_errors=True)
        finally:
            _unlock(self._fd)
            self._fd = None


class _ExchangeFailed(Exception):
    def __init__(self, moved_to: Path):
        super().__init__(str(moved_to))
        self.moved_to = moved_to


def _empty_leftover_carried(new_dir: Path, output_dir: Path) -> None:
    """Undoes the carry-over into new_dir, keeping the new set in it."""
    owned = _owned(new_dir)
    for entry in os.scandir(new_dir):
        if entry.name in owned:
            continue
        if _same_file(entry.path, output_dir / entry.name):
            os.unlink(entry.path)
        elif not os.path.lexists(output_dir / entry.name):
            os.rename(entry.path, output_dir / entry.name)


# ----------------------------------------------------------------------------------------------
# The conversion.
# ----------------------------------------------------------------------------------------------

def _existing_outputs(output_dir: Path) -> List[str]:
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir()
                  if p.name == MANIFEST_NAME or (p.suffix == SHARD_SUFFIX and p.is_file()))


def _planned_files(shards: Dict[str, int]) -> List[str]:
    return [shard_name(split, index, shards[split])
            for split in SPLITS for index in range(shards[split])]


def _check_writable(output_dir: Path) -> None:
    """Raises ConversionError naming output_dir when it cannot be created or written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir={output_dir} exists and is not a folder.")
    existing = output_dir
    while not existing.exists():  # the first folder that exists must let us create the rest
        existing = existing.parent
    if not existing.is_dir():
        raise ConversionError(f"--output_dir={output_dir}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == output_dir else \
            f"cannot be created: {existing} is not writable"
        raise ConversionError(f"--output_dir={output_dir} {what} (permission denied).")


def convert(voc_root: PathLike, sbd_root: Optional[PathLike], output_dir: PathLike, *,
            num_shards: Optional[Dict[str, int]] = None, num_workers: Optional[int] = None,
            overwrite: bool = False, progress_stream: Optional[TextIO] = sys.stderr) -> dict:
    """Converts VOC 2012 (+ SBD) into sharded TFRecords and a manifest.json in output_dir.

    Args:
      voc_root: the VOCdevkit/VOC2012 folder.
      sbd_root: SBD's benchmark_RELEASE/dataset folder, or None (train = VOC2012 seg train).
      output_dir: where `<split>-NNNNN-of-NNNNN.tfrecord` and manifest.json go; created if needed.
        Other files in it stay (also other *.tfrecord files: only those the previous manifest
        lists are replaced).
      num_shards: {"train": n, "val": n}; default {"train": 16, "val": 4}. A split with fewer
        examples than shards gets one shard per example.
      num_workers: processes preparing examples; default os.cpu_count(); 1 works in-process.
        Workers are started with 'spawn', which re-imports the calling script as `__mp_main__`:
        a script that calls this needs an `if __name__ == "__main__":` guard, and each worker
        pays for the script's top-level imports (keep TensorFlow out of them, or run
        tools/make_tfrecords.py). They die with the calling process, however it dies.
      overwrite: replace the records and manifest already in output_dir (only once the new ones
        are complete); without it, such an output_dir is an error.
      progress_stream: where the progress line and notes go; None for silence.
    Returns:
      The manifest (also written to output_dir/manifest.json).
    Raises:
      ConversionError: bad input (see the module docstring), output_dir not writable or in use
        by another converter; output_dir is left as it was.
      Interrupted, KeyboardInterrupt: as raised by the signal handlers; the workers are stopped
        and the temporary files removed first.
    """
    def log(line: str) -> None:
        if progress_stream:
            progress_stream.write(line + "\n")
            progress_stream.flush()

    output_dir = Path(os.path.realpath(output_dir))  # a symlink keeps pointing at the folder
    lock = staging = executor = None
    created_output_dir = committed = False
    try:
        # Stage 0: an earlier run left output_dir half replaced or temporary folders beside it:
        # that is finished (or undone) first, whatever else this run is asked to do.
        if output_dir.is_dir():
            lock = _take(output_dir)
            recover(output_dir, log)

        # Stage 1: everything that can be checked before writing a byte.
        num_shards = dict(DEFAULT_NUM_SHARDS if num_shards is None else num_shards)
        _check_num_shards(num_shards)
        num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        if num_workers < 1:
            raise ConversionError(f"--num_workers={num_workers}: must be >= 1.")
        voc_root = Path(voc_root).absolute()
        sbd_root = Path(sbd_root).absolute() if sbd_root is not None else None
        ids = split_ids(voc_root, sbd_root)
        for split in SPLITS:
            if not ids[split]:
                lists = split_list_files(voc_root, sbd_root)[split]["include"]
                raise ConversionError(f"the {split} split is empty (list files: "
                                      f"{', '.join(map(str, lists))}).")
        _check_writable(output_dir)
        existing = _existing_outputs(output_dir)
        if existing and not overwrite:
            raise ConversionError(
                f"--output_dir={output_dir} already holds records or a manifest "
                f"({_format_ids(existing)}); pass --overwrite to replace them.")
        sources = {split: plan_split(split, ids[split], voc_root, sbd_root) for split in SPLITS}
        shards = {split: min(num_shards[split], len(sources[split])) for split in SPLITS}
        planned = _planned_files(shards)
        old_owned = _owned(output_dir)
        clashes = sorted(set(planned) & set(existing) - old_owned)
        if clashes:
            raise ConversionError(
                f"--output_dir={output_dir} holds {_format_ids(clashes)}, which this conversion "
                f"would write, but no {MANIFEST_NAME} there lists them (not written by the "
                "converter, or its manifest was lost): move or delete them first.")

        # Stage 2: take output_dir (created if needed).
        if lock is None:
            created_output_dir = not output_dir.exists()
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConversionError(f"--output_dir={output_dir}: cannot create it "
                                      f"({e.strerror}).") from None
            lock = _take(output_dir)

        # Stage 3: prepare examples in worker processes, write shards into the staging folder.
        import tensorflow as tf  # pylint: disable=unused-import; its start-up stays out of the rate
        try:
            staging = _Staging(output_dir, log)
        except OSError as e:
            raise ConversionError(f"--output_dir={output_dir}: cannot write there "
                                  f"({e.strerror}).") from None
        # Before any shard: what a later run's clean-up reads to know these files are ours.
        _write_json(staging.path / MANIFEST_NAME, {
            "incomplete": True, "splits": {split: {"shards": [
                {"file": shard_name(split, i, shards[split])} for i in range(shards[split])]}
                for split in SPLITS}})
        if num_workers > 1:
            executor = _start_workers(num_workers)
        splits = {}
        for split in SPLITS:
            if executor is None:
                results = map(prepare_example, sources[split])
            else:
                chunksize = max(1, min(32, len(sources[split]) // (8 * num_workers)))
                results = executor.map(prepare_example, sources[split], chunksize=chunksize)
            splits[split] = _write_split(split, sources[split], shards[split], staging.path,
                                         results, progress_stream)
            splits[split]["list_files"] = {
                key: [str(p) for p in paths]
                for key, paths in split_list_files(voc_root, sbd_root)[split].items()}
        if executor is not None:
            executor.shutdown()
            executor = None
        manifest = {
            "format": "TFRecord, TF Model Garden segmentation keys (fcn8s_tf.records): original "
                      "JPEG bytes; label = single-channel PNG of class indices, 255 = void",
            "created": {
                "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "tool": "fcn8s_tf.convert", "fcn8s_tf_version": fcn8s_tf.__version__,
                "voc_root": str(voc_root), "sbd_root": str(sbd_root) if sbd_root else None,
            },
            "classes": list(VOC_CLASSES),
            "ignore_label": IGNORE_LABEL,
            "splits": splits,
        }
        _write_json(staging.path / MANIFEST_NAME, manifest)

        # Stage 4: put the set in place (see _Staging); signals wait for it.
        with _signals_deferred():
            staging.commit(old_owned, planned)
            staging, committed = None, True
        strays = sorted(name for name in set(_existing_outputs(output_dir)) - set(planned)
                        if name.startswith(tuple(f"{split}-" for split in SPLITS)))
        if strays:
            log(f"note: {output_dir} also holds {_format_ids(strays)}, which this conversion did "
                "not write and left in place; a pattern such as train-*.tfrecord reads them too.")
        return manifest
    except concurrent.futures.process.BrokenProcessPool:
        raise ConversionError("a worker process died (killed, or out of memory?); "
                              f"{output_dir} is left as it was.") from None
    except OSError as e:  # the file system refused a step: name the path
        where = e.filename if e.filename else output_dir
        again = ("; run the converter again: it finishes or undoes what this run left"
                 if staging is not None else "")
        raise ConversionError(f"{where}: {e.strerror or e}{again}.") from None
    finally:
        if executor is not None:
            _stop_workers(executor)
        if staging is not None:
            staging.discard()
        _unlock(lock)
        if created_output_dir and not committed:
            try:
                output_dir.rmdir()  # only if empty
            except OSError:
                pass
