"""python -m fcn8s_tf.export: a training workdir -> a SavedModel for TF Serving.

    python -m fcn8s_tf.export --workdir=runs/voc [--export_dir=runs/voc/export] [--version=N] \
        [--max_image_pixels=4194304] [--max_output_bytes=536870912] [--precision=auto]

Flags and main only: the export is written by fcn8s_tf/serving/export.py.
"""

from absl import flags
import tensorflow as tf

from fcn8s_tf import cli
from fcn8s_tf import precision as precision_lib
from fcn8s_tf.serving import budget as serving_budget
from fcn8s_tf.serving import export as export_lib
from fcn8s_tf.serving import loader
from fcn8s_tf.model import run_dir


PROG = "fcn8s_tf.export"


def main(argv):
    cli.no_positional_arguments(argv)
    FLAGS = flags.FLAGS
    export_base = FLAGS.export_dir or run_dir.path(FLAGS.workdir, run_dir.EXPORT_DIR)
    try:
        run = loader.load(FLAGS.workdir, kinds=(loader.WORKDIR,))
        path = export_lib.export_saved_model(run.keras_model, export_base, FLAGS.version,
                                             model_kwargs=run.model_kwargs,
                                             precision=FLAGS.precision,
                                             max_image_pixels=FLAGS.max_image_pixels,
                                             max_output_bytes=FLAGS.max_output_bytes,
                                             classes=run.classes)
    except (FileExistsError, NotADirectoryError, PermissionError, ValueError) as e:
        cli.fail(PROG, e)
    except tf.errors.OpError as e:  # e.g. an --export_dir TensorFlow cannot write
        cli.fail(PROG, f"{type(e).__name__}: {e.message}")
    print(path)


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, so importing defines none."""
    flags.DEFINE_string("workdir", None, "Training run directory (model_config.json, "
                        "checkpoints/).", required=True)
    flags.DEFINE_string("export_dir", "", "Export base directory; default <workdir>/export.")
    flags.DEFINE_integer("version", None, "Numeric version; default: one more than the highest.")
    flags.DEFINE_integer("max_image_pixels", serving_budget.DEFAULT_MAX_IMAGE_PIXELS,
                         "Serving budget per image: an image whose padded area exceeds that of a "
                         "square of this many pixels is downscaled at serve time; one of more than "
                         "4x this many pixels is refused.", lower_bound=1)
    flags.DEFINE_integer("max_output_bytes", serving_budget.DEFAULT_MAX_OUTPUT_BYTES,
                         "Serving budget per request: a request whose answer (labels, plus "
                         "probabilities where asked for) would take more bytes is refused.",
                         lower_bound=1)
    flags.DEFINE_enum("precision", "auto", list(precision_lib.EXPORT_PRECISIONS),
                      "The dtype the served net computes in. auto (default): bfloat16 where this "
                      "machine runs bf16 natively (Ampere+ GPUs, AMX/AVX512_BF16 CPUs), else "
                      "float32; export on the kind of machine that will serve, or say which.")


if __name__ == "__main__":
    cli.run(define_flags, main)
