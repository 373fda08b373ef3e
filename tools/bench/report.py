"""BENCHMARKS.md from a run's results: one function per section, in the report's order."""

import math
from typing import Dict, List

from bench import protocol
from bench import sweep
from bench import versus as versus_lib
from bench.settings import VOC_SBD_IMAGES
from bench.targets import config_words, pct, shown


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def _gb(megabytes) -> str:
    """Megabytes as GB; '-' when unknown (a child stopped at its deadline reports no peak RSS)."""
    return "-" if megabytes is None else _num(megabytes / 1024)


def _machine(results: Dict) -> List[str]:
    m, s = results["machine"], results["settings"]
    gpus = ", ".join(g["name"] for g in m.get("gpus") or []) or "none"
    load_start = "/".join(f"{v:.2f}" for v in m["load_average_start"])
    load_end = "/".join(f"{v:.2f}" for v in m.get("load_average_end", []))
    sample = results.get("sample") or {}
    return [
        "# Benchmarks" + (" (--quick smoke run: tiny sizes, not representative)"
                          if s["quick"] else ""),
        "",
        f"Measured by `tools/benchmark.py` in one run of {results['wall_s']:.0f} s. The ratios to "
        "the machine's own matmul ceiling, taken in the same run, drift less than the absolute "
        "figures on a shared machine.",
        "",
        "| machine | |",
        "| --- | --- |",
        f"| CPU | {m['cpu']}, {m['cores']} cores ({m['logical_cpus']} logical CPUs, "
        f"{m['usable_cpus']} usable); {', '.join(m['simd']) or 'no AVX2'}; native bf16: "
        f"{'yes' if m['native_bf16_cpu'] else 'no'} |",
        f"| GPU | {gpus} |",
        f"| machine class | {(results.get('xla_default') or {}).get('machine_class', '-')} |",
        f"| --precision=auto here | {_auto_words(results.get('auto'))} |",
        f"| software | TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, Python "
        f"{m['python']}; oneDNN: {m.get('onednn')} |",
        f"| sample images | {sample.get('images')} JPEGs, mean "
        f"{_num(sample.get('mean_jpeg_kb'), 0)} KiB; {sample.get('source')} |",
        f"| date (UTC) | {m['date']} |",
        f"| command | `{m['command']}` |",
        f"| load average (1/5/15 min) | start {load_start}, end {load_end} |",
    ]


def _auto_words(auto) -> str:
    if not auto:
        return "- (the model task failed)"
    return (f"training {auto['train']}, export {auto['export']} ({auto['export_why']})")


def _shown_measurement(t: Dict) -> str:
    bound = "<= " if t.get("measured_is_upper_bound") and t["measured"] is not None else ""
    return bound + shown(t["measured"], t["unit"])


def _targets(results: Dict) -> List[str]:
    lines = ["", "## Targets", "", "| target | goal | measured | met? | note |",
             "| --- | --- | --- | --- | --- |"]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {_shown_measurement(t)} | {met} | "
                     f"{t.get('note', '')} |")
    return lines


def _xla(results: Dict) -> List[str]:
    """The XLA default this run's figures support, for its machine class."""
    finding = results.get("xla_default") or {}
    return ["", "## XLA default on this machine class", "",
            finding.get("verdict", "Not measured."),
            "Training figures: the sweep's XLA on vs off at the first batch size, per precision "
            "(Training step below); forward figures: the Keras forward in a tf.function with "
            "jit_compile on vs off, in the dtype each export computes in (Inference below). The "
            "SavedModels themselves run without XLA."]


def _ceiling(results: Dict) -> List[str]:
    ceiling, s = results["ceiling"], results["settings"]
    sizes = ", ".join(str(n) for n in s["matmul_sizes"])
    lines = ["", f"## Machine ceiling: chained n x n tf.matmul (n = {sizes}), best call", "",
             "| dtype | GFLOP/s at start (n) | GFLOP/s at end (n) | ceiling GFLOP/s "
             "| GFLOP per CPU-s |", "| --- | --- | --- | --- | --- |"]
    for dtype, gflops in ceiling["gflops"].items():
        at = [ceiling[key].get(dtype) or {} for key in ("start", "end")]
        shown = [f"{r['gflops']:.1f} ({r['n']})" if r else "-" for r in at]
        lines.append(f"| {dtype} | {shown[0]} | {shown[1]} | {_num(gflops, 1)} | "
                     f"{_num(ceiling['gflop_per_cpu_s'][dtype], 1)} |")
    for key in ("start", "end"):
        if ceiling[key].get("error"):
            lines.append(f"\nCeiling at {key}: {ceiling[key]['error']}")
    return lines


def _train_row(e: Dict) -> str:
    head = (f"| {e['precision']} | {'on' if e['xla'] else 'off'} | {e['input_shape']} | "
            f"{e['batch_size']} |")
    if protocol.ok(e):
        mark = "" if e.get("step_times_s") else " (first step only)"
        return (f"{head} {_num(e['step_s'])}{mark} | {_num(e['images_per_s'], 3)} | "
                f"{_num(e.get('gflops'), 1)} | {pct(e.get('fraction_of_ceiling'))} | "
                f"{pct(e.get('fraction_of_ceiling_cpu_time'))} | {_num(e['cpu_s_per_step'])} | "
                f"{_num(e['first_step_s'], 1)} | {_gb(e.get('peak_rss_mb'))} | "
                f"{_num(e.get('load_average_1min_before'))} |")
    why = e.get("skipped") or e.get("error") or e.get("status")
    if e.get("step_s_lower_bound"):
        why = (f"> {e['step_s_lower_bound']:.0f} s/step (<= "
               f"{e['images_per_s_upper_bound']:.4f} images/s): {why}")
    return f"{head} {why} | | | | | | | | |"


def _train_verdicts(results: Dict) -> List[str]:
    s, summary = results["settings"], results.get("train_summary", {})
    lines = [""]
    for key, what in (("input_shape", "Model built for the fixed crop vs dynamic (None, None)"),
                      ("xla", "XLA on vs off")):
        c = summary.get(key)
        if c:
            lines.append(f"{what} (float32, batch {s['batch_sizes'][0]}): **{c['verdict']}** "
                         f"({c['speedup']:.3f}x by {c['basis']}, {c['speedup_wall']:.3f}x by wall "
                         "time).")
    if summary.get("input_shape"):
        lines.append("The later configurations use the input kept; the served model stays "
                     "dynamic.")
    for batch, fastest in summary.get("fastest", {}).items():
        lines.append(f"Fastest at batch {batch}: "
                     f"{config_words(dict(fastest, batch_size=batch))}, "
                     f"{fastest['images_per_s']:.3f} images/s.")
    basis = ("wall time per image" if results["machine"].get("gpus") else "CPU time per image "
             "(other load on a shared machine disturbs it far less than wall time)")
    lines.append(f"Configurations are compared by {basis}; one counts as faster only by more "
                 f"than {sweep.CLEAR_MARGIN:.0%}.")
    return lines


def _training(results: Dict) -> List[str]:
    s, flops = results["settings"], results.get("flops") or {}
    lines = ["", f"## Training step: FCN-8s, {s['num_classes']} classes, fc {s['fc_units']}, "
             f"{s['image_size']}x{s['image_size']} crops", "",
             f"The real step (training/step.py make_train_step: augmentation, forward, loss, "
             f"gradients, Adam) on a synthetic batch. "
             f"{_num(flops.get('train_gflop'), 1)} GFLOP per image "
             "(see FLOPs below). Time: median of the timed steps after an untimed first step "
             "(which includes tracing and XLA compilation). 'of ceiling' divides by the matmul "
             "ceiling of the step's compute dtype; 'by CPU time' divides FLOP per CPU-second by "
             "the matmul's, which other load on the machine disturbs less.", "",
             "| precision | XLA | model input | batch | s/step | images/s | GFLOP/s | of ceiling "
             "| by CPU time | CPU s/step | first step s | peak RSS GB | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [_train_row(e) for e in results["train"]]
    return lines + _train_verdicts(results)


def _versus(results: Dict) -> List[str]:
    versus = results.get("versus") or {}
    torch_env = next((e.get("environment") for e in (versus.get("torch") or {}).values()
                      if e.get("environment")), None)
    lines = ["", "## Side by side: PyTorch on the same machine, in the same run", "",
             "A Caffe-faithful FCN-8s in PyTorch (tools/bench/torch_fcn8s.py; the tests prove it "
             "gives the Keras model's logits) on the same shapes, run in children alternating "
             "with TensorFlow's. TensorFlow's train step is the sweep's fastest configuration of "
             "that precision (it includes the on-device augmentation, which PyTorch's does not); "
             "its forward is the Keras model in a tf.function. 'PyTorch / TF' is PyTorch's "
             "wall seconds over TensorFlow's: above 1, TensorFlow is faster.", "",
             _machine_line(results), ""]
    if torch_env:
        lines += [f"PyTorch {torch_env['torch']}, {torch_env['threads']} threads, CPU kernels "
                  f"{torch_env['cpu_capability']}, oneDNN {'on' if torch_env['mkldnn'] else 'off'}"
                  ".", ""]
    if versus.get("torch_skipped"):
        lines += [f"PyTorch rows {versus['torch_skipped']}.", ""]
    lines += ["| work | TF precision | TF s (config) | of ceiling | PyTorch precision | PyTorch s "
              "| of ceiling | PyTorch / TF | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.get("versus_rows") or []:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        config = f" ({r['tf_config']})" if r["tf_config"] else ""
        lines.append(f"| {r['work']} | {r['precision']} | {_num(r['tf_s'])}{config} | "
                     f"{pct(r.get('tf_fraction_of_ceiling'))} | {r['torch_precision']} | "
                     f"{_num(r['torch_s'])} | {pct(r.get('torch_fraction_of_ceiling'))} | "
                     f"{ratio} | {r['note']} |")
    return lines + _tf_forward_runs(versus)


def _machine_line(results: Dict) -> str:
    """The CPU, its flags and this run's matmul ceilings, next to the side-by-side figures."""
    m, gflops = results["machine"], results["ceiling"]["gflops"]
    ceilings = ", ".join(f"{dtype} {_num(value, 1)}" for dtype, value in gflops.items())
    return (f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, flags "
            f"{', '.join(m['simd']) or 'no AVX2'} (native bf16: "
            f"{'yes' if m['native_bf16_cpu'] else 'no'}); matmul ceiling of this run, GFLOP/s: "
            f"{ceilings}.")


def _tf_forward_runs(versus: Dict) -> List[str]:
    """Every TensorFlow forward run (XLA off and on), of which the table shows the faster."""
    runs = []
    for policy, entry in (versus.get("tf_forward") or {}).items():
        for r in entry.get("runs", []):
            xla = "on" if r["xla"] else "off"
            figure = (f"{r['ms']:.0f} ms (first call {r['first_ms']:.0f} ms)" if "ms" in r
                      else r.get("error", "-"))
            runs.append(f"{r['precision']} XLA {xla}: {figure}")
        if entry.get("error") or entry.get("skipped"):
            runs.append(f"{versus_lib.FORWARD_POLICY[policy]}: "
                        f"{entry.get('skipped') or entry.get('error')}")
    return ["", "TensorFlow forward runs: " + "; ".join(runs) + "."] if runs else []


def _host_stages(results: Dict) -> List[str]:
    lines = ["", "## Host stages", "", "| stage | figure | detail | peak RSS GB |",
             "| --- | --- | --- | --- |"]
    c = results.get("converter") or {}
    if protocol.ok(c):
        lines.append(f"| converter (fcn8s_tf.data.convert, {c['num_workers']} workers) | "
                     f"{c['images_per_s']:.0f} images/s | {c['images']} images in "
                     f"{c['seconds']:.2f} s; {c['fixed_s']:.2f} s fixed + "
                     f"{c['per_image_ms']:.2f} ms/image -> {VOC_SBD_IMAGES:,} images in "
                     f"{c['extrapolated_voc_sbd_s']:.1f} s | {_gb(c.get('peak_rss_mb'))} |")
    else:
        lines.append(f"| converter | failed | {c.get('error')} | |")
    p = results.get("pipeline") or {}
    if protocol.ok(p):
        lines.append(f"| host pipeline (decode + resize to {p['base_size']} + batch "
                     f"{p['batch_size']}) | {p['images_per_s']:.0f} images/s | "
                     f"{p['cpu_ms_per_image']:.2f} CPU ms/image, {p['cores']} cores, "
                     f"{p['batches']} batches | {_gb(p.get('peak_rss_mb'))} |")
    else:
        lines.append(f"| host pipeline | failed | {p.get('error')} | |")
    a = results.get("augment") or {}
    if protocol.ok(a):
        for b in a["batches"]:
            lines.append(f"| augmentation (augment_batch, {a['crop']}x{a['crop']} crops) | "
                         f"{b['ms_per_batch']:.1f} ms/batch | batch {b['batch_size']}, "
                         f"{a['iters']} calls | |")
    else:
        lines.append(f"| augmentation | failed | {a.get('error')} | |")
    return lines


def _inference_rows(dtype: str, serve: Dict, keras_runs: List[Dict]) -> List[str]:
    """One export's rows: its two signatures, then the Keras forward runs in its dtype."""
    if not protocol.ok(serve):
        return [f"| {dtype} | {serve.get('skipped') or serve.get('error')} | | | | |"]
    rows = []
    for name, words in (("serving_uint8", "SavedModel serving_uint8"),
                        ("serving_default", "SavedModel serving_default (+ JPEG decode)")):
        r = serve[name]
        mark = "" if r.get("time_source", "median").startswith("median") else " (first call)"
        rows.append(f"| {dtype} | {words} | {r['ms_per_image']:.0f}{mark} | "
                    f"{_num(r.get('gflops'), 1)} | {pct(r.get('fraction_of_ceiling'))} | "
                    f"{_gb(serve.get('peak_rss_mb'))} |")
    for r in keras_runs:
        words = f"Keras forward in tf.function, XLA {'on' if r['xla'] else 'off'}"
        if "ms" not in r:
            rows.append(f"| {dtype} | {words}: {r.get('error', '-')} | | | | |")
            continue
        rows.append(f"| {dtype} | {words} | {r['ms']:.0f} | {_num(r.get('gflops'), 1)} | "
                    f"{pct(r.get('fraction_of_ceiling'))} | |")
    return rows


def _inference(results: Dict) -> List[str]:
    inference, s = results.get("inference") or {}, results["settings"]
    flops, auto = results.get("flops") or {}, results.get("auto") or {}
    size = "x".join(str(v) for v in reversed(s["inference_size"]))
    keras_runs = [r for e in ((results.get("versus") or {}).get("tf_forward") or {}).values()
                  for r in e.get("runs") or []]
    lines = ["", f"## Inference: exported SavedModels (dynamic input), {size} image", "",
             f"Each export (serving/export.py export_saved_model, precision float32 or bfloat16) "
             f"loaded as TF Serving would, in a child of its own. `export --precision=auto` gives "
             f"{auto.get('export', '-')} on this machine. 'of ceiling' divides by the matmul "
             "ceiling of the dtype the net computes in. The Keras forward rows are the "
             "side-by-side's: the same net without the serving wrapper (budget, padding, "
             "argmax), with XLA off and on, since the SavedModels run without XLA.", "",
             "| dtype | call | ms/image | GFLOP/s | of ceiling | peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- |"]
    served = inference.get("exports") or {}
    for dtype, serve in served.items():
        lines += _inference_rows(dtype, serve,
                                 [r for r in keras_runs if r.get("compute_dtype") == dtype])
    exports = "; ".join(
        f"{dtype} {e['size_mb']:.0f} MB, written in {e['seconds']:.1f} s"
        + (f", loaded in {served[dtype]['load_s']:.1f} s" if protocol.ok(served.get(dtype))
           else "") for dtype, e in (results.get("exports") or {}).items())
    return lines + ["", f"Image: {inference.get('image')}. "
                    f"{_num(flops.get('inference_forward_gflop'), 1)} GFLOP per image. "
                    f"Exports: {exports or 'none'}. Peak RSS is the serving child's (the last "
                    "also measured the closing ceiling)."]


def _flops(results: Dict) -> List[str]:
    flops = results.get("flops") or {}
    if not flops:
        return ["", "## FLOPs", "",
                f"Not counted: {(results.get('model_task') or {}).get('error')}"]
    top = ", ".join(f"{t['name']} {t['train_gflop']:.1f}" for t in flops["top_layers"])
    return [
        "", "## FLOPs", "",
        f"Counted once, {flops['method']}. Per {flops['image_size'][0]}x"
        f"{flops['image_size'][1]} image: forward {flops['forward_gflop']:.2f} GFLOP, training "
        f"step {flops['train_gflop']:.2f} GFLOP ({flops['train_over_forward']:.2f}x forward). "
        f"Largest training costs (GFLOP): {top}. The input is padded by 100 px before "
        "conv1_1 (Caffe's FCN-8s), so the convolutions see a much larger image than the crop.",
        "",
        f"Cross-check, tf.compat.v1.profiler on the forward graph: Conv2D ops "
        f"{flops['profiler_conv2d_gflop']:.2f} GFLOP = "
        f"{flops['profiler_conv2d_over_analytic']:.4f}x the analytic Conv2D count; all ops "
        f"{flops['profiler_forward_gflop']:.2f} GFLOP = "
        f"{flops['profiler_all_over_analytic']:.4f}x the analytic forward count (the rest is "
        "elementwise: biases, ReLU, pooling).",
    ]


def _kernels(results: Dict) -> List[str]:
    k = results.get("kernels") or {}
    if not protocol.ok(k):
        return ["", "## Where a training step's time goes (oneDNN kernels)", "",
                f"Not measured: {k.get('skipped') or k.get('error') or 'not run'}."]
    lines = ["", "## Where a training step's time goes (oneDNN kernels)", "",
             f"oneDNN's own timing (ONEDNN_VERBOSE=1) of every primitive in a {k['precision']} "
             f"step at batch {k['batch_size']}, fixed input, XLA off: {k['step_s']:.2f} s/step "
             f"(slower than above: verbose mode prints a line per primitive); the primitives' "
             f"times sum to {k['onednn_s']:.2f} s per step (independent primitives run at once, "
             "so the sum can exceed the step). Forward, data-gradient and weight-gradient "
             "convolutions do about the same FLOPs each, so their times compare their rates.", "",
             "| kernel (primitive, propagation, implementation) | s per step | share of the sum |",
             "| --- | --- | --- |"]
    for row in k["kernels"]:
        lines.append(f"| {row['kernel']} | {row['s_per_step']:.3f} | "
                     f"{100 * row['s_per_step'] / k['onednn_s']:.1f}% |")
    return lines


def render_markdown(results: Dict) -> str:
    """The report: machine, targets, the XLA default, ceiling, training, PyTorch side by side,
    host stages, inference, FLOP method."""
    lines = []
    for section in (_machine, _targets, _xla, _ceiling, _training, _kernels, _versus, _host_stages,
                    _inference, _flops):
        lines += section(results)
    shared = results["settings"]["group_children"]
    lines += ["", "Peak RSS is ru_maxrss of the child process that made the measurement "
              "(training: one process per configuration" + (", except in --quick runs, where "
                                                             "the configurations share one)."
                                                             if shared else ").")]
    return "\n".join(lines) + "\n"
