"""Facts about the machine a run measures: CPU model, cores, feature flags, native bf16."""

import os
import subprocess
from typing import Dict, Set, Tuple

from bench.settings import BF16_CPU_FLAGS

# Feature flags worth naming next to every figure (the CPU model changes between machines).
SHOWN_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")


def _lscpu() -> Dict[str, str]:
    """lscpu's "key: value" lines; {} where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in fields.items()}


def _cpuinfo() -> Tuple[str, Set[str]]:
    """(model name, feature flags) from /proc/cpuinfo; ("", set()) where it cannot be read."""
    model, cpu_flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    cpu_flags.update(value.split())
                elif key.strip() == "model name" and not model:
                    model = value.strip()
    except OSError:
        pass
    return model, cpu_flags


def machine_info() -> Dict:
    """CPU model, cores and feature flags from lscpu and /proc/cpuinfo."""
    fields = _lscpu()
    model, cpu_flags = _cpuinfo()
    cores = None
    if fields.get("Core(s) per socket", "").isdigit() and fields.get("Socket(s)", "").isdigit():
        cores = int(fields["Core(s) per socket"]) * int(fields["Socket(s)"])
    return {"cpu": fields.get("Model name") or model or None, "cores": cores,
            "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "simd": [f for f in SHOWN_CPU_FLAGS if f in cpu_flags],
            "native_bf16_cpu": any(f in cpu_flags for f in BF16_CPU_FLAGS)}


def native_bf16(machine: Dict) -> bool:
    """bf16 arithmetic in hardware where the run computes: a GPU of compute capability >= 8.0
    when TensorFlow sees one, else the CPU's AMX or AVX512_BF16."""
    gpus = machine.get("gpus") or []
    if gpus:
        return any((g.get("compute_capability") or [0])[0] >= 8 for g in gpus)
    return bool(machine.get("native_bf16_cpu"))


def machine_class(machine: Dict) -> str:
    """The class of machine a measured default (XLA, precision) holds for: the GPU's compute
    capability, or the CPU's bf16 hardware (AMX, AVX512_BF16, none) and vector width."""
    gpus = machine.get("gpus") or []
    if gpus:
        major, minor = min(tuple(g.get("compute_capability") or (0, 0)) for g in gpus)
        return f"GPU of compute capability {major}.{minor}"
    simd = set(machine.get("simd") or ())
    if "amx_bf16" in simd:
        return "CPU with AMX (bf16)"
    if "avx512_bf16" in simd:
        return "CPU with AVX512_BF16, no AMX"
    if "bf16" in simd:
        return "CPU with bf16 instructions (Arm)"
    width = "AVX-512" if "avx512f" in simd else "AVX2" if "avx2" in simd else "no AVX2"
    return f"CPU without native bf16 ({width})"
