"""python -m fcn8s_tf.train --flagfile=configs/voc_fcn8s.flags: train FCN-8s in a workdir.

One code path for one CPU, one GPU, MirroredStrategy over the local GPUs and
MultiWorkerMirroredStrategy from TF_CONFIG. Flags (one per TrainConfig field) are
fcn8s_tf/flags.py's; the run is fcn8s_tf/training/loop.py's. This module holds main only.
"""

from absl import logging
import tensorflow as tf

from fcn8s_tf import cli
from fcn8s_tf import files
from fcn8s_tf import flags as flags_lib
from fcn8s_tf import signals
from fcn8s_tf.data import records
from fcn8s_tf.training import distribute
from fcn8s_tf.training import loop
from fcn8s_tf.training import workdir as workdir_lib


PROG = "fcn8s_tf.train"


def main(argv):
    cli.no_positional_arguments(argv)
    config = flags_lib.config_from_flags()
    flags_text = flags_lib.flags_text()
    logging.info("Flags:\n%s", flags_text)
    try:
        result = loop.train(config, flags_text=flags_text)
    except distribute.TrainingInterrupted as e:  # a checkpoint of the current step was saved
        cli.stopped(PROG, e, 128 + e.signum)
    except signals.Interrupted as e:  # a second Ctrl-C: stopped without the checkpoint
        cli.stopped(PROG, f"{e}, without a checkpoint of this step", e.exit_code)
    except (loop.NonFiniteLossError, ValueError, FileNotFoundError, FileExistsError,
            NotADirectoryError, PermissionError, workdir_lib.WorkdirInUseError,
            records.DataError) as e:
        cli.fail(PROG, e)
    except tf.errors.OpError as e:  # e.g. a workdir TensorFlow cannot write (gfile)
        cli.fail(PROG, f"{type(e).__name__}: {e.message}")
    print(files.dumps({k: v for k, v in result.items() if k != "eval"}))


if __name__ == "__main__":
    cli.run(flags_lib.define_flags, main)
