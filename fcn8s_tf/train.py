"""python -m fcn8s_tf.train --flagfile=configs/voc_fcn8s.flags: train FCN-8s in a workdir.

One code path for one CPU, one GPU, MirroredStrategy over the local GPUs and
MultiWorkerMirroredStrategy from TF_CONFIG. Flags (one per TrainConfig field) are fcn8s_tf/flags.py's;
the run is fcn8s_tf/training/loop.py's. This module holds main only.
"""

import sys

from absl import app
from absl import logging
import tensorflow as tf

from fcn8s_tf import files
from fcn8s_tf import flags as flags_lib
from fcn8s_tf import signals
from fcn8s_tf.data import records
from fcn8s_tf.training import distribute
from fcn8s_tf.training import loop
from fcn8s_tf.training import workdir as workdir_lib


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = flags_lib.config_from_flags()
    flags_text = flags_lib.flags_text()
    logging.info("Flags:\n%s", flags_text)
    try:
        result = loop.train(config, flags_text=flags_text)
    except distribute.TrainingInterrupted as e:  # 128 + signal number, as a shell reports a signal
        print(f"fcn8s_tf.train: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except signals.Interrupted as e:  # a second Ctrl-C: stopped without the checkpoint
        print(f"fcn8s_tf.train: {e}, without a checkpoint of this step", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except (loop.NonFiniteLossError, ValueError, FileNotFoundError, FileExistsError,
            NotADirectoryError, PermissionError, workdir_lib.WorkdirInUseError,
            records.DataError) as e:
        raise SystemExit(f"fcn8s_tf.train: {e}") from None
    except tf.errors.OpError as e:  # e.g. a workdir TensorFlow cannot write (gfile)
        raise SystemExit(f"fcn8s_tf.train: {type(e).__name__}: {e.message}") from None
    print(files.dumps({k: v for k, v in result.items() if k != "eval"}))


if __name__ == "__main__":
    flags_lib.define_flags()
    app.run(main)
