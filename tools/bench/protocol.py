"""How the parent runs measurements in child processes, and how a child reports back.

A child gets [[task, kwargs], ...] as JSON on its command line and runs the tasks in order. Each
task is a function `task(progress, **kwargs) -> dict`; `progress(**fields)` records partial results
at once, so that a child killed at its deadline still reports how far it got. The child rewrites
one JSON file (atomically) after every change; the parent reads it when the child ends, or when it
kills the child's whole process group at its time limit.

Each task's module is imported only in the child that runs it: a PyTorch child never imports
TensorFlow, and the parent, which only schedules children and writes the report, imports neither.
"""

import importlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
from typing import Callable, Dict, List, Tuple

from absl import logging

from fcn8s_tf import files

from bench.settings import REPO_DIR, TOOLS_DIR

# Task name -> "module.function" under bench/.
TASKS = {
    "environment": "host_tasks.environment",
    "ceiling": "host_tasks.ceiling",
    "pipeline": "host_tasks.pipeline",
    "augment": "host_tasks.augment",
    "converter": "host_tasks.converter",
    "model": "tf_tasks.model",
    "train": "tf_tasks.train",
    "kernels": "tf_tasks.kernels",
    "serve": "tf_tasks.serve",
    "tf_forward": "tf_tasks.forward",
    "torch": "torch_tasks.torch_step_and_forward",
}

# The child's command line: `python -c` rather than a file as __main__, because convert() starts
# its workers with 'spawn', which re-imports a __main__ file in every worker.
_CHILD_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); from bench import protocol; "
                    "protocol.child_main(sys.argv[2], sys.argv[3])")


def short_error(error: BaseException) -> str:
    """One line naming the exception: its type and the last non-empty line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:400] if lines else ''}".rstrip(": ")


def _task_function(name: str):
    module, function = TASKS[name].rsplit(".", 1)
    return getattr(importlib.import_module(f"bench.{module}"), function)


def child_main(tasks_json: str, result_path: str) -> None:
    """Runs [[task, kwargs], ...] in order, rewriting result_path after every change."""
    results = []
    for name, kwargs in json.loads(tasks_json):
        entry = {"task": name, "status": "running"}
        results.append(entry)

        def progress(_entry=entry, **fields):
            _entry.update(fields)
            files.write_json(result_path, results)

        progress()
        try:
            entry.update(_task_function(name)(progress, **kwargs))
            entry["status"] = "done"
        except Exception as e:  # pylint: disable=broad-except  (recorded, e.g. an XLA failure)
            traceback.print_exc()
            entry.update(status="failed", error=short_error(e))
        # Peak of the whole child so far: per task when a child runs one task.
        entry["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        files.write_json(result_path, results)


def ok(entry) -> bool:
    """Whether a task's entry is a finished measurement."""
    return bool(entry) and entry.get("status") == "done" and not entry.get("error")


def log_result(label: str, entry: Dict, summary: Callable[[Dict], str]) -> None:
    """Logs a task's error (or why it was skipped) as a warning, or summary(entry) as info."""
    if entry.get("error") or entry.get("skipped"):
        logging.warning("%s: %s", label, entry.get("error") or entry["skipped"])
    else:
        logging.info("%s: %s", label, summary(entry))


class ChildRunner:
    """Starts child processes within the run's time budget and collects their results."""

    def __init__(self, time_budget_s: float, tmp_dir: str):
        self.time_budget_s = time_budget_s
        self.tmp_dir = tmp_dir
        self.start = time.time()
        self.count = 0

    def remaining_s(self) -> float:
        return self.time_budget_s - (time.time() - self.start)

    def run(self, tasks: List[Tuple[str, Dict]], timeout_s: float) -> List[Dict]:
        """Runs tasks in one child; returns one result per task (with "error" when it failed)."""
        self.count += 1
        result_path = os.path.join(self.tmp_dir, f"child{self.count}.json")
        log_path = os.path.join(self.tmp_dir, f"child{self.count}.log")
        command = [sys.executable, "-c", _CHILD_BOOTSTRAP, TOOLS_DIR, json.dumps(tasks),
                   result_path]
        load = os.getloadavg()[0]
        start = time.time()
        returncode, timed_out = _run_child(command, log_path, timeout_s)
        wall_s = time.time() - start
        results = []
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as f:
                results = json.load(f)
        for i, (name, _) in enumerate(tasks):
            if i == len(results):
                results.append({"task": name, "status": "not started"})
            entry = results[i]
            entry.update(child_wall_s=wall_s, load_average_1min_before=load)
            if entry["status"] in ("done", "failed"):
                continue
            if timed_out:
                entry["error"] = f"stopped after {wall_s:.0f} s (time limit {timeout_s:.0f} s)"
                entry["timed_out"] = True
            else:
                entry["error"] = (f"child exited with status {returncode}: "
                                  f"{_log_detail(log_path)[:400]}")
            entry["status"] = "failed"
        return results[:len(tasks)]


def _run_child(command: List[str], log_path: str, timeout_s: float) -> Tuple[int, bool]:
    """(exit status, whether it was killed at timeout_s) of command, its output in log_path."""
    with open(log_path, "w", encoding="utf-8") as log:
        # A session of its own, so that a timeout ends the child's workers too.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_DIR,
                                   start_new_session=True)
        try:
            process.wait(timeout=max(timeout_s, 1.0))
            return process.returncode, False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return process.returncode, True


def _log_detail(log_path: str) -> str:
    """The last line of a child's log that names an error, else its last line."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = [line.rstrip() for line in f.readlines()[-200:] if line.strip()]
    return next((line for line in reversed(tail) if re.search(r"Error|error|Killed|Abort", line)),
                tail[-1] if tail else "no output")
