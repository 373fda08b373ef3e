"""The training run: `train(config)`, what `python -m fcn8s_tf.train --flagfile=...` runs.

One code path for one CPU, one GPU, MirroredStrategy over the local GPUs and
MultiWorkerMirroredStrategy from TF_CONFIG. A custom loop (not `model.fit`, see docs/DESIGN.md):

    input (host, tf.data) -> per replica: augment on the device, forward, masked CE sum and valid
    count -> gradients of (replica loss sum / GLOBAL valid count), summed over replicas by the
    optimizer -> Adam update.

Stages below: evaluation, workdir, the run (build and restore, the loop, the end). The schedule,
the loss and the replica step are training/step.py's; settings live in config.py, flags in
flags.py (read only by fcn8s_tf/train.py), strategies and preemption in training/distribute.py,
the run directory's files in training/workdir.py.
"""

import contextlib
import dataclasses
import math
import os
import shutil
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import keras
import tensorflow as tf

from fcn8s_tf import class_info
from fcn8s_tf import config as config_lib
from fcn8s_tf import files
from fcn8s_tf import precision as precision_lib
from fcn8s_tf import signals as signals_lib
from fcn8s_tf.config import TrainConfig
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data import records
from fcn8s_tf.evaluation import evaluator as evaluate_lib
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.model import run_dir
from fcn8s_tf.serving import export as export_lib
from fcn8s_tf.training import distribute
from fcn8s_tf.training import step as step_lib
from fcn8s_tf.training import workdir as workdir_lib


# ----------------------------------------------------------------------------------------- input --


# ------------------------------------------------------------------------------ model, optimizer --


# ----------------------------------------------------------------------------------- update step --


# ------------------------------------------------------------------------------------ evaluation --
class _LossAndPictures:
    """Evaluation hook: masked cross-entropy over the split, and the first `keep` images for TB."""

    def __init__(self, keep: int):
        self.keep, self.kept = keep, []
        self.loss_sum = self.pixels = 0.0

    def __call__(self, index, image, label, outputs, name):
        loss_sum, count = step_lib.masked_cross_entropy(outputs["logits"][tf.newaxis],
                                                        label[tf.newaxis])
        self.loss_sum += float(loss_sum)
        self.pixels += float(count)
        if index < self.keep:
            self.kept.append((image, label, outputs["labels"], name))

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.pixels, 1.0)


def write_eval_images(writer, examples: list, step: int, palette=class_info.VOC_PALETTE) -> None:
    """Input, ground truth and prediction in the VOC palette, from _LossAndPictures's images."""
    palette = tf.constant(palette)
    with writer.as_default(step=step):
        for i, (image, label, prediction, name) in enumerate(examples):
            truth = tf.gather(palette, tf.cast(label[..., 0], tf.int32))
            pred = tf.gather(palette, prediction)
            panel = tf.concat([image, truth, pred], axis=1)[tf.newaxis]
            tf.summary.image(f"val/{i}_input_truth_prediction", panel,
                             description=f"{name}: input | truth | prediction")


# ----------------------------------------------------------------------------------- checkpoints --
def _check_workdir(config: TrainConfig) -> None:
    """Fails, before anything is written, when the workdir or --init_from holds another net."""
    if run_dir.latest_checkpoint(config.workdir):
        differ = workdir_lib.model_config_differences(config.workdir, config.model_kwargs())
        if differ:
            raise ValueError(f"{config.workdir} holds a run of another net: {'; '.join(differ)}. "
                             "Use those values to resume it, or another --workdir.")
    if config.init_from:
        workdir_lib.init_checkpoint(config.init_from, config.model_kwargs())


def _write_run_files(config: TrainConfig, flags_text: str, classes: class_info.ClassInfo) -> None:
    """(Chief, holding the lock) model_config.json, flags.txt, and no temp folder of a killed
    run."""
    tf.io.gfile.makedirs(config.workdir)
    run_dir.write_model_config(config.workdir, config.model_kwargs(), classes)
    if flags_text:
        with tf.io.gfile.GFile(run_dir.path(config.workdir, run_dir.FLAGS_FILE), "w") as f:
            f.write(flags_text)
    files.remove_stale_temp_dirs(
        run_dir.path(config.workdir, run_dir.CHECKPOINT_DIR),
        lambda name: name.endswith("_temp"), log=logging.warning)


# ------------------------------------------------------------------------------------------ loop --
class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


class _InTrainingEval:
    """Evaluates the training model with the one evaluator (fcn8s_tf/evaluation/evaluator.py) and
    logs it.

    Uses an any-size float32 twin of the model (model/fcn8s.py serving_twin), built at first use and
    kept in sync by copying the weights; the export at the end reuses it.
    """

    def __init__(self, model: keras.Model, config: TrainConfig, writer, chief: bool,
                 classes: class_info.ClassInfo):
        self.model, self.config, self.writer, self.chief = model, config, writer, chief
        self.twin = self.predict_fn = None
        self.classes = classes
        self.class_names = classes.names
        self.split_size = None  # images in the validation split, counted once if needed

    def __call__(self, step: int) -> Dict:
        config = self.config
        if self.twin is None:
            self.twin = model_lib.serving_twin(self.model, config.model_kwargs())
            self.predict_fn = evaluate_lib.model_predict_fn(self.twin, with_logits=True)
        elif self.twin is not self.model:
            self.twin.set_weights(self.model.get_weights())
        hook = _LossAndPictures(config.tb_images if self.chief else 0)
        t0 = time.time()
        result, _ = evaluate_lib.evaluate(
            self.predict_fn,
            input_pipeline.eval_dataset(config.val_data, num_classes=config.num_classes),
            config.num_classes,
            max_images=config.eval_max_images, hooks=[hook], log_every=0)
        result["loss"] = hook.loss
        logging.info("step %d  val loss %.4f  mIoU %.4f  pixel acc %.4f  on %s  (%.0f s)", step,
                     result["loss"], result["mean_iou"], result["pixel_accuracy"],
                     self._scope(result["num_images"]), time.time() - t0)
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", result["loss"])
            for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "frequency_weighted_iou"):
                tf.summary.scalar(key, result[key])
            for name, iou in zip(self.class_names, result["per_class_iou"]):
                if iou is not None:
                    tf.summary.scalar(f"iou/{name}", iou)
        if hook.kept:
            write_eval_images(self.writer, hook.kept, step, self.classes.palette)
        return result

    def _scope(self, scored: int) -> str:
        """'all 48 images', or '12 of 48 images (--eval_max_images=12)'."""
        if not self.config.eval_max_images:
            return f"all {scored} images"
        if self.split_size is None:
            self.split_size = records.count_examples(self.config.val_data)
        if scored >= self.split_size:
            return f"all {scored} images"
        return (f"{scored} of {self.split_size} images "
                f"(--eval_max_images={self.config.eval_max_images})")


def train(config: TrainConfig, devices: Optional[Sequence[str]] = None,
          flags_text: str = "") -> Dict:
    """Trains (or resumes) a run in config.workdir; returns the last metrics and paths.

    Keras's mixed-precision policy is process-global: it is set to config.precision (resolved
    first when "auto": precision.resolve_precision) for the run and restored afterwards, so models
    built later in the same process are not affected.

    Args:
        config: the run's settings.
        devices: optional local device list for MirroredStrategy (tests use two logical CPUs).
        flags_text: the resolved flags (flagfile syntax); the chief writes them to
            <workdir>/flags.txt so the run can be replayed with --flagfile.
    Returns:
        dict with "step", "loss", "eval" (the last metrics or None), "export" (path or None) and
        "finished_before" (True when the workdir already held the final step: nothing was done).
    Raises:
        distribute.TrainingInterrupted: SIGTERM/SIGINT; a checkpoint of the current step was saved.
    """
    config, classes = config_lib.resolve_classes(config)
    logging.info("%d classes: %s", classes.num_classes, ", ".join(classes.names))
    policy, why = precision_lib.resolve_precision(config.precision)
    logging.info("Precision %s (--precision=%s: %s)", policy, config.precision, why)
    config = dataclasses.replace(config, precision=policy)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        return _train(config, devices, flags_text, classes)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: TrainConfig, devices: Optional[Sequence[str]], flags_text: str,
           classes: class_info.ClassInfo) -> Dict:
    """train() under the run's precision policy: checks, then the run with the workdir locked."""
    strategy = distribute.make_strategy(devices)
    chief = distribute.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch_size={config.batch_size} does not divide evenly over {replicas} "
                         f"replicas; use a multiple of {replicas}.")
    records.list_files(config.train_data)  # a bad pattern or a broken file fails now
    if config.val_data:
        records.list_files(config.val_data)
    total_steps = step_lib.resolve_train_steps(config)
    _check_workdir(config)  # everything that can be wrong fails before the workdir changes
    lock = (workdir_lib.RunLock(config.workdir, log=logging.warning) if chief
            else contextlib.nullcontext())
    with lock, signals_lib.StopFlag() as signals:
        if chief:
            _write_run_files(config, flags_text, classes)
        logging.info("Strategy %s with %d replica(s); %d steps of global batch %d; policy %s",
                     type(strategy).__name__, replicas, total_steps, config.batch_size,
                     config.precision)
        state = _build_and_restore(config, strategy, chief, signals, total_steps)
        if state.start_step >= total_steps:
            logging.info("%s already holds step %d of %d: finished, nothing to do (export it "
                         "again with python -m fcn8s_tf.export --workdir=%s)", config.workdir,
                         state.start_step, total_steps, config.workdir)
            return {"step": state.start_step, "loss": None, "eval": None, "export": None,
                    "finished_before": True}
        return _run(config, strategy, state, total_steps, classes)


@dataclasses.dataclass
class _State:
    """What the stages of a run share."""
    model: keras.Model
    optimizer: Any
    step: tf.Variable
    manager: tf.train.CheckpointManager
    preemption: Any  # tf.distribute.experimental.PreemptionCheckpointHandler
    chief: bool
    start_step: int = 0


def _build_and_restore(config: TrainConfig, strategy, chief: bool, signals,
                       total_steps: int) -> _State:
    """Model, optimizer and checkpoint; resumes this run, or starts from --init_from."""
    with strategy.scope():
        model, optimizer = step_lib.build_model_and_optimizer(config, total_steps)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # Keras 3 keeps each Dropout layer's random state in a SeedGenerator variable that
        # tf.train.Checkpoint(model=...) does not save: without it a resumed run would replay the
        # dropout masks of step 0 instead of continuing the stream.
        rng_state = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                         dropout_rng=rng_state)
    manager = tf.train.CheckpointManager(
        checkpoint, distribute.checkpoint_dir(config.workdir, chief),
        max_to_keep=config.keep_checkpoints)
    # Saves a checkpoint of the current step on SIGTERM/SIGINT (on every worker of a cluster at
    # the same step), then raises TrainingInterrupted. It restores the manager's latest checkpoint
    # itself; the explicit restore below also covers workers whose manager writes to a temp dir.
    preemption = distribute.preemption_handler(strategy, manager, signals, step_var)
    latest = run_dir.latest_checkpoint(config.workdir)  # the chief's, on every worker
    if latest:
        checkpoint.restore(latest)
        logging.info("Resumed from %s at step %d", latest, int(step_var.numpy()))
        if config.init_from:
            logging.info("--init_from=%s ignored: resuming this run's own checkpoint",
                         config.init_from)
    elif config.init_from:
        loaded = workdir_lib.init_model_from(model, config.init_from, config.model_kwargs())
        logging.info("Model weights from %s (--init_from); optimizer and step start fresh", loaded)
    return _State(model, optimizer, step_var, manager, preemption, chief,
                  start_step=int(step_var.numpy()))


def _run(config: TrainConfig, strategy, state: _State, total_steps: int,
         classes: class_info.ClassInfo) -> Dict:
    """Input, update step, summaries, the loop, and the end (export, val_metrics.json)."""
    # The data order is reseeded with the resume step: the tf.data iterator is not checkpointed
    # (its shuffle buffer would go into every checkpoint), so a resumed run sees a fresh
    # permutation instead of replaying the epoch it already saw.
    dataset_fn = input_pipeline.train_dataset_fn(
        config.train_data, config.batch_size, base_size=(config.base_size, config.base_size),
        seed=config.seed + state.start_step, shuffle_buffer=config.shuffle_buffer,
        num_classes=config.num_classes)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = step_lib.make_train_step(strategy, state.model, state.optimizer, config)
    summary_dir = run_dir.path(config.workdir, run_dir.TENSORBOARD_DIR)
    if state.chief:
        train_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "train"))
        eval_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "val"))
    else:
        train_writer = eval_writer = tf.summary.create_noop_writer()
    evaluate_and_log = _InTrainingEval(state.model, config, eval_writer, state.chief, classes)

    run_start = time.time()
    # A broken record or a bad label value becomes one line naming its file.
    patterns = [p for p in (config.train_data, config.val_data) if p]
    with input_pipeline.data_errors_named(*patterns):
        loss_value, last_eval = _loop(config, state, total_steps, iterator, train_step,
                                      train_writer, evaluate_and_log)
    if not state.chief:
        shutil.rmtree(state.manager.directory, ignore_errors=True)
    logging.info("Trained %d steps in %s", total_steps - state.start_step,
                 _hms(time.time() - run_start))
    export_path = None
    if config.export and state.chief:
        # The eval twin, when there is one, already holds the final weights in the served form;
        # otherwise export_saved_model builds that twin itself.
        export_path = export_lib.export_saved_model(
            evaluate_and_log.twin or state.model,
            run_dir.path(config.workdir, run_dir.EXPORT_DIR),
            model_kwargs=config.model_kwargs(), classes=classes)
        logging.info("Exported SavedModel to %s", export_path)
    if last_eval is not None and state.chief:
        files.write_json(
            run_dir.path(config.workdir, run_dir.VAL_METRICS_FILE),
            evaluate_lib.metrics_payload(last_eval, evaluate_and_log.class_names,
                                         step=total_steps, data=config.val_data))
    return {"step": int(state.step.numpy()), "loss": loss_value, "eval": last_eval,
            "export": export_path, "finished_before": False}


def _loop(config: TrainConfig, state: _State, total_steps: int, iterator, train_step,
          train_writer, evaluate_and_log) -> Tuple[float, Optional[Dict]]:
    """Steps from state.start_step to total_steps; returns (last loss, last evaluation)."""
    last_eval, loss_value = None, float("nan")
    window_loss, window_steps, window_start = 0.0, 0, time.time()
    for step in range(state.start_step, total_steps):
        loss, _ = train_step(next(iterator), tf.constant(step, tf.int64))
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"Loss became {loss_value} at step {step + 1}. Try a lower --learning_rate, "
                f"--precision=float32, or check the labels (values must be "
                f"0..{config.num_classes - 1} or 255).")
        done = step + 1
        state.step.assign(done)
        window_loss += loss_value
        window_steps += 1
        if done % config.log_every == 0 or done == total_steps:
            elapsed = time.time() - window_start
            images_per_s = window_steps * config.batch_size / max(elapsed, 1e-9)
            # Keras evaluates a schedule at optimizer.iterations here (== done).
            lr = float(tf.convert_to_tensor(state.optimizer.learning_rate))
            eta = (total_steps - done) * elapsed / window_steps
            # Three significant digits: a CPU step takes seconds, so "0.2 img/s" hid 20 % changes.
            logging.info("step %d/%d  loss %.4f  lr %.2e  %.3g s/step  %.3g img/s  eta %s", done,
                         total_steps, window_loss / window_steps, lr, elapsed / window_steps,
                         images_per_s, _hms(eta))
            with train_writer.as_default(step=done):
                tf.summary.scalar("loss", window_loss / window_steps)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("images_per_second", images_per_s)
            window_loss, window_steps, window_start = 0.0, 0, time.time()
        if done % config.checkpoint_every == 0 or done == total_steps:
            state.manager.save(checkpoint_number=done)
        state.preemption.save_checkpoint_if_preempted(checkpoint_number=done)
        eval_due = (config.eval_every and done % config.eval_every == 0) or done == total_steps
        if config.val_data and state.chief and eval_due:
            last_eval = evaluate_and_log(done)
    return loss_value, last_eval


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
