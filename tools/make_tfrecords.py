"""Converts a dataset into sharded TFRecords and a manifest.json.

PASCAL VOC 2012 + SBD (the paper's 10,582 train / 1,449 val ids):
    python tools/make_tfrecords.py --voc_root=.../VOCdevkit/VOC2012 \
        --sbd_root=.../benchmark_RELEASE/dataset --output_dir=data/tfrecords
One list's ids only, e.g. VOC2011 seg11valid (736 ids), into data/seg11valid/val-*.tfrecord:
    python tools/make_tfrecords.py --voc_root=.../VOCdevkit/VOC2012 --list=seg11valid.txt \
        --output_dir=data/seg11valid
Your own data: a folder of images, a folder of <id>.png masks, and a classes file:
    python tools/make_tfrecords.py --format=folders --images=DIR --masks=DIR \
        --classes=classes.txt --splits=train:0.9,val:0.1 --output_dir=data/mine

The conversion itself lives in fcn8s_tf/data/convert/; this file only reads flags and decides how
the process meets signals: SIGTERM (what `kill`, job schedulers and container runtimes send) stops
the conversion like Ctrl-C does, with the workers stopped and the temporary files removed.
"""

import signal

if __name__ == "__mp_main__":
    # A worker process of the converter ('spawn' imports this script again under that name).
    # Ctrl-C reaches every process of the terminal's group; the parent handles it and stops the
    # workers, so a worker ignores it from its first line on, not only once it is set up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

import os  # noqa: E402 (after the line above, to keep the window before it short)

from absl import flags  # noqa: E402

from fcn8s_tf import cli  # noqa: E402
from fcn8s_tf import signals  # noqa: E402
from fcn8s_tf.data.convert import convert  # noqa: E402
from fcn8s_tf.data.convert import folders as convert_folders  # noqa: E402
from fcn8s_tf.data.convert import layout as convert_layout  # noqa: E402

FLAGS = flags.FLAGS
PROG = "make_tfrecords"


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, as in every CLI."""
    flags.DEFINE_enum("format", "voc", ["voc", "folders"], "voc: PASCAL VOC 2012 (+ SBD) in their "
                      "own layouts. folders: --images, --masks and --classes.")
    # --format=voc
    flags.DEFINE_string("voc_root", None, "The VOCdevkit/VOC2012 folder (JPEGImages/, "
                        "SegmentationClass/, ImageSets/Segmentation/{train,val}.txt).")
    flags.DEFINE_string("sbd_root", None, "SBD's benchmark_RELEASE/dataset folder (img/, cls/, "
                        "train.txt, val.txt). Without it, train is VOC2012 seg train alone.")
    flags.DEFINE_string("list", None, "Convert only the ids this file lists (one a line, e.g. "
                        "seg11valid.txt), into the split --list_split; the split lists are not "
                        "read.")
    flags.DEFINE_string("list_split", "val", "The split --list's ids go to.")
    # --format=folders
    flags.DEFINE_string("images", None, "The folder of images, <id>.jpg/.png/... (JPEGs stored as "
                        "they are, others re-encoded losslessly as PNG).")
    flags.DEFINE_string("masks", None, "The folder of masks, <id>.png: class ids (single channel) "
                        "or class colours (RGB or palette) as in --classes.")
    flags.DEFINE_string("classes", None, "One class a line in id order: `name` or `name r g b`.")
    flags.DEFINE_string("splits", None, "split:fraction,... for a split seeded by --seed; default "
                        "train:0.9,val:0.1. Or give --train_list/--val_list.")
    flags.DEFINE_string("train_list", None, "The ids of the train split, one a line.")
    flags.DEFINE_string("val_list", None, "The ids of the val split, one a line.")
    flags.DEFINE_integer("seed", 0, "Seeds --splits: the same files and seed give the same split.")
    flags.DEFINE_integer("ignore_value", 255, "Void in single-channel masks (not a class id); the "
                         "records hold void as 255.", lower_bound=0, upper_bound=255)
    flags.DEFINE_string("ignore_color", None, "R,G,B: void in colour masks. Without it every "
                        "colour must be a class's.")
    # Both formats.
    flags.DEFINE_string("output_dir", None, "Where the shards and manifest.json go.", required=True)
    flags.DEFINE_integer("train_shards", convert.DEFAULT_NUM_SHARDS["train"], "Train shards.",
                         lower_bound=1)
    flags.DEFINE_integer("val_shards", convert.DEFAULT_NUM_SHARDS["val"], "Shards of val (and of "
                         "any split other than train).", lower_bound=1)
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1,
                         "Processes that decode, check and encode examples; 1 = in-process.",
                         lower_bound=1)
    flags.DEFINE_bool("overwrite", False, "Replace the records and manifest that an earlier "
                      "conversion wrote in --output_dir (other files there stay).")


_FORMAT_FLAGS = {"voc": ("voc_root", "sbd_root", "list", "list_split"),
                 "folders": ("images", "masks", "classes", "splits", "train_list", "val_list",
                             "seed", "ignore_value", "ignore_color")}
_REQUIRED = {"voc": ("voc_root",), "folders": ("images", "masks", "classes")}


def _check_format_flags() -> None:
    """Raises ConversionError for a flag of the other format, or a missing required one."""
    for other, names in _FORMAT_FLAGS.items():
        given = [f"--{name}" for name in names if other != FLAGS.format and FLAGS[name].present]
        if given:
            raise convert_layout.ConversionError(f"{', '.join(given)}: only with --format={other} "
                                          f"(this is --format={FLAGS.format}).")
    missing = [f"--{name}" for name in _REQUIRED[FLAGS.format] if FLAGS[name].value is None]
    if missing:
        raise convert_layout.ConversionError(f"--format={FLAGS.format} needs {', '.join(missing)}.")


def _convert() -> dict:
    _check_format_flags()
    common = dict(num_shards={"train": FLAGS.train_shards, "val": FLAGS.val_shards},
                  num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite)
    if FLAGS.format == "voc":
        return convert.convert(FLAGS.voc_root, FLAGS.sbd_root, FLAGS.output_dir,
                               list_file=FLAGS.list, list_split=FLAGS.list_split, **common)
    lists = {split: path for split, path in (("train", FLAGS.train_list),
                                             ("val", FLAGS.val_list)) if path}
    return convert.convert_folders(
        FLAGS.images, FLAGS.masks, FLAGS.classes, FLAGS.output_dir,
        splits=convert_folders.parse_splits(FLAGS.splits) if FLAGS.splits else None,
        lists=lists or None,
        seed=FLAGS.seed, ignore_value=FLAGS.ignore_value,
        ignore_color=(convert_folders.parse_colour(FLAGS.ignore_color, "--ignore_color")
                      if FLAGS.ignore_color else None), **common)


def main(argv):
    cli.no_positional_arguments(argv)
    try:
        with signals.raising():
            manifest = _convert()
    except convert_layout.ConversionError as e:
        cli.fail(PROG, e)
    except signals.Interrupted as e:
        cli.stopped(PROG, f"{e}: workers stopped, temporary files removed; {FLAGS.output_dir} "
                    "holds no partial set.", e.exit_code)
    counts = ", ".join(f"{split} {info['num_examples']}"
                       for split, info in manifest["splits"].items())
    print(f"Wrote {counts} examples to {FLAGS.output_dir} (manifest.json).")
    print(convert.summary(manifest))
    return 0


if __name__ == "__main__":
    cli.run(define_flags, main)
