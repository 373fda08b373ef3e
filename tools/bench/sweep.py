"""Which training configurations a run measures, in which order, and which of them is faster.

The sweep runs in stages so that each can choose from the one before: fixed vs dynamic input
(float32), then XLA for every precision on the input kept, then the other precisions without XLA,
then the larger batches with the setting fastest at the first batch size. Where bf16 is emulated
(no native bf16), the other precisions without XLA go last instead, because they can be very slow
there (bf16 kernels ~10x slower than float32). A tight budget cuts the last first.
"""

import statistics
import time
from typing import Dict, List, Optional, Tuple

from absl import logging

from bench import protocol
from bench.settings import Settings

# A setting counts as faster than another only with this much less time per image; within it the
# default (dynamic input, XLA off) stays. Measure on an idle machine: under load (see each row's
# load average) steps vary by more than this from one to the next.
CLEAR_MARGIN = 0.05


def train_label(cfg: Dict) -> str:
    return (f"train {cfg['precision']} xla={'on' if cfg['xla'] else 'off'} {cfg['input_shape']} "
            f"batch {cfg['batch_size']}")


def summarise_train_entry(entry: Dict) -> None:
    """Adds step_s, cpu_s_per_step, images_per_s from a training task's raw step times, in place.

    Works on a finished task and on one stopped at its time limit after its first step; the first
    step alone (tracing and XLA compilation included) gives an upper bound of the step time.
    """
    times = entry.get("step_times_s") or []
    if times:
        entry.update(step_s=statistics.median(times),
                     cpu_s_per_step=statistics.median(entry["step_cpu_s"]),
                     step_time_source=f"median of {len(times)} timed step(s)",
                     spread=max(times) / min(times) - 1)
    else:
        entry.update(step_s=entry["first_step_s"], cpu_s_per_step=entry["first_step_cpu_s"],
                     step_time_source="first step only (includes tracing/compilation): an "
                                      "upper bound")
    entry["images_per_s"] = entry["batch_size"] / entry["step_s"]


def _finish_train_entry(entry: Dict, cfg: Dict, shared_process: bool) -> None:
    """Turns a train child's result into a report entry, in place (see summarise_train_entry)."""
    entry.update(cfg, shared_process=shared_process)
    if entry.get("timed_out") and "first_step_s" in entry:
        # Stopped at the time limit after its first step: what it measured still counts.
        entry.update(status="done", stopped_at_time_limit=entry.pop("error"))
    elif entry.get("timed_out") and "first_step_started_unix" in entry:
        # Killed inside its first step: that step took at least this long.
        entry["step_s_lower_bound"] = time.time() - entry["first_step_started_unix"]
    if protocol.ok(entry):
        summarise_train_entry(entry)
    protocol.log_result(train_label(cfg), entry, lambda e: (
        f"{e['step_s']:.2f} s/step, {e['cpu_s_per_step']:.2f} CPU s/step, "
        f"{e['images_per_s']:.3f} images/s ({e['step_time_source']})"))


def run_train_configs(runner: protocol.ChildRunner, settings: Settings, configs: List[Dict],
                      reserve_s: float) -> List[Dict]:
    """Runs training configurations, one child each (grouped in quick mode), within the budget
    less reserve_s (kept for the stages after the sweep)."""
    s = settings
    results = []
    pending = list(configs)
    while pending:
        group = pending if s.group_children else pending[:1]
        pending = pending[len(group):]
        available = runner.remaining_s() - reserve_s
        if available < 30:
            for cfg in group:
                results.append(dict(cfg, status="skipped",
                                    skipped="time budget (--time_budget_s) used up"))
                logging.warning("%s: skipped, time budget used up", train_label(cfg))
            continue
        limit = min(s.max_config_s * len(group), available)
        deadline = time.time() + limit
        tasks = [("train", dict(cfg, image_size=s.image_size, fc_units=s.fc_units,
                                num_classes=s.num_classes, repeats=s.repeats,
                                deadline_unix=deadline)) for cfg in group]
        # Grace beyond the deadline: a step that started in time may finish, and the child exits.
        for cfg, entry in zip(group, runner.run(tasks, limit + 20)):
            _finish_train_entry(entry, cfg, shared_process=len(group) > 1)
            results.append(entry)
    return results


# ------------------------------------------------------------------------------------ comparing --
def cost(entry: Dict, on_gpu: bool) -> float:
    """Seconds per image by which configurations are compared: CPU time on a CPU, which other load
    on a shared machine disturbs far less than wall time; wall time on a GPU."""
    return (entry["step_s"] if on_gpu else entry["cpu_s_per_step"]) / entry["batch_size"]


def best(entries: List[Dict], on_gpu: bool) -> Optional[Dict]:
    """The measured entry with the lowest cost per image."""
    measured = [e for e in entries if protocol.ok(e)]
    return min(measured, key=lambda e: cost(e, on_gpu)) if measured else None


def _compare(entries: List[Dict], key: str, candidate, default, on_gpu: bool,
             names: Tuple[str, str]) -> Optional[Dict]:
    """Whether the best entry with entry[key] == candidate is clearly cheaper than the best with
    default; names = (candidate's, default's) for the verdict. None when either is missing."""
    a = best([e for e in entries if e[key] == candidate], on_gpu)
    b = best([e for e in entries if e[key] == default], on_gpu)
    if not a or not b:
        return None
    speedup = cost(b, on_gpu) / cost(a, on_gpu)
    chosen = candidate if speedup > 1 + CLEAR_MARGIN else default
    return {"chosen": chosen, "speedup": speedup,
            "speedup_wall": (b["step_s"] / b["batch_size"]) / (a["step_s"] / a["batch_size"]),
            "basis": "wall time" if on_gpu else "CPU time",
            "verdict": (f"{names[0]} clearly faster" if chosen == candidate else
                        f"{names[0]} not clearly faster than {names[1]} (margin "
                        f"{CLEAR_MARGIN:.0%}): {names[1]} kept")}


def train_summary(results: List[Dict], on_gpu: bool) -> Dict:
    """Fixed vs dynamic input (float32) and XLA on vs off (float32 as "xla", every precision in
    "xla_by_precision") at the first batch size, and the fastest configuration per batch size,
    compared by `cost` with CLEAR_MARGIN."""
    summary = {}
    if not results:
        return summary
    b1 = results[0]["batch_size"]
    at_b1 = [e for e in results if e["batch_size"] == b1]
    float32 = [e for e in at_b1 if e["precision"] == "float32"]
    summary["input_shape"] = _compare([e for e in float32 if not e["xla"]], "input_shape",
                                      "fixed", "dynamic", on_gpu, ("fixed input", "dynamic"))
    shape = (summary["input_shape"] or {}).get("chosen", "dynamic")
    summary["xla_by_precision"] = {}
    for precision in dict.fromkeys(e["precision"] for e in at_b1):
        summary["xla_by_precision"][precision] = _compare(
            [e for e in at_b1 if e["precision"] == precision and e["input_shape"] == shape],
            "xla", True, False, on_gpu, ("XLA", "XLA off"))
    summary["xla"] = summary["xla_by_precision"].get("float32")
    summary["fastest"] = {}
    for batch in sorted({e["batch_size"] for e in results}):
        fastest = best([e for e in results if e["batch_size"] == batch], on_gpu)
        if fastest:
            summary["fastest"][str(batch)] = {k: fastest[k] for k in (
                "precision", "xla", "input_shape", "images_per_s", "cpu_s_per_step")}
    return summary


# ---------------------------------------------------------------------------------------- sweep --
def _cfg(precision: str, xla: bool, shape: str, batch: int) -> Dict:
    return {"precision": precision, "xla": xla, "input_shape": shape, "batch_size": batch}


def train_sweep(runner: protocol.ChildRunner, settings: Settings, precisions: List[str],
                on_gpu: bool, reserve_s: float, native_bf16: bool) -> Tuple[List[Dict], Dict]:
    """The training configurations of settings.matrix, in an order that lets each stage choose;
    reserve_s of the budget is left for the stages after the sweep. native_bf16: whether the
    reduced precisions run in hardware here (they go last where they are emulated)."""
    s = settings

    def run(configs):
        return run_train_configs(runner, s, configs, reserve_s)
    if s.matrix == "full":
        configs = [_cfg(p, x, shape, b) for b in s.batch_sizes for p in precisions
                   for x in (False, True) for shape in ("fixed", "dynamic")]
        results = run(configs)
        return results, train_summary(results, on_gpu)
    b1, larger = s.batch_sizes[0], s.batch_sizes[1:]
    # Stage 1: does a model built for the crop size train faster than a dynamic one?
    results = run([_cfg("float32", False, "fixed", b1), _cfg("float32", False, "dynamic", b1)])
    shape = (train_summary(results, on_gpu).get("input_shape") or {}).get("chosen", "dynamic")
    # Stage 2: XLA, for every precision, on the chosen input.
    results += run([_cfg(p, True, shape, b1) for p in precisions])
    # Stage 3: the other precisions without XLA (the training default where bf16 is native);
    # last where bf16 is emulated (~10x slower than float32), so a tight budget cuts them first.
    others = [_cfg(p, False, shape, b1) for p in precisions if p != "float32"]
    if native_bf16:
        results += run(others)
    # Stage 4: the larger batches, with one setting: the fastest at the first batch size of the
    # precisions that run in hardware here (float32 only where bf16 is emulated), float32 with
    # the XLA setting chosen above. Dropped to pay for the bfloat16 export's inference rows
    # (issue 19): float32 at the larger batches where another precision is faster, which is not
    # what such a machine trains with.
    summary = train_summary(results, on_gpu)
    fastest = best([r for r in results if r["batch_size"] == b1
                    and (native_bf16 or r["precision"] == "float32")], on_gpu)
    if fastest is None or fastest["precision"] == "float32":
        setting = ("float32", (summary.get("xla") or {}).get("chosen", False))
    else:
        setting = (fastest["precision"], fastest["xla"])
    for batch in larger:
        results += run([_cfg(*setting, shape, batch)])
    if not native_bf16:
        results += run(others)
    return results, train_summary(results, on_gpu)
