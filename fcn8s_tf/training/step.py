"""The update step of training: the learning-rate schedule, the model and optimizer, the masked
cross-entropy over the global batch's valid pixels, and the replica step under tf.distribute.

The loss (docs/DESIGN.md, "The loss is a global-pixel mean"): each replica sums the cross-entropy
of its valid pixels and counts them; the gradient of (replica sum / GLOBAL valid count), summed
over replicas by the optimizer, is the gradient of the mean over every valid pixel of the batch.
"""

import math
from typing import Callable, Tuple

import keras
import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf.config import TrainConfig
from fcn8s_tf.data import augment
from fcn8s_tf.data import records
from fcn8s_tf.model import fcn8s as model_lib


def resolve_train_steps(config: TrainConfig) -> int:
    """--train_steps, or --epochs over the training records."""
    if config.train_steps:
        return config.train_steps
    num_examples = records.count_examples(config.train_data)
    return max(1, math.ceil(config.epochs * num_examples / config.batch_size))


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
        after = (keras.optimizers.schedules.serialize(self.after)
                 if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule)
                 else self.after)
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "after": after}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        return cls(config["peak"], config["warmup_steps"], after)


def build_model_and_optimizer(config: TrainConfig, total_steps: int):
    """Builds FCN-8s and Adam (call inside strategy.scope())."""
    keras.utils.set_random_seed(config.seed)
    # Built for the crop size: `make bench` measured that faster than (None, None) inputs
    # (BENCHMARKS.md). Evaluation and export use an any-size twin (model/fcn8s.py serving_twin).
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
    valid = tf.not_equal(labels, class_info.IGNORE_LABEL)
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
            # gradient of the mean over every valid pixel of the global batch (docs/DESIGN.md,
            # "The loss is a global-pixel mean").
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
        # continues the same random stream without saving generator state. The host pipeline is
        # deterministic too (ordered parallel decode). Determinism ends at non-deterministic GPU
        # kernels, at a resume (the data order is reseeded), and across CPU models (other kernels
        # round differently).
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        aug_seed = tf.stack([tf.cast(config.seed, tf.int64),
                             tf.cast(step, tf.int64) * 1024 + replica])
        images, labels = augment.augment_batch(
            images, labels, crop_size=(config.crop_size, config.crop_size),
            scale_range=config.scale_range, flip_prob=config.flip_prob, seed=aug_seed,
            dtype=compute_dtype)
        labels = tf.cast(labels, tf.int32)
        local_count = tf.reduce_sum(tf.cast(tf.not_equal(labels, class_info.IGNORE_LABEL),
                                            tf.float32))
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
