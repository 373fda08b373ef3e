"""Writes the synthetic demo dataset in the real VOC 2012 + SBD layout (fcn8s_tf/demo_data.py).

    python tools/make_demo_dataset.py --output_dir=data/demo/raw --seed=0

Then convert it like the real data:
    python tools/make_tfrecords.py --voc_root=data/demo/raw/VOCdevkit/VOC2012 \
        --sbd_root=data/demo/raw/benchmark_RELEASE/dataset --output_dir=data/demo/tfrecords
"""

import time

from absl import app, flags

from fcn8s_tf import demo_data

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where VOCdevkit/ and benchmark_RELEASE/ go.",
                    required=True)
flags.DEFINE_integer("seed", 0, "The only source of randomness: same seed, same files.")
flags.DEFINE_integer("num_train", 240, "Train ids (VOC and SBD together, after the split rule).",
                     lower_bound=4)
flags.DEFINE_integer("num_val", 48, "VOC2012 seg val ids.", lower_bound=1)
flags.DEFINE_list("image_size", ["160"], "Image size in pixels: one number (square) or H,W.")


def main(argv):
    del argv  # unused
    size = [int(v) for v in FLAGS.image_size]
    if len(size) not in (1, 2):
        raise app.UsageError(f"--image_size={','.join(FLAGS.image_size)}: give N or H,W.")
    image_size = (size[0], size[-1])
    start = time.monotonic()
    roots = demo_data.make_demo_dataset(FLAGS.output_dir, seed=FLAGS.seed,
                                        num_train=FLAGS.num_train, num_val=FLAGS.num_val,
                                        image_size=image_size)
    print(f"Wrote the demo dataset in {time.monotonic() - start:.1f} s:\n"
          f"  --voc_root={roots['voc_root']}\n  --sbd_root={roots['sbd_root']}")


if __name__ == "__main__":
    app.run(main)
