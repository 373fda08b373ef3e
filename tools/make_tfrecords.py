"""Converts PASCAL VOC 2012 (+ SBD) into sharded TFRecords and a manifest.json.

    python tools/make_tfrecords.py --voc_root=.../VOCdevkit/VOC2012 \
        --sbd_root=.../benchmark_RELEASE/dataset --output_dir=data/tfrecords

The conversion itself lives in fcn8s_tf/convert.py; this file only reads flags and decides how the
process meets signals: SIGTERM (what `kill`, job schedulers and container runtimes send) stops the
conversion like Ctrl-C does, with the workers stopped and the temporary files removed.
"""

import signal

if __name__ == "__mp_main__":
    # A worker process of the converter ('spawn' imports this script again under that name).
    # Ctrl-C reaches every process of the terminal's group; the parent handles it and stops the
    # workers, so a worker ignores it from its first line on, not only once it is set up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

import os  # noqa: E402 (after the line above, to keep the window before it short)
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from fcn8s_tf import convert  # noqa: E402

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
flags.DEFINE_bool("overwrite", False, "Replace the records and manifest that an earlier "
                  "conversion wrote in --output_dir (other files there stay).")


def _raise_interrupted(signum, frame):
    del frame  # unused
    raise convert.Interrupted(signum)


def main(argv):
    del argv  # unused
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        manifest = convert.convert(
            FLAGS.voc_root, FLAGS.sbd_root, FLAGS.output_dir,
            num_shards={"train": FLAGS.train_shards, "val": FLAGS.val_shards},
            num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite)
    except convert.ConversionError as e:
        print(f"make_tfrecords: error: {e}", file=sys.stderr)
        return 1
    except (convert.Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"make_tfrecords: interrupted by {signal.Signals(signum).name}: workers stopped, "
              f"temporary files removed; {FLAGS.output_dir} holds no partial set.",
              file=sys.stderr)
        return 128 + signum
    counts = ", ".join(f"{split} {info['num_examples']}"
                       for split, info in manifest["splits"].items())
    print(f"Wrote {counts} examples to {FLAGS.output_dir} (manifest.json).")
    return 0


if __name__ == "__main__":
    app.run(main)
