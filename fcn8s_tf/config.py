"""TrainConfig: every setting of a training run, with its default, in one place.

Where a default belongs to a stage (the crop size to augmentation, the shuffle buffer to the input
pipeline, the architecture to the model builder), that stage's constant is the default here, so the
library and the run cannot disagree. `fcn8s_tf/flags.py` makes one command-line flag per field, with
these defaults; tests/test_config.py fails if a field has no flag or a flag no field.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fcn8s_tf.data import augment
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf import class_info

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISIONS = ("auto",) + POLICIES  # auto: resolve_precision() picks per machine
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
    precision: str = "auto"              # one of PRECISIONS; auto: resolve_precision()
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; "
                             f"got {self.lr_schedule!r}")


# ------------------------------------------------------------------------------------ precision --
def _cpu_flags() -> frozenset:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _gpu_compute_capabilities() -> List[Tuple[int, int]]:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def choose_precision(gpu_capabilities: Sequence[Tuple[int, int]],
                     cpu_flags: frozenset) -> Tuple[str, str]:
    """What --precision=auto means on a machine with these facts: (policy, why).

    GPUs decide when there are any: bfloat16 from compute capability 8.0 (Ampere) on, where its
    tensor cores run it at float16's rate without loss scaling; float16 with loss scaling on
    Volta/Turing (7.x); float32 on older GPUs. A CPU alone: bfloat16 only with native bf16 (AMX or
    AVX512_BF16), measured 1.85x (train step) and 5x (forward) faster than float32 on such a Xeon;
    without it TF emulates bf16 and was 10-15x slower than float32 on a Zen 3 (docs/DESIGN.md).
    """
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        name = f"GPU compute capability {lowest[0]}.{lowest[1]}"
        if lowest >= (8, 0):
            return "mixed_bfloat16", f"{name} (>= 8.0: bf16 tensor cores)"
        if lowest >= (7, 0):
            return "mixed_float16", f"{name} (7.x: fp16 tensor cores, bf16 not native)"
        return "float32", f"{name} (< 7.0: no tensor cores)"
    native = sorted(cpu_flags & {"amx_bf16", "avx512_bf16"})
    if native:
        return "mixed_bfloat16", f"CPU with native bf16 ({', '.join(native)})"
    return "float32", "CPU without native bf16 (no amx_bf16 or avx512_bf16 flag): bf16 is emulated"


def resolve_precision(precision: str) -> Tuple[str, str]:
    """--precision as a Keras policy name, and why: 'auto' decided from this machine."""
    if precision != "auto":
        return precision, "asked for with --precision"
    return choose_precision(_gpu_compute_capabilities(), _cpu_flags())


EXPORT_PRECISIONS = ("auto", "float32", "bfloat16")  # auto: resolve_export_precision()


def resolve_export_precision(precision: str) -> Tuple[str, str]:
    """--precision of an export as the dtype the served net computes in, and why.

    auto follows the training decision (choose_precision) on this machine: bfloat16 where bf16 is
    native (Ampere+ GPUs, AMX/AVX512_BF16 CPUs), float32 elsewhere. Served as float16 on a 7.x GPU
    it would be faster still, but it is not offered: nothing here measures or tests it.
    """
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {EXPORT_PRECISIONS}; got {precision!r}")
    if precision != "auto":
        return precision, "asked for with --precision"
    policy, why = choose_precision(_gpu_compute_capabilities(), _cpu_flags())
    return ("bfloat16" if policy == "mixed_bfloat16" else "float32"), why


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
