"""Helpers the test modules share (imported as `helpers`: pytest puts tests/ on sys.path).

Fixtures live in conftest.py; plain functions and constants here, each defined once.
"""

import io
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

# The repository root: the working directory of every CLI the tests run.
REPO = Path(__file__).resolve().parents[1]


def run_python(*args: str, cwd=REPO, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python <args>` in the repository (a CLI as a user runs it), its output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def free_port() -> int:
    """A local TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode_image(array: np.ndarray, image_format: str, **options) -> bytes:
    """`array` as an encoded image file (PNG, JPEG, GIF, BMP ...), as a user's file would be."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def left_behind(output_dir: Path) -> List[str]:
    """Everything in a converter's output_dir (hidden temporary folders included), then its
    temporary folders beside it as "../<name>"; [] when there is nothing."""
    inside = sorted(p.name for p in output_dir.iterdir()) if output_dir.exists() else []
    beside = sorted(f"../{p.name}" for p in output_dir.parent.glob(".tmp-make_tfrecords-*"))
    return inside + beside


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float = 240) -> List[str]:
    """Reads a process's stdout (text) until a line contains `needle`; returns the lines read.

    Fails the test, with the output so far, when the process ends or `timeout` passes first: a
    timer kills the process then, so that a test never hangs on it. Plain blocking reads, not
    select(): lines already in the pipe's read buffer are invisible to select.
    """
    lines = []
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        for line in iter(process.stdout.readline, ""):
            lines.append(line)
            if needle in line:
                return lines
    finally:
        timer.cancel()
    process.kill()
    stderr = process.stderr.read()[-3000:] if process.stderr else ""
    raise AssertionError(f"{needle!r} not seen (the process ended, or {timeout} s passed); "
                         f"output:\n{''.join(lines)[-3000:]}\n{stderr}")
