"""PASCAL VOC 2012 + SBD -> sharded TFRecords and a manifest: the first stage of the pipeline.

Splits (DESIGN.md): train = (SBD train ∪ SBD val ∪ VOC2012 seg train) − VOC2012 seg val, 10,582 ids
on the full data; val = VOC2012 seg val, 1,449 ids. Without an SBD root, train is VOC2012 seg train.
A label comes from VOC `SegmentationClass/<id>.png` when it exists (it carries the 255 boundary
band), else from SBD `cls/<id>.mat`; the image from VOC `JPEGImages/<id>.jpg`, else from SBD
`img/<id>.jpg`.

Each record holds the JPEG bytes exactly as read and the label re-encoded as a single-channel PNG of
class indices (see records.py for the keys). Examples are prepared (decoded, checked, PNG-encoded)
in `num_workers` spawned processes; the parent serialises them and appends them to the shards in id
order. Everything is written under a hidden temporary folder inside `output_dir` and moved into
place only when every shard is complete, manifest last, so a failed or interrupted run leaves no
shard or manifest that looks finished.

Only tools/make_tfrecords.py reads flags; the error messages name the flags because that is where
a user fixes them.
"""

import concurrent.futures
import dataclasses
import datetime
import io
import json
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, TextIO, Tuple, Union

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
MANIFEST_NAME = "manifest.json"
_TMP_PREFIX = ".tmp-make_tfrecords-"
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
# Writing: shards, progress, manifest, and the all-or-nothing move into output_dir.
# ----------------------------------------------------------------------------------------------

def shard_name(split: str, index: int, num_shards: int) -> str:
    """The file name of one shard, e.g. train-00003-of-00016.tfrecord."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _shard_bounds(num_examples: int, num_shards: int) -> List[Tuple[int, int]]:
    """Contiguous [start, stop) blocks whose sizes differ by at most one."""
    edges = [num_examples * i // num_shards for i in range(num_shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


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


def _existing_outputs(output_dir: Path) -> List[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir()
                  if p.name == MANIFEST_NAME or (p.suffix == ".tfrecord" and p.is_file()))


def _write_split(split: str, sources: List[ExampleSource], num_shards: int, tmp_dir: Path,
                 results: Iterable[PreparedExample], progress_stream: Optional[TextIO]) -> dict:
    """Writes one split's shards into tmp_dir from the prepared examples (in `sources` order)."""
    import tensorflow as tf  # see the note at the top
    from fcn8s_tf import records

    histogram = np.zeros(256, np.int64)
    shards = []
    progress = _Progress(split, len(sources), progress_stream)
    results = iter(results)
    for index, (start, stop) in enumerate(_shard_bounds(len(sources), num_shards)):
        name = shard_name(split, index, num_shards)
        with tf.io.TFRecordWriter(str(tmp_dir / name)) as writer:
            for position in range(start, stop):
                example = next(results)
                assert example.example_id == sources[position].example_id
                writer.write(records.encode_example(
                    example.image_bytes, example.label_png, example.height, example.width,
                    example.example_id, image_format="jpeg"))
                histogram += example.label_histogram
                progress.update()
        shards.append({"file": name, "count": stop - start})
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


def convert(voc_root: PathLike, sbd_root: Optional[PathLike], output_dir: PathLike, *,
            num_shards: Optional[Dict[str, int]] = None, num_workers: Optional[int] = None,
            overwrite: bool = False, progress_stream: Optional[TextIO] = sys.stderr) -> dict:
    """Converts VOC 2012 (+ SBD) into sharded TFRecords and a manifest.json in output_dir.

    Args:
      voc_root: the VOCdevkit/VOC2012 folder.
      sbd_root: SBD's benchmark_RELEASE/dataset folder, or None (train = VOC2012 seg train).
      output_dir: where `<split>-NNNNN-of-NNNNN.tfrecord` and manifest.json go; created if needed.
      num_shards: {"train": n, "val": n}; default {"train": 16, "val": 4}. A split with fewer
        examples than shards gets one shard per example.
      num_workers: processes preparing examples; default os.cpu_count(); 1 works in-process.
        Workers are started with 'spawn', which re-imports the calling script as `__mp_main__`:
        a script that calls this needs an `if __name__ == "__main__":` guard, and each worker
        pays for the script's top-level imports (keep TensorFlow out of them, or run
        tools/make_tfrecords.py).
      overwrite: replace the records and manifest already in output_dir (only once the new ones
        are complete); without it, such an output_dir is an error.
      progress_stream: where the progress line goes; None for silence.
    Returns:
      The manifest (also written to output_dir/manifest.json).
    Raises:
      ConversionError: bad input (see the module docstring); output_dir is left as it was.
    """
    # Stage 1: everything that can be checked before writing a byte.
    num_shards = dict(DEFAULT_NUM_SHARDS if num_shards is None else num_shards)
    _check_num_shards(num_shards)
    num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    if num_workers < 1:
        raise ConversionError(f"--num_workers={num_workers}: must be >= 1.")
    voc_root = Path(voc_root).absolute()
    sbd_root = Path(sbd_root).absolute() if sbd_root is not None else None
    output_dir = Path(output_dir).absolute()
    ids = split_ids(voc_root, sbd_root)
    for split in SPLITS:
        if not ids[split]:
            lists = split_list_files(voc_root, sbd_root)[split]["include"]
            raise ConversionError(f"the {split} split is empty (list files: "
                                  f"{', '.join(map(str, lists))}).")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir={output_dir} exists and is not a folder.")
    existing = _existing_outputs(output_dir)
    if existing and not overwrite:
        raise ConversionError(
            f"--output_dir={output_dir} already holds records or a manifest "
            f"({_format_ids([p.name for p in existing])}); pass --overwrite to replace them.")
    sources = {split: plan_split(split, ids[split], voc_root, sbd_root) for split in SPLITS}
    shards = {split: min(num_shards[split], len(sources[split])) for split in SPLITS}

    # Stage 2: prepare examples in worker processes, write shards into a temporary folder.
    import tensorflow as tf  # pylint: disable=unused-import; its start-up stays out of the rate
    created_output_dir = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=output_dir))
    executor = None
    try:
        if num_workers > 1:
            # 'spawn', not fork: the parent has TensorFlow's thread pools running.
            executor = concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context("spawn"))
        splits = {}
        for split in SPLITS:
            if executor is None:
                results = map(prepare_example, sources[split])
            else:
                chunksize = max(1, min(32, len(sources[split]) // (8 * num_workers)))
                results = executor.map(prepare_example, sources[split], chunksize=chunksize)
            splits[split] = _write_split(split, sources[split], shards[split], tmp_dir, results,
                                         progress_stream)
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
        with open(tmp_dir / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")

        # Stage 3: move into place. Old outputs go first (manifest before shards), so that no
        # manifest ever describes shards that are not there; the new manifest comes last.
        for path in sorted(_existing_outputs(output_dir), key=lambda p: p.name != MANIFEST_NAME):
            path.unlink()
        for split in SPLITS:
            for shard in splits[split]["shards"]:
                os.replace(tmp_dir / shard["file"], output_dir / shard["file"])
        os.replace(tmp_dir / MANIFEST_NAME, output_dir / MANIFEST_NAME)
        tmp_dir.rmdir()
        return manifest
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created_output_dir:
            try:
                output_dir.rmdir()
            except OSError:
                pass
        raise
