"""The flags of `python -m fcn8s_tf.train`: one per TrainConfig field, with TrainConfig's defaults.

Nothing is defined at import: `train.py` calls `define_flags()` under `__main__`, so importing the
library defines no flag (every CLI of the project works this way). Only `train.main()` reads the
values, through `config_from_flags()`; library functions take a TrainConfig. Named runs live in
`configs/*.flags` and are passed with `--flagfile`.
"""

import dataclasses

from absl import app
from absl import flags

from fcn8s_tf import config as config_lib
from fcn8s_tf import precision as precision_lib

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(config_lib.TrainConfig)
             if f.default is not dataclasses.MISSING}


def _floats(values) -> list:
    return [f"{v:g}" for v in values]


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the training flags in `flag_values` (absl's global FLAGS by default)."""
    d = _DEFAULTS
    fv = dict(flag_values=flag_values)
    # --- data ---------------------------------------------------------------------------------
    flags.DEFINE_string("train_data", None, "File pattern of the training TFRecords "
                        "(e.g. data/tfrecords/train-*.tfrecord).", required=True, **fv)
    flags.DEFINE_string("val_data", d["val_data"], "File pattern of the validation TFRecords; "
                        "empty: no eval.", **fv)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard logs, flags, "
                        "export.", required=True, **fv)
    flags.DEFINE_integer("base_size", d["base_size"], "Host pipeline resizes every training image "
                         "to this square size (image bilinear, label nearest) before batching.",
                         lower_bound=1, **fv)
    flags.DEFINE_integer("crop_size", d["crop_size"], "Side of the square crop the model trains "
                         "on, taken after random scaling on the accelerator.", lower_bound=1, **fv)
    flags.DEFINE_list("scale_range", _floats(d["scale_range"]), "Random scale range min,max of "
                      "the augmentation.", **fv)
    flags.DEFINE_float("flip_prob", d["flip_prob"], "Probability of a horizontal flip.",
                       lower_bound=0.0, upper_bound=1.0, **fv)
    flags.DEFINE_integer("shuffle_buffer", d["shuffle_buffer"], "Examples in the training "
                         "shuffle buffer.", lower_bound=1, **fv)
    # --- model --------------------------------------------------------------------------------
    flags.DEFINE_integer("num_classes", d["num_classes"], "Classes including background; default: "
                         "the training records' manifest.json (names and colours too), else 21 "
                         "(VOC). When given, it must agree with the manifest.", lower_bound=2,
                         **fv)
    flags.DEFINE_string("backbone_weights", d["backbone_weights"], "'imagenet' (Keras's VGG16 "
                        "download with the top, for the fc6/fc7 net surgery), 'none' (random "
                        "init), or a path to a local VGG16 .h5 weights file.", **fv)
    flags.DEFINE_string("init_from", d["init_from"], "Start from the model weights (not the "
                        "optimizer) of a workdir or checkpoint, e.g. the published FCN-8s from "
                        "tools/import_weights.py. Ignored when --workdir has a checkpoint to "
                        "resume.", **fv)
    flags.DEFINE_integer("fc_units", d["fc_units"], "Width of fc6/fc7. The paper's 4096; narrower "
                         "only for the demo or tests.", lower_bound=1, **fv)
    flags.DEFINE_bool("learnable_upsampling", d["learnable_upsampling"], "Train the transposed "
                      "convolutions (the Caffe reference keeps them fixed bilinear).", **fv)
    flags.DEFINE_list("skip_scales", _floats(d["skip_scales"]), "pool4,pool3 scale factors before "
                      "their score layers. The reference's 0.01,0.0001; the CPU demo alone uses "
                      "1,1.", **fv)
    flags.DEFINE_bool("train_backbone", d["train_backbone"], "Train the VGG16 conv blocks. Off "
                      "only in the CPU demo (random-init features, frozen to fit its time "
                      "budget).", **fv)
    flags.DEFINE_bool("fixed_input_shape", d["fixed_input_shape"], "Build the training model for "
                      "the crop size (measured faster than (None, None) by make bench); "
                      "evaluation and export use an any-size twin.", **fv)
    flags.DEFINE_float("dropout_rate", d["dropout_rate"], "Dropout after fc6 and fc7.",
                       lower_bound=0.0, upper_bound=1.0, **fv)
    # --- optimisation -------------------------------------------------------------------------
    flags.DEFINE_integer("train_steps", d["train_steps"], "Optimizer steps; 0 means use --epochs.",
                         lower_bound=0, **fv)
    flags.DEFINE_float("epochs", d["epochs"], "Epochs over the training records (from "
                       "manifest.json, or by counting), used when --train_steps is 0.",
                       lower_bound=0.0, **fv)
    flags.DEFINE_integer("batch_size", d["batch_size"], "Global batch size, split evenly over "
                         "the replicas.", lower_bound=1, **fv)
    flags.DEFINE_float("learning_rate", d["learning_rate"], "Peak learning rate of Adam.",
                       lower_bound=0.0, **fv)
    flags.DEFINE_enum("lr_schedule", d["lr_schedule"], list(config_lib.LR_SCHEDULES),
                      "Decay after warm-up: constant, poly (power 0.9, as DeepLab) or cosine.",
                      **fv)
    flags.DEFINE_integer("warmup_steps", d["warmup_steps"], "Linear warm-up steps.",
                         lower_bound=0, **fv)
    flags.DEFINE_float("weight_decay", d["weight_decay"], "Decoupled weight decay of Adam (AdamW "
                       "style); 0 = off.", lower_bound=0.0, **fv)
    flags.DEFINE_float("adam_beta1", d["adam_beta1"], "Adam beta_1.", lower_bound=0.0,
                       upper_bound=1.0, **fv)
    flags.DEFINE_float("adam_beta2", d["adam_beta2"], "Adam beta_2.", lower_bound=0.0,
                       upper_bound=1.0, **fv)
    flags.DEFINE_float("adam_epsilon", d["adam_epsilon"], "Adam epsilon.", lower_bound=0.0, **fv)
    flags.DEFINE_bool("amsgrad", d["amsgrad"], "AMSGrad variant of Adam (as the course report's "
                      "algorithm).", **fv)
    flags.DEFINE_enum("precision", d["precision"], list(precision_lib.PRECISIONS),
                      "Keras mixed-precision policy. auto (default): mixed_bfloat16 on GPUs of "
                      "compute capability >= 8.0 and CPUs with AMX/AVX512_BF16, mixed_float16 on "
                      "7.x GPUs, float32 otherwise (logged at start). mixed_float16 adds dynamic "
                      "loss scaling.",
                      **fv)
    flags.DEFINE_bool("xla", d["xla"], "jit-compile the per-replica model step (forward, loss, "
                      "gradient). Off by default: not faster on the CPUs measured (BUILD.md).",
                      **fv)
    flags.DEFINE_integer("seed", d["seed"], "Seeds weights init, data order and augmentation.",
                         **fv)
    # --- bookkeeping --------------------------------------------------------------------------
    flags.DEFINE_integer("log_every", d["log_every"], "Steps between progress lines and "
                         "TensorBoard scalars.", lower_bound=1, **fv)
    flags.DEFINE_integer("checkpoint_every", d["checkpoint_every"], "Steps between checkpoints.",
                         lower_bound=1, **fv)
    flags.DEFINE_integer("keep_checkpoints", d["keep_checkpoints"], "Checkpoints kept (the "
                         "newest ones).", lower_bound=1, **fv)
    flags.DEFINE_integer("eval_every", d["eval_every"], "Steps between validation runs; 0 = only "
                         "at the end.", lower_bound=0, **fv)
    flags.DEFINE_integer("eval_max_images", d["eval_max_images"], "Validate on the first N images "
                         "only; 0 = all.", lower_bound=0, **fv)
    flags.DEFINE_integer("tb_images", d["tb_images"], "Fixed validation images shown in "
                         "TensorBoard.", lower_bound=0, **fv)
    flags.DEFINE_bool("export", d["export"], "Export a SavedModel to <workdir>/export/<version> "
                      "at the end.", **fv)


def _pair(flag_values: flags.FlagValues, name: str, what: str):
    values = flag_values[name].value
    try:
        pair = tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be two numbers {what}; got {','.join(values)}")
    if len(pair) != 2:
        raise app.UsageError(f"--{name} must be two numbers {what}; got {','.join(values)}")
    return pair


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.TrainConfig:
    """Reads the training flags into a TrainConfig, rejecting what the flag parser cannot check."""
    scale_range = _pair(flag_values, "scale_range", "min,max")
    if not 0 < scale_range[0] <= scale_range[1]:
        raise app.UsageError(f"--scale_range must be min,max with 0 < min <= max; got "
                             f"{scale_range}")
    skip_scales = _pair(flag_values, "skip_scales", "pool4,pool3")
    if flag_values["train_steps"].value == 0 and flag_values["epochs"].value == 0:
        raise app.UsageError("Set --train_steps or --epochs (both are 0).")
    weights = flag_values["backbone_weights"].value
    if weights is not None and weights.lower() == "none":
        weights = None
    special = {"scale_range": scale_range, "skip_scales": skip_scales, "backbone_weights": weights}
    kwargs = {f.name: special.get(f.name, flag_values[f.name].value)
              for f in dataclasses.fields(config_lib.TrainConfig)}
    kwargs["val_data"] = kwargs["val_data"] or ""
    return config_lib.TrainConfig(**kwargs)


def flags_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The training flags in --flagfile syntax (absl's own logging flags left out), to replay a run."""
    return "".join(flag_values[f.name].serialize() + "\n"
                   for f in dataclasses.fields(config_lib.TrainConfig)
                   if flag_values[f.name].value is not None)
