"""Measures the host input pipeline (images/s) and the augmentation's cost (ms per batch).

    python tools/bench_pipeline.py                      # the 30 VOC sample pairs, repeated
    python tools/bench_pipeline.py --num_records=600 --batch_size=16 --num_batches=60

The pipeline figure is decode + resize + batch through input_pipeline.train_dataset, read from
records that repeat the real sample files (JPEG bytes unchanged, label re-encoded as an "L" PNG, as
the converter writes them). The augmentation figure is augment.augment_batch inside a tf.function,
on this machine's default device. The measuring functions are importable for other tools.
"""

import os
import tempfile
import time
from typing import Optional, Tuple

from absl import app, flags, logging
import numpy as np
from PIL import Image
import tensorflow as tf

from fcn8s_tf import augment, input_pipeline, records

_DEFAULT_VOC_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                 "voc_sample", "VOCdevkit", "VOC2012")


def write_sample_records(voc_root: str, output_dir: str, num_records: int = 300,
                         num_shards: int = 4, split: str = "train") -> str:
    """Writes num_records records cycling through voc_root's JPEG/label pairs; returns the pattern.

    Args:
      voc_root: a VOC2012 directory with JPEGImages/ and SegmentationClass/.
      output_dir: where the shards go (created if missing).
      num_records: records to write in total (the pairs are repeated to reach it).
      num_shards: number of shard files, named like the converter's.
      split: shard name prefix.
    Returns:
      The glob matching the shards written.
    """
    label_dir = os.path.join(voc_root, "SegmentationClass")
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"no SegmentationClass directory under {voc_root!r}")
    ids = sorted(name[:-4] for name in os.listdir(label_dir) if name.endswith(".png"))
    if not ids:
        raise FileNotFoundError(f"no label PNGs in {label_dir!r}")
    pairs = []
    for example_id in ids:
        with open(os.path.join(voc_root, "JPEGImages", example_id + ".jpg"), "rb") as f:
            jpeg = f.read()
        label = np.asarray(Image.open(os.path.join(label_dir, example_id + ".png")))  # palette idx
        png = tf.io.encode_png(label[:, :, None]).numpy()  # single channel, like the converter
        pairs.append((jpeg, png, label.shape[0], label.shape[1], example_id))
    os.makedirs(output_dir, exist_ok=True)
    writers = [tf.io.TFRecordWriter(
        os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"))
        for shard in range(num_shards)]
    for index in range(num_records):
        jpeg, png, height, width, example_id = pairs[index % len(pairs)]
        writers[index % num_shards].write(
            records.encode_example(jpeg, png, height, width, f"{example_id}_{index}"))
    for writer in writers:
        writer.close()
    return os.path.join(output_dir, f"{split}-*-of-{num_shards:05d}.tfrecord")


def time_pipeline(file_pattern: str, batch_size: int = 16, num_batches: int = 50,
                  warmup_batches: int = 10,
                  base_size: Tuple[int, int] = input_pipeline.DEFAULT_BASE_SIZE,
                  deterministic: bool = True, seed: Optional[int] = 0) -> Tuple[float, float]:
    """(images per second, process CPU ms per image) of input_pipeline.train_dataset.

    The CPU figure is what the pipeline costs regardless of other load on the machine; divided into
    the number of free cores it bounds the rate (2 cores / 2.5 ms = 800 images/s).
    """
    dataset = input_pipeline.train_dataset(file_pattern, batch_size, base_size=base_size,
                                           seed=seed, deterministic=deterministic)
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        images, _ = next(iterator)
    images.numpy()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    num_images = num_batches * batch_size
    return num_images / elapsed, cpu / num_images * 1000.0


def measure_pipeline(file_pattern: str, batch_size: int = 16, num_batches: int = 50,
                     **kwargs) -> float:
    """Images per second delivered by input_pipeline.train_dataset after a warm-up.

    kwargs go to time_pipeline (warmup_batches, base_size, deterministic, seed).
    """
    return time_pipeline(file_pattern, batch_size, num_batches, **kwargs)[0]


def measure_augment(batch_size: int = 8, crop: Tuple[int, int] = (321, 321), iters: int = 20,
                    base_size: Tuple[int, int] = input_pipeline.DEFAULT_BASE_SIZE,
                    dtype: tf.DType = tf.float32, warmup_iters: int = 3) -> float:
    """Milliseconds per batch of augment.augment_batch inside a tf.function (default device)."""
    rng = tf.random.Generator.from_seed(0)
    images = tf.cast(rng.uniform((batch_size, base_size[0], base_size[1], 3), 0, 256, tf.int32),
                     tf.uint8)
    labels = tf.cast(rng.uniform((batch_size, base_size[0], base_size[1], 1), 0, 21, tf.int32),
                     tf.uint8)

    @tf.function
    def step(images, labels):
        out_images, out_labels = augment.augment_batch(images, labels, crop_size=crop, rng=rng,
                                                       dtype=dtype)
        # Reduce so the timing includes the work but fetching stays tiny.
        return tf.reduce_sum(tf.cast(out_images, tf.float32)), tf.reduce_sum(
            tf.cast(out_labels, tf.int32))

    for _ in range(warmup_iters):
        step(images, labels)[0].numpy()
    start = time.perf_counter()
    for _ in range(iters):
        result = step(images, labels)
    result[0].numpy()
    return (time.perf_counter() - start) / iters * 1000.0


_VOC_ROOT = flags.DEFINE_string("voc_root", _DEFAULT_VOC_ROOT,
                                "VOC2012 dir with JPEGImages/ and SegmentationClass/.")
_NUM_RECORDS = flags.DEFINE_integer("num_records", 300, "Records written (sample pairs repeated).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Shard files written.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Pipeline batch size.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 50, "Timed pipeline batches.")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 10, "Untimed pipeline batches first.")
_DETERMINISTIC = flags.DEFINE_boolean("deterministic", True, "Ordered parallel stages.")
_AUG_BATCH_SIZE = flags.DEFINE_integer("aug_batch_size", 8, "Augmentation batch size.")
_AUG_ITERS = flags.DEFINE_integer("aug_iters", 20, "Timed augmentation calls.")
_CROP = flags.DEFINE_integer("crop", 321, "Crop size (square) for augmentation and base size.")


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        pattern = write_sample_records(_VOC_ROOT.value, tmp, _NUM_RECORDS.value, _NUM_SHARDS.value)
        size = (_CROP.value, _CROP.value)
        rate, cpu_ms = time_pipeline(pattern, _BATCH_SIZE.value, _NUM_BATCHES.value,
                                     _WARMUP_BATCHES.value, base_size=size,
                                     deterministic=_DETERMINISTIC.value)
    cores = len(os.sched_getaffinity(0))
    logging.info("pipeline: %.0f images/s, %.2f CPU ms per image (%d cores: at most %.0f images/s "
                 "when idle); batch %d, %d batches, base %s, deterministic=%s",
                 rate, cpu_ms, cores, cores * 1000.0 / cpu_ms, _BATCH_SIZE.value,
                 _NUM_BATCHES.value, size, _DETERMINISTIC.value)
    ms = measure_augment(_AUG_BATCH_SIZE.value, size, _AUG_ITERS.value, base_size=size)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    logging.info("augment: %.1f ms per batch of %d at %s on %s", ms, _AUG_BATCH_SIZE.value, size,
                 device)
    print(f"pipeline_images_per_s={rate:.0f} pipeline_cpu_ms_per_image={cpu_ms:.2f} "
          f"augment_ms_per_batch={ms:.1f} ({device})")


if __name__ == "__main__":
    app.run(main)
