"""python -m fcn8s_tf.evaluate: score a model over a split of converted records.

    python -m fcn8s_tf.evaluate --model=runs/voc/export --data='data/tfrecords/val-*.tfrecord' \
        --output_dir=runs/voc/eval [--num_classes=21] [--confusion_png] [--save_predictions=20] \
        [--allow_class_mismatch]

--model is either a SavedModel (a version dir with saved_model.pb, or a TF Serving base dir whose
highest numeric version is used; its `serving_uint8` signature is called) or a training workdir
(`model_config.json` + `checkpoints/`: the FCN-8s is rebuilt and its newest checkpoint restored).

The model's classes (the export's `metadata` signature, the workdir's model_config.json) must be
the records' (the converter's manifest.json beside them): another count is refused, and so are
other names unless --allow_class_mismatch says that each id means the same class in both. Records
without a manifest are scored with the model's classes, unchecked, after a warning.

Flags and main only: the loop is fcn8s_tf/evaluation/evaluator.py's (training calls the same
`evaluate()`), the pictures fcn8s_tf/render.py's. Writes
`<output_dir>/metrics.json`, and optionally `confusion_matrix.png` and coloured predictions
`predictions/<id>.png` (palette PNGs: values are class ids, colours the VOC palette).
"""

import os

from absl import flags
from absl import logging
import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf import cli
from fcn8s_tf import files
from fcn8s_tf import render
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data import records
from fcn8s_tf.evaluation import evaluator


PROG = "fcn8s_tf.evaluate"


def main(argv):
    cli.no_positional_arguments(argv)
    FLAGS = flags.FLAGS
    try:
        records.list_files(FLAGS.data)  # a bad pattern or a broken file fails before loading
        found = records.read_classes(FLAGS.data)  # the converter's manifest beside the records
        data_classes = None if found is None else class_info.ClassInfo.from_json(found)
        predict_fn, loaded, model_classes = evaluator.load_predict_fn(FLAGS.model)
        if (model_classes is not None and FLAGS.num_classes is not None
                and FLAGS.num_classes != model_classes.num_classes):
            raise ValueError(f"--num_classes={FLAGS.num_classes} but {FLAGS.model} predicts "
                             f"{model_classes.num_classes} classes (leave --num_classes out to "
                             "use the model's)")
        if data_classes is None:
            logging.warning("--data=%s: no manifest.json with classes beside the records, so "
                            "the model's classes are not checked against theirs", FLAGS.data)
        classes = evaluator.scoring_classes(model_classes, data_classes,
                                            allow_class_mismatch=FLAGS.allow_class_mismatch,
                                            model_name=f"--model={FLAGS.model}",
                                            data_name=f"the records of --data={FLAGS.data}")
        if (classes is not None and FLAGS.num_classes is not None
                and FLAGS.num_classes != classes.num_classes):
            raise ValueError(f"--num_classes={FLAGS.num_classes} but the manifest of "
                             f"--data={FLAGS.data} lists {classes.num_classes} classes (leave "
                             "--num_classes out to use them)")
    except (FileNotFoundError, ValueError, records.DataError) as e:
        cli.fail(PROG, e)
    classes = classes or class_info.ClassInfo.default(FLAGS.num_classes or class_info.NUM_CLASSES)
    num_classes = classes.num_classes
    dataset = input_pipeline.eval_dataset(FLAGS.data, num_classes=num_classes)
    print(f"Evaluating {loaded} on {FLAGS.data}", flush=True)

    hooks = []
    if FLAGS.save_predictions:
        hooks.append(evaluator.save_predictions_hook(os.path.join(FLAGS.output_dir, "predictions"),
                                                     FLAGS.save_predictions, classes.palette))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    try:
        with input_pipeline.data_errors_named(FLAGS.data):
            result, cm = evaluator.evaluate(predict_fn, dataset, num_classes, hooks=hooks,
                                            print_fn=lambda line: print(line, flush=True))
    except (ValueError, records.DataError) as e:  # wrong size, no image, a broken record
        cli.fail(PROG, e)
    except tf.errors.InvalidArgumentError as e:  # e.g. class ids >= --num_classes
        cli.fail(PROG, e.message)

    class_names = classes.names
    print(evaluator.format_table(result, class_names))
    print(f"{evaluator.summary_line(result)} | {result['num_images']} images")
    json_path = os.path.join(FLAGS.output_dir, "metrics.json")
    extra = {}
    if model_classes is not None and model_classes.names != class_names:  # the records' names
        extra["model_class_names"] = list(model_classes.names)
    files.write_json(json_path, evaluator.metrics_payload(
        result, class_names, model=FLAGS.model, model_loaded=loaded, data=FLAGS.data,
        confusion_matrix=cm, **extra))
    print(f"Wrote {json_path}")
    if FLAGS.confusion_png:
        png_path = os.path.join(FLAGS.output_dir, "confusion_matrix.png")
        render.confusion_matrix_png(cm, png_path, class_names)
        print(f"Wrote {png_path}")
    if FLAGS.save_predictions:
        print(f"Wrote {min(FLAGS.save_predictions, result['num_images'])} predictions in "
              f"{os.path.join(FLAGS.output_dir, 'predictions')}")


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, so importing defines none."""
    flags.DEFINE_string("model", None, "SavedModel (version or TF Serving base dir) or training "
                        "workdir (model_config.json + checkpoints/).", required=True)
    flags.DEFINE_string("data", None, "File pattern of the TFRecords to evaluate on.",
                        required=True)
    flags.DEFINE_string("output_dir", None, "Where metrics.json (and the PNGs) go.", required=True)
    flags.DEFINE_integer("num_classes", None, "Classes including background; default: the "
                         "model's (the records' where it does not say). Any other value is an "
                         "error.", lower_bound=1)
    flags.DEFINE_bool("confusion_png", False, "Also write confusion_matrix.png (row-normalised).")
    flags.DEFINE_bool("allow_class_mismatch", False, "Score a model whose class names differ "
                      "from those in the records' manifest.json, for as many classes: class id i "
                      "is taken to be the same class in both, and the records' names are "
                      "reported. Another class count is always refused.")
    flags.DEFINE_integer("save_predictions", 0, "Write coloured predictions of the first N "
                         "images to <output_dir>/predictions/<id>.png.", lower_bound=0)


if __name__ == "__main__":
    cli.run(define_flags, main)
