"""The issues' targets, each with what the run measured, whether it is met (None: not judged
here) and, where it is not, by how much; and the XLA default the run's own figures support.

A target is a dict: target (words), goal (words), goal_value and at_least (the number a
measurement is judged against, and in which direction), unit ("fraction" of a ceiling, "ratio",
"number" or "seconds", for the report), measured, met, note.
"""

from typing import Dict, List, Optional

from bench import machine as machine_lib
from bench import protocol
from bench import sweep
from bench import versus
from bench.settings import (BF16_CLEARLY_FASTER, BF16_CPU_FLAGS, FORWARD_CEILING_GOAL,
                            POLICY_DTYPE, TRAIN_CEILING_GOAL, VERSUS_PYTORCH_GOAL,
                            VOC_SBD_IMAGES)

NOT_NATIVE = (f"not judged: no native bf16 here (CPU flags {'/'.join(BF16_CPU_FLAGS)} absent); "
              "the goal holds where bf16 is native")


def config_words(entry: Dict) -> str:
    return (f"{entry['precision']}, XLA {'on' if entry['xla'] else 'off'}, {entry['input_shape']} "
            f"input, batch {entry['batch_size']}")


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def shown(value, unit: str) -> str:
    """A measurement or goal value in its unit, as the report shows it."""
    if value is None:
        return "-"
    return {"fraction": pct, "ratio": lambda v: f"{v:.2f}x", "seconds": lambda v: f"{v:.1f} s",
            "number": lambda v: f"{v:,.1f}"}[unit](value)


def _target(what: str, goal_value: float, unit: str, at_least: bool = True) -> Dict:
    value = {"number": f"{goal_value:g}", "seconds": f"{goal_value:g} s"}.get(unit) or \
        shown(goal_value, unit)
    goal = (">= " if at_least else "< ") + value
    return {"target": what, "goal": goal, "goal_value": goal_value, "at_least": at_least,
            "unit": unit, "measured": None, "met": None, "note": ""}


def _judge(target: Dict, measured: Optional[float], note: str, applies: bool = True) -> Dict:
    """Fills in measured, met and the note; a missed goal's note says by how much: the factor
    of speed still needed, and for a fraction of the ceiling the percentage points too."""
    target["note"] = note
    if measured is None:
        return target
    goal = target["goal_value"]
    target["measured"] = measured
    if not applies:
        return target
    target["met"] = measured >= goal if target["at_least"] else measured < goal
    if not target["met"] and measured > 0:
        factor = goal / measured if target["at_least"] else measured / goal
        points = (f", {100 * (goal - measured):.1f} points short" if target["unit"] == "fraction"
                  else "")
        target["note"] = "; ".join(filter(None, [
            f"missed: {shown(measured, target['unit'])} vs {target['goal']}{points}; needs "
            f"{factor:.2f}x the speed", note]))
    return target


# --------------------------------------------------------------------------- ceiling fractions --
def _forward_vs_ceiling(results: Dict, dtype: str) -> Dict:
    """Issue 19: the SavedModel's forward (serving_uint8) >= 80% of its own dtype's ceiling."""
    height, width = results["settings"]["inference_size"]
    target = _target(f"{width}x{height} forward through the {dtype} SavedModel (serving_uint8) "
                     f">= {FORWARD_CEILING_GOAL:.0%} of the {dtype} matmul ceiling",
                     FORWARD_CEILING_GOAL, "fraction")
    serve = ((results.get("inference") or {}).get("exports") or {}).get(dtype) or {}
    if not protocol.ok(serve):
        return _judge(target, None, serve.get("skipped") or serve.get("error") or "not measured")
    r = serve["serving_uint8"]
    fraction = r.get("fraction_of_ceiling")
    note = (f"{r['ms_per_image']:.0f} ms, {r['gflops']:.1f} of "
            f"{results['ceiling']['gflops'][dtype]:.1f} GFLOP/s" if fraction else "")
    xla = [run for run in _forward_runs(results, dtype) if run["xla"] and "ms" in run]
    if xla and xla[0].get("fraction_of_ceiling"):
        note += (f"; the Keras forward with XLA (not what is served): "
                 f"{pct(xla[0]['fraction_of_ceiling'])}")
    native = dtype == "float32" or machine_lib.native_bf16(results["machine"])
    return _judge(target, fraction, note if native else f"{NOT_NATIVE}; {note}", native)


def _train_vs_ceiling(results: Dict, policy: str, on_gpu: bool) -> Dict:
    """Issue 19: the training step >= 75% of the ceiling of the dtype it computes in; the
    policy's cheapest configuration measured, any batch size."""
    dtype = POLICY_DTYPE[policy]
    target = _target(f"training step ({policy}) >= {TRAIN_CEILING_GOAL:.0%} of the {dtype} "
                     "matmul ceiling", TRAIN_CEILING_GOAL, "fraction")
    entries = [e for e in results.get("train", []) if e["precision"] == policy]
    chosen = sweep.best(entries, on_gpu)
    if not chosen or "fraction_of_ceiling" not in chosen:
        why = next((e.get("skipped") or e.get("error") for e in entries), None)
        return _judge(target, None, why or "not measured (--precisions)")
    note = (f"best {policy} configuration: {config_words(chosen)}, {chosen['gflops']:.1f} of "
            f"{results['ceiling']['gflops'][dtype]:.1f} GFLOP/s; by CPU time "
            f"{pct(chosen.get('fraction_of_ceiling_cpu_time'))}")
    kernels = results.get("kernels") or {}
    if protocol.ok(kernels) and kernels["precision"] == policy:  # the "why": the slowest kernel
        top = kernels["kernels"][0]
        note += (f"; limited by {top['kernel']}: {top['s_per_step']:.2f} s of the "
                 f"{kernels['onednn_s']:.2f} s its oneDNN primitives take per step (see 'Where a "
                 "training step's time goes')")
    native = policy == "float32" or machine_lib.native_bf16(results["machine"])
    return _judge(target, chosen["fraction_of_ceiling"],
                  note if native else f"{NOT_NATIVE}; {note}", native)


def _bf16_vs_float32(results: Dict, on_gpu: bool) -> Dict:
    target = _target("mixed_bfloat16 clearly faster than float32 where bf16 is native "
                     "(images/s)", BF16_CLEARLY_FASTER, "ratio")
    train = results.get("train", [])
    batch = min((e["batch_size"] for e in train), default=None)
    at_batch = [e for e in train if e["batch_size"] == batch]
    best16 = sweep.best([e for e in at_batch if e["precision"] == "mixed_bfloat16"], on_gpu)
    best32 = sweep.best([e for e in at_batch if e["precision"] == "float32"], on_gpu)
    # An upper bound of bf16's images/s (no step finished) against float32's, on wall time.
    bound16 = [e for e in at_batch if e["precision"] == "mixed_bfloat16"
               and e.get("images_per_s_upper_bound")]
    measured, note = None, ""
    if best16 and best32:
        measured = sweep.cost(best32, on_gpu) / sweep.cost(best16, on_gpu)
        note = (f"by {'wall' if on_gpu else 'CPU'} time per image, best of each at batch "
                f"{batch}: {config_words(best16)} vs {config_words(best32)}")
    elif bound16 and best32:
        measured = max(e["images_per_s_upper_bound"] for e in bound16) / best32["images_per_s"]
        target["measured_is_upper_bound"] = True
        note = f"no bf16 step finished in time; at most this ratio (batch {batch})"
    elif not any(e["precision"] == "mixed_bfloat16" for e in train):
        note = "mixed_bfloat16 not measured (--precisions)"
    native = machine_lib.native_bf16(results["machine"])
    return _judge(target, measured, note if native else "; ".join(filter(None, [NOT_NATIVE, note])),
                  native)


# ---------------------------------------------------------------------------------- host stages --
def _pipeline(results: Dict) -> Dict:
    target = _target("host input pipeline (images/s)", 600, "number")
    pipeline = results.get("pipeline") or {}
    if not protocol.ok(pipeline):
        return _judge(target, None, pipeline.get("error") or "not measured")
    return _judge(target, pipeline["images_per_s"],
                  f"{pipeline['cpu_ms_per_image']:.2f} CPU ms/image on {pipeline['cores']} cores")


def _converter(results: Dict) -> Dict:
    target = _target(f"converter: all {VOC_SBD_IMAGES:,} VOC + SBD images (~400 images/s)", 30,
                     "seconds", at_least=False)
    converter = results.get("converter") or {}
    if not protocol.ok(converter):
        return _judge(target, None, converter.get("error") or "not measured")
    return _judge(target, converter["extrapolated_voc_sbd_s"],
                  f"extrapolated: {converter['fixed_s']:.1f} s fixed + "
                  f"{converter['per_image_ms']:.2f} ms/image; {converter['images_per_s']:.0f} "
                  f"images/s over {converter['images']} images")


# ------------------------------------------------------------------------------ against PyTorch --
def _versus_target(what: str, tf_s: Optional[float], tf_words: str, tf_missing: str,
                   torch: Optional[Dict], torch_missing: str, native: bool) -> Dict:
    target = _target(f"{what} vs PyTorch's best on this machine (times as fast)",
                     VERSUS_PYTORCH_GOAL, "ratio")
    if torch is None:
        return _judge(target, None, torch_missing)
    if not tf_s:
        return _judge(target, None, f"TensorFlow {tf_missing}")
    note = (f"{tf_s:.2f} s ({tf_words}) vs PyTorch {torch['precision']} {torch['s']:.2f} s, "
            "wall time")
    return _judge(target, torch["s"] / tf_s, note if native else f"{NOT_NATIVE}; {note}",
                  native)


def _versus_targets(results: Dict) -> List[Dict]:
    """Issues 12 and 19, where bf16 is native: the project's fastest train step and the forward
    through the SavedModel that export --precision=auto gives here, against the faster of
    PyTorch's float32 and bf16 autocast."""
    torch_missing = ((results.get("versus") or {}).get("torch_skipped")
                     or "PyTorch not measured")
    native = machine_lib.native_bf16(results["machine"])
    batch = results["settings"]["batch_sizes"][0]
    done = [e for e in results.get("train", []) if protocol.ok(e) and e["batch_size"] == batch]
    fastest = min(done, key=lambda e: e["step_s"]) if done else None
    dtype = (results.get("auto") or {}).get("export") or "float32"
    serve = ((results.get("inference") or {}).get("exports") or {}).get(dtype) or {}
    serve_s = serve["serving_uint8"]["ms_per_image"] / 1000 if protocol.ok(serve) else None
    height, width = results["settings"]["inference_size"]
    return [
        _versus_target(f"train step (batch {batch}), the project's fastest configuration",
                       fastest and fastest["step_s"], fastest and config_words(fastest),
                       "train step not measured", versus.torch_best(results, "train"),
                       torch_missing, native),
        _versus_target(f"{width}x{height} forward through the SavedModel that export "
                       f"--precision=auto gives here ({dtype})", serve_s,
                       f"serving_uint8, {dtype}",
                       f"forward not measured: {serve.get('error') or serve.get('skipped')}",
                       versus.torch_best(results, "forward"), torch_missing, native),
    ]


def compute_targets(results: Dict) -> List[Dict]:
    """Every target of the run, in the report's order: issue 19's ceiling goals, bf16 vs float32,
    the host stages, PyTorch side by side, and the run's own length."""
    on_gpu = bool(results["machine"].get("gpus"))
    targets = [_forward_vs_ceiling(results, "float32"), _forward_vs_ceiling(results, "bfloat16"),
               _train_vs_ceiling(results, "float32", on_gpu),
               _train_vs_ceiling(results, "mixed_bfloat16", on_gpu),
               _bf16_vs_float32(results, on_gpu), _pipeline(results), _converter(results)]
    targets += _versus_targets(results)
    wall = results.get("wall_s")
    if wall is not None and not results["settings"]["quick"]:
        targets.append(_judge(_target("make bench finishes in under 10 minutes", 600, "seconds",
                                      at_least=False), wall, ""))
    return targets


# ----------------------------------------------------------------------------------------- XLA --
def _forward_runs(results: Dict, dtype: str) -> List[Dict]:
    """The side-by-side's Keras forward runs (XLA off, on) computing in dtype."""
    entries = ((results.get("versus") or {}).get("tf_forward") or {}).values()
    return [r for e in entries for r in e.get("runs") or [] if r.get("compute_dtype") == dtype]


def _forward_xla(results: Dict) -> Dict:
    """Per compute dtype: the Keras forward's XLA speed-up by wall time (its only clock)."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        runs = {r["xla"]: r for r in _forward_runs(results, dtype) if "ms" in r}
        if True in runs and False in runs:
            speedup = runs[False]["ms"] / runs[True]["ms"]
            out[dtype] = {"speedup": speedup, "basis": "wall time",
                          "chosen": speedup > 1 + sweep.CLEAR_MARGIN}
    return out


def xla_default(results: Dict) -> Dict:
    """Issue 19's "XLA: a measured default per machine class": whether XLA clearly speeds up the
    training step (per precision, first batch size, by `sweep.cost`) and the forward (per dtype,
    the side-by-side's Keras forward, by wall time) on this run's machine, with CLEAR_MARGIN."""
    train = {precision: {"speedup": c["speedup"], "basis": c["basis"],
                         "chosen": c["chosen"] is True}
             for precision, c in ((results.get("train_summary") or {})
                                  .get("xla_by_precision") or {}).items() if c}
    forward = _forward_xla(results)
    words = []
    for work, found in (("training step", train), ("forward", forward)):
        if not found:
            words.append(f"XLA for the {work}: not measured")
            continue
        helped = [name for name, f in found.items() if f["chosen"]]
        figures = ", ".join(f"{name} {f['speedup']:.2f}x" for name, f in found.items())
        basis = next(iter(found.values()))["basis"]
        words.append(f"XLA for the {work}: {'on for ' + ', '.join(helped) if helped else 'off'} "
                     f"({figures} by {basis}; on only when more than "
                     f"{sweep.CLEAR_MARGIN:.0%} faster)")
    machine_class = machine_lib.machine_class(results["machine"])
    return {"machine_class": machine_class, "train": train, "forward": forward,
            "verdict": f"On this machine class ({machine_class}): " + "; ".join(words) + "."}
