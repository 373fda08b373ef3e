"""Child tasks that run the project's TensorFlow model: FLOPs and export, the training step, the
SavedModel's inference, and the Keras forward pass. Each is `task(progress, **kwargs) -> dict`."""

import math
import os
import statistics
import time
from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf

from fcn8s_tf import config as config_lib
from fcn8s_tf import pixels
from fcn8s_tf import precision as precision_lib
from fcn8s_tf.class_info import IGNORE_LABEL  # numpy only, no TensorFlow
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import export as export_lib
from fcn8s_tf.training import distribute
from fcn8s_tf.training import step as step_lib

from bench import flops as flops_lib
from bench import protocol


def model(progress, image_size: int, fc_units: int, num_classes: int,
          inference_size: List[int], export_base: str, export_dtypes: List[str]) -> Dict:
    """FLOPs of the training and inference shapes, the SavedModel exported in each of
    export_dtypes (under export_base/<dtype>), and what --precision=auto picks on this machine."""
    kwargs = dict(num_classes=num_classes, fc_units=fc_units)
    shape = (image_size, image_size, 3)
    net = model_lib.build_fcn8s(input_shape=shape, **kwargs)
    train = flops_lib.count_flops(net)
    profiled = flops_lib.profiler_forward_flops(net, (1,) + shape)
    keras.backend.clear_session()
    net = model_lib.build_fcn8s(input_shape=tuple(inference_size) + (3,), **kwargs)
    inference = flops_lib.count_flops(net)
    keras.backend.clear_session()
    flops = flops_lib.flops_summary(train, profiled, inference, image_size, inference_size)
    progress(flops=flops)  # kept should an export fail

    net = model_lib.build_fcn8s(**kwargs)  # dynamic (None, None): what is served
    exports = {}
    for dtype in export_dtypes:
        start = time.perf_counter()
        path = export_lib.export_saved_model(net, os.path.join(export_base, dtype), version=1,
                                             model_kwargs=kwargs, precision=dtype)
        export_s = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(path) for f in files)
        exports[dtype] = {"path": path, "seconds": export_s, "size_mb": size / 2**20}
        progress(exports=exports)
    train_policy, train_why = precision_lib.resolve_precision("auto")
    export_dtype, export_why = precision_lib.resolve_export_precision("auto")
    return {"flops": flops, "exports": exports,
            "auto": {"train": train_policy, "train_why": train_why, "export": export_dtype,
                     "export_why": export_why}}


# -------------------------------------------------------------------------------- training step --
def _synthetic_batches(batch_size: int, image_size: int, num_classes: int, seed: int):
    """Random uint8 images and labels with a void column every 16 pixels, as the host pipeline
    delivers them (base size = crop size), repeated forever."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (batch_size, image_size, image_size, 1), dtype=np.uint8)
    labels[:, :, ::16] = IGNORE_LABEL
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def _build_train_step(precision: str, xla: bool, input_shape: str, batch_size: int,
                      image_size: int, fc_units: int, num_classes: int, seed: int):
    """(step function, distributed iterator, build seconds) as fcn8s_tf.train sets them up."""
    config = config_lib.TrainConfig(
        train_data="", workdir="", base_size=image_size, crop_size=image_size,
        num_classes=num_classes, backbone_weights=None, fc_units=fc_units,
        batch_size=batch_size, precision=precision, xla=xla, seed=seed,
        fixed_input_shape=(input_shape == "fixed"))
    strategy = distribute.make_strategy()
    start = time.perf_counter()
    with strategy.scope():
        net, optimizer = step_lib.build_model_and_optimizer(config, 10**6)
    build_s = time.perf_counter() - start
    built_shape = list(net.inputs[0].shape[1:3])
    expected = [image_size] * 2 if input_shape == "fixed" else [None, None]
    if built_shape != expected:
        raise RuntimeError(f"asked for a {input_shape} model, train.build_model_and_optimizer "
                           f"built input size {built_shape}")
    dataset = _synthetic_batches(batch_size, image_size, num_classes, seed)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    return step_lib.make_train_step(strategy, net, optimizer, config), iterator, build_s


def train(progress, precision: str, xla: bool, input_shape: str, batch_size: int,
          image_size: int, fc_units: int, num_classes: int, repeats: int,
          deadline_unix: float, seed: int = 0) -> Dict:
    """Times training steps through training/step.py's make_train_step, as fcn8s_tf.train runs them.

    Records the build time and each step's wall and CPU seconds through `progress` (so a child
    killed at its deadline still reports them); sweep.summarise_train_entry turns them into
    figures.
    """
    keras.mixed_precision.set_global_policy(precision)  # as train.train() does, before building
    try:
        train_step, iterator, build_s = _build_train_step(
            precision, xla, input_shape, batch_size, image_size, fc_units, num_classes, seed)

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
    return {}  # progress() recorded everything; sweep.summarise_train_entry derives the figures


# ----------------------------------------------------------------------------- oneDNN kernels --
def _verbose_lines(run, path: str) -> List[str]:
    """Runs run() with the process's stdout (fd 1, where oneDNN's verbose mode prints) going to
    path; returns the lines written."""
    import ctypes  # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    saved = os.dup(1)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            run()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def kernels(progress, precision: str, batch_size: int, image_size: int, fc_units: int,
            num_classes: int, steps: int, seed: int = 0) -> Dict:
    """Where a training step's time goes: oneDNN's own timing of every primitive it executes
    (ONEDNN_VERBOSE=1), per primitive, propagation kind and implementation, per step.

    Answers the targets' "why" when the step stays short of the matmul ceiling: the kernel that
    limits it (on the AMD EPYC of BENCHMARKS.md, the bf16 weight-gradient convolution). The
    variable is set before this child's first oneDNN primitive runs, which is when oneDNN reads
    it; a child that runs nothing else.
    """
    os.environ["ONEDNN_VERBOSE"] = "1"
    keras.mixed_precision.set_global_policy(precision)
    try:
        train_step, iterator, _ = _build_train_step(
            precision, False, "fixed", batch_size, image_size, fc_units, num_classes, seed)
        log = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"onednn_verbose_{os.getpid()}.log")
        # The first step traces and creates the primitives: its lines are not a step's.
        _verbose_lines(lambda: float(train_step(next(iterator), tf.constant(0, tf.int64))[0]), log)

        def timed():
            for step in range(steps):
                float(train_step(next(iterator), tf.constant(step + 1, tf.int64))[0])

        start = time.perf_counter()
        lines = _verbose_lines(timed, log)
        step_s = (time.perf_counter() - start) / steps
        os.remove(log)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    by_kernel: Dict[str, float] = {}
    for line in lines:
        fields = line.split(",")
        # onednn_verbose,v1,primitive,exec,cpu,<primitive>,<implementation>,<prop kind>,...,<ms>
        if len(fields) > 8 and fields[0] == "onednn_verbose" and fields[3] == "exec":
            key = f"{fields[5]} {fields[7]} ({fields[6]})"
            by_kernel[key] = by_kernel.get(key, 0.0) + float(fields[-1]) / 1000.0 / steps
    if not by_kernel:
        raise RuntimeError("oneDNN printed no verbose lines (not a oneDNN build, or ONEDNN_VERBOSE "
                           "was read before this task set it)")
    top = sorted(by_kernel.items(), key=lambda item: -item[1])
    return {"precision": precision, "batch_size": batch_size, "step_s": step_s,
            "onednn_s": sum(by_kernel.values()),
            "kernels": [{"kernel": k, "s_per_step": v} for k, v in top[:8]]}


# ------------------------------------------------------------------------------------ inference --
def serve(progress, export_path: str, image_path: str, repeats: int,
          deadline_unix: float = math.inf) -> Dict:
    """ms per image through an exported SavedModel's serving_uint8 and serving_default, loaded as
    TF Serving would, and the compute dtype its `metadata` signature names."""
    start = time.perf_counter()
    loaded = tf.saved_model.load(export_path)
    load_s = time.perf_counter() - start
    metadata = loaded.signatures[serving.SIGNATURE_METADATA](
        **{serving.METADATA_INPUT: tf.constant(0)})
    precision = metadata["precision"].numpy().decode()  # what the export says it computes in
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
    results = {"load_s": load_s, "image_size": [height, width], "precision": precision}
    progress(**results)
    for name, (fn, kwargs, timed_calls) in calls.items():
        times = []
        for _ in range(timed_calls + 1):  # the first call is untimed (graph set-up)
            start = time.perf_counter()
            labels = fn(**kwargs)["labels"].numpy()
            times.append(time.perf_counter() - start)
            if time.time() + times[-1] > deadline_unix:
                break
        if labels.shape != (1, height, width):
            raise RuntimeError(f"{name} returned labels of shape {labels.shape}, expected "
                               f"(1, {height}, {width})")
        timed = times[1:] or times[:1]
        results[name] = {"ms_per_image": statistics.median(timed) * 1000,
                         "calls_ms": [t * 1000 for t in timed],
                         "time_source": (f"median of {len(timed)} timed call(s)" if times[1:]
                                         else "first call only (graph set-up included): an "
                                              "upper bound")}
        progress(**{name: results[name]})
    return results


def _time_forward(precision: str, xla: bool, images: np.ndarray, fc_units: int,
                  num_classes: int, repeats: int, deadline_unix: float) -> Dict:
    """First call and median timed call (ms) of model(images, training=False) under a policy."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        net = model_lib.build_fcn8s(num_classes=num_classes, fc_units=fc_units)  # any size
        forward = tf.function(lambda x: net(x, training=False), jit_compile=xla)
        compute_dtype = keras.mixed_precision.global_policy().compute_dtype
        inputs = pixels.preprocess(images, compute_dtype)
        times = []
        for i in range(repeats + 1):  # the first call traces (and compiles, with XLA)
            start = time.perf_counter()
            logits = forward(inputs).numpy()
            times.append(time.perf_counter() - start)
            if time.time() + times[-1] > deadline_unix:
                break
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    if logits.shape != images.shape[:3] + (num_classes,):
        raise RuntimeError(f"logits of shape {logits.shape} for images {images.shape}")
    timed = times[1:] or times[:1]
    return {"precision": precision, "compute_dtype": compute_dtype, "xla": xla,
            "first_ms": times[0] * 1000,
            "ms": statistics.median(timed) * 1000, "calls_ms": [t * 1000 for t in timed],
            "time_source": (f"median of {len(timed)} timed call(s)" if times[1:] else
                            "first call only (includes tracing/compilation): an upper bound")}


def forward(progress, configs: List[Dict], height: int, width: int, fc_units: int,
            num_classes: int, repeats: int, deadline_unix: float, seed: int = 0) -> Dict:
    """The Keras model's forward pass on one (height, width) image, per {"precision", "xla"}.

    The any-size model that evaluation and export use, called in a tf.function (with
    jit_compile=xla) on a preprocessed random image: the same work as torch_tasks' forward.
    precision is a Keras policy: "bfloat16" is the net a bfloat16 export serves (model/fcn8s.py
    serving_twin), so XLA on vs off here says whether XLA would speed up that export.
    """
    images = np.random.default_rng(seed).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    runs = []
    for cfg in configs:
        try:
            runs.append(_time_forward(cfg["precision"], cfg["xla"], images, fc_units,
                                      num_classes, repeats, deadline_unix))
        except Exception as e:  # pylint: disable=broad-except  (recorded, e.g. an XLA failure)
            runs.append(dict(cfg, error=protocol.short_error(e)))
        progress(runs=runs)
    return {"runs": runs, "image_size": [height, width]}
