"""TrainConfig: every setting of a training run, with its default, in one place.

Where a default belongs to a stage (the crop size to augmentation, the shuffle buffer to the input
pipeline, the architecture to the model builder), that stage's constant is the default here, so the
library and the run cannot disagree. `fcn8s_tf/flags.py` makes one command-line flag per field, with
these defaults; tests/test_config.py fails if a field has no flag or a flag no field.
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


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; built from flags by train.main(), or directly by tests."""
    # --- data
    train_data: str                      # file pattern of the training TFRecords
    workdir: str                         # run directory (fcn8s_tf/training/workdir.py)
    val_data: str = ""                   # file pattern of the validation TFRecords; "" = no eval
    base_size: int = input_pipeline.DEFAULT_BASE_SIZE[0]   # host resize, square
    crop_size: int = augment.DEFAULT_CROP_SIZE[0]          # on-device crop, square
    scale_range: Tuple[float, float] = augment.DEFAULT_SCALE_RANGE
    flip_prob: float = augment.DEFAULT_FLIP_PROB
    shuffle_buffer: int = input_pipeline.DEFAULT_SHUFFLE_BUFFER
    # --- model
    num_classes: Optional[int] = None    # None: the training records' manifest says, else 21
    backbone_weights: Optional[str] = "imagenet"  # "imagenet", None, or a VGG16 .h5 path
    init_from: Optional[str] = None      # a workdir or checkpoint whose model weights start the run
    fc_units: int = _MODEL_DEFAULTS["fc_units"]
    learnable_upsampling: bool = _MODEL_DEFAULTS["learnable_upsampling"]
    dropout_rate: float = _MODEL_DEFAULTS["dropout_rate"]
    skip_scales: Tuple[float, float] = tuple(_MODEL_DEFAULTS["skip_scales"])
    train_backbone: bool = _MODEL_DEFAULTS["train_backbone"]
    fixed_input_shape: bool = True       # train on a net built for crop_size (faster)
    # --- optimisation
    train_steps: int = 0                 # 0: from epochs
    epochs: float = 0.0
    batch_size: int = 8                  # global, split over the replicas
    learning_rate: float = 1e-5          # peak, Adam
    lr_schedule: str = "constant"        # one of LR_SCHEDULES, after warm-up
    warmup_steps: int = 0
    weight_decay: float = 0.0            # decoupled (AdamW style); 0 = off
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    amsgrad: bool = False
    precision: str = "auto"              # one of precision.PRECISIONS; auto: per machine
    xla: bool = False                    # jit-compile the per-replica model step
    seed: int = 0
    # --- bookkeeping
    log_every: int = 20
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 2000               # 0 = only at the end
    eval_max_images: int = 0             # 0 = the whole validation split
    tb_images: int = 3
    export: bool = True

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
