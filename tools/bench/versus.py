"""TensorFlow side by side with PyTorch on the same machine, in the same run.

Children alternate: PyTorch float32 (train step + forward), TensorFlow's forward in float32 (XLA off
and on), then, where bf16 is native, PyTorch under bf16 autocast and TensorFlow's forward in
bfloat16 (XLA off and on: the net a bfloat16 export serves). TensorFlow's train step is the
sweep's (sweep.py), measured earlier in the run on the same crop and batch. Ratios are PyTorch
seconds over TensorFlow seconds, by wall time (the only clock both report the same way): above 1,
TensorFlow is faster.
"""

import importlib.util
import time
from typing import Dict, List, Optional

from absl import logging

from bench import machine as machine_lib
from bench import protocol
from bench.settings import POLICY_DTYPE, Settings

# TensorFlow's Keras policy -> the PyTorch precision it is compared with.
PAIRS = {"float32": "float32", "mixed_bfloat16": "bf16_autocast"}
# Training policy -> the Keras policy of the forward pass compared: the dtype of the export that
# precision serves (model/fcn8s.py serving_twin builds a pure "bfloat16" net, not a mixed one that
# casts 134 M float32 weights on every call).
FORWARD_POLICY = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
INSTALL_HINT = ".venv/bin/pip install -r requirements/bench-torch.txt"


def torch_missing_reason(settings: Settings, results: Dict) -> Optional[str]:
    """Why the PyTorch rows are skipped on this run, or None when they run."""
    if not settings.pytorch:
        return "skipped: --nopytorch"
    if importlib.util.find_spec("torch") is None:
        return f"skipped: PyTorch is not installed (for these rows: {INSTALL_HINT})"
    if results["machine"].get("gpus"):
        return ("skipped: TensorFlow runs on the GPU here and the PyTorch rows measure the CPU "
                "(torch_tasks.py), which would not compare like with like")
    return None


def precisions_compared(results: Dict, precisions: List[str]) -> Dict:
    """TF policy -> None (compared) or the reason it is not, for float32 and mixed_bfloat16."""
    reasons = {"float32": None}
    if "mixed_bfloat16" not in precisions:
        reasons["mixed_bfloat16"] = "not measured (--precisions)"
    elif not machine_lib.native_bf16(results["machine"]):
        reasons["mixed_bfloat16"] = ("not native, skipped: no AMX or AVX512_BF16 in this CPU's "
                                     "flags; emulated bf16 is many times slower than float32")
    else:
        reasons["mixed_bfloat16"] = None
    return reasons


def _child(runner: protocol.ChildRunner, settings: Settings, task: str, kwargs: Dict) -> Dict:
    """One child within the budget left before the serving stage; a "skipped" entry otherwise."""
    available = min(settings.max_config_s, runner.remaining_s() - settings.serve_reserve_s)
    if available < 30:
        return {"task": task, "status": "skipped",
                "skipped": "time budget (--time_budget_s) used up"}
    kwargs = dict(kwargs, deadline_unix=time.time() + available)
    (entry,) = runner.run([(task, kwargs)], available + 20)
    return entry


def run_versus(runner: protocol.ChildRunner, settings: Settings, results: Dict,
               precisions: List[str]) -> Dict:
    """The alternated PyTorch and TensorFlow-forward children; their raw results."""
    s = settings
    height, width = s.inference_size
    common = dict(fc_units=s.fc_units, num_classes=s.num_classes, repeats=s.repeats)
    torch_reason = torch_missing_reason(s, results)
    out = {"torch_skipped": torch_reason, "precisions": precisions_compared(results, precisions),
           "torch": {}, "tf_forward": {}}
    for policy, reason in out["precisions"].items():
        if reason:
            continue
        if not torch_reason:
            out["torch"][policy] = _child(runner, s, "torch", dict(
                common, precision=PAIRS[policy], image_size=s.image_size,
                batch_size=s.batch_sizes[0], inference_size=[height, width]))
            protocol.log_result(f"pytorch {PAIRS[policy]}", out["torch"][policy], lambda e: (
                f"train step {e['train']['s']:.2f} s, forward {e['forward']['s']:.2f} s"))
        configs = [{"precision": FORWARD_POLICY[policy], "xla": xla} for xla in (False, True)]
        out["tf_forward"][policy] = _child(runner, s, "tf_forward", dict(
            common, configs=configs, height=height, width=width))
        protocol.log_result(f"tensorflow forward {FORWARD_POLICY[policy]}",
                            out["tf_forward"][policy],
                            lambda e: ", ".join(f"XLA {'on' if r['xla'] else 'off'} "
                                                f"{r.get('ms', float('nan')):.0f} ms"
                                                for r in e["runs"]))
    if torch_reason:
        logging.warning("PyTorch rows %s", torch_reason)
    return out


# ---------------------------------------------------------------------------------- comparison --
def _tf_train(train: List[Dict], policy: str, batch_size: int) -> Optional[Dict]:
    """The sweep's fastest configuration of a policy at batch_size, by wall time."""
    done = [e for e in train if protocol.ok(e) and e["precision"] == policy
            and e["batch_size"] == batch_size]
    return min(done, key=lambda e: e["step_s"]) if done else None


def _tf_forward(entry: Optional[Dict]) -> Optional[Dict]:
    """The faster of a tf_forward child's runs (XLA off/on)."""
    runs = [r for r in (entry or {}).get("runs", []) if "ms" in r]
    return min(runs, key=lambda r: r["ms"]) if runs else None


def _row(work: str, policy: str, tf_s, tf_config: str, torch_s, note: str, gflop,
         ceiling: Dict) -> Dict:
    """One table row; fractions of the matmul ceiling of the policy's compute dtype."""
    row = {"work": work, "precision": policy, "torch_precision": PAIRS[policy], "tf_s": tf_s,
           "tf_config": tf_config, "torch_s": torch_s, "note": note,
           "ratio": torch_s / tf_s if tf_s and torch_s else None}
    peak = ceiling.get(POLICY_DTYPE[policy])
    for side in ("tf", "torch"):
        if gflop and peak and row[f"{side}_s"]:
            row[f"{side}_fraction_of_ceiling"] = gflop / row[f"{side}_s"] / peak
    return row


def comparison(results: Dict) -> List[Dict]:
    """Rows of the side-by-side table: train step and forward per precision, with the ratio
    PyTorch s / TensorFlow s (above 1: TensorFlow faster) where both were measured."""
    versus, s = results.get("versus") or {}, results["settings"]
    batch, crop = s["batch_sizes"][0], s["image_size"]
    height, width = s["inference_size"]
    flops, ceiling = results.get("flops") or {}, results["ceiling"]["gflops"]
    train_gflop = flops.get("train_gflop") and flops["train_gflop"] * batch
    rows = []
    for policy, reason in (versus.get("precisions") or {}).items():
        torch_entry = (versus.get("torch") or {}).get(policy) or {}
        note = reason or versus.get("torch_skipped") or torch_entry.get("skipped") or \
            torch_entry.get("error") or ""
        tf_train = None if reason else _tf_train(results.get("train", []), policy, batch)
        rows.append(_row(f"train step, {crop}x{crop}, batch {batch}", policy,
                         tf_train and tf_train["step_s"],
                         tf_train and _config_words(tf_train),
                         (torch_entry.get("train") or {}).get("s"), note, train_gflop,
                         ceiling))
        tf_forward = None if reason else _tf_forward((versus.get("tf_forward") or {}).get(policy))
        rows.append(_row(f"forward, {width}x{height}", policy,
                         tf_forward and tf_forward["ms"] / 1000,
                         tf_forward and f"{tf_forward['precision']}, XLA "
                                        f"{'on' if tf_forward['xla'] else 'off'}",
                         (torch_entry.get("forward") or {}).get("s"), note,
                         flops.get("inference_forward_gflop"), ceiling))
    return rows


def _config_words(entry: Dict) -> str:
    return f"XLA {'on' if entry['xla'] else 'off'}, {entry['input_shape']} input"


def torch_best(results: Dict, work: str) -> Optional[Dict]:
    """PyTorch's faster precision for work ("train" or "forward"): {"precision", "s"}. A child
    stopped at its time limit after its train step still reports that step."""
    measured = [{"precision": e["precision"], "s": e[work]["s"]}
                for e in ((results.get("versus") or {}).get("torch") or {}).values()
                if (e.get(work) or {}).get("s")]
    return min(measured, key=lambda m: m["s"]) if measured else None
