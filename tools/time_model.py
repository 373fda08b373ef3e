r"""Times FCN-8s forward passes and train steps on one image, per precision policy.

    .venv/bin/python tools/time_model.py --size=320 --runs=5 --warmup=2

Builds the full-size net (weights=None: timing does not depend on the values), then for each policy
runs `warmup` untimed calls and reports the median of `runs` timed ones, for a forward pass
(training=False) and a train step (Adam, sparse cross-entropy on logits, gradients of all
trainable variables; the bilinear upsampling layers are fixed, as in the reference).
"""

import platform
import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

import keras

from fcn8s_tf import model as model_lib

_SIZE = flags.DEFINE_integer("size", 320, "Image height and width in pixels.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call.")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed calls per measurement; the median is reported.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls first (tracing, allocator warm-up).")
_POLICIES = flags.DEFINE_list(
    "policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to time."
)
_FC_UNITS = flags.DEFINE_integer("fc_units", 4096, "fc6/fc7 width; 4096 is the real net.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 21, "Output classes.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "Compile the timed functions with XLA.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for weights and the random image.")


def _median_seconds(fn, warmup: int, runs: int) -> float:
    """Median wall time of `runs` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_model(
    policy: str,
    size: int,
    batch: int,
    warmup: int,
    runs: int,
    fc_units: int = 4096,
    num_classes: int = 21,
    jit_compile: bool = False,
    seed: int = 0,
) -> dict:
    """Median seconds of a forward pass and of a train step under a Keras dtype policy.

    Returns:
      {"policy", "forward_s", "train_step_s", "build_s"}.
    """
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        model = model_lib.build_fcn8s(num_classes=num_classes, fc_units=fc_units)
        build_s = time.perf_counter() - start

        rng = np.random.default_rng(seed)
        rgb = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
        images = model_lib.preprocess(rgb)
        labels = tf.constant(rng.integers(0, num_classes, size=(batch, size, size)), tf.int32)

        optimizer = keras.optimizers.Adam(learning_rate=1e-5)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function(jit_compile=jit_compile)
        def forward(x):
            return model(x, training=False)

        @tf.function(jit_compile=jit_compile)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        # .numpy() waits for the result, so each timing covers the whole computation.
        forward_s = _median_seconds(lambda: forward(images).numpy(), warmup, runs)
        train_step_s = _median_seconds(lambda: train_step(images, labels).numpy(), warmup, runs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    return {
        "policy": policy,
        "forward_s": forward_s,
        "train_step_s": train_step_s,
        "build_s": build_s,
    }


def main(argv):
    del argv
    print(
        f"TF {tf.__version__}, Keras {keras.__version__}, {platform.machine()}, "
        f"devices: {[d.name for d in tf.config.list_logical_devices()]}"
    )
    print(
        f"FCN-8s, {_NUM_CLASSES.value} classes, fc_units={_FC_UNITS.value}, batch {_BATCH.value} x "
        f"{_SIZE.value}x{_SIZE.value}, median of {_RUNS.value} after {_WARMUP.value} warm-up, "
        f"jit_compile={_JIT_COMPILE.value}"
    )
    rows = []
    for policy in _POLICIES.value:
        rows.append(
            time_model(
                policy,
                size=_SIZE.value,
                batch=_BATCH.value,
                warmup=_WARMUP.value,
                runs=_RUNS.value,
                fc_units=_FC_UNITS.value,
                num_classes=_NUM_CLASSES.value,
                jit_compile=_JIT_COMPILE.value,
                seed=_SEED.value,
            )
        )
    print(f"{'policy':<16}{'forward s':>12}{'train step s':>15}{'build s':>10}")
    for row in rows:
        print(
            f"{row['policy']:<16}{row['forward_s']:>12.3f}{row['train_step_s']:>15.3f}"
            f"{row['build_s']:>10.1f}"
        )


if __name__ == "__main__":
    app.run(main)
