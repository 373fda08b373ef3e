"""Putting a converted set in place: whole or not at all, whatever kills the process.

Readers take shards by a glob such as data/tfrecords/train-*.tfrecord, so what they must never see
is a mix of two conversions, or a partial set. The guarantee:
  - Until the new set is complete (every shard and the manifest written and fsync'ed), output_dir
    is not touched: a failure or a kill of any kind (SIGKILL, power loss) leaves the old set whole.
  - Then the set goes in by one atomic step where the system allows it (the exchange mode), else
    by renames behind a journal that fcn8s_tf's readers respect (the fallback mode); Staging says
    how each works.
  - Only files the converter wrote are deleted or replaced: those the previous manifest lists.
    Other files stay, *.tfrecord files included; one whose name a new shard would take is an error
    before any work.
  - Leftovers of interrupted runs (temporary folders in or beside output_dir, a half-done
    fallback move) are cleaned up, or finished, when the next run starts (recover). A lock
    (flock) on output_dir keeps a second converter out of a folder in use.
A process that has the shards open keeps reading the files it opened. One that opens shards by
name later (tf.data opens them again every epoch) reads the new set from then on, or fails where a
shard name is gone: do not convert into the folder of a running training job. The swap gives
output_dir a new inode: a bind mount of output_dir itself (docker run -v data/tfrecords:/data)
keeps showing the old, emptied folder; mount its parent instead.

The swap is fcn8s_tf/files.py's `exchange`, called through that module on purpose:
tests/test_convert_faults.py replaces it to take RENAME_EXCHANGE away (and recover._reached to stop
the process at a named step).
"""

import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Set

from fcn8s_tf import files
from fcn8s_tf.data.convert import recover as _recover
from fcn8s_tf.data.convert.layout import (MANIFEST_NAME, REPLACING_NAME, SHARD_SUFFIX,
                                          ConversionError, format_names)
from fcn8s_tf.data.convert.recover import (TMP_PREFIX, empty_leftover, is_own_tmp, owned,
                                           roll_forward, same_file, sibling_prefix)


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
        probe = [Path(tempfile.mkdtemp(prefix=sibling_prefix(output_dir), dir=parent))
                 for _ in range(2)]
    except OSError as e:
        return f"cannot create a folder in {parent} ({e.strerror})"
    try:
        files.exchange(*probe)
    except OSError as e:
        return f"renameat2(RENAME_EXCHANGE) failed on {parent}: {e.strerror}"
    finally:
        for path in probe:
            os.rmdir(path)
    return None


class Staging:
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
            self.path = Path(tempfile.mkdtemp(prefix=sibling_prefix(output_dir),
                                              dir=output_dir.parent))
            self._fd = files.lock(self.path)
            st = os.stat(output_dir)
            os.chmod(self.path, stat.S_IMODE(st.st_mode))
            try:  # keep the folder's owner and group (root can; a member of the group can)
                os.chown(self.path, st.st_uid if os.geteuid() == 0 else -1, st.st_gid)
            except OSError:
                pass
        else:
            log(f"note: {output_dir} will be replaced in place, file by file, behind a journal "
                f"({self.mode_note}); fcn8s_tf's readers refuse it during those renames")
            self.path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=output_dir))
            self._fd = None

    @property
    def exchange(self) -> bool:
        return self.mode_note is None

    def commit(self, old_owned: Set[str], new_files: List[str]) -> None:
        """Puts the finished set in place; the old set stays whole until then."""
        files.fsync(self.path)
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
            if entry.name in old_owned or is_own_tmp(entry.name):
                continue
            try:  # a second name: the file never leaves output_dir
                os.link(entry.path, self.path / entry.name, follow_symlinks=False)
            except OSError:  # a folder, or no hard links here: moved just before the swap
                to_move.append(entry.name)
        for name in to_move:
            os.rename(output_dir / name, self.path / name)
        _recover._reached("exchange")
        try:
            files.exchange(self.path, output_dir)
        except OSError as e:
            _empty_leftover_carried(self.path, output_dir)
            moved_to = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=output_dir))
            os.rmdir(moved_to)
            os.rename(self.path, moved_to)
            files.unlock(self._fd)
            self._fd = None
            raise _ExchangeFailed(moved_to) from e
        files.fsync(output_dir.parent)
        _recover._reached("exchanged")
        kept = empty_leftover(self.path, output_dir)  # the old set, now at self.path
        if kept:
            raise ConversionError(
                f"the new records are in {output_dir}, but {self.path} still holds "
                f"{format_names(sorted(kept))}: entries of output_dir that were replaced while "
                "the converter swapped it; look at them and delete the folder.")
        files.unlock(self._fd)
        self._fd = None

    def _commit_journal(self, old_owned: Set[str], new_files: List[str]) -> None:
        journal = {"tmp_dir": self.path.name, "new": new_files,
                   "old": sorted(name for name in old_owned if name != MANIFEST_NAME
                                 and not files.is_temp_of(name, MANIFEST_NAME))}
        files.write_json(self.output_dir / REPLACING_NAME, journal)
        self.past_commit_point = True  # from here on, only finishing the move is right
        files.fsync(self.output_dir)
        _recover._reached("journal")
        roll_forward(self.output_dir, journal)

    def discard(self) -> None:
        """After a failure: removes the unfinished set, or leaves a begun move to recover()."""
        try:
            if self.path.exists() and not self.past_commit_point:
                if self.exchange:  # also right after the swap: then it empties the old set
                    empty_leftover(self.path, self.output_dir)
                else:
                    shutil.rmtree(self.path, ignore_errors=True)
        finally:
            files.unlock(self._fd)
            self._fd = None


class _ExchangeFailed(Exception):
    def __init__(self, moved_to: Path):
        super().__init__(str(moved_to))
        self.moved_to = moved_to


def _empty_leftover_carried(new_dir: Path, output_dir: Path) -> None:
    """Undoes the carry-over into new_dir, keeping the new set in it."""
    ours = owned(new_dir)
    for entry in os.scandir(new_dir):
        if entry.name in ours:
            continue
        if same_file(entry.path, output_dir / entry.name):
            os.unlink(entry.path)
        elif not os.path.lexists(output_dir / entry.name):
            os.rename(entry.path, output_dir / entry.name)


# ----------------------------------------------------------------------------------------------
# Checks before any work: what output_dir holds, and whether it can be written.
# ----------------------------------------------------------------------------------------------

def existing_outputs(output_dir: Path) -> List[str]:
    """The records and manifest already in output_dir, by name."""
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir()
                  if p.name == MANIFEST_NAME or (p.suffix == SHARD_SUFFIX and p.is_file()))


def check_writable(output_dir: Path) -> None:
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

