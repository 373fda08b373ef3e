"""What the converter writes: the folder's layout, the manifest's class metadata, its error.

    <output_dir>/<split>-NNNNN-of-NNNNN.tfrecord   the records (fcn8s_tf.data.records owns
                                                   their keys)
    <output_dir>/manifest.json                     splits, shards and their counts, classes
    <output_dir>/.make_tfrecords-replacing.json    only while a fallback-mode replacement runs,
                                                   or after a kill during one (publish)

The manifest's class metadata, the contract the training side reads (records.read_classes):
    "classes": {"names": [...], "palette": [[r, g, b], ...], "ignore_label": 255}
with one palette colour per class, and in each split "class_pixels": [pixels of each class]
(void pixels not counted; "ignore_pixels" holds those).

This module owns those names and shapes: the converter's modules that write them and
fcn8s_tf.data.records that reads them import them from here. No TensorFlow: the converter's worker
processes import it.
"""

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

from fcn8s_tf.class_info import IGNORE_LABEL  # numpy only: fine in the workers

PathLike = Union[str, os.PathLike]

MANIFEST_NAME = "manifest.json"
# Present in output_dir only while the fallback mode moves a new set in (and after a kill there,
# until the next run finishes the move); readers refuse the folder while it is there.
REPLACING_NAME = ".make_tfrecords-replacing.json"
SHARD_SUFFIX = ".tfrecord"
# The void value of every label the converter writes, whatever the source used (VOC's is 255).
MAX_CLASSES = IGNORE_LABEL  # class ids 0..254: a single-channel uint8 PNG, 255 kept void
_MAX_NAMES_SHOWN = 5
# No "-": the glob val-*-of-* must not match the shards of a split named val-hard.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")


class ConversionError(Exception):
    """Bad input to the converter; the message names the file, the id or the flag to fix."""


def format_names(names: Sequence[str]) -> str:
    """The first few names, comma-separated, with "..." when there are more."""
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    return shown + (", ..." if len(names) > _MAX_NAMES_SHOWN else "")


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The file name of one shard, e.g. train-00003-of-00016.tfrecord."""
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def check_split_name(split: str, flag: str) -> None:
    """Raises ConversionError naming the flag when split cannot name shards."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ConversionError(f"{flag}: split name {split!r} may hold only letters, digits and _ "
                              "(it starts each shard's file name).")


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


def classes_entry(names: Sequence[str], palette: Sequence[Sequence[int]]) -> dict:
    """The manifest's "classes" value for these class names and their colours."""
    return {"names": list(names), "palette": [[int(c) for c in colour] for colour in palette],
            "ignore_label": IGNORE_LABEL}


def classes_problem(entry) -> Optional[str]:
    """What is wrong with a manifest's "classes" value, or None when it has the shape above."""
    if not isinstance(entry, dict):
        return f'"classes" is a {type(entry).__name__}, not an object'
    names, palette, ignore = entry.get("names"), entry.get("palette"), entry.get("ignore_label")
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and n for n in names)):
        return '"classes"."names" is not a non-empty list of names'
    if len(set(names)) != len(names):
        return f'"classes"."names" repeats a name: {names}'
    if len(names) > MAX_CLASSES:
        return f'"classes"."names" has {len(names)} classes; at most {MAX_CLASSES}'
    if not isinstance(palette, list) or len(palette) != len(names):
        return f'"classes"."palette" does not hold one colour for each of the {len(names)} classes'
    for colour in palette:
        if (not isinstance(colour, list) or len(colour) != 3 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
            return f'"classes"."palette" holds {colour!r}, not an [r, g, b] of 0..255'
    if (not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255
            or ignore < len(names)):
        return (f'"classes"."ignore_label" is {ignore!r}; expected an integer in '
                f'{len(names)}..255 (not a class id)')
    return None
