"""Which precision a machine should train and serve in, decided from its facts (GPU compute
capability, CPU flags). Base stage: training (config.py, training/loop.py) and the export
(serving/export.py) both decide with it.
"""

from typing import List, Sequence, Tuple

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISIONS = ("auto",) + POLICIES  # auto: resolve_precision() picks per machine


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
