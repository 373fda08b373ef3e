"""What a benchmark run depends on: the Settings, their full and --quick defaults, and constants."""

import dataclasses
import os
from typing import List, Optional, Tuple

TOOLS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(TOOLS_DIR)

VOC_SBD_IMAGES = 10_582 + 1_449  # train + val ids of VOC 2012 + SBD (docs/DESIGN.md, Splits)
# A policy's compute dtype decides which matmul ceiling its training step is compared with.
POLICY_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# CPU feature flags (/proc/cpuinfo) that mean native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# The dtypes the SavedModel is exported in (serving/export.py export_saved_model's precision), in
# the order they are served; bfloat16 only where bf16 is native (run.py says why).
EXPORT_DTYPES = ("float32", "bfloat16")
# "Clearly faster" in the bf16 target, made a number.
BF16_CLEARLY_FASTER = 1.25
# Issue 19's goals, each a ratio measured in one run: the forward and the training step as
# fractions of the matmul ceiling of the dtype they compute in, and (issues 12 and 19) the
# project against PyTorch's best configuration on the same machine, where bf16 is native.
FORWARD_CEILING_GOAL = 0.80
TRAIN_CEILING_GOAL = 0.75
VERSUS_PYTORCH_GOAL = 1.5


@dataclasses.dataclass
class Settings:
    """Everything a run depends on; `settings_for` gives the full and quick defaults."""
    quick: bool
    voc_root: str  # real VOC2012 folder, or "" for synthetic images (data.write_synthetic_voc)
    image_size: int  # training crop (and host pipeline base size), square
    fc_units: int
    num_classes: int
    batch_sizes: List[int]
    precisions: Optional[List[str]]  # None: float32, mixed_bfloat16 (+ mixed_float16 on a GPU)
    repeats: int
    matrix: str
    time_budget_s: float
    matmul_sizes: List[int]
    converter_images: int
    synthetic_images: int  # pairs written when voc_root is ""
    pipeline_records: int
    pipeline_batch_size: int
    pipeline_batches: int
    pipeline_warmup_batches: int
    augment_iters: int
    inference_size: Tuple[int, int]  # (height, width)
    max_config_s: float  # wall-clock cap of one training configuration, start-up included
    serve_reserve_s: float  # kept back for the inference children and the closing ceiling
    versus_reserve_s: float  # kept back per precision compared with PyTorch (versus.py)
    pytorch: bool  # run the PyTorch rows (skipped with a message when torch is not importable)
    group_children: bool  # run compatible tasks in one child (quick: fewer TensorFlow start-ups)


def settings_for(quick: bool, **overrides) -> Settings:
    """Full-run defaults (make bench) or --quick ones, with overrides (None values ignored)."""
    if quick:
        # Tiny everywhere except what cannot shrink: conv1_1 sees the input padded by 100, so even
        # a 64x64 image costs ~40 GFLOP forward; one training step is seconds on a small CPU.
        base = dict(image_size=64, fc_units=64, batch_sizes=[1], precisions=["float32"],
                    repeats=1, time_budget_s=600, matmul_sizes=[256, 512], converter_images=60,
                    synthetic_images=8, pipeline_records=32, pipeline_batch_size=8,
                    pipeline_batches=3, pipeline_warmup_batches=1, augment_iters=2,
                    inference_size=(48, 64), max_config_s=240, serve_reserve_s=60,
                    versus_reserve_s=30, group_children=True)
    else:
        base = dict(image_size=321, fc_units=4096, batch_sizes=[1, 4], precisions=None,
                    repeats=2, time_budget_s=540, matmul_sizes=[1024, 2048, 4096],
                    converter_images=600, synthetic_images=30, pipeline_records=300,
                    pipeline_batch_size=16, pipeline_batches=50, pipeline_warmup_batches=10,
                    augment_iters=20, inference_size=(375, 500), max_config_s=180,
                    serve_reserve_s=90, versus_reserve_s=90, group_children=False)
    base.update(quick=quick, voc_root="", num_classes=21, matrix="sweep", pytorch=True)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**base)
