r"""Benchmarks fcn8s_tf on this machine: its matmul ceiling, the host stages, training, inference,
and a Caffe-faithful PyTorch FCN-8s side by side (tools/bench/__init__.py says what and how).

    .venv/bin/python tools/benchmark.py --output=BENCHMARKS.md --json_output=benchmarks.json
    .venv/bin/python tools/benchmark.py --quick --output=/tmp/bench.md --json_output=/tmp/bench.json

(`make bench` runs the first line; the test suite runs the second, so the tool cannot rot.) The
PyTorch rows need `.venv/bin/pip install -r requirements/bench-torch.txt`; without it they are
skipped and the report says so. Sample images: synthetic ones at VOC sizes unless
--sample_voc_root names a real VOC2012 folder.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging

from fcn8s_tf import cli
from fcn8s_tf import files

from bench import protocol
from bench import report
from bench import run
from bench import sweep
from bench.settings import POLICY_DTYPE, REPO_DIR, settings_for

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, as in every CLI."""
    flags.DEFINE_string("output", None, "Markdown report to write (e.g. BENCHMARKS.md).")
    flags.DEFINE_string("json_output", None, "JSON results to write.")
    flags.DEFINE_bool("quick", False, "CI-sized smoke run: tiny images and net, float32 "
                      "only, one timed repeat; well under the full run's minutes.")
    flags.DEFINE_list("batch_sizes", None, "Training batch sizes; every configuration "
                      "runs at the first, the others run the setting fastest there "
                      "(float32's where bf16 is emulated). Default 1,4 (quick: 1).")
    flags.DEFINE_list("precisions", None, "Keras policies to train with. Default "
                      "float32,mixed_bfloat16, plus mixed_float16 on a GPU (quick: "
                      "float32).")
    flags.DEFINE_integer("repeats", None, "Timed calls per measurement, after an untimed "
                         "first call; the median is reported. Default 2 (quick: 1).",
                         lower_bound=1)
    flags.DEFINE_enum("matrix", "sweep", ["sweep", "full"], "Training configurations: "
                      "'sweep' = float32 built for fixed and for dynamic input; on the "
                      "input kept, XLA for every precision; the other precisions without "
                      "XLA; the larger batches (the other precisions last where bf16 is "
                      "emulated). 'full' = every combination (hours on a small CPU).")
    flags.DEFINE_integer("time_budget_s", None, "Whole-run budget in seconds; "
                         "default 540 (quick: 600, effectively none).", lower_bound=60)
    flags.DEFINE_string("sample_voc_root", "", "A real VOC2012 folder with "
                        "JPEGImages/ and SegmentationClass/ whose pairs feed the "
                        "converter, pipeline and inference benchmarks. Empty: "
                        "synthetic images at VOC sizes (tools/bench/data.py).")
    flags.DEFINE_bool("pytorch", True, "Measure the PyTorch FCN-8s side by side (skipped "
                      "with a message when torch is not installed).")


def _settings():
    """Settings from the flags, rejecting values the flag parser cannot check alone."""
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes] if FLAGS.batch_sizes else None
    except ValueError:
        raise app.UsageError(f"--batch_sizes must be integers, got {FLAGS.batch_sizes}")
    if batch_sizes is not None and (not batch_sizes or min(batch_sizes) < 1):
        raise app.UsageError(f"--batch_sizes must be >= 1, got {batch_sizes}")
    if FLAGS.precisions and set(FLAGS.precisions) - set(POLICY_DTYPE):
        raise app.UsageError(f"--precisions accepts {', '.join(POLICY_DTYPE)}; got "
                             f"{FLAGS.precisions}")
    voc_root = FLAGS.sample_voc_root and os.path.abspath(FLAGS.sample_voc_root)
    return settings_for(
        FLAGS.quick, voc_root=voc_root, batch_sizes=batch_sizes,
        precisions=FLAGS.precisions or None, repeats=FLAGS.repeats, matrix=FLAGS.matrix,
        time_budget_s=FLAGS.time_budget_s, pytorch=FLAGS.pytorch)


def _failed(results) -> list:
    """Measurements whose failure makes the run fail (XLA and bf16 failures are only reported)."""
    failed = [name for name in ("converter", "pipeline", "augment")
              if not protocol.ok(results.get(name))]
    if not protocol.ok(results["inference"]["exports"]["float32"]):
        failed.append("inference float32")
    return failed + [sweep.train_label(e) for e in results["train"]
                     if e["precision"] == "float32" and not e["xla"]
                     and e.get("status") == "failed"]


def main(argv):
    cli.no_positional_arguments(argv)
    if not FLAGS.output and not FLAGS.json_output:
        raise app.UsageError("Give --output (markdown) and/or --json_output.")
    settings = _settings()
    command = shlex.join([os.path.relpath(sys.executable) if sys.executable.startswith(
        REPO_DIR) else "python"] + sys.argv)
    logging.info("Settings: %s", settings)
    try:
        results = run.run_benchmarks(settings, command)
    except FileNotFoundError as e:
        cli.fail("benchmark", e)
    if FLAGS.json_output:
        files.write_json(FLAGS.json_output, results)
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            f.write(report.render_markdown(results))
    for t in results["targets"]:
        logging.info("target %s: measured %s, met %s", t["target"], t["measured"], t["met"])
    failed = _failed(results)
    if failed:
        logging.error("Measurements that failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    cli.run(define_flags, main)
