"""What a long conversion meets: kills at any step, signals, its own workers, other people's files,
folders it cannot write. Real subprocesses and real signals, on a tiny synthetic VOC + SBD tree.

The kill tests stop tools/make_tfrecords.py at a named step of the commit
(convert_recover._reached, a no-op that the wrapper below turns into a pause), SIGKILL it there
from outside, and look at the folder as a reader would. The worker tests put a named pipe where
an image should be, so that a worker blocks reading it (as on a stalled network file system), and
signal the converter then.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from fcn8s_tf import files
from fcn8s_tf.data import demo_data
from fcn8s_tf.data import records
from fcn8s_tf.data.convert import convert
from fcn8s_tf.data.convert import layout as convert_layout

from helpers import wait_for_line

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "make_tfrecords.py"
OLD_SHARDS = {"train": 3, "val": 2}
NEW_SHARDS = {"train": 2, "val": 1}
FIRST_TRAIN_ID = "demo_000000"  # the first train id in sorted order, its image in VOC JPEGImages

# Runs the tool with convert_recover._reached replaced: STOP_AT=<stage> pauses there (printing a
# line the test waits for), TERM_AT=<stage> sends the process SIGTERM there and goes on;
# NO_EXCHANGE=1 makes renameat2 fail, as on a file system without RENAME_EXCHANGE (it replaces
# fcn8s_tf.files.exchange). KILL_AT_STEP=k SIGKILLs the process just before the k-th file system
# change that involves OUTPUT_DIR or an entry directly in it, whatever the code that makes it
# (os.unlink, rename, replace, link, rmdir; the swap).
WRAPPER = """
import os, signal, sys, time
if __name__ == "__main__":  # spawned workers import this file again, as __mp_main__
    from fcn8s_tf import files
    from fcn8s_tf.data.convert import recover as convert_recover
    kill_at = int(os.environ.get("KILL_AT_STEP", 0))
    if kill_at:
        output_dir, steps = os.path.realpath(os.environ["OUTPUT_DIR"]), [0]
        def involves(path):
            if not isinstance(path, (str, os.PathLike)):
                return False
            path = os.path.realpath(path)
            return output_dir in (path, os.path.dirname(path))
        def counted(function):
            def step(*args, **kwargs):
                if any(involves(arg) for arg in args[:2]):
                    steps[0] += 1
                    if steps[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                return function(*args, **kwargs)
            return step
        for name in ("unlink", "remove", "rename", "replace", "link", "rmdir"):
            setattr(os, name, counted(getattr(os, name)))
        files.exchange = counted(files.exchange)
    def reached(stage):
        if stage == os.environ.get("TERM_AT"):
            os.kill(os.getpid(), signal.SIGTERM)
        if stage == os.environ.get("STOP_AT"):
            print("STOPPED AT", stage, flush=True)
            time.sleep(600)
    convert_recover._reached = reached
    if os.environ.get("NO_EXCHANGE"):
        def no_exchange(a, b):
            raise OSError(22, "Invalid argument (RENAME_EXCHANGE switched off by the test)")
        files.exchange = no_exchange
    import runpy
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def demo_roots(tmp_path_factory):
    roots = demo_data.make_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=8, num_val=3,
                                        image_size=(16, 16))
    return roots["voc_root"], roots["sbd_root"]


@pytest.fixture
def roots(demo_roots, tmp_path):
    """A copy of the demo tree that a test may change."""
    voc, sbd = (tmp_path / "voc", tmp_path / "sbd")
    shutil.copytree(demo_roots[0], voc)
    shutil.copytree(demo_roots[1], sbd)
    return voc, sbd


def _convert(roots, output_dir, shards, **kwargs):
    kwargs.setdefault("progress_stream", None)
    return convert.convert(*roots, output_dir, num_shards=shards, num_workers=1, **kwargs)


def _add_foreign_entries(output_dir: Path) -> None:
    """Files the converter did not write: they must survive every replacement."""
    (output_dir / "notes.txt").write_text("mine")
    (output_dir / "train-00000-of-00001.tfrecord.bak").write_bytes(b"a backup")
    (output_dir / "coco-00000-of-00001.tfrecord").write_bytes(b"someone else's records")
    (output_dir / "extra").mkdir()
    (output_dir / "extra" / "inside.txt").write_text("a folder of mine")
    (output_dir / "link").symlink_to("notes.txt")


def _snapshot(directory: Path) -> dict:
    """Everything a reader can see in directory (the manifest without its creation time)."""
    result = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            result[entry.name] = ("symlink", os.readlink(entry))
        elif entry.is_dir():
            result[entry.name] = sorted(p.name for p in entry.iterdir())
        elif entry.name == convert_layout.MANIFEST_NAME:
            manifest = json.loads(entry.read_text())
            manifest.pop("created")
            result[entry.name] = manifest
        elif entry.name.startswith(("train-", "val-")) and entry.suffix == ".tfrecord":
            result[entry.name] = _examples(entry)
        else:
            result[entry.name] = entry.read_bytes()
    return result


def _examples(path: Path):
    """A shard's records as sorted (key, value) lists: the bytes of a serialised Example depend
    on the process (protobuf map order), its content does not. Not a TFRecord file: its bytes."""
    content = []
    try:
        for serialized in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature
            content.append(sorted((key, value.SerializeToString(deterministic=True))
                                  for key, value in feature.items()))
    except tf.errors.DataLossError:
        return path.read_bytes()
    return content


def _temporary_folders(output_dir: Path):
    return sorted(p.name for p in list(output_dir.glob(".tmp-make_tfrecords-*"))
                  + list(output_dir.parent.glob(".tmp-make_tfrecords-*")))


def _start_tool(tmp_path, args, start_new_session=False, **env):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    return subprocess.Popen(
        [sys.executable, str(wrapper), str(TOOL), *args], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=start_new_session, env=_env(**env))


def _env(**env):
    """The environment of a tool subprocess: this checkout's fcn8s_tf, whatever is installed."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path, **env)


def _tool_args(roots, output_dir, shards, num_workers=1, overwrite=True):
    return [f"--voc_root={roots[0]}", f"--sbd_root={roots[1]}", f"--output_dir={output_dir}",
            f"--train_shards={shards['train']}", f"--val_shards={shards['val']}",
            f"--num_workers={num_workers}"] + (["--overwrite"] if overwrite else [])


# ----------------------------------------------------------------------------------------------
# Replacing a set: whole or not at all.
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def old_and_new(roots, tmp_path):
    """output_dir with an old set and foreign entries; and what the new set looks like."""
    output_dir = tmp_path / "records"
    _convert(roots, output_dir, OLD_SHARDS)
    _add_foreign_entries(output_dir)
    reference = tmp_path / "reference"
    _convert(roots, reference, NEW_SHARDS)
    _add_foreign_entries(reference)
    return output_dir, _snapshot(output_dir), _snapshot(reference)


@pytest.mark.parametrize("mode, stage, expected", [
    ("exchange", "exchange", "old"),      # everything ready, just before the swap
    ("exchange", "exchanged", "new"),     # just after the swap
    ("exchange", "deleted_one", "new"),   # emptying the swapped-out old set
    ("journal", "journal", "journal"),    # fallback: the journal written, nothing moved yet
    ("journal", "moved_one", "journal"),  # fallback: one new shard moved in
])
def test_sigkill_during_the_commit_leaves_a_whole_set(tmp_path, roots, old_and_new, mode, stage,
                                                      expected):
    output_dir, old, new = old_and_new
    env = {"STOP_AT": stage, **({"NO_EXCHANGE": "1"} if mode == "journal" else {})}
    process = _start_tool(tmp_path, _tool_args(roots, output_dir, NEW_SHARDS), **env)
    wait_for_line(process, f"STOPPED AT {stage}")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    seen = _snapshot(output_dir)
    if expected == "old":
        # The old set whole. The foreign folder waits in the staging folder (it is moved in just
        # before the swap; files are hard-linked and never leave): the next run puts it back.
        assert seen == {k: v for k, v in old.items() if k != "extra"}
    elif expected == "new":
        assert seen == new
    else:
        # Mid-move in the fallback mode: readers refuse the folder, and say what to do.
        assert convert_layout.REPLACING_NAME in seen
        with pytest.raises(records.DataError, match="did not finish.*make_tfrecords.py"):
            records.list_files(convert_layout.shard_pattern(output_dir, "train"))
    for split in ("train", "val"):  # every reader of a complete set gets the manifest's counts
        if expected != "journal":
            manifest = seen[convert_layout.MANIFEST_NAME]["splits"][split]
            assert records.count_examples(convert_layout.shard_pattern(output_dir, split)) == \
                manifest["num_examples"]

    # The next run starts by finishing (or undoing) it.
    convert.recover(output_dir)
    assert _snapshot(output_dir) == (old if expected == "old" else new)
    assert _temporary_folders(output_dir) == []


@pytest.mark.parametrize("step", [1, 3])
def test_sigkill_at_any_change_to_output_dir_leaves_the_old_set_whole(tmp_path, roots, old_and_new,
                                                                      step):
    # The same property, by a trigger that knows nothing of the implementation: the k-th change
    # to output_dir (the version before the swap deleted the old manifest first, then shards).
    output_dir, old, _ = old_and_new
    process = _start_tool(tmp_path, _tool_args(roots, output_dir, NEW_SHARDS),
                          KILL_AT_STEP=str(step), OUTPUT_DIR=str(output_dir))
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    assert _snapshot(output_dir) == old


@pytest.mark.parametrize("mode", ["exchange", "journal"])
def test_overwrite_keeps_what_it_did_not_write(monkeypatch, roots, old_and_new, mode):
    output_dir, old, new = old_and_new
    if mode == "journal":
        monkeypatch.setattr(files, "exchange", _no_exchange)
    inode = os.stat(output_dir / "notes.txt").st_ino
    (output_dir / "val-00007-of-00009.tfrecord").write_bytes(b"a stray shard of mine")
    log = _Log()
    _convert(roots, output_dir, NEW_SHARDS, overwrite=True, progress_stream=log)
    seen = _snapshot(output_dir)
    assert seen.pop("val-00007-of-00009.tfrecord") == b"a stray shard of mine"
    assert seen == new
    assert os.stat(output_dir / "notes.txt").st_ino == inode  # the very same file
    assert _temporary_folders(output_dir) == []
    # A stray a split's pattern matches is pointed out.
    assert "val-00007-of-00009.tfrecord, which this conversion did not write" in log.text
    assert ("replaced in place" in log.text) == (mode == "journal")


def test_overwrite_refuses_to_replace_a_file_it_did_not_write(roots, tmp_path):
    output_dir = tmp_path / "records"
    output_dir.mkdir()
    (output_dir / "train-00001-of-00002.tfrecord").write_bytes(b"not the converter's")
    with pytest.raises(convert_layout.ConversionError,
                       match=r"holds train-00001-of-00002.tfrecord, which this conversion would "
                             r"write, but no manifest.json there lists"):
        _convert(roots, output_dir, NEW_SHARDS, overwrite=True)
    assert _snapshot(output_dir) == {"train-00001-of-00002.tfrecord": b"not the converter's"}
    assert _temporary_folders(output_dir) == []


def test_output_dir_that_is_a_symlink_stays_one(roots, tmp_path):
    real = tmp_path / "disk" / "records"
    real.mkdir(parents=True)
    link = tmp_path / "records"
    link.symlink_to(real)
    _convert(roots, link, OLD_SHARDS)
    _convert(roots, link, NEW_SHARDS, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert records.count_examples(convert_layout.shard_pattern(link, "train")) == 8
    assert sorted(p.name for p in real.glob("*.tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord"]
    assert _temporary_folders(real) == [] and _temporary_folders(link) == []


def test_a_second_converter_on_a_folder_in_use_fails(roots, tmp_path):
    output_dir = tmp_path / "records"
    output_dir.mkdir()
    held = files.lock(output_dir)  # what a running converter holds
    try:
        with pytest.raises(convert_layout.ConversionError,
                           match="another make_tfrecords is writing"):
            _convert(roots, output_dir, NEW_SHARDS)
    finally:
        files.unlock(held)
    assert _snapshot(output_dir) == {}


def test_leftovers_of_older_versions_are_removed(roots, old_and_new):
    # What the version before this one left when killed at its final move: the complete new set
    # in a hidden folder inside output_dir.
    output_dir, old, _ = old_and_new
    stranded = output_dir / ".tmp-make_tfrecords-abcd_123"
    stranded.mkdir()
    (stranded / "train-00000-of-00001.tfrecord").write_bytes(b"x" * 100)
    convert.recover(output_dir)
    assert _snapshot(output_dir) == old


def test_signal_during_the_commit_waits_for_it(tmp_path, roots, old_and_new):
    output_dir, _, new = old_and_new
    process = _start_tool(tmp_path, _tool_args(roots, output_dir, NEW_SHARDS),
                          TERM_AT="exchanged")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert _snapshot(output_dir) == new  # the swap was done, and its clean-up too
    assert _temporary_folders(output_dir) == []


# ----------------------------------------------------------------------------------------------
# Worker processes and signals.
# ----------------------------------------------------------------------------------------------

def _proc_stat(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # [state, ppid, ...]


def _descendants(pid):
    children = {}
    for name in os.listdir("/proc"):
        fields = _proc_stat(name) if name.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pids):
    return [pid for pid in pids if (_proc_stat(pid) or ["Z"])[0] != "Z"]


class _BlockingImage:
    """The first train image, replaced by a named pipe: the worker that reads it waits."""

    def __init__(self, voc_root: Path):
        self.path = voc_root / "JPEGImages" / f"{FIRST_TRAIN_ID}.jpg"
        self._data = self.path.read_bytes()
        self._fds = []
        self.path.unlink()
        os.mkfifo(self.path)

    def wait_for_reader(self, process, timeout=120):
        """Returns once a worker has opened the pipe (it then blocks reading it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:  # ENXIO until someone opens the pipe to read; keeping it open keeps them waiting
                self._fds.append(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:
                time.sleep(0.2)
        process.kill()
        pytest.fail(f"no worker opened {self.path}: {process.communicate()[1][-3000:]}")

    def restore(self):
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if not self.path.is_file():
            self.path.unlink()
            self.path.write_bytes(self._data)


@pytest.fixture
def blocking_image(roots):
    image = _BlockingImage(roots[0])
    yield image
    image.restore()


def _assert_all_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(pids) == [], "processes of the converter outlived it"


def test_sigkill_of_the_converter_kills_its_workers(tmp_path, roots, blocking_image):
    output_dir = tmp_path / "records"
    process = _start_tool(tmp_path, _tool_args(roots, output_dir, NEW_SHARDS, num_workers=2))
    blocking_image.wait_for_reader(process)
    workers = _descendants(process.pid)
    assert len(workers) >= 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    _assert_all_gone(workers)
    assert _temporary_folders(output_dir)  # what a SIGKILL cannot clean: the next run does
    blocking_image.restore()
    result = subprocess.run(
        [sys.executable, str(TOOL), *_tool_args(roots, output_dir, NEW_SHARDS)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr
    assert _temporary_folders(output_dir) == []
    assert records.count_examples(convert_layout.shard_pattern(output_dir, "train")) == 8


@pytest.mark.parametrize("how", ["SIGTERM to the converter", "Ctrl-C to its process group"])
def test_signal_stops_workers_and_removes_temporary_files(tmp_path, roots, old_and_new,
                                                          blocking_image, how):
    # (old_and_new before blocking_image: its conversion needs the image still readable)
    output_dir, old, _ = old_and_new
    ctrl_c = how.startswith("Ctrl-C")
    process = _start_tool(tmp_path, _tool_args(roots, output_dir, NEW_SHARDS, num_workers=2),
                          start_new_session=ctrl_c)
    blocking_image.wait_for_reader(process)
    workers = _descendants(process.pid)
    if ctrl_c:  # what a terminal does: every process of the foreground group gets SIGINT
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    signum = signal.SIGINT if ctrl_c else signal.SIGTERM
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1].startswith(
        f"make_tfrecords: interrupted by {signum.name}")
    assert "Traceback" not in stderr  # not from the converter, not from a worker
    _assert_all_gone(workers)
    assert _snapshot(output_dir) == old
    assert _temporary_folders(output_dir) == []


# ----------------------------------------------------------------------------------------------
# Folders that cannot be written: one line naming the path, exit code 1.
# ----------------------------------------------------------------------------------------------

def _unprivileged():
    """A command prefix that takes away root's right to write anywhere (for CI that runs as
    root); nothing for other users."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root, and no setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.parametrize("case", ["read-only folder", "in a read-only folder", "under a file"])
def test_output_dir_that_cannot_be_written(tmp_path, demo_roots, case):
    parent = tmp_path / "parent"
    parent.mkdir()
    output_dir = {"read-only folder": parent, "in a read-only folder": parent / "records",
                  "under a file": parent / "file" / "records"}[case]
    if case == "under a file":
        (parent / "file").write_text("")
    else:
        parent.chmod(0o555)
    try:
        result = subprocess.run(
            _unprivileged() + [sys.executable, str(TOOL), f"--voc_root={demo_roots[0]}",
                               f"--sbd_root={demo_roots[1]}", f"--output_dir={output_dir}",
                               "--num_workers=1"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, env=_env())
    finally:
        parent.chmod(0o755)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_tfrecords: error: ")
    assert f"--output_dir={output_dir}" in lines[0]
    assert sorted(os.listdir(parent)) == ([] if case != "under a file" else ["file"])


# ----------------------------------------------------------------------------------------------

def _no_exchange(a, b):
    raise OSError(22, "Invalid argument (RENAME_EXCHANGE switched off by the test)")


class _Log:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass
