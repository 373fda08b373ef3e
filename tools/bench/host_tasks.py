"""Child tasks for the machine and the host stages: environment, matmul ceiling, input pipeline,
augmentation, converter. Each is `task(progress, **kwargs) -> dict` (protocol.py)."""

import math
import os
import resource
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import keras
import numpy as np
from PIL import Image
import tensorflow as tf

from fcn8s_tf.data import augment as augment_lib
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data import records
from fcn8s_tf.data.convert import convert
from fcn8s_tf.data.convert import examples as convert_examples
from fcn8s_tf.data.convert import layout as convert_layout

from bench import data
from bench.settings import VOC_SBD_IMAGES


def environment(progress) -> Dict:
    """TensorFlow and Keras versions and the accelerators TensorFlow sees."""
    del progress
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"name": details.get("device_name", device.name),
                     "compute_capability": list(details.get("compute_capability", ()))})
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "gpus": gpus,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)")}


# ------------------------------------------------------------------------------ matmul ceiling --
def _matmul_chain(a, b) -> Callable[[int], Tuple[float, float]]:
    """timed(k) -> (wall s, CPU s) of x = a, then k times x = x @ b, inside one tf.function."""

    @tf.function
    def chain(x, iters):
        # Each product depends on the previous one, so none can be skipped or hoisted.
        for _ in tf.range(iters):
            x = tf.matmul(x, b)
        return tf.reduce_sum(tf.cast(x, tf.float32))

    def timed(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        chain(a, tf.constant(iters)).numpy()  # the scalar result waits for the products
        return time.perf_counter() - start, time.process_time() - start_cpu

    return timed


def _ceiling_at(dtype: tf.DType, n: int, repeats: int, deadline: float) -> Dict:
    """GFLOP/s (wall and per CPU second) of the best of `repeats` chained-matmul calls, n x n."""
    a = tf.cast(tf.random.stateless_normal((n, n), seed=(0, 1)), dtype)
    # Entries ~ N(0, 1/n): repeated products keep their scale (no overflow in float16).
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(0, 2)) / math.sqrt(n), dtype)
    timed = _matmul_chain(a, b)
    first_s, _ = timed(1)  # traces
    if first_s < 1.0:  # tracing may dominate a fast first call: time one product alone
        first_s, _ = timed(1)
    # Enough chained products for ~0.5 s a call, so a GPU's launch latency does not count.
    iters = max(1, round(0.5 / max(first_s, 1e-9)))
    calls = [timed(iters)]
    while len(calls) < repeats and time.perf_counter() < deadline:
        calls.append(timed(iters))
    flop = 2 * n ** 3 * iters
    return {"products_per_call": iters, "calls_s": [c[0] for c in calls],
            "gflops": flop / min(calls)[0] / 1e9,
            "gflop_per_cpu_s": flop / min(c[1] for c in calls) / 1e9}


def ceiling(progress, dtypes: List[str], sizes: List[int], repeats: int,
            budget_s: float) -> Dict:
    """Best GFLOP/s of chained n x n tf.matmul calls per dtype over sizes, on the default device.

    Several sizes because no one size is best everywhere: on the 2-core EPYC here n = 4096 ran at
    half the rate of n = 1536 (other sessions share its L3 cache), so one size alone would put the
    "ceiling" below what the model's own convolutions reach.
    """
    results = {}
    for name in dtypes:
        deadline = time.perf_counter() + budget_s
        per_size = {str(n): _ceiling_at(tf.as_dtype(name), n, repeats, deadline) for n in sizes}
        best = max(per_size, key=lambda n: per_size[n]["gflops"])
        results[name] = {"gflops": per_size[best]["gflops"], "n": int(best),
                         "gflop_per_cpu_s": max(r["gflop_per_cpu_s"] for r in per_size.values()),
                         "sizes": per_size}
        progress(**{name: results[name]})
    return results


# ------------------------------------------------------------------------------ input pipeline --
def write_sample_records(voc_root: str, output_dir: str, num_records: int,
                         num_shards: int = 4) -> str:
    """Writes num_records train records cycling through voc_root's JPEG/label pairs; returns the
    glob of the shards. JPEG bytes go in unchanged and the label as a single-channel PNG, as the
    converter writes them, in the converter's folder layout (convert_layout.shard_name)."""
    label_dir = os.path.join(voc_root, "SegmentationClass")
    ids = sorted(name[:-4] for name in os.listdir(label_dir) if name.endswith(".png"))
    if not ids:
        raise FileNotFoundError(f"no label PNGs in {label_dir!r}")
    pairs = []
    for example_id in ids:
        with open(os.path.join(voc_root, "JPEGImages", example_id + ".jpg"), "rb") as f:
            jpeg = f.read()
        label = np.asarray(Image.open(os.path.join(label_dir, example_id + ".png")))  # palette idx
        pairs.append((jpeg, convert_examples.encode_label_png(label), label.shape, example_id))
    writers = [tf.io.TFRecordWriter(os.path.join(output_dir, convert_layout.shard_name(
        "train", shard, num_shards))) for shard in range(num_shards)]
    for index in range(num_records):
        jpeg, png, (height, width), example_id = pairs[index % len(pairs)]
        writers[index % num_shards].write(
            records.encode_example(jpeg, png, height, width, f"{example_id}_{index}"))
    for writer in writers:
        writer.close()
    return convert_layout.shard_pattern(output_dir, "train")


def time_pipeline(file_pattern: str, batch_size: int, num_batches: int, warmup_batches: int,
                  base_size: Tuple[int, int], seed: int = 0) -> Tuple[float, float]:
    """(images per second, process CPU ms per image) of input_pipeline.train_dataset.

    The CPU figure is what the pipeline costs regardless of other load on the machine; divided into
    the number of free cores it bounds the rate (2 cores / 2.5 ms = 800 images/s).
    """
    dataset = input_pipeline.train_dataset(file_pattern, batch_size, base_size=base_size,
                                           seed=seed, deterministic=True)
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


def pipeline(progress, voc_root: str, num_records: int, batch_size: int, num_batches: int,
             warmup_batches: int, image_size: int) -> Dict:
    """Host input pipeline images/s and CPU ms per image on records made from the sample pairs."""
    del progress
    with tempfile.TemporaryDirectory(prefix="bench_records_") as tmp:
        pattern = write_sample_records(voc_root, tmp, num_records, num_shards=4)
        rate, cpu_ms = time_pipeline(pattern, batch_size, num_batches, warmup_batches,
                                     base_size=(image_size, image_size))
    return {"images_per_s": rate, "cpu_ms_per_image": cpu_ms, "batch_size": batch_size,
            "batches": num_batches, "records": num_records, "base_size": image_size,
            "cores": len(os.sched_getaffinity(0))}


# -------------------------------------------------------------------------------- augmentation --
def measure_augment(batch_size: int, crop: Tuple[int, int], iters: int,
                    base_size: Tuple[int, int], warmup_iters: int = 3) -> float:
    """Milliseconds per batch of augment.augment_batch inside a tf.function (default device)."""
    rng = tf.random.Generator.from_seed(0)
    images = tf.cast(rng.uniform((batch_size, base_size[0], base_size[1], 3), 0, 256, tf.int32),
                     tf.uint8)
    labels = tf.cast(rng.uniform((batch_size, base_size[0], base_size[1], 1), 0, 21, tf.int32),
                     tf.uint8)

    @tf.function
    def step(images, labels):
        out_images, out_labels = augment_lib.augment_batch(images, labels, crop_size=crop,
                                                           rng=rng)
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


def augment(progress, batch_sizes: List[int], image_size: int, iters: int) -> Dict:
    """augment.augment_batch ms per batch at each batch size, base size = crop size."""
    del progress
    size = (image_size, image_size)
    batches = [{"batch_size": b, "ms_per_batch": measure_augment(b, size, iters, base_size=size)}
               for b in batch_sizes]
    return {"crop": image_size, "iters": iters, "batches": batches}


# ----------------------------------------------------------------------------------- converter --
def converter(progress, voc_root: str, num_images: int, small_images: int) -> Dict:
    """convert.convert end to end on copies of the sample pairs, at two sizes."""
    del progress
    num_workers = os.cpu_count() or 1  # convert()'s default, named for the report
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        for label, count in (("small", small_images), ("large", num_images)):
            root = os.path.join(tmp, f"voc_{label}", "VOC2012")
            data.make_voc_copy(voc_root, root, count)
            start = time.perf_counter()
            manifest = convert.convert(root, None, os.path.join(tmp, f"out_{label}"),
                                       num_workers=num_workers, progress_stream=None)
            seconds = time.perf_counter() - start
            written = sum(s["num_examples"] for s in manifest["splits"].values())
            if written != count:
                raise RuntimeError(f"convert wrote {written} examples, expected {count}")
            runs[label] = {"images": count, "seconds": seconds}
    small, large = runs["small"], runs["large"]
    per_image_s = (large["seconds"] - small["seconds"]) / (large["images"] - small["images"])
    fixed_s = large["seconds"] - per_image_s * large["images"]
    if per_image_s <= 0 or fixed_s < 0:  # noise swamped the difference: fall back to the rate
        per_image_s, fixed_s = large["seconds"] / large["images"], 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images": large["images"], "seconds": large["seconds"],
            "images_per_s": large["images"] / large["seconds"], "small_run": small,
            "fixed_s": fixed_s, "per_image_ms": per_image_s * 1000,
            "extrapolated_voc_sbd_s": fixed_s + per_image_s * VOC_SBD_IMAGES,
            "num_workers": num_workers, "worker_peak_rss_mb": children}
