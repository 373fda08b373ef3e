"""Distribution: which tf.distribute strategy, which worker is the chief, and preemption.

One code path for one CPU, one GPU, MirroredStrategy over the local GPUs and
MultiWorkerMirroredStrategy from TF_CONFIG (docs/DESIGN.md). On SIGTERM/SIGINT, tf.distribute's
PreemptionCheckpointHandler saves a checkpoint of the current step on every worker at the same
step, then training stops (BUILD.md, "Long runs").
"""

import json
import os
import signal
import tempfile
from typing import Optional, Sequence

import tensorflow as tf

from fcn8s_tf import signals as signals_lib
from fcn8s_tf.model import run_dir


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


def checkpoint_dir(workdir: str, chief: bool) -> str:
    """Chief writes to <workdir>/checkpoints; other workers to a temp dir they delete (TF's recipe
    for MultiWorkerMirroredStrategy: every worker must take part in the save)."""
    if chief:
        return run_dir.path(workdir, run_dir.CHECKPOINT_DIR)
    return tempfile.mkdtemp(prefix="fcn8s_worker_ckpt_")


# ------------------------------------------------------------------------------------ preemption --
class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after a checkpoint of the current step was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint "
                         f"{checkpoint} saved. Run the same command to resume.")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def preemption_handler(strategy, manager, signals: signals_lib.StopFlag, step_var):
    """tf.distribute's PreemptionCheckpointHandler, saving through our CheckpointManager."""

    def stop():
        raise TrainingInterrupted(signals.received or signal.SIGTERM, int(step_var.numpy()),
                                  manager.latest_checkpoint)

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        getattr(strategy, "cluster_resolver", None), manager,
        termination_config=tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=signals.is_set, exit_fn=stop, grace_period=0))
