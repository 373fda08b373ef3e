"""Converts PASCAL VOC 2012 (+ SBD) into sharded TFRecords and a manifest.json.

    python tools/make_tfrecords.py --voc_root=.../VOCdevkit/VOC2012 \
        --sbd_root=.../benchmark_RELEASE/dataset --output_dir=data/tfrecords

The conversion itself lives in fcn8s_tf/convert.py; this file only reads flags.
"""

import os
import sys

from absl import app, flags

from fcn8s_tf import convert

FLAGS = flags.FLAGS
flags.DEFINE_string("voc_root", None, "The VOCdevkit/VOC2012 folder (JPEGImages/, "
                    "SegmentationClass/, ImageSets/Segmentation/{train,val}.txt).", required=True)
flags.DEFINE_string("sbd_root", None, "SBD's benchmark_RELEASE/dataset folder (img/, cls/, "
                    "train.txt, val.txt). Without it, train is VOC2012 seg train alone.")
flags.DEFINE_string("output_dir", None, "Where the shards and manifest.json go.", required=True)
flags.DEFINE_integer("train_shards", convert.DEFAULT_NUM_SHARDS["train"], "Train shards.",
                     lower_bound=1)
flags.DEFINE_integer("val_shards", convert.DEFAULT_NUM_SHARDS["val"], "Val shards.",
                     lower_bound=1)
flags.DEFINE_integer("num_workers", os.cpu_count() or 1,
                     "Processes that decode, check and encode examples; 1 = in-process.",
                     lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Replace records and manifest already in --output_dir.")


def main(argv):
    del argv  # unused
    try:
        manifest = convert.convert(
            FLAGS.voc_root, FLAGS.sbd_root, FLAGS.output_dir,
            num_shards={"train": FLAGS.train_shards, "val": FLAGS.val_shards},
            num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite)
    except convert.ConversionError as e:
        print(f"make_tfrecords: error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{split} {info['num_examples']}"
                       for split, info in manifest["splits"].items())
    print(f"Wrote {counts} examples to {FLAGS.output_dir} (manifest.json).")
    return 0


if __name__ == "__main__":
    app.run(main)
