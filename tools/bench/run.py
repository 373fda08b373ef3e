"""One benchmark run: its stages in order, within its time budget, and the figures derived after.

    1. sample images (real, or synthetic: data.py), then in children: the environment, the opening
       matmul ceiling, input pipeline, augmentation, converter, FLOPs and the SavedModel exports
       (float32, and bfloat16 where bf16 is native)
    2. training steps (sweep.py)
    3. PyTorch side by side with TensorFlow's forward pass (versus.py)
    4. inference through each SavedModel, and the closing ceiling
"""

import dataclasses
import datetime
import os
import sys
import tempfile
import time
from typing import Dict, List

from bench import data
from bench import machine as machine_lib
from bench import protocol
from bench import sweep
from bench import targets as targets_lib
from bench import versus
from bench.settings import EXPORT_DTYPES, POLICY_DTYPE, Settings


def _sample(settings: Settings, tmp: str) -> Dict:
    """The sample images: describe_sample of --sample_voc_root, or synthetic ones written now."""
    if settings.voc_root:
        return data.describe_sample(settings.voc_root)
    return data.write_synthetic_voc(os.path.join(tmp, "synthetic", "VOC2012"),
                                    settings.synthetic_images)


# Why a run without native bf16 serves no bfloat16 export.
NOT_EXPORTED_WHY = ("not measured: no native bf16 here; emulated bf16 would take minutes per "
                    "forward, and export --precision=auto gives float32 on such a machine")


def export_dtypes(settings: Settings, machine: Dict) -> List[str]:
    """The dtypes exported and served: bfloat16 besides float32 where bf16 is native, or in a
    --quick run (tiny sizes, where emulated bf16 costs nothing); see NOT_EXPORTED_WHY."""
    native = machine_lib.native_bf16(machine)
    return [d for d in EXPORT_DTYPES if d == "float32" or native or settings.quick]


def _host_stage(runner: protocol.ChildRunner, s: Settings, voc_root: str, export_base: str,
                results: Dict) -> None:
    """Host work, FLOPs, exports and the opening ceiling, into results."""
    def run(tasks):
        return runner.run(tasks, max(runner.remaining_s() - s.serve_reserve_s, 60))

    host_tasks = [("environment", {}),
                  ("ceiling", dict(dtypes=["float32", "bfloat16"], sizes=s.matmul_sizes,
                                   repeats=s.repeats, budget_s=20)),
                  ("pipeline", dict(voc_root=voc_root, num_records=s.pipeline_records,
                                    batch_size=s.pipeline_batch_size,
                                    num_batches=s.pipeline_batches,
                                    warmup_batches=s.pipeline_warmup_batches,
                                    image_size=s.image_size)),
                  ("augment", dict(batch_sizes=s.batch_sizes, image_size=s.image_size,
                                   iters=s.augment_iters))]
    converter_task = ("converter", dict(voc_root=voc_root, num_images=s.converter_images,
                                        small_images=min(30, s.converter_images // 2)))
    model_kwargs = dict(image_size=s.image_size, fc_units=s.fc_units, num_classes=s.num_classes,
                        inference_size=list(s.inference_size), export_base=export_base)
    if s.group_children:
        # One child for all (--quick): its GPUs are not known before it starts; both dtypes.
        results["export_dtypes"] = list(EXPORT_DTYPES)
        environment, ceiling, pipeline, augment, converter, model = run(
            host_tasks + [converter_task, ("model", dict(
                model_kwargs, export_dtypes=results["export_dtypes"]))])
    else:
        environment, ceiling, pipeline, augment = run(host_tasks)
        (converter,) = run([converter_task])
        results["export_dtypes"] = export_dtypes(
            s, dict(results["machine"], gpus=environment.get("gpus")))
        (model,) = run([("model", dict(model_kwargs, export_dtypes=results["export_dtypes"]))])
    results["machine"].update({k: environment.get(k) for k in (
        "tensorflow", "keras", "gpus", "onednn")})
    results.update(ceiling_start=ceiling, converter=converter, pipeline=pipeline,
                   augment=augment, flops=model.get("flops"), exports=model.get("exports"),
                   auto=model.get("auto"),
                   model_task={k: model.get(k) for k in ("status", "error", "peak_rss_mb")})
    _log_host_stage(ceiling, converter, pipeline, augment, model)


def _log_host_stage(ceiling, converter, pipeline, augment, model) -> None:
    for label, entry, summary in (
            ("ceiling", ceiling, lambda e: ", ".join(
                f"{k} {e[k]['gflops']:.1f} GFLOP/s" for k in ("float32", "bfloat16"))),
            ("converter", converter, lambda e: f"{e['images_per_s']:.0f} images/s"),
            ("pipeline", pipeline, lambda e: f"{e['images_per_s']:.0f} images/s"),
            ("augment", augment, lambda e: ", ".join(
                f"{b['ms_per_batch']:.1f} ms/batch of {b['batch_size']}"
                for b in e["batches"])),
            ("model", model, lambda e: f"{e['flops']['train_gflop']:.1f} GFLOP/train image")):
        protocol.log_result(label, entry, summary)


def _kernel_profile(runner: protocol.ChildRunner, s: Settings, results: Dict) -> Dict:
    """oneDNN's per-kernel time of the fastest precision's step at the first batch size (the
    targets' "why"), in a child of its own (ONEDNN_VERBOSE must be set before its first kernel)."""
    batch = s.batch_sizes[0]
    timed = [e for e in results["train"] if e.get("batch_size") == batch and e.get("step_s")]
    if not timed:
        return {"status": "skipped", "skipped": "no training step was timed"}
    fastest = min(timed, key=lambda e: e["cpu_s_per_step"])
    (entry,) = runner.run([("kernels", dict(
        precision=fastest["precision"], batch_size=batch, image_size=s.image_size,
        fc_units=s.fc_units, num_classes=s.num_classes, steps=2))],
        max(min(runner.remaining_s() - s.serve_reserve_s, 120), 30))
    protocol.log_result("oneDNN kernels", entry, lambda e: (
        f"{e['kernels'][0]['kernel']} {e['kernels'][0]['s_per_step']:.2f} s of "
        f"{e['step_s']:.2f} s/step"))
    return entry


def _serve_stage(runner: protocol.ChildRunner, s: Settings, voc_root: str, tmp: str,
                 results: Dict) -> None:
    """Inference through each SavedModel exported, one child each (the closing ceiling in the
    last), so that each export's peak RSS is its own."""
    image_path = os.path.join(tmp, "inference.jpg")
    image_source = data.prepare_inference_image(voc_root, s.inference_size, image_path)
    gpus = results["machine"].get("gpus") or []
    dtypes = ["float32", "bfloat16"] + (["float16"] if gpus else [])
    closing = ("ceiling", dict(dtypes=dtypes, sizes=s.matmul_sizes, repeats=s.repeats,
                               budget_s=8))
    exports, model_task = results.get("exports") or {}, results["model_task"]
    served = {}
    for dtype in EXPORT_DTYPES:
        if dtype not in results["export_dtypes"]:
            served[dtype] = {"status": "skipped", "skipped": NOT_EXPORTED_WHY}
        elif dtype not in exports:
            served[dtype] = {"status": "failed", "error": f"not exported: {model_task['error']}"}
    todo = [d for d in EXPORT_DTYPES if d in exports]
    ceiling_end = None
    for i, dtype in enumerate(todo):
        timeout_s = max(runner.remaining_s(), s.serve_reserve_s / len(todo))
        tasks = [("serve", dict(export_path=exports[dtype]["path"], image_path=image_path,
                                repeats=s.repeats, deadline_unix=time.time() + timeout_s - 20))]
        entries = runner.run(tasks + ([closing] if i == len(todo) - 1 else []), timeout_s)
        served[dtype] = entries[0]
        ceiling_end = entries[1] if len(entries) > 1 else ceiling_end
        protocol.log_result(f"inference {dtype}", served[dtype], lambda e: (
            f"{e['serving_uint8']['ms_per_image']:.0f} ms/image (serving_uint8)"))
    if ceiling_end is None:
        (ceiling_end,) = runner.run([closing], 120)
    results["inference"] = {"image": image_source,
                            "exports": {d: served[d] for d in EXPORT_DTYPES}}
    results["ceiling"] = combine_ceilings(results.pop("ceiling_start"), ceiling_end)


def run_benchmarks(settings: Settings, command: str = "") -> Dict:
    """Runs every measurement in child processes and returns the results (bench/__init__.py)."""
    s = settings
    results = {
        "machine": dict(machine_lib.machine_info(), load_average_start=list(os.getloadavg()),
                        date=datetime.datetime.now(datetime.timezone.utc)
                        .isoformat(timespec="seconds"),
                        command=command, python=sys.version.split()[0]),
        "settings": dataclasses.asdict(s),
    }
    with tempfile.TemporaryDirectory(prefix="fcn8s_benchmark_") as tmp:
        results["sample"] = _sample(s, tmp)
        voc_root = results["sample"]["root"]
        runner = protocol.ChildRunner(s.time_budget_s, tmp)
        _host_stage(runner, s, voc_root, os.path.join(tmp, "export"), results)
        gpus = results["machine"].get("gpus") or []
        precisions = s.precisions or (["float32", "mixed_bfloat16"]
                                      + (["mixed_float16"] if gpus else []))
        compared = versus.precisions_compared(results, precisions)
        reserve_s = s.serve_reserve_s + s.versus_reserve_s * sum(
            reason is None for reason in compared.values())
        results["train"], results["train_summary"] = sweep.train_sweep(
            runner, s, precisions, on_gpu=bool(gpus), reserve_s=reserve_s,
            native_bf16=machine_lib.native_bf16(results["machine"]))
        results["kernels"] = _kernel_profile(runner, s, results)
        results["versus"] = versus.run_versus(runner, s, results, precisions)
        _serve_stage(runner, s, voc_root, tmp, results)
        results["machine"]["load_average_end"] = list(os.getloadavg())
        results["wall_s"] = time.time() - runner.start
    derive(results)
    return results


def combine_ceilings(start: Dict, end: Dict) -> Dict:
    """Per dtype: the start and end measurements and the higher of the two as the ceiling."""
    combined = {"start": start, "end": end, "gflops": {}, "gflop_per_cpu_s": {}}
    for dtype in POLICY_DTYPE.values():
        runs = [r[dtype] for r in (start, end) if isinstance(r.get(dtype), dict)]
        if runs:
            combined["gflops"][dtype] = max(r["gflops"] for r in runs)
            combined["gflop_per_cpu_s"][dtype] = max(r["gflop_per_cpu_s"] for r in runs)
    return combined


def _derive_train(train: List[Dict], train_gflop, ceiling: Dict) -> None:
    """GFLOP/s and fractions of the ceiling of the step's compute dtype, in place."""
    for entry in train:
        dtype = POLICY_DTYPE[entry["precision"]]
        entry["ceiling_dtype"] = dtype
        if not protocol.ok(entry) or not train_gflop:
            if entry.get("step_s_lower_bound") and train_gflop:
                entry["images_per_s_upper_bound"] = (entry["batch_size"]
                                                     / entry["step_s_lower_bound"])
            continue
        work = train_gflop * entry["batch_size"]
        entry["gflops"] = work / entry["step_s"]
        if dtype in ceiling["gflops"]:
            entry["fraction_of_ceiling"] = entry["gflops"] / ceiling["gflops"][dtype]
            entry["fraction_of_ceiling_cpu_time"] = (work / entry["cpu_s_per_step"]
                                                     / ceiling["gflop_per_cpu_s"][dtype])


def _derive_inference(results: Dict, forward_gflop, ceiling: Dict) -> None:
    """GFLOP/s and the fraction of the ceiling of the dtype each forward computes in, in place:
    each export's signatures, and the Keras forward runs (XLA off/on) of the side-by-side."""
    def add(entry: Dict, seconds: float, dtype: str) -> None:
        entry["gflops"] = forward_gflop / seconds
        if dtype in ceiling["gflops"]:
            entry["fraction_of_ceiling"] = entry["gflops"] / ceiling["gflops"][dtype]

    if not forward_gflop:
        return
    for dtype, serve in results["inference"]["exports"].items():
        if protocol.ok(serve):
            for name in ("serving_uint8", "serving_default"):
                add(serve[name], serve[name]["ms_per_image"] / 1000, dtype)
    for entry in ((results.get("versus") or {}).get("tf_forward") or {}).values():
        for run in entry.get("runs") or []:
            if "ms" in run:
                add(run, run["ms"] / 1000, run["compute_dtype"])


def derive(results: Dict) -> None:
    """Adds GFLOP/s and fractions of the ceiling to the training and inference entries, the
    side-by-side rows, the targets table and the XLA finding."""
    flops = results.get("flops") or {}
    ceiling = results["ceiling"]
    _derive_train(results["train"], flops.get("train_gflop"), ceiling)
    _derive_inference(results, flops.get("inference_forward_gflop"), ceiling)
    results["versus_rows"] = versus.comparison(results)
    results["targets"] = targets_lib.compute_targets(results)
    results["xla_default"] = targets_lib.xla_default(results)
