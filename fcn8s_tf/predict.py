"""python -m fcn8s_tf.predict: images in, masks and overlays out, from a SavedModel or TF Serving.

    python -m fcn8s_tf.predict --model=runs/voc/export --output_dir=out cat.jpg dog.png
    python -m fcn8s_tf.predict --server=http://localhost:8501/v1/models/fcn8s --output_dir=out \
        --images='photos/*.jpg'

For each image, writes `<stem>_mask.png` (palette PNG, mode "P": pixel values are class ids, the
model's class colours colour them) and `<stem>_overlay.png` (50% image, 50% mask colour, with a
legend of the classes present below), and prints the classes found with their pixel fractions.
Every input keeps its own outputs: inputs whose stems are equal (ignoring case, as some file
systems do) are refused before anything is read or written, naming them and the output name; a
file given twice is segmented once.

Flags and main only: the clients and the request format are fcn8s_tf/serving/client.py's, the
pictures fcn8s_tf/render.py's.
"""

from absl import flags

from fcn8s_tf import cli
from fcn8s_tf.serving import client
from fcn8s_tf.serving import loader


PROG = "fcn8s_tf.predict"


def main(argv):  # positional arguments are images
    FLAGS = flags.FLAGS
    try:
        paths = client.collect_paths(argv[1:], FLAGS.images)
        if FLAGS.model:
            model = client.LocalModel(FLAGS.model)
        else:
            model = client.RestModel(FLAGS.server, timeout=FLAGS.timeout)
        results = client.predict_files(model, paths, FLAGS.output_dir)
    except (client.PredictError, loader.ModelLoadError) as e:
        cli.fail(PROG, e)
    print(f"Masks and overlays of {len(results)} image(s) in {FLAGS.output_dir}")


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, so importing defines none."""
    flags.DEFINE_string("model", None, "Local SavedModel: a version dir, or a TF Serving base dir "
                        "(<base>/<version>/; the highest version is used).")
    flags.DEFINE_string("server", None, "TF Serving REST endpoint of the model, e.g. "
                        "http://localhost:8501/v1/models/fcn8s (':predict' is appended).")
    flags.DEFINE_string("output_dir", None, "Where <stem>_mask.png and <stem>_overlay.png go; "
                        "two inputs with one stem (d1/x.jpg, d2/x.png) are refused.",
                        required=True)
    flags.DEFINE_string("images", None, "Glob of images, in addition to positional paths.")
    flags.DEFINE_float("timeout", 60.0, "Seconds to wait for the server per image.")
    flags.register_validator("timeout", lambda value: value > 0, message="--timeout must be > 0")
    flags.mark_flags_as_mutual_exclusive(["model", "server"], required=True)


if __name__ == "__main__":
    cli.run(define_flags, main)
