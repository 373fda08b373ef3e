"""Shared fixtures."""

import fcntl
import os
import shutil
from pathlib import Path

import pytest

# ../shared/voc_sample beside the repository: real VOC 2012 / SBD files (see its SOURCES.md).
VOC_SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "voc_sample"


@pytest.fixture(scope="session")
def voc_sample_dir() -> Path:
    """The real VOC/SBD sample files; skips the test in a clone that lacks ../shared."""
    if not (VOC_SAMPLE_DIR / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"needs the real VOC/SBD sample files at {VOC_SAMPLE_DIR} "
                    "(../shared/voc_sample beside the repository; present in CI, absent in a "
                    "user's clone)")
    return VOC_SAMPLE_DIR


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> Path:
    """One tiny trained run (1 step, 3 classes, fc 16, float32) with its export, built once per
    test session for the tests that only need *a* trained workdir. Treat it as read-only (export
    elsewhere with --export_dir): a test that changes a run trains its own.

    One step at a large learning rate moves the zero-initialised score layers far enough for the
    answers to vary from pixel to pixel (a constant answer would hide a wrong restore); a second
    step saturates them into one. Under pytest-xdist (`make test`) the workers share it: the first
    to ask trains it under a lock, the others wait and reuse it.
    """
    from fcn8s_tf.training import loop as train_lib
    from test_train import tiny_config  # pytest puts tests/ on sys.path

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    target, done = root / "trained_workdir", root / "trained_workdir.done"
    with open(root / "trained_workdir.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this worker has it or has made it
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # a worker that died half-way
            target.mkdir()
            config = tiny_config(target, precision="float32", train_steps=1,
                                 learning_rate=0.05, eval_every=0)
            train_lib.train(config)
            done.touch()
    return target / "run"
