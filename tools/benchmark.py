r"""Benchmarks fcn8s_tf on the machine it runs on, against that machine's own matmul ceiling.

    .venv/bin/python tools/benchmark.py --output=BENCHMARKS.md --json_output=benchmarks.json
    .venv/bin/python tools/benchmark.py --quick --output=/tmp/bench.md --json_output=/tmp/bench.json

(`make bench` runs the first line; the test suite runs the second, so the tool cannot rot.)

What one run measures, each figure in a child process of its own (so peak resident memory is that
measurement's, and the Keras dtype policy, XLA's caches and TensorFlow's thread pools of one
measurement cannot leak into the next):

  ceiling    tf.matmul of n x n matrices (n = 1024, 2048, 4096), chained inside one tf.function,
             best call of any size, in float32 and bfloat16 (float16 too on a GPU): the rate a
             dense kernel reaches on this machine. Measured at the start and at the end of the run; the higher
             is the ceiling. Absolute times drift on a shared machine; a ratio taken in one run
             drifts less, so every model figure is also given as a fraction of this ceiling.
  converter  fcn8s_tf.convert.convert end to end (worker start-up included) on the real VOC sample
             pairs copied under new ids to a few hundred images; a second, 30-image conversion
             splits the time into a fixed part and a per-image part, which extrapolate to the
             12,031 images of VOC 2012 + SBD.
  pipeline   input_pipeline.train_dataset (read, decode, resize to 321x321, batch):
             images/s and CPU ms per image (tools/bench_pipeline.py's time_pipeline).
  augment    augment.augment_batch in a tf.function at each training batch size: ms per batch
             (tools/bench_pipeline.py's measure_augment).
  flops      counted once from the model, analytically (count_flops below), and cross-checked on the
             forward pass with TensorFlow's graph profiler.
  train      the real training step, train.make_train_step (on-device augmentation, forward, masked
             cross-entropy, gradients, Adam) under train.make_strategy(), FCN-8s with 21 classes,
             fc 4096, weights=None, 321x321 crops, on a synthetic uint8 batch fed through
             strategy.experimental_distribute_dataset: seconds per step, images/s, GFLOP/s and its
             fraction of the ceiling of the step's compute dtype, CPU seconds per step, peak
             RSS. Per precision policy, XLA on and off, the model built for the fixed crop and for
             dynamic (None, None) inputs, and per batch size (--matrix says which combinations).
  inference  the SavedModel written by export.export_saved_model (float32, dynamic input), loaded
             with tf.saved_model.load as TF Serving would: serving_uint8 and serving_default (JPEG
             bytes) on a 500x375 image, ms per image.

Each timed figure is the median of --repeats timed calls after an untimed first one (which pays for
tracing and XLA compilation). The run keeps to --time_budget_s: a training configuration gets a
deadline, stops timing when the next step would pass it, and reports its first step as an upper
bound of the step time when no timed step fits; configurations that cannot start in the time left
are listed as skipped. The load average is recorded at the start, the end and before each
training configuration, since other work on the machine slows every figure.
"""

import dataclasses
import datetime
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

# TensorFlow and the fcn8s_tf modules that need it are imported inside the task functions, which
# run only in child processes. Two reasons: tools/bench_pipeline.py and fcn8s_tf.train both define
# an absl flag --batch_size, so they cannot be imported into one process; and the parent, which
# only schedules children and writes the report, stays small and starts fast.

_TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_DIR = os.path.dirname(_TOOLS_DIR)
_DEFAULT_VOC_ROOT = os.path.normpath(
    os.path.join(_REPO_DIR, "..", "shared", "voc_sample", "VOCdevkit", "VOC2012"))

VOC_SBD_IMAGES = 10_582 + 1_449  # train + val ids of VOC 2012 + SBD (DESIGN.md, Splits)
IGNORE_LABEL = 255  # fcn8s_tf.voc.IGNORE_LABEL; not imported, to keep the parent TensorFlow-free
# A policy's compute dtype decides which matmul ceiling its training step is compared with.
POLICY_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# CPU feature flags (/proc/cpuinfo) that mean native bfloat16 arithmetic.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# "Clearly faster" in the issue's bf16 target, made a number.
BF16_CLEARLY_FASTER = 1.25

_OUTPUT = flags.DEFINE_string("output", None, "Markdown report to write (e.g. BENCHMARKS.md).")
_JSON_OUTPUT = flags.DEFINE_string("json_output", None, "JSON results to write.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized smoke run: tiny images and net, float32 "
                           "only, one timed repeat; well under the full run's minutes.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", None, "Training batch sizes; every configuration "
                                 "runs at the first, the others run the float32 setting chosen "
                                 "(and the fastest overall). Default 1,4 (quick: 1).")
_PRECISIONS = flags.DEFINE_list("precisions", None, "Keras policies to train with. Default "
                                "float32,mixed_bfloat16, plus mixed_float16 on a GPU (quick: "
                                "float32).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed calls per measurement, after an untimed "
                                "first call; the median is reported. Default 2 (quick: 1).",
                                lower_bound=1)
_MATRIX = flags.DEFINE_enum("matrix", "sweep", ["sweep", "full"], "Training configurations: "
                            "'sweep' = float32 built for fixed and for dynamic input; on the "
                            "input kept, XLA for every precision; the larger batches; the other "
                            "precisions without XLA last. 'full' = every combination (hours on a "
                            "small CPU).")
_TIME_BUDGET_S = flags.DEFINE_integer("time_budget_s", None, "Whole-run budget in seconds; "
                                      "default 540 (quick: 600, effectively none).", lower_bound=60)
_SAMPLE_VOC_ROOT = flags.DEFINE_string("sample_voc_root", _DEFAULT_VOC_ROOT, "VOC2012 folder with "
                                       "JPEGImages/ and SegmentationClass/ whose pairs feed the "
                                       "converter and pipeline benchmarks.")


# ------------------------------------------------------------------------------------- settings --
@dataclasses.dataclass
class Settings:
    """Everything a run depends on; `settings_for` gives the full and quick defaults."""
    quick: bool
    voc_root: str
    image_size: int  # training crop (and host pipeline base size), square
    fc_units: int
    num_classes: int
    batch_sizes: List[int]
    precisions: Optional[List[str]]  # None: float32, mixed_bfloat16 (+ mixed_float16 on a GPU)
    repeats: int
    matrix: str
    time_budget_s: float
    matmul_sizes: List[int]
    converter_images: int
    pipeline_records: int
    pipeline_batch_size: int
    pipeline_batches: int
    pipeline_warmup_batches: int
    augment_iters: int
    inference_size: Tuple[int, int]  # (height, width)
    max_config_s: float  # wall-clock cap of one training configuration, start-up included
    serve_reserve_s: float  # kept back for the inference child and the closing ceiling
    group_children: bool  # run compatible tasks in one child (quick: fewer TensorFlow start-ups)


def settings_for(quick: bool, **overrides) -> Settings:
    """Full-run defaults (make bench) or --quick ones, with overrides (None values ignored)."""
    if quick:
        # Tiny everywhere except what cannot shrink: conv1_1 sees the input padded by 100, so even
        # a 64x64 image costs ~40 GFLOP forward; one training step is seconds on a small CPU.
        base = dict(image_size=64, fc_units=64, batch_sizes=[1], precisions=["float32"],
                    repeats=1, time_budget_s=600, matmul_sizes=[256, 512], converter_images=60,
                    pipeline_records=32, pipeline_batch_size=8, pipeline_batches=3,
                    pipeline_warmup_batches=1, augment_iters=2, inference_size=(48, 64),
                    max_config_s=240, serve_reserve_s=60, group_children=True)
    else:
        base = dict(image_size=321, fc_units=4096, batch_sizes=[1, 4], precisions=None,
                    repeats=2, time_budget_s=540, matmul_sizes=[1024, 2048, 4096],
                    converter_images=600, pipeline_records=300, pipeline_batch_size=16,
                    pipeline_batches=50,
                    pipeline_warmup_batches=10, augment_iters=20, inference_size=(375, 500),
                    max_config_s=180, serve_reserve_s=90, group_children=False)
    base.update(quick=quick, voc_root=_DEFAULT_VOC_ROOT, num_classes=21, matrix="sweep")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**base)


# ------------------------------------------------------------------------------------ FLOP count --
def count_flops(model) -> Dict:
    """FLOPs of one image through a Keras model built for a fixed input size, counted by layer.

    Only convolutions are counted (a multiply-add is 2 FLOPs):
      Conv2D:           2 * H_out * W_out * kh * kw * C_in * C_out
      Conv2DTranspose:  2 * H_in * W_in * kh * kw * C_in * C_out (each input position scatters)
    A training step is the forward pass plus, per convolution, a weight gradient (same FLOPs as
    its forward) when it has trainable weights, and an input gradient (same again) when its input
    depends on some trainable weight. For FCN-8s that is 3x the forward pass less block1_conv1's
    input gradient (it sees the image) and the fixed bilinear layers' weight gradients. Biases,
    activations, pooling, dropout, the loss and Adam's update are left out: they are elementwise,
    about 1% of the forward count at 321x321 (see the profiler cross-check).

    Args:
      model: a functional keras.Model whose layers have static output shapes.
    Returns:
      {"forward": int, "train": int, "layers": [{"name", "forward", "train"}, ...]} per image.
    Raises:
      ValueError: a convolution's spatial shape is unknown (the model was built with None sizes).
    """
    import keras

    needs_input_grad = {}  # layer name -> its output depends on a trainable weight
    layers, forward_total, train_total = [], 0, 0
    for layer in model.layers:
        node = layer._inbound_nodes[0]  # pylint: disable=protected-access
        input_depends = any(needs_input_grad[p.operation.name] for p in node.parent_nodes)
        trainable = bool(layer.trainable and layer.trainable_weights)
        needs_input_grad[layer.name] = input_depends or trainable
        if isinstance(layer, keras.layers.Conv2DTranspose):
            positions = layer.input.shape[1:3]
        elif isinstance(layer, keras.layers.Conv2D):
            positions = layer.output.shape[1:3]
        else:
            continue
        if None in positions:
            raise ValueError(f"count_flops needs a model built for a fixed input size; layer "
                             f"{layer.name} has spatial shape {tuple(positions)}")
        forward = 2 * positions[0] * positions[1] * math.prod(layer.kernel.shape)
        train = forward * (1 + int(trainable) + int(input_depends))
        layers.append({"name": layer.name, "type": type(layer).__name__, "forward": forward,
                       "train": train})
        forward_total += forward
        train_total += train
    return {"forward": forward_total, "train": train_total, "layers": layers}


def profiler_forward_flops(model, input_shape: Sequence[int]) -> Dict[str, int]:
    """FLOPs of the forward graph by tf.compat.v1.profiler: all ops, and Conv2D ops alone."""
    import tensorflow as tf

    forward = tf.function(lambda images: model(images, training=False),
                          autograph=False)
    graph = forward.get_concrete_function(tf.TensorSpec(input_shape, tf.float32)).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    counts = {}
    for key, regex in (("all", ".*"), ("conv2d", "Conv2D"),
                       ("conv2d_transpose", "Conv2DBackpropInput")):
        options = builder(builder.float_operation()).with_empty_output().build()
        options["account_type_regexes"] = [regex]
        counts[key] = int(tf.compat.v1.profiler.profile(graph=graph, options=options)
                          .total_float_ops)
    return counts


# ------------------------------------------------------------------------- child-process tasks --
# Each task takes keyword arguments (JSON values) plus `progress`, a callback that records partial
# results so that a child killed at its deadline still reports how far it got, and returns a dict.

def _task_environment(progress) -> Dict:
    """TensorFlow and Keras versions and the accelerators TensorFlow sees."""
    del progress
    import keras
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"name": details.get("device_name", device.name),
                     "compute_capability": list(details.get("compute_capability", ()))})
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "gpus": gpus,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)")}


def _matmul_chain(a, b) -> Callable[[int], Tuple[float, float]]:
    """timed(k) -> (wall s, CPU s) of x = a, then k times x = x @ b, inside one tf.function."""
    import tensorflow as tf

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


def _task_ceiling(progress, dtypes: List[str], sizes: List[int], repeats: int,
                  budget_s: float) -> Dict:
    """Best GFLOP/s of chained n x n tf.matmul calls per dtype over sizes, on the default device.

    Several sizes because no one size is best everywhere: on the 2-core EPYC here n = 4096 ran at
    half the rate of n = 1536 (other sessions share its L3 cache), so one size alone would put the
    "ceiling" below what the model's own convolutions reach.
    """
    import tensorflow as tf

    results = {}
    for name in dtypes:
        dtype = tf.as_dtype(name)
        per_size = {}
        deadline = time.perf_counter() + budget_s
        for n in sizes:
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
            per_size[str(n)] = {"products_per_call": iters, "calls_s": [c[0] for c in calls],
                                "gflops": flop / min(calls)[0] / 1e9,
                                "gflop_per_cpu_s": flop / min(c[1] for c in calls) / 1e9}
        best = max(per_size, key=lambda n: per_size[n]["gflops"])
        results[name] = {"gflops": per_size[best]["gflops"], "n": int(best),
                         "gflop_per_cpu_s": max(r["gflop_per_cpu_s"] for r in per_size.values()),
                         "sizes": per_size}
        progress(**{name: results[name]})
    return results


def _task_pipeline(progress, voc_root: str, num_records: int, batch_size: int, num_batches: int,
                   warmup_batches: int, image_size: int) -> Dict:
    """Host input pipeline images/s and CPU ms per image on records made from the sample pairs."""
    del progress
    import bench_pipeline

    with tempfile.TemporaryDirectory(prefix="bench_records_") as tmp:
        pattern = bench_pipeline.write_sample_records(voc_root, tmp, num_records, num_shards=4)
        rate, cpu_ms = bench_pipeline.time_pipeline(
            pattern, batch_size, num_batches, warmup_batches, base_size=(image_size, image_size))
    return {"images_per_s": rate, "cpu_ms_per_image": cpu_ms, "batch_size": batch_size,
            "batches": num_batches, "records": num_records, "base_size": image_size,
            "cores": len(os.sched_getaffinity(0))}


def _task_augment(progress, batch_sizes: List[int], image_size: int, iters: int) -> Dict:
    """augment.augment_batch ms per batch at each batch size, base size = crop size."""
    del progress
    import bench_pipeline

    size = (image_size, image_size)
    batches = [{"batch_size": b, "ms_per_batch": bench_pipeline.measure_augment(
        b, size, iters, base_size=size)} for b in batch_sizes]
    return {"crop": image_size, "iters": iters, "batches": batches}


def make_voc_copy(sample_root: str, output_root: str, num_images: int,
                  val_every: int = 6) -> Dict[str, int]:
    """A VOC2012-style folder of num_images pairs cycling through sample_root's JPEG/PNG pairs.

    Pair k of the copy is `bench_<k>` (JPEGImages/, SegmentationClass/); every val_every-th id goes
    to ImageSets/Segmentation/val.txt, the rest to train.txt. Returns {"train": n, "val": n}.
    """
    label_dir = os.path.join(sample_root, "SegmentationClass")
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"--sample_voc_root={sample_root}: no SegmentationClass/ folder")
    ids = sorted(name[:-4] for name in os.listdir(label_dir) if name.endswith(".png")
                 and os.path.isfile(os.path.join(sample_root, "JPEGImages", name[:-4] + ".jpg")))
    if not ids:
        raise FileNotFoundError(f"--sample_voc_root={sample_root}: no JPEG/PNG pairs")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(output_root, sub), exist_ok=True)
    splits = {"train": [], "val": []}
    for k in range(num_images):
        source, new_id = ids[k % len(ids)], f"bench_{k:05d}"
        for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            shutil.copyfile(os.path.join(sample_root, sub, source + ext),
                            os.path.join(output_root, sub, new_id + ext))
        splits["val" if k % val_every == 0 else "train"].append(new_id)
    for split, split_ids in splits.items():
        with open(os.path.join(output_root, "ImageSets", "Segmentation", f"{split}.txt"), "w",
                  encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in split_ids))
    return {split: len(split_ids) for split, split_ids in splits.items()}


def _task_converter(progress, voc_root: str, num_images: int, small_images: int) -> Dict:
    """convert.convert end to end on copies of the sample pairs, at two sizes."""
    del progress
    import tensorflow
    # ^ convert() imports TensorFlow itself; a one-off start-up cost, kept out of the timing.
    from fcn8s_tf import convert

    num_workers = os.cpu_count() or 1  # convert()'s default, named for the report
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        for label, count in (("small", small_images), ("large", num_images)):
            root = os.path.join(tmp, f"voc_{label}", "VOC2012")
            make_voc_copy(voc_root, root, count)
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


def _task_model(progress, image_size: int, fc_units: int, num_classes: int,
                inference_size: List[int], export_base: str) -> Dict:
    """FLOPs of the training and inference shapes, and the float32 SavedModel export."""
    import keras
    from fcn8s_tf import export as export_lib
    from fcn8s_tf import model as model_lib

    kwargs = dict(num_classes=num_classes, fc_units=fc_units)
    shape = (image_size, image_size, 3)
    model = model_lib.build_fcn8s(input_shape=shape, **kwargs)
    train = count_flops(model)
    profiled = profiler_forward_flops(model, (1,) + shape)
    del model
    keras.backend.clear_session()
    height, width = inference_size
    model = model_lib.build_fcn8s(input_shape=(height, width, 3), **kwargs)
    inference = count_flops(model)
    del model
    keras.backend.clear_session()
    progress(train_forward=train["forward"])

    analytic_conv2d = sum(layer["forward"] for layer in train["layers"]
                          if layer["type"] == "Conv2D")
    top = sorted(train["layers"], key=lambda layer: -layer["train"])[:4]
    flops = {
        "method": "analytic: per-layer convolution FLOPs (count_flops), training step = forward + "
                  "weight gradients of trainable layers + input gradients of layers whose input "
                  "depends on a trainable weight; elementwise ops excluded",
        "image_size": [image_size, image_size],
        "forward_gflop": train["forward"] / 1e9,
        "train_gflop": train["train"] / 1e9,
        "train_over_forward": train["train"] / train["forward"],
        "top_layers": [{"name": layer["name"], "train_gflop": layer["train"] / 1e9}
                       for layer in top],
        "profiler_forward_gflop": profiled["all"] / 1e9,
        "profiler_conv2d_gflop": profiled["conv2d"] / 1e9,
        "profiler_conv2d_transpose_gflop": profiled["conv2d_transpose"] / 1e9,
        "analytic_conv2d_transpose_gflop": (train["forward"] - analytic_conv2d) / 1e9,
        "profiler_conv2d_over_analytic": profiled["conv2d"] / analytic_conv2d,
        "profiler_all_over_analytic": profiled["all"] / train["forward"],
        "inference_size": [height, width],
        "inference_forward_gflop": inference["forward"] / 1e9,
    }

    model = model_lib.build_fcn8s(**kwargs)  # dynamic (None, None): what is served
    start = time.perf_counter()
    path = export_lib.export_saved_model(model, export_base, version=1, model_kwargs=kwargs)
    export_s = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return {"flops": flops, "export": {"path": path, "seconds": export_s, "size_mb": size / 2**20}}


def _task_train(progress, precision: str, xla: bool, input_shape: str, batch_size: int,
                image_size: int, fc_units: int, num_classes: int, repeats: int,
                deadline_unix: float, seed: int = 0) -> Dict:
    """Times training steps through train.make_train_step, as fcn8s_tf.train runs them.

    Records the build time and each step's wall and CPU seconds through `progress` (so a child
    killed at its deadline still reports them); summarise_train_entry turns them into figures.
    """
    import keras
    import numpy as np
    import tensorflow as tf
    from fcn8s_tf import train as train_lib

    keras.mixed_precision.set_global_policy(precision)  # as train.train() does, before building
    try:
        config = train_lib.TrainConfig(
            train_data="", workdir="", base_size=image_size, crop_size=image_size,
            num_classes=num_classes, backbone_weights=None, fc_units=fc_units,
            batch_size=batch_size, precision=precision, xla=xla, seed=seed,
            fixed_input_shape=(input_shape == "fixed"))
        strategy = train_lib.make_strategy()
        start = time.perf_counter()
        with strategy.scope():
            model, optimizer = train_lib.build_model_and_optimizer(config, 10**6)
        build_s = time.perf_counter() - start
        built_shape = list(model.inputs[0].shape[1:3])
        expected = [image_size] * 2 if input_shape == "fixed" else [None, None]
        if built_shape != expected:
            raise RuntimeError(f"asked for a {input_shape} model, train.build_model_and_optimizer "
                               f"built input size {built_shape}")

        # Random uint8 images and labels with a void column every 16 pixels, as the host pipeline
        # delivers them (base size = crop size); the step augments them on the device.
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, (batch_size, image_size, image_size, 1),
                              dtype=np.uint8)
        labels[:, :, ::16] = IGNORE_LABEL
        dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        train_step = train_lib.make_train_step(strategy, model, optimizer, config)

        def run_step(step):
            start, start_cpu = time.perf_counter(), time.process_time()
            loss, _ = train_step(next(iterator), tf.constant(step, tf.int64))
            loss = float(loss)  # waits for the step
            return time.perf_counter() - start, time.process_time() - start_cpu, loss

        progress(build_s=build_s, first_step_started_unix=time.time())
        first_s, first_cpu_s, loss = run_step(0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss {loss} at the first step")
        progress(first_step_s=first_s, first_step_cpu_s=first_cpu_s, loss=loss)
        times, cpu_times = [], []
        while len(times) < repeats:
            expected_s = times[-1] if times else first_s  # first_s includes tracing: pessimistic
            if time.time() + expected_s > deadline_unix:
                break
            step_s, cpu_s, loss = run_step(len(times) + 1)
            times.append(step_s)
            cpu_times.append(cpu_s)
            progress(step_times_s=times, step_cpu_s=cpu_times, loss=loss)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    return {}  # progress() recorded everything; summarise_train_entry derives the figures


def summarise_train_entry(entry: Dict) -> None:
    """Adds step_s, cpu_s_per_step, images_per_s from a training task's raw step times, in place.

    Works on a finished task and on one stopped at its time limit after its first step; the first
    step alone (tracing and XLA compilation included) gives an upper bound of the step time.
    """
    times = entry.get("step_times_s") or []
    if times:
        entry.update(step_s=statistics.median(times),
                     cpu_s_per_step=statistics.median(entry["step_cpu_s"]),
                     step_time_source=f"median of {len(times)} timed step(s)",
                     spread=max(times) / min(times) - 1)
    else:
        entry.update(step_s=entry["first_step_s"], cpu_s_per_step=entry["first_step_cpu_s"],
                     step_time_source="first step only (includes tracing/compilation): an "
                                      "upper bound")
    entry["images_per_s"] = entry["batch_size"] / entry["step_s"]


def _task_serve(progress, export_path: str, image_path: str, repeats: int) -> Dict:
    """ms per image through the exported SavedModel's serving_uint8 and serving_default."""
    import tensorflow as tf

    start = time.perf_counter()
    loaded = tf.saved_model.load(export_path)
    load_s = time.perf_counter() - start
    with open(image_path, "rb") as f:
        jpeg = f.read()
    image = tf.io.decode_jpeg(jpeg, channels=3)[tf.newaxis]
    height, width = int(image.shape[1]), int(image.shape[2])
    calls = {  # name: (function, inputs, timed calls)
        "serving_uint8": (loaded.signatures["serving_uint8"], {"images": image}, repeats),
        # The same net plus a JPEG decode: one timed call is enough to see the difference.
        "serving_default": (loaded.signatures["serving_default"],
                            {"image_bytes": tf.constant([jpeg])}, 1),
    }
    results = {"load_s": load_s, "image_size": [height, width]}
    for name, (fn, kwargs, timed_calls) in calls.items():
        times = []
        for i in range(timed_calls + 1):  # the first call is untimed (graph set-up)
            start = time.perf_counter()
            labels = fn(**kwargs)["labels"].numpy()
            if i:
                times.append(time.perf_counter() - start)
        if labels.shape != (1, height, width):
            raise RuntimeError(f"{name} returned labels of shape {labels.shape}, expected "
                               f"(1, {height}, {width})")
        results[name] = {"ms_per_image": statistics.median(times) * 1000,
                         "calls_ms": [t * 1000 for t in times]}
        progress(**{name: results[name]})
    return results


_TASKS = {"environment": _task_environment, "ceiling": _task_ceiling,
          "pipeline": _task_pipeline, "augment": _task_augment, "converter": _task_converter,
          "model": _task_model, "train": _task_train, "serve": _task_serve}

# The child's command line: `python -c` rather than this file as __main__, because convert()
# starts its workers with 'spawn', which re-imports a __main__ file in every worker.
_CHILD_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import benchmark; "
                    "benchmark.child_main(sys.argv[2], sys.argv[3])")


def _finite(value):
    """value with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_json(path: str, payload) -> None:
    """Writes JSON atomically (temp file + rename), so a killed writer never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_finite(payload), f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _short_error(error: BaseException) -> str:
    """One line naming the exception: its type and the last non-empty line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:400] if lines else ''}".rstrip(": ")


def child_main(tasks_json: str, result_path: str) -> None:
    """Runs [[task, kwargs], ...] in order, rewriting result_path after every change."""
    results = []
    for name, kwargs in json.loads(tasks_json):
        entry = {"task": name, "status": "running"}
        results.append(entry)

        def progress(_entry=entry, **fields):
            _entry.update(fields)
            _write_json(result_path, results)

        progress()
        try:
            entry.update(_TASKS[name](progress, **kwargs))
            entry["status"] = "done"
        except Exception as e:  # pylint: disable=broad-except  (recorded, e.g. an XLA failure)
            traceback.print_exc()
            entry.update(status="failed", error=_short_error(e))
        # Peak of the whole child so far: per task when a child runs one task.
        entry["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _write_json(result_path, results)


# ---------------------------------------------------------------------------- parent: scheduling --
class _Runner:
    """Starts child processes within the run's time budget and collects their results."""

    def __init__(self, settings: Settings, tmp_dir: str):
        self.settings = settings
        self.tmp_dir = tmp_dir
        self.start = time.time()
        self.count = 0

    def remaining_s(self) -> float:
        return self.settings.time_budget_s - (time.time() - self.start)

    def run(self, tasks: List[Tuple[str, Dict]], timeout_s: float) -> List[Dict]:
        """Runs tasks in one child; returns one result per task (with "error" when it failed)."""
        self.count += 1
        result_path = os.path.join(self.tmp_dir, f"child{self.count}.json")
        log_path = os.path.join(self.tmp_dir, f"child{self.count}.log")
        command = [sys.executable, "-c", _CHILD_BOOTSTRAP, _TOOLS_DIR, json.dumps(tasks),
                   result_path]
        load = os.getloadavg()[0]
        start = time.time()
        timed_out = False
        with open(log_path, "w", encoding="utf-8") as log:
            # A session of its own, so that a timeout ends the child's workers too.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=_REPO_DIR, start_new_session=True)
            try:
                process.wait(timeout=max(timeout_s, 1.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        wall_s = time.time() - start
        results = []
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as f:
                results = json.load(f)
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log_tail = [line.rstrip() for line in f.readlines()[-200:] if line.strip()]
        for i, (name, _) in enumerate(tasks):
            if i == len(results):
                results.append({"task": name, "status": "not started"})
            entry = results[i]
            entry.update(child_wall_s=wall_s, load_average_1min_before=load)
            if entry["status"] in ("done", "failed"):
                continue
            if timed_out:
                entry["error"] = f"stopped after {wall_s:.0f} s (time limit {timeout_s:.0f} s)"
                entry["timed_out"] = True
            else:
                detail = next((line for line in reversed(log_tail)
                               if re.search(r"Error|error|Killed|Abort", line)),
                              log_tail[-1] if log_tail else "no output")
                entry["error"] = (f"child exited with status {process.returncode}: "
                                  f"{detail[:400]}")
            entry["status"] = "failed"
        return results[:len(tasks)]


def _log_result(label: str, entry: Dict, summary: str) -> None:
    if entry.get("error"):
        logging.warning("%s: %s", label, entry["error"])
    else:
        logging.info("%s: %s", label, summary)


def _train_label(cfg: Dict) -> str:
    return (f"train {cfg['precision']} xla={'on' if cfg['xla'] else 'off'} {cfg['input_shape']} "
            f"batch {cfg['batch_size']}")


def _run_train_configs(runner: _Runner, configs: List[Dict]) -> List[Dict]:
    """Runs training configurations, one child each (grouped in quick mode), within the budget."""
    s = runner.settings
    results = []
    pending = list(configs)
    while pending:
        group = pending if s.group_children else pending[:1]
        pending = pending[len(group):]
        available = runner.remaining_s() - s.serve_reserve_s
        if available < 30:
            for cfg in group:
                results.append(dict(cfg, status="skipped",
                                    skipped="time budget (--time_budget_s) used up"))
                logging.warning("%s: skipped, time budget used up", _train_label(cfg))
            continue
        limit = min(s.max_config_s * len(group), available)
        deadline = time.time() + limit
        tasks = [("train", dict(cfg, image_size=s.image_size, fc_units=s.fc_units,
                                num_classes=s.num_classes, repeats=s.repeats,
                                deadline_unix=deadline)) for cfg in group]
        # Grace beyond the deadline: a step that started in time may finish, and the child exits.
        for cfg, entry in zip(group, runner.run(tasks, limit + 20)):
            entry.update(cfg, shared_process=len(group) > 1)
            if entry.get("timed_out") and "first_step_s" in entry:
                # Stopped at the time limit after its first step: what it measured still counts.
                entry.update(status="done", stopped_at_time_limit=entry.pop("error"))
            elif entry.get("timed_out") and "first_step_started_unix" in entry:
                # Killed inside its first step: that step took at least this long.
                entry["step_s_lower_bound"] = time.time() - entry["first_step_started_unix"]
            if _ok(entry):
                summarise_train_entry(entry)
            results.append(entry)
            _log_result(_train_label(cfg), entry,
                        f"{entry.get('step_s', 0):.2f} s/step, {entry.get('cpu_s_per_step', 0):.2f}"
                        f" CPU s/step, {entry.get('images_per_s', 0):.3f} images/s "
                        f"({entry.get('step_time_source', '')})")
    return results


def _ok(entry: Optional[Dict]) -> bool:
    return bool(entry) and entry.get("status") == "done" and not entry.get("error")


# A setting counts as faster than another only with this much less time per image; within it the
# default (dynamic input, XLA off) stays. Measure on an idle machine: under load (see each row's
# load average) steps vary by more than this from one to the next.
CLEAR_MARGIN = 0.05


def _cost(entry: Dict, on_gpu: bool) -> float:
    """Seconds per image by which configurations are compared: CPU time on a CPU, which other load
    on a shared machine disturbs far less than wall time; wall time on a GPU."""
    return (entry["step_s"] if on_gpu else entry["cpu_s_per_step"]) / entry["batch_size"]


def _best(entries: List[Dict], on_gpu: bool) -> Optional[Dict]:
    """The measured entry with the lowest cost per image."""
    measured = [e for e in entries if _ok(e)]
    return min(measured, key=lambda e: _cost(e, on_gpu)) if measured else None


def _compare(entries: List[Dict], key: str, candidate, default, on_gpu: bool,
             names: Tuple[str, str]) -> Optional[Dict]:
    """Whether the best entry with entry[key] == candidate is clearly cheaper than the best with
    default; names = (candidate's, default's) for the verdict. None when either is missing."""
    a = _best([e for e in entries if e[key] == candidate], on_gpu)
    b = _best([e for e in entries if e[key] == default], on_gpu)
    if not a or not b:
        return None
    speedup = _cost(b, on_gpu) / _cost(a, on_gpu)
    chosen = candidate if speedup > 1 + CLEAR_MARGIN else default
    return {"chosen": chosen, "speedup": speedup,
            "speedup_wall": (b["step_s"] / b["batch_size"]) / (a["step_s"] / a["batch_size"]),
            "basis": "wall time" if on_gpu else "CPU time",
            "verdict": (f"{names[0]} clearly faster" if chosen == candidate else
                        f"{names[0]} not clearly faster than {names[1]} (margin "
                        f"{CLEAR_MARGIN:.0%}): {names[1]} kept")}


def _train_sweep(runner: _Runner, precisions: List[str], on_gpu: bool) -> Tuple[List[Dict], Dict]:
    """The training configurations of --matrix, run in an order that lets each stage choose."""
    s = runner.settings
    b1, larger = s.batch_sizes[0], s.batch_sizes[1:]

    def cfg(precision, xla, shape, batch):
        return {"precision": precision, "xla": xla, "input_shape": shape, "batch_size": batch}

    if s.matrix == "full":
        configs = [cfg(p, x, shape, b) for b in s.batch_sizes for p in precisions
                   for x in (False, True) for shape in ("fixed", "dynamic")]
        results = _run_train_configs(runner, configs)
        return results, train_summary(results, on_gpu)
    # Stage 1: does a model built for the crop size train faster than a dynamic one?
    results = _run_train_configs(runner, [cfg("float32", False, "fixed", b1),
                                          cfg("float32", False, "dynamic", b1)])
    shape = (train_summary(results, on_gpu).get("input_shape") or {}).get("chosen", "dynamic")
    # Stage 2: XLA, for every precision, on the chosen input.
    results += _run_train_configs(runner, [cfg(p, True, shape, b1) for p in precisions])
    # Stage 3: the larger batches, with the float32 setting chosen (and the fastest overall).
    xla32 = (train_summary(results, on_gpu).get("xla") or {}).get("chosen", False)
    best = _best([r for r in results if r["batch_size"] == b1], on_gpu)
    for batch in larger:
        chosen = [cfg("float32", xla32, shape, batch)]
        if best and best["precision"] != "float32":
            chosen.append(cfg(best["precision"], best["xla"], shape, batch))
        results += _run_train_configs(runner, chosen)
    # Stage 4: the other precisions without XLA, last because they can be slow (bf16 kernels on a
    # CPU without native bf16 run ~10x slower than float32), so a tight budget cuts them first.
    results += _run_train_configs(runner, [cfg(p, False, shape, b1) for p in precisions
                                           if p != "float32"])
    return results, train_summary(results, on_gpu)


def train_summary(results: List[Dict], on_gpu: bool) -> Dict:
    """Fixed vs dynamic input and XLA on vs off (float32, first batch size), and the fastest
    configuration per batch size, compared by `_cost` with CLEAR_MARGIN."""
    summary = {}
    if not results:
        return summary
    b1 = results[0]["batch_size"]
    float32 = [e for e in results if e["precision"] == "float32" and e["batch_size"] == b1]
    summary["input_shape"] = _compare([e for e in float32 if not e["xla"]], "input_shape",
                                      "fixed", "dynamic", on_gpu, ("fixed input", "dynamic"))
    shape = (summary["input_shape"] or {}).get("chosen", "dynamic")
    summary["xla"] = _compare([e for e in float32 if e["input_shape"] == shape], "xla", True,
                              False, on_gpu, ("XLA", "XLA off"))
    summary["fastest"] = {}
    for batch in sorted({e["batch_size"] for e in results}):
        best = _best([e for e in results if e["batch_size"] == batch], on_gpu)
        if best:
            summary["fastest"][str(batch)] = {k: best[k] for k in (
                "precision", "xla", "input_shape", "images_per_s", "cpu_s_per_step")}
    return summary


# ------------------------------------------------------------------------------- parent: machine --
def machine_info() -> Dict:
    """CPU model, cores and feature flags from lscpu and /proc/cpuinfo; the load average."""
    info = {"cpu": None, "cores": None, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0))}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name")
        if fields.get("Core(s) per socket", "").isdigit() and fields.get("Socket(s)", "").isdigit():
            info["cores"] = int(fields["Core(s) per socket"]) * int(fields["Socket(s)"])
    except (OSError, subprocess.CalledProcessError):
        pass
    cpu_flags = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    cpu_flags.update(value.split())
                elif key.strip() == "model name" and not info["cpu"]:
                    info["cpu"] = value.strip()
    except OSError:
        pass
    info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "bf16")
                    if f in cpu_flags]
    info["native_bf16_cpu"] = any(f in cpu_flags for f in _BF16_CPU_FLAGS)
    return info


def _prepare_inference_image(voc_root: str, size: Tuple[int, int], path: str) -> str:
    """A JPEG of size (height, width): a sample image of that size as is, else one resized."""
    from PIL import Image

    height, width = size
    folder = os.path.join(voc_root, "JPEGImages")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    if not names:
        raise FileNotFoundError(f"--sample_voc_root={voc_root}: no JPEGImages/*.jpg")
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            if image.size == (width, height):
                shutil.copyfile(os.path.join(folder, name), path)
                return name
    with Image.open(os.path.join(folder, names[0])) as image:
        image.convert("RGB").resize((width, height), Image.BILINEAR).save(path, quality=90)
    return f"{names[0]} resized to {width}x{height}"


# ------------------------------------------------------------------------------ parent: the run --
def run_benchmarks(settings: Settings, command: str = "") -> Dict:
    """Runs every measurement in child processes and returns the results (see module docstring)."""
    s = settings
    if not os.path.isdir(os.path.join(s.voc_root, "JPEGImages")):
        raise FileNotFoundError(f"--sample_voc_root={s.voc_root}: no JPEGImages/ folder (the real "
                                "VOC sample files, ../shared/voc_sample/VOCdevkit/VOC2012)")
    results = {
        "machine": dict(machine_info(), load_average_start=list(os.getloadavg()),
                        date=datetime.datetime.now(datetime.timezone.utc)
                        .isoformat(timespec="seconds"),
                        command=command, python=sys.version.split()[0]),
        "settings": dataclasses.asdict(s),
    }
    with tempfile.TemporaryDirectory(prefix="fcn8s_benchmark_") as tmp:
        runner = _Runner(s, tmp)
        export_base = os.path.join(tmp, "export")
        image_path = os.path.join(tmp, "inference.jpg")
        image_source = _prepare_inference_image(s.voc_root, s.inference_size, image_path)

        def run(tasks, timeout_s=None):
            limit = runner.remaining_s() - s.serve_reserve_s if timeout_s is None else timeout_s
            return runner.run(tasks, max(limit, 60))

        # 1. Host work and the opening ceiling (grouped: none of it needs a process of its own).
        host_tasks = [("environment", {}),
                      ("ceiling", dict(dtypes=["float32", "bfloat16"], sizes=s.matmul_sizes,
                                       repeats=s.repeats, budget_s=20)),
                      ("pipeline", dict(voc_root=s.voc_root, num_records=s.pipeline_records,
                                        batch_size=s.pipeline_batch_size,
                                        num_batches=s.pipeline_batches,
                                        warmup_batches=s.pipeline_warmup_batches,
                                        image_size=s.image_size)),
                      ("augment", dict(batch_sizes=s.batch_sizes, image_size=s.image_size,
                                       iters=s.augment_iters))]
        converter_task = ("converter", dict(voc_root=s.voc_root, num_images=s.converter_images,
                                            small_images=min(30, s.converter_images // 2)))
        model_task = ("model", dict(image_size=s.image_size, fc_units=s.fc_units,
                                    num_classes=s.num_classes,
                                    inference_size=list(s.inference_size),
                                    export_base=export_base))
        if s.group_children:
            environment, ceiling, pipeline, augment, converter, model = run(
                host_tasks + [converter_task, model_task])
        else:
            environment, ceiling, pipeline, augment = run(host_tasks)
            (converter,) = run([converter_task])
            (model,) = run([model_task])
        results["machine"].update({k: environment.get(k) for k in (
            "tensorflow", "keras", "gpus", "onednn")})
        gpus = environment.get("gpus") or []
        results.update(converter=converter, pipeline=pipeline, augment=augment,
                       flops=model.get("flops"), export=model.get("export"),
                       model_task={k: model.get(k) for k in ("status", "error", "peak_rss_mb")})
        for label, entry, summary in (
                ("ceiling", ceiling, lambda e: ", ".join(
                    f"{k} {e[k]['gflops']:.1f} GFLOP/s" for k in ("float32", "bfloat16"))),
                ("converter", converter, lambda e: f"{e['images_per_s']:.0f} images/s"),
                ("pipeline", pipeline, lambda e: f"{e['images_per_s']:.0f} images/s"),
                ("augment", augment, lambda e: ", ".join(
                    f"{b['ms_per_batch']:.1f} ms/batch of {b['batch_size']}"
                    for b in e["batches"])),
                ("model", model, lambda e: f"{e['flops']['train_gflop']:.1f} GFLOP/train image")):
            _log_result(label, entry, summary(entry) if not entry.get("error") else "")

        # 2. Training steps.
        precisions = s.precisions or (["float32", "mixed_bfloat16"]
                                      + (["mixed_float16"] if gpus else []))
        train, summary = _train_sweep(runner, precisions, on_gpu=bool(gpus))
        results.update(train=train, train_summary=summary)

        # 3. Inference through the SavedModel, and the closing ceiling.
        dtypes = ["float32", "bfloat16"] + (["float16"] if gpus else [])
        closing = ("ceiling", dict(dtypes=dtypes, sizes=s.matmul_sizes, repeats=s.repeats,
                                   budget_s=8))
        if _ok(model):
            serve, ceiling_end = runner.run(
                [("serve", dict(export_path=model["export"]["path"], image_path=image_path,
                                repeats=s.repeats)), closing],
                max(runner.remaining_s(), s.serve_reserve_s))
        else:
            serve = {"status": "failed", "error": "no SavedModel (the model task failed)"}
            (ceiling_end,) = runner.run([closing], 120)
        serve["image"] = image_source
        results["inference"] = serve
        uint8_ms = serve.get("serving_uint8", {}).get("ms_per_image", 0)
        _log_result("inference", serve, f"{uint8_ms:.0f} ms/image (serving_uint8)")
        results["ceiling"] = _combine_ceilings(ceiling, ceiling_end)
        results["machine"]["load_average_end"] = list(os.getloadavg())
        results["wall_s"] = time.time() - runner.start
    _derive(results)
    return results


def _combine_ceilings(start: Dict, end: Dict) -> Dict:
    """Per dtype: the start and end measurements and the higher of the two as the ceiling."""
    combined = {"start": start, "end": end, "gflops": {}, "gflop_per_cpu_s": {}}
    for dtype in POLICY_DTYPE.values():
        runs = [r[dtype] for r in (start, end) if isinstance(r.get(dtype), dict)]
        if runs:
            combined["gflops"][dtype] = max(r["gflops"] for r in runs)
            combined["gflop_per_cpu_s"][dtype] = max(r["gflop_per_cpu_s"] for r in runs)
    return combined


def _derive(results: Dict) -> None:
    """Adds GFLOP/s and fractions of the ceiling to the training and inference entries, and the
    targets table."""
    flops = results.get("flops") or {}
    ceiling = results["ceiling"]
    train_gflop = flops.get("train_gflop")
    for entry in results["train"]:
        dtype = POLICY_DTYPE[entry["precision"]]
        entry["ceiling_dtype"] = dtype
        if not _ok(entry) or not train_gflop:
            if entry.get("step_s_lower_bound") and train_gflop:
                entry["images_per_s_upper_bound"] = (entry["batch_size"]
                                                     / entry["step_s_lower_bound"])
            continue
        work = train_gflop * entry["batch_size"]
        entry["gflops"] = work / entry["step_s"]
        if dtype in ceiling["gflops"]:
            entry["fraction_of_ceiling"] = entry["gflops"] / ceiling["gflops"][dtype]
            entry["fraction_of_ceiling_cpu_time"] = (work / entry["cpu_s_per_step"]
                                                     / ceiling["gflop_per_cpu_s"][dtype])
    serve = results["inference"]
    if _ok(serve) and flops.get("inference_forward_gflop"):
        for name in ("serving_uint8", "serving_default"):
            gflops = flops["inference_forward_gflop"] / (serve[name]["ms_per_image"] / 1000)
            serve[name]["gflops"] = gflops
            if "float32" in ceiling["gflops"]:
                serve[name]["fraction_of_ceiling"] = gflops / ceiling["gflops"]["float32"]
    results["targets"] = compute_targets(results)


def compute_targets(results: Dict) -> List[Dict]:
    """The issue's targets, each with what was measured and whether it is met (None: n/a)."""
    targets = []
    train = results.get("train", [])
    machine = results["machine"]
    gpus = machine.get("gpus") or []
    on_gpu = bool(gpus)

    best32 = _best([e for e in train if e["precision"] == "float32"], on_gpu)
    target = {"target": "float32 training step >= 80% of the float32 matmul rate",
              "goal": ">= 0.80", "measured": None, "met": None}
    if best32 and "fraction_of_ceiling" in best32:
        fraction = best32["fraction_of_ceiling"]
        target.update(measured=fraction, met=fraction >= 0.8,
                      note=f"best float32 configuration: {_config_words(best32)}, "
                           f"{best32['gflops']:.1f} of "
                           f"{results['ceiling']['gflops']['float32']:.1f} GFLOP/s; by CPU "
                           f"time {_pct(best32.get('fraction_of_ceiling_cpu_time'))}")
    targets.append(target)

    native = (any(g.get("compute_capability", [0])[0] >= 8 for g in gpus) if gpus
              else machine.get("native_bf16_cpu", False))
    target = {"target": f"mixed_bfloat16 clearly faster than float32 where bf16 is native "
                        f"(>= {BF16_CLEARLY_FASTER:.2f}x images/s)",
              "goal": f">= {BF16_CLEARLY_FASTER:.2f}x", "measured": None, "met": None}
    # An upper bound of bf16's images/s (no step finished) against float32's, on wall time.
    batch = min((e["batch_size"] for e in train), default=None)
    best16 = _best([e for e in train if e["precision"] == "mixed_bfloat16"
                    and e["batch_size"] == batch], on_gpu)
    best32_b = _best([e for e in train if e["precision"] == "float32"
                      and e["batch_size"] == batch], on_gpu)
    bound16 = [e for e in train if e["precision"] == "mixed_bfloat16" and e["batch_size"] == batch
               and e.get("images_per_s_upper_bound")]
    if best16 and best32_b:
        target["measured"] = _cost(best32_b, on_gpu) / _cost(best16, on_gpu)
        target["note"] = (f"by {'wall' if on_gpu else 'CPU'} time per image, best of each at "
                          f"batch {batch}: {_config_words(best16)} vs {_config_words(best32_b)}")
    elif bound16 and best32_b:
        bound = max(e["images_per_s_upper_bound"] for e in bound16)
        target["measured"] = bound / best32_b["images_per_s"]
        target["measured_is_upper_bound"] = True
        target["note"] = f"no bf16 step finished in time; at most this ratio (batch {batch})"
    if target["measured"] is not None:
        target["met"] = target["measured"] >= BF16_CLEARLY_FASTER if native else None
    if not native:
        target["note"] = "; ".join(filter(None, [
            f"not applicable: no native bf16 here (CPU flags {'/'.join(_BF16_CPU_FLAGS)} absent)",
            target.get("note")]))
    targets.append(target)

    pipeline = results.get("pipeline") or {}
    rate = pipeline.get("images_per_s") if _ok(pipeline) else None
    targets.append({"target": "host input pipeline >= 600 images/s", "goal": ">= 600",
                    "measured": rate, "met": None if rate is None else rate >= 600,
                    "note": (f"{pipeline['cpu_ms_per_image']:.2f} CPU ms/image on "
                             f"{pipeline['cores']} cores" if rate else "")})

    converter = results.get("converter") or {}
    seconds = converter.get("extrapolated_voc_sbd_s") if _ok(converter) else None
    targets.append({"target": f"converter: all {VOC_SBD_IMAGES:,} VOC + SBD images in < 30 s "
                              "(~400 images/s)", "goal": "< 30 s", "measured": seconds,
                    "met": None if seconds is None else seconds < 30,
                    "note": (f"extrapolated: {converter['fixed_s']:.1f} s fixed + "
                             f"{converter['per_image_ms']:.2f} ms/image; "
                             f"{converter['images_per_s']:.0f} images/s over "
                             f"{converter['images']} images" if seconds else "")})

    wall = results.get("wall_s")
    if wall is not None and not results["settings"]["quick"]:
        targets.append({"target": "make bench finishes in under 10 minutes", "goal": "< 600 s",
                        "measured": wall, "met": wall < 600})
    return targets


# ------------------------------------------------------------------------------ parent: report --
def _config_words(entry: Dict) -> str:
    return (f"{entry['precision']}, XLA {'on' if entry['xla'] else 'off'}, {entry['input_shape']} "
            f"input, batch {entry['batch_size']}")


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def _gb(megabytes) -> str:
    """Megabytes as GB; '-' when unknown (a child stopped at its deadline reports no peak RSS)."""
    return "-" if megabytes is None else _num(megabytes / 1024)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_markdown(results: Dict) -> str:
    """The report: machine, targets, ceiling, training, host stages, inference, FLOP method."""
    m, s = results["machine"], results["settings"]
    gpus = ", ".join(g["name"] for g in m.get("gpus") or []) or "none"
    load_start = "/".join(f"{v:.2f}" for v in m["load_average_start"])
    load_end = "/".join(f"{v:.2f}" for v in m.get("load_average_end", []))
    lines = [
        "# Benchmarks" + (" (--quick smoke run: tiny sizes, not representative)"
                          if s["quick"] else ""),
        "",
        f"Measured by `tools/benchmark.py` in one run of {results['wall_s']:.0f} s. The ratios to "
        "the machine's own matmul ceiling, taken in the same run, drift less than the absolute "
        "figures on a shared machine.",
        "",
        "| machine | |",
        "| --- | --- |",
        f"| CPU | {m['cpu']}, {m['cores']} cores ({m['logical_cpus']} logical CPUs, "
        f"{m['usable_cpus']} usable); {', '.join(m['simd']) or 'no AVX2'}; native bf16: "
        f"{'yes' if m['native_bf16_cpu'] else 'no'} |",
        f"| GPU | {gpus} |",
        f"| software | TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, Python "
        f"{m['python']}; oneDNN: {m.get('onednn')} |",
        f"| date (UTC) | {m['date']} |",
        f"| command | `{m['command']}` |",
        f"| load average (1/5/15 min) | start {load_start}, end {load_end} |",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met? | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in results["targets"]:
        measured = t["measured"]
        if measured is None:
            shown = "-"
        elif "80%" in t["target"]:
            shown = _pct(measured)
        elif t["goal"].endswith("x"):
            shown = ("<= " if t.get("measured_is_upper_bound") else "") + f"{measured:.2f}x"
        else:
            shown = _num(measured, 1)
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {shown} | {met} | {t.get('note', '')} |")

    ceiling = results["ceiling"]
    sizes = ", ".join(str(n) for n in s["matmul_sizes"])
    lines += ["", f"## Machine ceiling: chained n x n tf.matmul (n = {sizes}), best call", "",
              "| dtype | GFLOP/s at start (n) | GFLOP/s at end (n) | ceiling GFLOP/s "
              "| GFLOP per CPU-s |", "| --- | --- | --- | --- | --- |"]
    for dtype, gflops in ceiling["gflops"].items():
        at = [ceiling[key].get(dtype) or {} for key in ("start", "end")]
        shown = [f"{r['gflops']:.1f} ({r['n']})" if r else "-" for r in at]
        lines.append(f"| {dtype} | {shown[0]} | {shown[1]} | {_num(gflops, 1)} | "
                     f"{_num(ceiling['gflop_per_cpu_s'][dtype], 1)} |")
    for key in ("start", "end"):
        if ceiling[key].get("error"):
            lines.append(f"\nCeiling at {key}: {ceiling[key]['error']}")

    flops = results.get("flops") or {}
    lines += ["", f"## Training step: FCN-8s, {s['num_classes']} classes, fc {s['fc_units']}, "
              f"{s['image_size']}x{s['image_size']} crops", "",
              f"The real step (train.make_train_step: augmentation, forward, loss, gradients, "
              f"Adam) on a synthetic batch. {_num(flops.get('train_gflop'), 1)} GFLOP per image "
              "(see FLOPs below). Time: median of the timed steps after an untimed first step "
              "(which includes tracing and XLA compilation). 'of ceiling' divides by the matmul "
              "ceiling of the step's compute dtype; 'by CPU time' divides FLOP per CPU-second by "
              "the matmul's, which other load on the machine disturbs less.", "",
              "| precision | XLA | model input | batch | s/step | images/s | GFLOP/s | of ceiling "
              "| by CPU time | CPU s/step | first step s | peak RSS GB | load |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in results["train"]:
        head = (f"| {e['precision']} | {'on' if e['xla'] else 'off'} | {e['input_shape']} | "
                f"{e['batch_size']} |")
        if _ok(e):
            mark = "" if e.get("step_times_s") else " (first step only)"
            lines.append(
                f"{head} {_num(e['step_s'])}{mark} | {_num(e['images_per_s'], 3)} | "
                f"{_num(e.get('gflops'), 1)} | {_pct(e.get('fraction_of_ceiling'))} | "
                f"{_pct(e.get('fraction_of_ceiling_cpu_time'))} | {_num(e['cpu_s_per_step'])} | "
                f"{_num(e['first_step_s'], 1)} | {_gb(e.get('peak_rss_mb'))} | "
                f"{_num(e.get('load_average_1min_before'))} |")
        else:
            why = e.get("skipped") or e.get("error") or e.get("status")
            if e.get("step_s_lower_bound"):
                why = (f"> {e['step_s_lower_bound']:.0f} s/step (<= "
                       f"{e['images_per_s_upper_bound']:.4f} images/s): {why}")
            lines.append(f"{head} {why} | | | | | | | | |")
    summary = results.get("train_summary", {})
    lines.append("")
    for key, what in (("input_shape", "Model built for the fixed crop vs dynamic (None, None)"),
                      ("xla", "XLA on vs off")):
        c = summary.get(key)
        if c:
            lines.append(f"{what} (float32, batch {s['batch_sizes'][0]}): **{c['verdict']}** "
                         f"({c['speedup']:.3f}x by {c['basis']}, {c['speedup_wall']:.3f}x by wall "
                         "time).")
    if summary.get("input_shape"):
        lines.append("The later configurations use the input kept; the served model stays "
                     "dynamic.")
    for batch, best in summary.get("fastest", {}).items():
        lines.append(f"Fastest at batch {batch}: {_config_words(dict(best, batch_size=batch))}, "
                     f"{best['images_per_s']:.3f} images/s.")
    basis = ("wall time per image" if m.get("gpus") else "CPU time per image (other load on a "
             "shared machine disturbs it far less than wall time)")
    lines.append(f"Configurations are compared by {basis}; one counts as faster only by more "
                 f"than {CLEAR_MARGIN:.0%}.")

    lines += ["", "## Host stages", "", "| stage | figure | detail | peak RSS GB |",
              "| --- | --- | --- | --- |"]
    c = results.get("converter") or {}
    if _ok(c):
        lines.append(f"| converter (fcn8s_tf.convert, {c['num_workers']} workers) | "
                     f"{c['images_per_s']:.0f} images/s | {c['images']} images in "
                     f"{c['seconds']:.2f} s; {c['fixed_s']:.2f} s fixed + "
                     f"{c['per_image_ms']:.2f} ms/image -> {VOC_SBD_IMAGES:,} images in "
                     f"{c['extrapolated_voc_sbd_s']:.1f} s | {_gb(c.get('peak_rss_mb'))} |")
    else:
        lines.append(f"| converter | failed | {c.get('error')} | |")
    p = results.get("pipeline") or {}
    if _ok(p):
        lines.append(f"| host pipeline (decode + resize to {p['base_size']} + batch "
                     f"{p['batch_size']}) | {p['images_per_s']:.0f} images/s | "
                     f"{p['cpu_ms_per_image']:.2f} CPU ms/image, {p['cores']} cores, "
                     f"{p['batches']} batches | {_gb(p.get('peak_rss_mb'))} |")
    else:
        lines.append(f"| host pipeline | failed | {p.get('error')} | |")
    a = results.get("augment") or {}
    if _ok(a):
        for b in a["batches"]:
            lines.append(f"| augmentation (augment_batch, {a['crop']}x{a['crop']} crops) | "
                         f"{b['ms_per_batch']:.1f} ms/batch | batch {b['batch_size']}, "
                         f"{a['iters']} calls | |")
    else:
        lines.append(f"| augmentation | failed | {a.get('error')} | |")

    serve = results.get("inference") or {}
    size = "x".join(str(v) for v in reversed(s["inference_size"]))
    lines += ["", f"## Inference: exported SavedModel (float32, dynamic input), {size} image", ""]
    if _ok(serve):
        lines += ["| signature | ms/image | GFLOP/s | of float32 ceiling |",
                  "| --- | --- | --- | --- |"]
        for name in ("serving_uint8", "serving_default"):
            r = serve[name]
            lines.append(f"| {name} | {r['ms_per_image']:.0f} | {_num(r.get('gflops'), 1)} | "
                         f"{_pct(r.get('fraction_of_ceiling'))} |")
        lines += ["", f"Image: {serve['image']}. {_num(flops.get('inference_forward_gflop'), 1)} "
                  f"GFLOP per image; SavedModel loaded in {serve['load_s']:.1f} s; serving process "
                  f"peak RSS {serve['peak_rss_mb'] / 1024:.2f} GB (with the closing ceiling)."]
    else:
        lines.append(f"Failed: {serve.get('error')}")

    lines += ["", "## FLOPs", ""]
    if flops:
        top = ", ".join(f"{t['name']} {t['train_gflop']:.1f}" for t in flops["top_layers"])
        lines += [
            f"Counted once, {flops['method']}. Per {flops['image_size'][0]}x"
            f"{flops['image_size'][1]} image: forward {flops['forward_gflop']:.2f} GFLOP, training "
            f"step {flops['train_gflop']:.2f} GFLOP ({flops['train_over_forward']:.2f}x forward). "
            f"Largest training costs (GFLOP): {top}. The input is padded by 100 px before "
            "conv1_1 (Caffe's FCN-8s), so the convolutions see a much larger image than the crop.",
            "",
            f"Cross-check, tf.compat.v1.profiler on the forward graph: Conv2D ops "
            f"{flops['profiler_conv2d_gflop']:.2f} GFLOP = "
            f"{flops['profiler_conv2d_over_analytic']:.4f}x the analytic Conv2D count; all ops "
            f"{flops['profiler_forward_gflop']:.2f} GFLOP = "
            f"{flops['profiler_all_over_analytic']:.4f}x the analytic forward count (the rest is "
            "elementwise: biases, ReLU, pooling).",
        ]
    else:
        lines.append(f"Not counted: {(results.get('model_task') or {}).get('error')}")
    lines += ["", "Peak RSS is ru_maxrss of the child process that made the measurement "
              "(training: one process per configuration" + (", except in --quick runs, where "
                                                             "the configurations share one)."
                                                             if s["group_children"] else ").")]
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _OUTPUT.value and not _JSON_OUTPUT.value:
        raise app.UsageError("Give --output (markdown) and/or --json_output.")
    try:
        batch_sizes = [int(b) for b in _BATCH_SIZES.value] if _BATCH_SIZES.value else None
    except ValueError:
        raise app.UsageError(f"--batch_sizes must be integers, got {_BATCH_SIZES.value}")
    if batch_sizes is not None and (not batch_sizes or min(batch_sizes) < 1):
        raise app.UsageError(f"--batch_sizes must be >= 1, got {batch_sizes}")
    if _PRECISIONS.value and set(_PRECISIONS.value) - set(POLICY_DTYPE):
        raise app.UsageError(f"--precisions accepts {', '.join(POLICY_DTYPE)}; got "
                             f"{_PRECISIONS.value}")
    settings = settings_for(
        _QUICK.value, voc_root=os.path.abspath(_SAMPLE_VOC_ROOT.value), batch_sizes=batch_sizes,
        precisions=_PRECISIONS.value or None, repeats=_REPEATS.value, matrix=_MATRIX.value,
        time_budget_s=_TIME_BUDGET_S.value)
    command = shlex.join([os.path.relpath(sys.executable) if sys.executable.startswith(
        _REPO_DIR) else "python"] + sys.argv)
    logging.info("Settings: %s", settings)
    try:
        results = run_benchmarks(settings, command)
    except FileNotFoundError as e:
        raise SystemExit(f"benchmark: {e}") from None
    if _JSON_OUTPUT.value:
        _write_json(_JSON_OUTPUT.value, results)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            f.write(render_markdown(results))
    failed = [name for name in ("converter", "pipeline", "augment", "inference")
              if not _ok(results.get(name))]
    failed += [_train_label(e) for e in results["train"]
               if e["precision"] == "float32" and not e["xla"] and e.get("status") == "failed"]
    for t in results["targets"]:
        logging.info("target %s: measured %s, met %s", t["target"], t["measured"], t["met"])
    if failed:
        logging.error("Measurements that failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
