"""TrainConfig: every setting of a training run, with its default, in one place.

Where a default belongs to a stage (the crop size to augmentation, the shuffle buffer to the input
pipeline, the architecture to the model builder), that stage's constant is the default here, so the
library and the run cannot disagree. Each field is described once, by `setting`: its help text is
the help of the command-line flag `fcn8s_tf/flags.py` makes from it, with its default and bounds.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

from fcn8s_tf.data import augment
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf import class_info
from fcn8s_tf import precision as precision_lib

LR_SCHEDULES = ("constant", "poly", "cosine")

# build_fcn8s's own defaults: the paper's net.
_MODEL_DEFAULTS = model_lib.default_kwargs()


# A field without a default: its flag is required.
REQUIRED = dataclasses.MISSING


def setting(default: Any, help_text: str, **flag: Any) -> Any:
    """A TrainConfig field and its one description.

    `help_text` documents the field here and is the help of its flag (flags.py makes one flag per
    field from this); `flag` holds what the flag parser checks: lower_bound, upper_bound, choices.
    """
    return dataclasses.field(default=default, metadata={"help": help_text, **flag})


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; built from flags by train.main(), or directly by tests."""
    # --- data
    train_data: str = setting(
        REQUIRED,
        "File pattern of the training TFRecords (e.g. data/tfrecords/train-*.tfrecord).")
    workdir: str = setting(
        REQUIRED,
        "Run directory: checkpoints, TensorBoard logs, flags, export.")
    val_data: str = setting(
        "",
        "File pattern of the validation TFRecords; empty: no eval.")
    base_size: int = setting(
        input_pipeline.DEFAULT_BASE_SIZE[0],
        "Host pipeline resizes every training image to this square size (image bilinear, label "
        "nearest) before batching.", lower_bound=1)
    crop_size: int = setting(
        augment.DEFAULT_CROP_SIZE[0],
        "Side of the square crop the model trains on, taken after random scaling on the "
        "accelerator.", lower_bound=1)
    scale_range: Tuple[float, float] = setting(
        augment.DEFAULT_SCALE_RANGE,
        "Random scale range min,max of the augmentation.")
    flip_prob: float = setting(
        augment.DEFAULT_FLIP_PROB,
        "Probability of a horizontal flip.", lower_bound=0.0, upper_bound=1.0)
    shuffle_buffer: int = setting(
        input_pipeline.DEFAULT_SHUFFLE_BUFFER,
        "Examples in the training shuffle buffer.", lower_bound=1)
    # --- model
    num_classes: Optional[int] = setting(
        None,
        "Classes including background; default: the training records' manifest.json (names and "
        "colours too), else 21 (VOC). When given, it must agree with the manifest.", lower_bound=2)
    backbone_weights: Optional[str] = setting(
        "imagenet",
        "'imagenet' (Keras's VGG16 download with the top, for the fc6/fc7 net surgery), 'none' "
        "(random init), or a path to a local VGG16 .h5 weights file.")
    init_from: Optional[str] = setting(
        None,
        "Start from the model weights (not the optimizer) of a workdir or checkpoint, e.g. the "
        "published FCN-8s from tools/import_weights.py. Ignored when --workdir has a checkpoint"
        " to resume.")
    fc_units: int = setting(
        _MODEL_DEFAULTS["fc_units"],
        "Width of fc6/fc7. The paper's 4096; narrower only for the demo or tests.", lower_bound=1)
    learnable_upsampling: bool = setting(
        _MODEL_DEFAULTS["learnable_upsampling"],
        "Train the transposed convolutions (the Caffe reference keeps them fixed bilinear).")
    dropout_rate: float = setting(
        _MODEL_DEFAULTS["dropout_rate"],
        "Dropout after fc6 and fc7.", lower_bound=0.0, upper_bound=1.0)
    skip_scales: Tuple[float, float] = setting(
        tuple(_MODEL_DEFAULTS["skip_scales"]),
        "pool4,pool3 scale factors before their score layers. The reference's 0.01,0.0001; the "
        "CPU demo alone uses 1,1.")
    train_backbone: bool = setting(
        _MODEL_DEFAULTS["train_backbone"],
        "Train the VGG16 conv blocks. Off only in the CPU demo (random-init features, frozen to"
        " fit its time budget).")
    fixed_input_shape: bool = setting(
        True,
        "Build the training model for the crop size (measured faster than (None, None) by make "
        "bench); evaluation and export use an any-size twin.")
    # --- optimisation
    train_steps: int = setting(
        0,
        "Optimizer steps; 0 means use --epochs.", lower_bound=0)
    epochs: float = setting(
        0.0,
        "Epochs over the training records (from manifest.json, or by counting), used when "
        "--train_steps is 0.", lower_bound=0.0)
    batch_size: int = setting(
        8,
        "Global batch size, split evenly over the replicas.", lower_bound=1)
    learning_rate: float = setting(
        1e-5,
        "Peak learning rate of Adam.", lower_bound=0.0)
    lr_schedule: str = setting(
        "constant",
        "Decay after warm-up: constant, poly (power 0.9, as DeepLab) or cosine.",
        choices=LR_SCHEDULES)
    warmup_steps: int = setting(
        0,
        "Linear warm-up steps.", lower_bound=0)
    weight_decay: float = setting(
        0.0,
        "Decoupled weight decay of Adam (AdamW style); 0 = off.", lower_bound=0.0)
    adam_beta1: float = setting(
        0.9,
        "Adam beta_1.", lower_bound=0.0, upper_bound=1.0)
    adam_beta2: float = setting(
        0.999,
        "Adam beta_2.", lower_bound=0.0, upper_bound=1.0)
    adam_epsilon: float = setting(
        1e-8,
        "Adam epsilon.", lower_bound=0.0)
    amsgrad: bool = setting(
        False,
        "AMSGrad variant of Adam (as the course report's algorithm).")
    precision: str = setting(
        "auto",
        "Keras mixed-precision policy. auto (default): mixed_bfloat16 on GPUs of compute "
        "capability >= 8.0 and CPUs with AMX/AVX512_BF16, mixed_float16 on 7.x GPUs, float32 "
        "otherwise (logged at start). mixed_float16 adds dynamic loss scaling.",
        choices=precision_lib.PRECISIONS)
    xla: bool = setting(
        False,
        "jit-compile the per-replica model step (forward, loss, gradient). Off by default: not "
        "faster on the CPUs measured (BUILD.md).")
    seed: int = setting(
        0,
        "Seeds weights init, data order and augmentation.")
    # --- bookkeeping
    log_every: int = setting(
        20,
        "Steps between progress lines and TensorBoard scalars.", lower_bound=1)
    checkpoint_every: int = setting(
        1000,
        "Steps between checkpoints.", lower_bound=1)
    keep_checkpoints: int = setting(
        3,
        "Checkpoints kept (the newest ones).", lower_bound=1)
    eval_every: int = setting(
        2000,
        "Steps between validation runs; 0 = only at the end.", lower_bound=0)
    eval_max_images: int = setting(
        0,
        "Validate on the first N images only; 0 = all.", lower_bound=0)
    tb_images: int = setting(
        3,
        "Fixed validation images shown in TensorBoard.", lower_bound=0)
    export: bool = setting(
        True,
        "Export a SavedModel to <workdir>/export/<version> at the end.")


    def model_kwargs(self) -> Dict[str, Any]:
        """The build_fcn8s arguments, also written to <workdir>/model_config.json."""
        return dict(num_classes=self.num_classes or class_info.NUM_CLASSES, fc_units=self.fc_units,
                    learnable_upsampling=self.learnable_upsampling, dropout_rate=self.dropout_rate,
                    skip_scales=list(self.skip_scales), train_backbone=self.train_backbone)

    def __post_init__(self):
        if self.precision not in precision_lib.PRECISIONS:
            raise ValueError(f"precision must be one of {precision_lib.PRECISIONS}; "
                             f"got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; "
                             f"got {self.lr_schedule!r}")


# -------------------------------------------------------------------------------------- classes --
def resolve_classes(config: TrainConfig) -> Tuple[TrainConfig, class_info.ClassInfo]:
    """The run's classes: from the manifest beside --train_data (the converter writes names and
    colours there), else VOC's; --num_classes, when given, must agree.

    Returns:
      (config with num_classes set, the ClassInfo).
    Raises:
      ValueError: --num_classes disagrees with the manifest, or the train and val manifests
        list different classes.
      records.DataError: a malformed manifest.
    """
    from fcn8s_tf.data import records  # pylint: disable=import-outside-toplevel
    found = records.read_classes(config.train_data)
    if found is None:
        info = class_info.ClassInfo.default(config.num_classes or class_info.NUM_CLASSES)
    else:
        info = class_info.ClassInfo.from_json(found)
        if config.num_classes not in (None, info.num_classes):
            raise ValueError(
                f"--num_classes={config.num_classes}, but the manifest of --train_data lists "
                f"{info.num_classes} classes ({', '.join(info.names)}); leave --num_classes out "
                "to use them")
        if config.val_data:
            val = records.read_classes(config.val_data)
            if val is not None and tuple(val["names"]) != info.names:
                raise ValueError(f"--val_data lists other classes ({', '.join(val['names'])}) "
                                 f"than --train_data ({', '.join(info.names)})")
    return dataclasses.replace(config, num_classes=info.num_classes), info
