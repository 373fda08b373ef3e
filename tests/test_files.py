"""fcn8s_tf/files.py: atomic files, strict JSON, the folder publisher, the flock and stale temps."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fcn8s_tf import files


def test_write_json_is_strict_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "metrics.json"  # the folder is created
    files.write_json(path, {"iou": np.float32(0.5), "nan": float("nan"), "per": np.arange(2)})
    assert json.loads(path.read_text()) == {"iou": 0.5, "nan": None, "per": [0, 1]}
    assert path.read_text().endswith("\n")
    assert os.listdir(path.parent) == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "config.json"
    files.write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        files.write_json(path, {"new": object()})  # not JSON: fails before the rename
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["config.json"]


def test_temporaries_are_named_for_their_target():
    name = files.temp_name("manifest.json")
    assert name.startswith(".") and files.is_temp_of(name, "manifest.json")
    assert not files.is_temp_of(name, "other.json")
    assert not files.is_temp_of("manifest.json", "manifest.json")


def test_publish_dir_puts_a_new_folder_in_place(tmp_path):
    new, target = tmp_path / "new", tmp_path / "target"
    new.mkdir()
    (new / "a").write_text("new")
    files.publish_dir(str(new), str(target))
    assert (target / "a").read_text() == "new" and not new.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two_renames"])
def test_publish_dir_replaces_an_existing_folder_whole(monkeypatch, tmp_path, exchange):
    if not exchange:
        def no_exchange(a, b):
            raise OSError(22, "switched off by the test")
        monkeypatch.setattr(files, "exchange", no_exchange)
    new, target, aside = tmp_path / "new", tmp_path / "target", tmp_path / "aside"
    for folder, text in ((new, "new"), (target, "old")):
        folder.mkdir()
        (folder / "a").write_text(text)
    with pytest.raises(FileExistsError, match="already exists"):
        files.publish_dir(str(new), str(target))  # replacing needs somewhere for the old one
    files.publish_dir(str(new), str(target), aside=str(aside))
    assert (target / "a").read_text() == "new"
    old = new if exchange else aside  # where the replaced folder went, for the caller to delete
    assert (old / "a").read_text() == "old"


def test_lock_excludes_a_second_holder_until_released(tmp_path):
    fd = files.lock(tmp_path)
    assert fd is not None
    with pytest.raises(BlockingIOError):
        files.lock(tmp_path)  # another descriptor, even in the same process
    files.unlock(fd)
    files.unlock(files.lock(tmp_path))


def test_a_killed_holder_leaves_no_lock(tmp_path):
    # The kernel releases a flock when its process dies, however it dies: no stale lock to judge.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fcn8s_tf import files; "
         f"files.lock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError):
            files.lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    files.unlock(files.lock(tmp_path))


def test_remove_stale_temp_dirs_spares_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    names = [f".tmp-1-p{dead_pid}-1", f".tmp-2-p{os.getpid()}-1", "ckpt-3_temp", "keep"]
    for name in names:
        (tmp_path / name).mkdir()
    removed = files.remove_stale_temp_dirs(
        str(tmp_path), lambda name: name.startswith(".tmp-") or name.endswith("_temp"))
    assert sorted(os.path.basename(p) for p in removed) == sorted([names[0], "ckpt-3_temp"])
    assert sorted(os.listdir(tmp_path)) == sorted([names[1], "keep"])
