"""The issues' targets, each with what the run measured and whether it is met (None: n/a)."""

from typing import Dict, List, Optional

from bench import machine as machine_lib
from bench import protocol
from bench import sweep
from bench import versus
from bench.settings import (BF16_CLEARLY_FASTER, BF16_CPU_FLAGS, VERSUS_PYTORCH_GOAL,
                            VOC_SBD_IMAGES)


def config_words(entry: Dict) -> str:
    return (f"{entry['precision']}, XLA {'on' if entry['xla'] else 'off'}, {entry['input_shape']} "
            f"input, batch {entry['batch_size']}")


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _float32_vs_ceiling(results: Dict, on_gpu: bool) -> Dict:
    target = {"target": "float32 training step >= 80% of the float32 matmul rate",
              "goal": ">= 0.80", "measured": None, "met": None}
    best32 = sweep.best([e for e in results.get("train", []) if e["precision"] == "float32"],
                        on_gpu)
    if best32 and "fraction_of_ceiling" in best32:
        fraction = best32["fraction_of_ceiling"]
        target.update(measured=fraction, met=fraction >= 0.8,
                      note=f"best float32 configuration: {config_words(best32)}, "
                           f"{best32['gflops']:.1f} of "
                           f"{results['ceiling']['gflops']['float32']:.1f} GFLOP/s; by CPU "
                           f"time {pct(best32.get('fraction_of_ceiling_cpu_time'))}")
    return target


def _bf16_vs_float32(results: Dict, on_gpu: bool) -> Dict:
    target = {"target": f"mixed_bfloat16 clearly faster than float32 where bf16 is native "
                        f"(>= {BF16_CLEARLY_FASTER:.2f}x images/s)",
              "goal": f">= {BF16_CLEARLY_FASTER:.2f}x", "measured": None, "met": None}
    train = results.get("train", [])
    batch = min((e["batch_size"] for e in train), default=None)
    at_batch = [e for e in train if e["batch_size"] == batch]
    best16 = sweep.best([e for e in at_batch if e["precision"] == "mixed_bfloat16"], on_gpu)
    best32 = sweep.best([e for e in at_batch if e["precision"] == "float32"], on_gpu)
    # An upper bound of bf16's images/s (no step finished) against float32's, on wall time.
    bound16 = [e for e in at_batch if e["precision"] == "mixed_bfloat16"
               and e.get("images_per_s_upper_bound")]
    if best16 and best32:
        target["measured"] = sweep.cost(best32, on_gpu) / sweep.cost(best16, on_gpu)
        target["note"] = (f"by {'wall' if on_gpu else 'CPU'} time per image, best of each at "
                          f"batch {batch}: {config_words(best16)} vs {config_words(best32)}")
    elif bound16 and best32:
        bound = max(e["images_per_s_upper_bound"] for e in bound16)
        target["measured"] = bound / best32["images_per_s"]
        target["measured_is_upper_bound"] = True
        target["note"] = f"no bf16 step finished in time; at most this ratio (batch {batch})"
    native = machine_lib.native_bf16(results["machine"])
    if target["measured"] is not None:
        target["met"] = target["measured"] >= BF16_CLEARLY_FASTER if native else None
    if not native:
        target["note"] = "; ".join(filter(None, [
            f"not applicable: no native bf16 here (CPU flags {'/'.join(BF16_CPU_FLAGS)} absent)",
            target.get("note")]))
    return target


def _pipeline(results: Dict) -> Dict:
    pipeline = results.get("pipeline") or {}
    rate = pipeline.get("images_per_s") if protocol.ok(pipeline) else None
    return {"target": "host input pipeline >= 600 images/s", "goal": ">= 600",
            "measured": rate, "met": None if rate is None else rate >= 600,
            "note": (f"{pipeline['cpu_ms_per_image']:.2f} CPU ms/image on "
                     f"{pipeline['cores']} cores" if rate else "")}


def _converter(results: Dict) -> Dict:
    converter = results.get("converter") or {}
    seconds = converter.get("extrapolated_voc_sbd_s") if protocol.ok(converter) else None
    return {"target": f"converter: all {VOC_SBD_IMAGES:,} VOC + SBD images in < 30 s "
                      "(~400 images/s)", "goal": "< 30 s", "measured": seconds,
            "met": None if seconds is None else seconds < 30,
            "note": (f"extrapolated: {converter['fixed_s']:.1f} s fixed + "
                     f"{converter['per_image_ms']:.2f} ms/image; "
                     f"{converter['images_per_s']:.0f} images/s over "
                     f"{converter['images']} images" if seconds else "")}


def _versus_target(what: str, tf_s: Optional[float], tf_words: str,
                   torch: Optional[Dict], why_not: str) -> Dict:
    target = {"target": f"{what} vs PyTorch's best on this machine (>= "
                        f"{VERSUS_PYTORCH_GOAL:.1f}x as fast)",
              "goal": f">= {VERSUS_PYTORCH_GOAL:.1f}x", "measured": None, "met": None,
              "note": why_not}
    if tf_s and torch:
        ratio = torch["s"] / tf_s
        target.update(measured=ratio, met=ratio >= VERSUS_PYTORCH_GOAL,
                      note=f"{tf_s:.2f} s ({tf_words}) vs PyTorch {torch['precision']} "
                           f"{torch['s']:.2f} s, wall time")
    return target


def _versus_targets(results: Dict) -> List[Dict]:
    """Issue 12's goals: the project's fastest train step and its exported SavedModel's forward
    against the faster of PyTorch's float32 and bf16 autocast."""
    skipped = (results.get("versus") or {}).get("torch_skipped") or "PyTorch not measured"
    batch = results["settings"]["batch_sizes"][0]
    done = [e for e in results.get("train", []) if protocol.ok(e) and e["batch_size"] == batch]
    fastest = min(done, key=lambda e: e["step_s"]) if done else None
    serve = results.get("inference") or {}
    serve_s = (serve["serving_uint8"]["ms_per_image"] / 1000 if protocol.ok(serve) else None)
    height, width = results["settings"]["inference_size"]
    return [
        _versus_target(f"train step (batch {batch}), the project's fastest configuration",
                       fastest and fastest["step_s"], fastest and config_words(fastest),
                       versus.torch_best(results, "train"), skipped),
        _versus_target(f"{width}x{height} forward through the exported SavedModel", serve_s,
                       "serving_uint8, float32", versus.torch_best(results, "forward"), skipped),
    ]


def compute_targets(results: Dict) -> List[Dict]:
    """Every target of the run, in the report's order."""
    on_gpu = bool(results["machine"].get("gpus"))
    targets = [_float32_vs_ceiling(results, on_gpu), _bf16_vs_float32(results, on_gpu),
               _pipeline(results), _converter(results)]
    targets += _versus_targets(results)
    wall = results.get("wall_s")
    if wall is not None and not results["settings"]["quick"]:
        targets.append({"target": "make bench finishes in under 10 minutes", "goal": "< 600 s",
                        "measured": wall, "met": wall < 600})
    return targets
