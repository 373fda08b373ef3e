"""Imports published FCN-8s weights (Caffe .caffemodel, or an .npz) into a workdir.

    python tools/import_weights.py --weights=fcn8s-heavy-pascal.caffemodel \
        --workdir=runs/fcn8s_caffe [--sha1=c449ea74dd7d83751d1357d6a8c323fcf4038962] [--overwrite]

The workdir then holds model_config.json, checkpoints/ and export/1 as a training run would:
`python -m fcn8s_tf.evaluate --model=runs/fcn8s_caffe/export ...` and `fcn8s_tf.predict` use it as
it is, and `python -m fcn8s_tf.train --init_from=runs/fcn8s_caffe ...` fine-tunes from it. The
reading and mapping live in fcn8s_tf/model/weights/, the writing in
fcn8s_tf/training/imported_run.py; this file only reads flags and decides how the process meets
signals: SIGTERM (what `kill`, job schedulers and container runtimes send) stops the import as
Ctrl-C does, with its temporary folder removed.
"""


from absl import app, flags

from fcn8s_tf import cli
from fcn8s_tf import signals
from fcn8s_tf.training import imported_run

FLAGS = flags.FLAGS
PROG = "import_weights"


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, as in every CLI."""
    flags.DEFINE_string("weights", None, "The .caffemodel (e.g. fcn8s-heavy-pascal.caffemodel) or "
                        ".npz (Chainer keys conv1_1/W, or PyTorch keys conv1_1.weight).",
                        required=True)
    flags.DEFINE_string("workdir", None, "Directory to create (model_config.json, checkpoints/, "
                        "export/).", required=True)
    flags.DEFINE_string("sha1", None, "Expected SHA-1 of --weights, checked before reading it.")
    flags.DEFINE_bool("overwrite", False, "Replace a run directory (one with model_config.json "
                      "and checkpoints/) at --workdir, only once the new one is complete. Any "
                      "other non-empty folder is refused.")
    flags.DEFINE_list("skip_scales", None, "pool4,pool3 skip scales, only for an .npz without "
                      "scale_pool4/scale_pool3 entries: 0.01,0.0001 for the at-once net, 1,1 for "
                      "the staged one. A .caffemodel carries its own.")


def main(argv):
    cli.no_positional_arguments(argv)
    skip_scales = None
    if FLAGS.skip_scales is not None:
        try:
            skip_scales = [float(v) for v in FLAGS.skip_scales]
        except ValueError:
            raise app.UsageError(f"--skip_scales must be two numbers pool4,pool3; got "
                                 f"{FLAGS.skip_scales}")
    try:
        with signals.raising():
            imported_run.import_weights(FLAGS.weights, FLAGS.workdir, sha1=FLAGS.sha1,
                                        overwrite=FLAGS.overwrite, skip_scales=skip_scales)
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as e:
        cli.fail(PROG, e)
    except signals.Interrupted as e:
        cli.stopped(PROG, f"{e}: temporary folder removed; --workdir={FLAGS.workdir} is "
                    "replaced whole or not at all.", e.exit_code)
    return 0


if __name__ == "__main__":
    cli.run(define_flags, main)
