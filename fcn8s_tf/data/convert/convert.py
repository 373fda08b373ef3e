"""Datasets -> sharded TFRecords and a manifest: the first stage of the pipeline.

Two sources, one writer:
    convert(voc_root, sbd_root, output_dir)                  PASCAL VOC 2012 + SBD, or one list's
                                                             ids (e.g. VOC2011 seg11valid)
    convert_folders(images, masks, classes_file, output_dir) your own images, masks and classes
Each source finds its examples and classes and hands over a Plan, checked before a byte is
written; from there the work is the same. Examples are prepared (decoded, checked, label
PNG-encoded) in `num_workers` spawned processes; the parent serialises them and appends them to
the shards in id order, then writes the manifest (class names, palette, void label, pixels per
class of each split) and puts the set in place, whole or not at all.

    layout            shard and manifest names, the manifest's class metadata, ConversionError
    examples          the Plan; one example read, checked, encoded (images kept or re-encoded)
    voc_sbd           the VOC + SBD source: ids, splits, VOC/SBD files
    folders           the folders source: classes file, pairing, seeded or listed splits
    masks             a mask as class ids: ids, or colours through the classes' colours
    workers           worker processes that die with the converter
    publish           the commit: a new set swapped in atomically, or moved in behind a journal
    recover           the lock, and finishing or undoing what an interrupted run left

Each of those names is imported from its own module (fcn8s_tf.data.convert.layout.shard_name, ...);
this one re-exports none. Nothing in the converter imports TensorFlow at module level: the worker
processes import these modules, and without TensorFlow each starts in a fraction of a second.
Only tools/make_tfrecords.py reads flags; error messages name the flags because that is where a
user fixes them.
"""

import concurrent.futures
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, TextIO, Tuple

import numpy as np

import fcn8s_tf
from fcn8s_tf import files
from fcn8s_tf import signals
from fcn8s_tf.data.convert import folders as folders_source
from fcn8s_tf.data.convert import voc_sbd as voc_source
from fcn8s_tf.data.convert.examples import Plan, PreparedExample, class_pixels, count_values
from fcn8s_tf.data.convert.layout import (MANIFEST_NAME, ConversionError, PathLike, format_names,
                                          shard_bounds, shard_name)
from fcn8s_tf.data.convert.publish import Staging, check_writable, existing_outputs
from fcn8s_tf.data.convert.recover import owned, recover, take
from fcn8s_tf.data.convert.workers import map_in_order, start_workers, stop_workers

DEFAULT_NUM_SHARDS = {"train": 16, "val": 4}  # a split other than these two gets val's count
_SHARD_FLAGS = {"train": "--train_shards"}  # every other split's count: --val_shards
FORMAT = ("TFRecord, TF Model Garden segmentation keys (fcn8s_tf.data.records): image = the JPEG "
          "file's bytes as read, any other format decoded and re-encoded losslessly as PNG (each "
          "split's reencoded counts them); label = single-channel PNG of class indices, 255 = void")


def convert(voc_root: PathLike, sbd_root: Optional[PathLike], output_dir: PathLike, *,
            list_file: Optional[PathLike] = None, list_split: str = "val",
            num_shards: Optional[Dict[str, int]] = None, num_workers: Optional[int] = None,
            overwrite: bool = False, progress_stream: Optional[TextIO] = sys.stderr) -> dict:
    """Converts VOC 2012 (+ SBD) into sharded TFRecords and a manifest.json in output_dir.

    Args:
      voc_root: the VOCdevkit/VOC2012 folder.
      sbd_root: SBD's benchmark_RELEASE/dataset folder, or None (train = VOC2012 seg train).
      output_dir: where `<split>-NNNNN-of-NNNNN.tfrecord` and manifest.json go; created if needed.
        Other files in it stay (also other *.tfrecord files: only those the previous manifest
        lists are replaced).
      list_file: convert only the ids this file lists (one a line), into the split list_split,
        e.g. VOC2011 seg11valid.txt; the VOC and SBD split lists are then not read.
      list_split: the split list_file's ids go to (letters, digits, _).
      num_shards: {split: n}; default {"train": 16, "val": 4}, and a split not named gets val's
        count. A split with fewer examples than shards gets one shard per example.
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
      ConversionError: bad input (see voc_sbd), output_dir not writable or in use by another
        converter; output_dir is left as it was.
      signals.Interrupted: as raised by the signal handlers (signals.raising); the workers are
        stopped and the temporary files removed first.
    """
    return write(lambda: voc_source.plan(voc_root, sbd_root, list_file, list_split), output_dir,
                 num_shards=num_shards, num_workers=num_workers, overwrite=overwrite,
                 progress_stream=progress_stream)


def convert_folders(images: PathLike, masks: PathLike, classes_file: PathLike,
                    output_dir: PathLike, *, splits: Optional[Dict[str, float]] = None,
                    lists: Optional[Dict[str, PathLike]] = None, seed: int = 0,
                    ignore_value: int = 255, ignore_color: Optional[Tuple[int, int, int]] = None,
                    num_shards: Optional[Dict[str, int]] = None, num_workers: Optional[int] = None,
                    overwrite: bool = False,
                    progress_stream: Optional[TextIO] = sys.stderr) -> dict:
    """Converts a folder of images and a folder of masks into sharded TFRecords and a manifest.

    Args:
      images, masks, classes_file: the two folders and the classes file (layouts in
        convert_folders' docstring).
      splits: {split: fraction}, the seeded split (default {"train": 0.9, "val": 0.1}).
      lists: {split: list file} instead of splits: each split's ids, one a line.
      seed: the seeded split's shuffle.
      ignore_value: the void value of single-channel masks (not a class id); 255 in the records.
      ignore_color: the void colour of colour masks, or None: every colour is a class's.
      output_dir, num_shards, num_workers, overwrite, progress_stream: as convert().
    Returns:
      The manifest (also written to output_dir/manifest.json).
    Raises:
      ConversionError, signals.Interrupted: as convert().
    """
    return write(lambda: folders_source.plan(
        images, masks, classes_file, splits=splits, lists=lists, seed=seed,
        ignore_value=ignore_value, ignore_color=ignore_color), output_dir,
        num_shards=num_shards, num_workers=num_workers, overwrite=overwrite,
        progress_stream=progress_stream)


class Progress:
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



def _shard_counts(plan: Plan, num_shards: Optional[Dict[str, int]]) -> Dict[str, int]:
    """Shards of each split: as asked, at most one per example."""
    num_shards = dict(DEFAULT_NUM_SHARDS if num_shards is None else num_shards)
    counts = {}
    for split, sources in plan.splits.items():
        value = num_shards.get(split, num_shards.get("val", DEFAULT_NUM_SHARDS["val"]))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConversionError(f"{_SHARD_FLAGS.get(split, '--val_shards')}={value}: the number "
                                  f"of {split} shards must be an integer >= 1.")
        counts[split] = min(value, len(sources))
    return counts


def _write_split(split: str, sources: List, num_shards: int, tmp_dir: Path,
                 results: Iterable[PreparedExample], num_classes: int,
                 progress_stream: Optional[TextIO]) -> dict:
    """Writes one split's shards into tmp_dir from the prepared examples (in `sources` order)."""
    import tensorflow as tf  # see the note at the top
    from fcn8s_tf.data import records

    histogram = np.zeros(256, np.int64)
    shards, formats, reencoded = [], [], []
    progress = Progress(split, len(sources), progress_stream)
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
                        example.example_id, image_format=example.image_format))
                    histogram += example.label_histogram
                    formats.append(example.image_format)
                    if example.image_format != "jpeg":
                        reencoded.append(example.source_format)
                    progress.update()
            files.fsync(path)
        except (tf.errors.OpError, OSError) as e:  # a full disk, a quota, a vanished folder
            message = e.message if isinstance(e, tf.errors.OpError) else e.strerror
            raise ConversionError(f"cannot write {path}: {message}") from None
        shards.append({"file": path.name, "count": stop - start})
    progress.close()
    return {"num_examples": len(sources), "num_shards": num_shards, "shards": shards,
            **class_pixels(histogram, num_classes), "image_formats": count_values(formats),
            "reencoded": count_values(reencoded)}


def _check_output_dir(output_dir: Path, planned: List[str], overwrite: bool) -> Set[str]:
    """Raises ConversionError unless output_dir may take the planned files; returns what the
    converter wrote there before (the files a replacement may delete)."""
    check_writable(output_dir)
    existing = existing_outputs(output_dir)
    if existing and not overwrite:
        raise ConversionError(
            f"--output_dir={output_dir} already holds records or a manifest "
            f"({format_names(existing)}); pass --overwrite to replace them.")
    old_owned = owned(output_dir)
    clashes = sorted(set(planned) & set(existing) - old_owned)
    if clashes:
        raise ConversionError(
            f"--output_dir={output_dir} holds {format_names(clashes)}, which this conversion "
            f"would write, but no {MANIFEST_NAME} there lists them (not written by the "
            "converter, or its manifest was lost): move or delete them first.")
    return old_owned


def _write_all(plan: Plan, shards: Dict[str, int], staging: Staging, num_workers: int,
               progress_stream: Optional[TextIO]) -> dict:
    """Prepares every example (in worker processes) and writes shards and manifest to staging."""
    # Before any shard: what a later run's clean-up reads to know these files are ours.
    files.write_json(staging.path / MANIFEST_NAME, {"incomplete": True, "splits": {
        split: {"shards": [{"file": shard_name(split, i, count)} for i in range(count)]}
        for split, count in shards.items()}})
    executor = start_workers(num_workers) if num_workers > 1 else None
    try:
        splits = {}
        for split, sources in plan.splits.items():
            if executor is None:
                results = map(plan.prepare, sources)
            else:
                chunksize = max(1, min(32, len(sources) // (8 * num_workers)))
                results = map_in_order(executor, plan.prepare, sources, chunksize,
                                       in_flight=2 * num_workers)
            splits[split] = _write_split(split, sources, shards[split], staging.path, results,
                                         len(plan.classes.names), progress_stream)
            splits[split].update(plan.split_info.get(split, {}))
        if executor is not None:
            executor.shutdown()
            executor = None
    finally:
        if executor is not None:
            stop_workers(executor)
    manifest = {
        "format": FORMAT,
        "created": {
            "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool": "fcn8s_tf.data.convert", "fcn8s_tf_version": fcn8s_tf.__version__,
            **plan.created,
        },
        "classes": plan.classes.manifest_entry(),
        "splits": splits,
    }
    files.write_json(staging.path / MANIFEST_NAME, manifest)
    return manifest


def _make_folder(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"--output_dir={output_dir}: cannot create it "
                              f"({e.strerror}).") from None


def _note_strays(output_dir: Path, planned: List[str], shards: Dict[str, int],
                 log: Callable[[str], None]) -> None:
    """Points out files that a split's pattern reads but this conversion did not write."""
    strays = sorted(name for name in set(existing_outputs(output_dir)) - set(planned)
                    if name.startswith(tuple(f"{split}-" for split in shards)))
    if strays:
        log(f"note: {output_dir} also holds {format_names(strays)}, which this conversion "
            "did not write and left in place; a pattern such as train-*.tfrecord reads them "
            "too.")


def write(make_plan: Callable[[], Plan], output_dir: PathLike, *,
          num_shards: Optional[Dict[str, int]] = None, num_workers: Optional[int] = None,
          overwrite: bool = False, progress_stream: Optional[TextIO] = sys.stderr) -> dict:
    """Writes what make_plan() finds into output_dir; the work of convert and convert_folders.

    make_plan runs once output_dir is locked and cleaned of an interrupted run's leftovers; every
    check it and this function make happens before a byte is written.
    """
    def log(line: str) -> None:
        if progress_stream:
            progress_stream.write(line + "\n")
            progress_stream.flush()

    output_dir = Path(os.path.realpath(output_dir))  # a symlink keeps pointing at the folder
    lock = staging = None
    created_output_dir = committed = False
    try:
        # Stage 0: an earlier run left output_dir half replaced or temporary folders beside it:
        # that is finished (or undone) first, whatever else this run is asked to do.
        if output_dir.is_dir():
            lock = take(output_dir)
            recover(output_dir, log)

        # Stage 1: everything that can be checked before writing a byte.
        num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        if num_workers < 1:
            raise ConversionError(f"--num_workers={num_workers}: must be >= 1.")
        plan = make_plan()
        shards = _shard_counts(plan, num_shards)
        planned = [shard_name(split, i, count) for split, count in shards.items()
                   for i in range(count)]
        old_owned = _check_output_dir(output_dir, planned, overwrite)
        for note in plan.notes:
            log(note)

        # Stage 2: take output_dir (created if needed).
        if lock is None:
            created_output_dir = not output_dir.exists()
            _make_folder(output_dir)
            lock = take(output_dir)

        # Stage 3: prepare examples in worker processes, write shards into the staging folder.
        import tensorflow as tf  # pylint: disable=unused-import; its start-up stays out of the rate
        try:
            staging = Staging(output_dir, log)
        except OSError as e:
            raise ConversionError(f"--output_dir={output_dir}: cannot write there "
                                  f"({e.strerror}).") from None
        manifest = _write_all(plan, shards, staging, num_workers, progress_stream)

        # Stage 4: put the set in place (see publish); signals wait for it.
        with signals.deferred():
            staging.commit(old_owned, planned)
            staging, committed = None, True
        _note_strays(output_dir, planned, shards, log)
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
        if staging is not None:
            staging.discard()
        files.unlock(lock)
        if created_output_dir and not committed:
            try:
                output_dir.rmdir()  # only if empty
            except OSError:
                pass


def summary(manifest: dict) -> str:
    """A table for the user: each class's share of the pixels of each split (class imbalance is
    worth seeing before training), and what was re-encoded."""
    splits = manifest["splits"]
    lines = []
    names = manifest["classes"]["names"] + ["(void)"]
    width = max(len(name) for name in names + ["share of pixels"])
    lines.append(f"{'share of pixels':<{width}}" + "".join(f" {split:>8}" for split in splits))
    shares = []
    for info in splits.values():
        counts = info["class_pixels"] + [info["ignore_pixels"]]
        shares.append([100.0 * n / max(1, sum(counts)) for n in counts])
    for k, name in enumerate(names):
        lines.append(f"{name:<{width}}" + "".join(f" {s[k]:7.2f}%" for s in shares))
    for split, info in splits.items():
        if info["reencoded"]:
            kinds = ", ".join(f"{n} {kind}" for kind, n in info["reencoded"].items())
            lines.append(f"{split}: {sum(info['reencoded'].values())} images re-encoded "
                         f"losslessly as PNG ({kinds}); JPEGs stored as they are.")
    return "\n".join(lines)
