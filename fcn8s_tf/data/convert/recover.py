"""The states a conversion can leave output_dir in, and recover(): from any of them to a whole set.

What publish builds on: the lock that keeps a second converter out (fcn8s_tf/files.py's), the
names of the temporary folders, and the two ways a replacement is finished or undone (emptying a
swapped-out or unfinished folder; rolling a journal forward). recover() runs first in every
conversion, so whatever a killed run left is finished or undone before anything else.

_reached is a module attribute on purpose: tests/test_convert_faults.py replaces it to stop the
process at a named step (here and in publish).
"""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Set

from fcn8s_tf import files
from fcn8s_tf.data.convert.layout import (MANIFEST_NAME, REPLACING_NAME, ConversionError, PathLike,
                                          format_names, manifest_files)

TMP_PREFIX = ".tmp-make_tfrecords-"
_MAX_NAME_IN_TMP = 100
_MKDTEMP_SUFFIX = re.compile(r"[a-z0-9_]{8}")  # what tempfile.mkdtemp appends to the prefix


def _reached(stage: str) -> None:
    """A named point of the commit: a no-op; tests replace it to kill the process exactly there."""


def sibling_prefix(output_dir: Path) -> str:
    return f"{TMP_PREFIX}{output_dir.name[:_MAX_NAME_IN_TMP]}-"


def is_own_tmp(name: str) -> bool:
    """A temporary folder inside output_dir (the fallback mode's, and older versions')."""
    return name.startswith(TMP_PREFIX) and bool(_MKDTEMP_SUFFIX.fullmatch(name[len(TMP_PREFIX):]))


def _is_sibling_tmp(name: str, output_dir: Path) -> bool:
    prefix = sibling_prefix(output_dir)
    return name.startswith(prefix) and bool(_MKDTEMP_SUFFIX.fullmatch(name[len(prefix):]))


def take(output_dir: Path) -> Optional[int]:
    """The lock that keeps a second converter out of output_dir."""
    try:
        return files.lock(output_dir)
    except BlockingIOError:
        raise ConversionError(f"--output_dir={output_dir}: another make_tfrecords is writing "
                              "it; wait for it to finish.") from None


def _read_manifest_names(directory: Path) -> Optional[Set[str]]:
    """The shard names the manifest in directory lists; None if it has none or it does not parse."""
    try:
        with open(directory / MANIFEST_NAME, encoding="utf-8") as f:
            manifest = json.load(f)
        return set(manifest_files(manifest)) if isinstance(manifest, dict) else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def owned(directory: Path) -> Set[str]:
    """What the converter wrote in directory: the shards its manifest lists, the manifest and
    what a killed write of it left."""
    entries = os.listdir(directory) if os.path.isdir(directory) else []
    temporaries = {entry for entry in entries if files.is_temp_of(entry, MANIFEST_NAME)}
    return (_read_manifest_names(directory) or set()) | {MANIFEST_NAME} | temporaries


def same_file(a: str, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def empty_leftover(leftover: Path, output_dir: Path) -> List[str]:
    """Empties and removes a temporary folder of the exchange mode; returns the names it kept.

    The folder holds either a set that was being built (its manifest, written before any shard,
    lists it; plus, near the swap, what was carried over from output_dir), or, after the swap,
    the previous contents of output_dir. The same rule handles both:
      - a second name of a file that is in output_dir (a carried hard link): unlinked;
      - what the folder's manifest lists, and the manifest: deleted (the converter wrote them);
      - anything else (someone else's, carried over by a rename or added during the swap):
        moved back into output_dir, or kept if output_dir has something of that name.
    """
    ours = owned(leftover)
    kept = []
    for entry in os.scandir(leftover):
        target = output_dir / entry.name
        if same_file(entry.path, target):
            os.unlink(entry.path)
        elif entry.name in ours and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
            _reached("deleted_one")
        elif not os.path.lexists(target):
            os.rename(entry.path, target)
        else:
            kept.append(entry.name)
    if not kept:
        os.rmdir(leftover)
    return kept


def roll_forward(output_dir: Path, journal: dict) -> None:
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
    files.fsync(output_dir)
    (output_dir / REPLACING_NAME).unlink()
    shutil.rmtree(tmp_dir, ignore_errors=True)


def _journal_is_sane(journal) -> bool:
    """Every name in it is a plain file name, and its folder one of the converter's."""
    def plain(name):
        return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST_NAME,
                                                       REPLACING_NAME)
                and os.path.basename(name) == name)
    return (isinstance(journal, dict) and isinstance(journal.get("tmp_dir"), str)
            and is_own_tmp(journal["tmp_dir"])
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
        roll_forward(output_dir, journal)
        log(f"finished the replacement of {output_dir} that an earlier run left half done")
    for entry in os.scandir(output_dir):
        if is_own_tmp(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            log(f"removed {entry.path}, left by an interrupted run")
    parent = output_dir.parent
    if parent == output_dir:
        return
    for entry in os.scandir(parent):
        if not (_is_sibling_tmp(entry.name, output_dir) and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            fd = files.lock(Path(entry.path))
        except BlockingIOError:
            continue  # a live run's (it swapped output_dir out and is emptying the old one)
        try:
            kept = empty_leftover(Path(entry.path), output_dir)
        finally:
            files.unlock(fd)
        if kept:
            log(f"kept {entry.path}, left by an interrupted run: {format_names(sorted(kept))} "
                f"are not the converter's and {output_dir} has entries of the same name")
        else:
            log(f"removed {entry.path}, left by an interrupted run")
