"""Training: `python -m fcn8s_tf.train --flagfile=configs/voc_fcn8s.flags`.

One code path for one CPU, one GPU, MirroredStrategy over the local GPUs and
MultiWorkerMirroredStrategy from TF_CONFIG. A custom loop (not `model.fit`, see DESIGN.md):

    input (host, tf.data) -> per replica: augment on the device, forward, masked CE sum and valid
    count -> gradients of (replica loss sum / GLOBAL valid count), summed over replicas by the
    optimizer -> Adam update.

Stages below: config, strategy, input, model + optimizer, update step, evaluation, checkpoints,
the loop.
"""

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from fcn8s_tf import augment
from fcn8s_tf import export as export_lib
from fcn8s_tf import flags as _flags  # noqa: F401  (defines the training flags)
from fcn8s_tf import input_pipeline
from fcn8s_tf import metrics
from fcn8s_tf import model as model_lib
from fcn8s_tf import voc

FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------- config --
@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; built from flags by main(), or directly by tests."""
    train_data: str
    workdir: str
    val_data: str = ""
    base_size: int = 321
    crop_size: int = 321
    scale_range: Tuple[float, float] = (0.5, 1.3)
    flip_prob: float = 0.5
    shuffle_buffer: int = 1000
    num_classes: int = voc.NUM_CLASSES
    backbone_weights: Optional[str] = "imagenet"
    init_from: Optional[str] = None
    fc_units: int = 4096
    learnable_upsampling: bool = False
    dropout_rate: float = 0.5
    skip_scales: Tuple[float, float] = (model_lib.POOL4_SCALE, model_lib.POOL3_SCALE)
    train_backbone: bool = True
    fixed_input_shape: bool = True
    train_steps: int = 0
    epochs: float = 0.0
    batch_size: int = 8
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    amsgrad: bool = False
    precision: str = "float32"
    xla: bool = False
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 2000
    eval_max_images: int = 0
    tb_images: int = 3
    export: bool = True

    def model_kwargs(self) -> Dict:
        """The build_fcn8s arguments, also written to <workdir>/model_config.json."""
        return dict(num_classes=self.num_classes, fc_units=self.fc_units,
                    learnable_upsampling=self.learnable_upsampling, dropout_rate=self.dropout_rate,
                    skip_scales=list(self.skip_scales), train_backbone=self.train_backbone)


def config_from_flags() -> TrainConfig:
    """Reads FLAGS into a TrainConfig, rejecting values the flag parser cannot check alone."""
    try:
        scale_range = tuple(float(v) for v in FLAGS.scale_range)
    except ValueError:
        raise app.UsageError(f"--scale_range must be two numbers min,max; got {FLAGS.scale_range}")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise app.UsageError(
            f"--scale_range must be min,max with 0 < min <= max; got {scale_range}")
    try:
        skip_scales = tuple(float(v) for v in FLAGS.skip_scales)
    except ValueError:
        raise app.UsageError(f"--skip_scales must be two numbers pool4,pool3; got "
                             f"{FLAGS.skip_scales}")
    if len(skip_scales) != 2:
        raise app.UsageError(f"--skip_scales must be two numbers pool4,pool3; got {skip_scales}")
    if FLAGS.train_steps == 0 and FLAGS.epochs == 0:
        raise app.UsageError("Set --train_steps or --epochs (both are 0).")
    weights = FLAGS.backbone_weights
    if weights.lower() == "none":
        weights = None
    kwargs = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainConfig)
                        if f.name not in ("scale_range", "skip_scales", "backbone_weights")}
    kwargs["val_data"] = kwargs["val_data"] or ""
    return TrainConfig(scale_range=scale_range, skip_scales=skip_scales, backbone_weights=weights,
                       **kwargs)


# -------------------------------------------------------------------------------------- strategy --
def make_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy.

    MirroredStrategy() takes every visible GPU, or the CPU when there is none, so the same code runs
    on a laptop and an 8-GPU box. `devices` overrides the local device list (tests split the CPU).
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    num_workers = sum(len(v) for k, v in tf_config.get("cluster", {}).items()
                                        if k in ("chief", "worker"))
    if num_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and the export."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs


# ----------------------------------------------------------------------------------------- input --
def count_examples(file_pattern: str) -> int:
    """Examples behind a pattern: from the converter's manifest.json if present, else counted."""
    files = input_pipeline.list_files(file_pattern)
    manifest_path = os.path.join(os.path.dirname(files[0]), "manifest.json")
    if tf.io.gfile.exists(manifest_path):
        with tf.io.gfile.GFile(manifest_path) as f:
            manifest = json.load(f)
        counts = {os.path.basename(s["file"]): s["count"]
                  for split in manifest.get("splits", {}).values()
                  for s in split.get("shards", [])}
        if all(os.path.basename(p) in counts for p in files):
            return sum(counts[os.path.basename(p)] for p in files)
    return sum(1 for _ in tf.data.TFRecordDataset(files))


def resolve_train_steps(config: TrainConfig) -> int:
    if config.train_steps:
        return config.train_steps
    num_examples = count_examples(config.train_data)
    return max(1, math.ceil(config.epochs * num_examples / config.batch_size))


# ------------------------------------------------------------------------------ model, optimizer --
def make_learning_rate(config: TrainConfig, total_steps: int):
    """Linear warm-up to the peak, then constant, poly (power 0.9) or cosine decay to zero."""
    decay_steps = max(1, total_steps - config.warmup_steps)
    if config.lr_schedule == "constant":
        decay = config.learning_rate
    elif config.lr_schedule == "poly":
        decay = keras.optimizers.schedules.PolynomialDecay(
            config.learning_rate, decay_steps, end_learning_rate=0.0, power=0.9)
    elif config.lr_schedule == "cosine":
        decay = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps)
    else:
        raise ValueError(
            f"lr_schedule must be constant, poly or cosine; got {config.lr_schedule!r}")
    if not config.warmup_steps and config.lr_schedule == "constant":
        return config.learning_rate
    return _WarmupThen(config.learning_rate, config.warmup_steps, decay)


class _WarmupThen(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then `after` (a schedule or constant) from the warm-up's end."""

    def __init__(self, peak, warmup_steps, after):
        self.peak, self.warmup_steps, self.after = peak, warmup_steps, after

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(1, self.warmup_steps)
        after = (self.after(step - self.warmup_steps) if callable(self.after)
                          else tf.constant(self.after, tf.float32))
        return tf.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def build_model_and_optimizer(config: TrainConfig, total_steps: int):
    """Builds FCN-8s and Adam (call inside strategy.scope())."""
    keras.utils.set_random_seed(config.seed)
    # Built for the crop size: `make bench` measured that faster than (None, None) inputs
    # (BENCHMARKS.md). Evaluation and export use an any-size twin (export.serving_twin).
    input_shape = ((config.crop_size, config.crop_size, 3) if config.fixed_input_shape
                   else (None, None, 3))
    model = model_lib.build_fcn8s(weights=config.backbone_weights, input_shape=input_shape,
                                  **config.model_kwargs())
    optimizer = keras.optimizers.Adam(
        learning_rate=make_learning_rate(config, total_steps), beta_1=config.adam_beta1,
        beta_2=config.adam_beta2, epsilon=config.adam_epsilon, amsgrad=config.amsgrad,
        weight_decay=config.weight_decay or None)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # Create the slot variables now, in the strategy's scope: created lazily inside the first
    # strategy.run they end up in a tf.cond that MirroredStrategy cannot initialise.
    optimizer.build(model.trainable_variables)
    return model, optimizer


# ----------------------------------------------------------------------------------- update step --
def masked_cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Sum of per-pixel cross-entropy over non-ignored pixels, and their count.

    Args:
        logits: (B, H, W, C) float.
        labels: (B, H, W) or (B, H, W, 1) integer, IGNORE_LABEL where void.
    Returns:
        (loss_sum, valid_count), float32 scalars.
    """
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == 4:
        labels = tf.squeeze(labels, -1)
    valid = tf.not_equal(labels, voc.IGNORE_LABEL)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=tf.cast(logits, tf.float32))
    valid_f = tf.cast(valid, tf.float32)
    return tf.reduce_sum(ce * valid_f), tf.reduce_sum(valid_f)


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model, optimizer,
                    config: TrainConfig) -> Callable:
    """Returns train_step(distributed_batch, step) -> (global mean loss, global valid pixels)."""
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def model_step(images, labels, global_count):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss_sum, _ = masked_cross_entropy(logits, labels)
            # Dividing by the GLOBAL count, then summing gradients over replicas, gives exactly the
            # gradient of the mean over every valid pixel of the global batch (DESIGN.md, Loss).
            loss = loss_sum / tf.maximum(global_count, 1.0)
            scaled = optimizer.scale_loss(loss) if loss_scaled else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        return loss_sum, grads

    if config.xla:
        # Only the model step: ImageProjectiveTransformV3 (augmentation) has no XLA kernel.
        model_step = tf.function(model_step, jit_compile=True)

    def replica_step(images, labels, step):
        ctx = tf.distribute.get_replica_context()
        # Stateless augmentation seeded by (seed, step, replica): reproducible, and a resumed run
        # continues the same random stream without saving generator state. Determinism ends at the
        # host pipeline's parallel decode order and at non-deterministic GPU kernels.
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        aug_seed = tf.stack([tf.cast(config.seed, tf.int64),
                             tf.cast(step, tf.int64) * 1024 + replica])
        images, labels = augment.augment_batch(
            images, labels, crop_size=(config.crop_size, config.crop_size),
            scale_range=config.scale_range, flip_prob=config.flip_prob, seed=aug_seed,
            dtype=compute_dtype)
        labels = tf.cast(labels, tf.int32)
        local_count = tf.reduce_sum(tf.cast(tf.not_equal(labels, voc.IGNORE_LABEL), tf.float32))
        global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
        loss_sum, grads = model_step(images, labels, global_count)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss_sum, local_count

    @tf.function
    def train_step(batch, step):
        loss_sum, count = strategy.run(replica_step, args=(batch[0], batch[1], step))
        loss_sum = strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
        count = strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None)
        return loss_sum / tf.maximum(count, 1.0), count

    return train_step


# ------------------------------------------------------------------------------------ evaluation --
def make_predict_fn(model: keras.Model) -> Callable:
    """(1, H, W, 3) uint8 RGB -> (labels (1, H, W) int32, logits float32); one trace, any size."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def predict(images):
        logits = model(model_lib.preprocess(images), training=False)  # layers cast as they need
        return tf.argmax(logits, axis=-1, output_type=tf.int32), logits

    return predict


def run_evaluation(predict: Callable, config: TrainConfig, keep: int = 0) -> Tuple[Dict, list]:
    """Loss and the reference metrics over the validation records at original resolution.

    Returns the metrics and, for the first `keep` images, (image, label, prediction, name): the
    TensorBoard pictures reuse them instead of predicting those images again.
    """
    dataset = input_pipeline.eval_dataset(config.val_data)
    if config.eval_max_images:
        dataset = dataset.take(config.eval_max_images)
    cm = np.zeros((config.num_classes, config.num_classes), np.int64)
    loss_sum = pixels = 0.0
    kept = []
    for image, label, name in dataset:
        labels, logits = predict(image[tf.newaxis])
        batch_sum, batch_count = masked_cross_entropy(logits, label[tf.newaxis])
        loss_sum += float(batch_sum)
        pixels += float(batch_count)
        cm += metrics.confusion_matrix(label[..., 0], labels[0], config.num_classes).numpy()
        if len(kept) < keep:
            kept.append((image, label, labels[0], name))
    result = metrics.scores(cm)
    result["loss"] = loss_sum / max(pixels, 1.0)
    return result, kept


def write_eval_images(writer, examples: list, step: int) -> None:
    """Input, ground truth and prediction in the VOC palette, from run_evaluation's kept images."""
    palette = tf.constant(voc.VOC_PALETTE)
    with writer.as_default(step=step):
        for i, (image, label, prediction, name) in enumerate(examples):
            truth = tf.gather(palette, tf.cast(label[..., 0], tf.int32))
            pred = tf.gather(palette, prediction)
            panel = tf.concat([image, truth, pred], axis=1)[tf.newaxis]
            tf.summary.image(f"val/{i}_input_truth_prediction", panel,
                             description=f"{name.numpy().decode()}: input | truth | prediction")


# ----------------------------------------------------------------------------------- checkpoints --
def _checkpoint_dir(workdir: str, chief: bool) -> str:
    """Chief writes to <workdir>/checkpoints; other workers to a temp dir they delete (TF's recipe
    for MultiWorkerMirroredStrategy: every worker must take part in the save)."""
    if chief:
        return os.path.join(workdir, "checkpoints")
    return tempfile.mkdtemp(prefix="fcn8s_worker_ckpt_")


def init_model_from(model: keras.Model, source: str, model_kwargs: Dict) -> str:
    """Loads the model weights (not the optimizer, not the step) of a workdir or checkpoint.

    For fine-tuning a run from another one, e.g. the published FCN-8s that
    tools/import_weights.py writes. Where `source` is a workdir, its model_config.json must agree
    with this run on what the weights alone do not say (skip_scales) or cannot fit otherwise.

    Args:
        model: the freshly built model (inside the strategy's scope).
        source: a workdir (model_config.json + checkpoints/; its newest checkpoint), a directory of
            checkpoints, or a checkpoint path (the prefix before .index).
        model_kwargs: this run's build_fcn8s arguments (TrainConfig.model_kwargs()).
    Returns:
        The checkpoint path loaded.
    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the source's model_config.json disagrees, or a model weight is missing from
            the checkpoint or has another shape.
    """
    config_path = os.path.join(source, "model_config.json")
    if tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as f:
            source_kwargs = json.load(f)
        differ = [f"--{key}={_flag_text(model_kwargs[key])} here, {_flag_text(source_kwargs[key])}"
                  f" there" for key in ("num_classes", "fc_units", "skip_scales")
                  if key in source_kwargs and source_kwargs[key] != model_kwargs[key]]
        if differ:
            raise ValueError(f"--init_from={source}: {config_path} describes another net: "
                             f"{'; '.join(differ)}. Set those flags as {config_path} says.")
    if tf.io.gfile.isdir(source):
        checkpoint_dir = os.path.join(source, "checkpoints")
        if not tf.io.gfile.isdir(checkpoint_dir):
            checkpoint_dir = source
        path = tf.train.latest_checkpoint(checkpoint_dir)
        if path is None:
            raise FileNotFoundError(f"--init_from={source}: no checkpoint in {checkpoint_dir}")
    elif tf.io.gfile.exists(source + ".index"):
        path = source
    else:
        raise FileNotFoundError(f"--init_from={source}: neither a workdir, a checkpoint "
                                f"directory, nor a checkpoint ({source}.index does not exist)")
    try:
        status = tf.train.Checkpoint(model=model).restore(path)
        status.expect_partial()  # an optimizer or step in the file is not wanted here...
        status.assert_existing_objects_matched()  # ...but every model weight is
    except (AssertionError, ValueError) as e:
        raise ValueError(f"--init_from={source}: {path} does not hold this model's weights: "
                         f"{str(e)[:500]}") from None
    return path


def _flag_text(value) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)


# ------------------------------------------------------------------------------------------ loop --
class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


def train(config: TrainConfig, devices: Optional[Sequence[str]] = None,
          flags_text: str = "") -> Dict:
    """Trains (or resumes) a run in config.workdir; returns the last metrics and paths.

    Args:
        config: the run's settings.
        devices: optional local device list for MirroredStrategy (tests use two logical CPUs).
        flags_text: the resolved flags (flagfile syntax); the chief writes them to
            <workdir>/flags.txt so the run can be replayed with --flagfile.
    Returns:
        dict with "step", "loss", "eval" (the last metrics or None) and "export" (path or None).
    """
    strategy = make_strategy(devices)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch_size={config.batch_size} does not divide evenly over {replicas} "
                         f"replicas; use a multiple of {replicas}.")
    if config.precision != "float32":
        keras.mixed_precision.set_global_policy(config.precision)
    input_pipeline.list_files(config.train_data)  # fail on a bad pattern before building
    if config.val_data:
        input_pipeline.list_files(config.val_data)
    total_steps = resolve_train_steps(config)
    tf.io.gfile.makedirs(config.workdir)
    if chief:
        _write_json(os.path.join(config.workdir, "model_config.json"), config.model_kwargs())
        if flags_text:
            with tf.io.gfile.GFile(os.path.join(config.workdir, "flags.txt"), "w") as f:
                f.write(flags_text)
    logging.info("Strategy %s with %d replica(s); %d steps of global batch %d; policy %s",
                 type(strategy).__name__, replicas, total_steps, config.batch_size,
                 config.precision)

    with strategy.scope():
        model, optimizer = build_model_and_optimizer(config, total_steps)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    ckpt_dir = _checkpoint_dir(config.workdir, chief)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=config.keep_checkpoints)
    # Resume reads the chief's directory on every worker.
    latest = tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints"))
    if latest:
        checkpoint.restore(latest)
        logging.info("Resumed from %s at step %d", latest, int(step_var.numpy()))
        if config.init_from:
            logging.info("--init_from=%s ignored: resuming this run's own checkpoint",
                         config.init_from)
    elif config.init_from:
        loaded = init_model_from(model, config.init_from, config.model_kwargs())
        logging.info("Model weights from %s (--init_from); optimizer and step start fresh", loaded)
    start_step = int(step_var.numpy())

    # The data order is reseeded with the resume step: the tf.data iterator itself is not
    # checkpointed (its shuffle buffer would go into every checkpoint), so a resumed run sees a
    # fresh permutation instead of replaying the epoch it already saw.
    dataset_fn = input_pipeline.train_dataset_fn(
        config.train_data, config.batch_size, base_size=(config.base_size, config.base_size),
        seed=config.seed + start_step, shuffle_buffer=config.shuffle_buffer)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(strategy, model, optimizer, config)

    summary_dir = os.path.join(config.workdir, "tensorboard")
    if chief:
        train_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "train"))
        eval_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "val"))
    else:
        train_writer = eval_writer = tf.summary.create_noop_writer()

    eval_state = {}  # the any-size float32 twin and its traced predict fn, made at first use

    def evaluate_and_log(step: int) -> Dict:
        if "model" not in eval_state:
            eval_state["model"] = export_lib.serving_twin(model, config.model_kwargs())
            eval_state["predict"] = make_predict_fn(eval_state["model"])
        elif eval_state["model"] is not model:
            eval_state["model"].set_weights(model.get_weights())
        t0 = time.time()
        result, examples = run_evaluation(eval_state["predict"], config,
                                          keep=config.tb_images if chief else 0)
        logging.info("step %d  val loss %.4f  mIoU %.4f  pixel acc %.4f  (%.0f s)", step,
                     result["loss"], result["mean_iou"], result["pixel_accuracy"],
                     time.time() - t0)
        with eval_writer.as_default(step=step):
            tf.summary.scalar("loss", result["loss"])
            for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "frequency_weighted_iou"):
                tf.summary.scalar(key, result[key])
            for name, iou in zip(voc.VOC_CLASSES, result["per_class_iou"]):
                if iou is not None and not math.isnan(iou):
                    tf.summary.scalar(f"iou/{name}", iou)
        if examples:
            write_eval_images(eval_writer, examples, step)
        return result

    last_eval, loss_value = None, float("nan")
    window_loss, window_steps, window_start = 0.0, 0, time.time()
    run_start = time.time()
    for step in range(start_step, total_steps):
        batch = next(iterator)
        loss, _ = train_step(batch, tf.constant(step, tf.int64))
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"Loss became {loss_value} at step {step + 1}. Try a lower --learning_rate, "
                f"--precision=float32, or check the labels (values must be "
                f"0..{config.num_classes - 1} or 255).")
        step_var.assign(step + 1)
        window_loss += loss_value
        window_steps += 1
        done = step + 1
        if done % config.log_every == 0 or done == total_steps:
            elapsed = time.time() - window_start
            images_per_s = window_steps * config.batch_size / max(elapsed, 1e-9)
            # Keras evaluates a schedule at optimizer.iterations here (== done).
            lr = float(tf.convert_to_tensor(optimizer.learning_rate))
            eta = (total_steps - done) * elapsed / window_steps
            logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f img/s  eta %s", done, total_steps,
                         window_loss / window_steps, lr, images_per_s, _hms(eta))
            with train_writer.as_default(step=done):
                tf.summary.scalar("loss", window_loss / window_steps)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("images_per_second", images_per_s)
            window_loss, window_steps, window_start = 0.0, 0, time.time()
        if done % config.checkpoint_every == 0 or done == total_steps:
            manager.save(checkpoint_number=done)
        eval_due = (config.eval_every and done % config.eval_every == 0) or done == total_steps
        if config.val_data and chief and eval_due:
            last_eval = evaluate_and_log(done)

    if not chief:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    logging.info("Trained %d steps in %s", total_steps - start_step, _hms(time.time() - run_start))
    export_path = None
    if config.export and chief:
        # The eval twin, when there is one, already holds the final weights (the last step always
        # evaluates) in the served form; otherwise export_saved_model builds that twin itself.
        export_path = export_lib.export_saved_model(eval_state.get("model", model),
                                                    os.path.join(config.workdir, "export"),
                                                    model_kwargs=config.model_kwargs())
        logging.info("Exported SavedModel to %s", export_path)
    if last_eval is not None:
        _write_json(os.path.join(config.workdir, "val_metrics.json"), last_eval)
    return {"step": int(step_var.numpy()), "loss": loss_value, "eval": last_eval,
                    "export": export_path}


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _write_json(path: str, payload: Dict) -> None:
    """Writes JSON atomically (temp file + rename), so a crash never leaves half a file."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    # Only the training flags: absl's own (logging etc.) would clutter a replayable flagfile.
    flags_text = "".join(f.serialize() + "\n"
                         for f in FLAGS.get_flags_for_module(_flags) if f.value is not None)
    logging.info("Flags:\n%s", flags_text)
    try:
        result = train(config, flags_text=flags_text)
    except (NonFiniteLossError, ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        raise SystemExit(f"fcn8s_tf.train: {e}") from None
    print(json.dumps({k: v for k, v in result.items() if k != "eval"}, default=_json_default))


if __name__ == "__main__":
    app.run(main)
