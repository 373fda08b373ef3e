"""Writes a synthetic demo dataset (fcn8s_tf/data/demo_data.py): the VOC 2012 + SBD layout, or
folders.

    python tools/make_demo_dataset.py --output_dir=data/demo/raw --seed=0

Then convert it like the real data:
    python tools/make_tfrecords.py --voc_root=data/demo/raw/VOCdevkit/VOC2012 \
        --sbd_root=data/demo/raw/benchmark_RELEASE/dataset --output_dir=data/demo/tfrecords

Or a three-class dataset as a user of your own data has it (images/, masks/ in RGB, classes.txt):
    python tools/make_demo_dataset.py --format=folders --output_dir=data/shapes/raw
    python tools/make_tfrecords.py --format=folders --images=data/shapes/raw/images \
        --masks=data/shapes/raw/masks --classes=data/shapes/raw/classes.txt \
        --ignore_color=255,255,255 --output_dir=data/shapes/tfrecords
"""

import time

from absl import app, flags

from fcn8s_tf import cli
from fcn8s_tf.data import demo_data

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, as in every CLI."""
    flags.DEFINE_enum("format", "voc", ["voc", "folders"], "voc: VOCdevkit/ and benchmark_RELEASE/ "
                      "(4 classes of VOC's 21). folders: images/, masks/ (RGB) and classes.txt "
                      "(3 classes).")
    flags.DEFINE_string("output_dir", None, "Where the dataset goes.", required=True)
    flags.DEFINE_integer("seed", 0, "The only source of randomness: same seed, same files.")
    flags.DEFINE_integer("num_train", 240, "--format=voc: train ids (VOC and SBD together, after "
                         "the split rule).", lower_bound=4)
    flags.DEFINE_integer("num_val", 48, "--format=voc: VOC2012 seg val ids.", lower_bound=1)
    flags.DEFINE_integer("num_images", 240, "--format=folders: image/mask pairs (the converter "
                         "splits them).", lower_bound=2)
    flags.DEFINE_list("image_size", ["160"], "Image size in pixels: one number (square) or H,W.")


def main(argv):
    cli.no_positional_arguments(argv)
    size = [int(v) for v in FLAGS.image_size]
    if len(size) not in (1, 2):
        raise app.UsageError(f"--image_size={','.join(FLAGS.image_size)}: give N or H,W.")
    image_size = (size[0], size[-1])
    start = time.monotonic()
    if FLAGS.format == "folders":
        paths = demo_data.make_folders_dataset(FLAGS.output_dir, seed=FLAGS.seed,
                                               num_images=FLAGS.num_images, image_size=image_size)
        print(f"Wrote the demo dataset in {time.monotonic() - start:.1f} s:\n"
              f"  --images={paths['images']}\n  --masks={paths['masks']}\n"
              f"  --classes={paths['classes']}\n  --ignore_color=255,255,255")
        return
    roots = demo_data.make_demo_dataset(FLAGS.output_dir, seed=FLAGS.seed,
                                        num_train=FLAGS.num_train, num_val=FLAGS.num_val,
                                        image_size=image_size)
    print(f"Wrote the demo dataset in {time.monotonic() - start:.1f} s:\n"
          f"  --voc_root={roots['voc_root']}\n  --sbd_root={roots['sbd_root']}")


if __name__ == "__main__":
    cli.run(define_flags, main)
