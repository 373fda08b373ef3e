"""tools/benchmark.py and tools/bench/: the FLOP count by hand, the sample images, the sweep's
choices, the targets, the PyTorch net against the Keras one, and a --quick run end to end.

The --quick run is what keeps `make bench` from rotting: it runs every measurement (converter,
host pipeline, augmentation, FLOP count, training steps with XLA off and on, PyTorch side by side,
SavedModel inference, matmul ceiling) at tiny sizes through the same child processes as the full
run, on the synthetic images a fresh clone gets.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from bench import data  # noqa: E402
from bench import flops  # noqa: E402
from bench import sweep  # noqa: E402
from bench import targets  # noqa: E402
from bench import versus  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="PyTorch is not installed; the benchmark's side-by-side rows need it "
    "(.venv/bin/pip install -r requirements/bench-torch.txt)")


def _tiny_model():
    """8x8x3 -> conv 3x3 'same' (4 channels) -> fixed (non-trainable) 4x4/2 transposed conv (2)."""
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(image)
    up = keras.layers.Conv2DTranspose(2, 4, strides=2, use_bias=False, name="up")
    up.trainable = False
    return keras.Model(image, up(x))


def test_count_flops_by_hand():
    counts = flops.count_flops(_tiny_model())
    # conv: 8*8 output positions * 3*3*3 weights per output channel * 4 channels * 2 = 13,824.
    #   Training adds its weight gradient (13,824) but no input gradient: its input is the image.
    # up:   8*8 INPUT positions * 4*4 kernel * 4 in * 2 out * 2 = 16,384 (16x16 output).
    #   Training adds its input gradient (16,384; conv below it trains) but no weight gradient.
    assert [(l["name"], l["forward"], l["train"]) for l in counts["layers"]] == [
        ("conv", 13_824, 27_648), ("up", 16_384, 32_768)]
    assert counts["forward"] == 30_208
    assert counts["train"] == 60_416


def test_count_flops_rejects_a_dynamic_model():
    image = keras.Input((None, None, 3))
    model = keras.Model(image, keras.layers.Conv2D(4, 3, name="conv")(image))
    with pytest.raises(ValueError, match="fixed input size.*conv"):
        flops.count_flops(model)


def test_profiler_agrees_with_the_hand_count():
    counts = flops.profiler_forward_flops(_tiny_model(), (1, 8, 8, 3))
    assert counts["conv2d"] == 13_824
    # Its Conv2DBackpropInput formula counts per OUTPUT position over the stride: 2 * 18*18*2 *
    # 4*4*4 / 2**2 = 20,736 for the 18x18 valid output, vs 16,384 actual multiply-adds * 2.
    assert counts["conv2d_transpose"] == 20_736


# ----------------------------------------------------------------------------------- sample data --
def test_make_voc_copy(tmp_path, voc_sample_dir):
    sample = voc_sample_dir / "VOCdevkit" / "VOC2012"
    root = tmp_path / "VOC2012"
    counts = data.make_voc_copy(str(sample), str(root), 7, val_every=3)
    assert counts == {"train": 4, "val": 3}  # ids 0, 3, 6 go to val
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert val == ["bench_00000", "bench_00003", "bench_00006"]
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 7
    assert len(list((root / "SegmentationClass").glob("*.png"))) == 7
    described = data.describe_sample(str(sample))
    assert described["images"] == 30 and described["source"].startswith("real:")


def test_synthetic_sample_looks_like_voc_files(tmp_path):
    root = tmp_path / "VOC2012"
    described = data.write_synthetic_voc(str(root), 5)
    # Sizes cycle through VOC_SIZES; the first is the 500x375 the inference benchmark wants.
    assert described["sizes"] == {"500x375": 2, "375x500": 1, "500x333": 1, "500x281": 1}
    assert described["source"].startswith("synthetic")
    # Real VOC JPEGs at these sizes are 50-130 KiB (the 30-image sample averages 87 KiB);
    # demo_data's plain images would be ~40 KiB and decode faster than real photos.
    assert 60 < described["mean_jpeg_kb"] < 120
    label = Image.open(root / "SegmentationClass" / "synthetic_00000.png")
    assert label.mode == "P" and label.size == (500, 375)  # a VOC palette PNG of class indices
    assert set(np.unique(np.asarray(label))) <= {0, 1, 8, 15, 255}
    assert 255 in np.asarray(label)  # the boundary band
    assert data.make_voc_copy(str(root), str(tmp_path / "copy"), 4) == {"train": 3, "val": 1}


def test_describe_sample_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--sample_voc_root=.*no JPEGImages"):
        data.describe_sample(str(tmp_path))


def test_parent_modules_import_neither_tensorflow_nor_torch_nor_flags():
    """The parent only schedules children and writes the report: it must start fast and define no
    flags (absl.logging's own aside), so that library modules never collide with an entry
    point's flags."""
    code = ("import sys; sys.path.insert(0, 'tools'); from absl import flags, logging; "
            "before = set(flags.FLAGS); "
            "from bench import run, report, protocol, sweep, versus, targets, data, machine; "
            "print(sorted(set(flags.FLAGS) - before), "
            "[m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[] []"


# ------------------------------------------------------------------------------ sweep, targets --
def _train_entry(input_shape, xla, cpu_s, batch_size=1, first_only=False):
    """A finished training task as the child records it: raw step times only."""
    entry = dict(precision="float32", xla=xla, input_shape=input_shape, batch_size=batch_size,
                 status="done", first_step_s=30.0, first_step_cpu_s=40.0)
    if not first_only:
        entry.update(step_times_s=[9.0, 11.0, 10.0], step_cpu_s=[cpu_s, cpu_s + 2, cpu_s - 2])
    sweep.summarise_train_entry(entry)
    return entry


def test_summarise_train_entry():
    entry = _train_entry("fixed", False, cpu_s=18.0, batch_size=2)
    assert (entry["step_s"], entry["cpu_s_per_step"], entry["images_per_s"]) == (10.0, 18.0, 0.2)
    assert entry["spread"] == pytest.approx(11 / 9 - 1)
    # Stopped before a timed step: the first step (tracing included) is an upper bound.
    entry = _train_entry("fixed", False, cpu_s=0, first_only=True)
    assert (entry["step_s"], entry["cpu_s_per_step"]) == (30.0, 40.0)
    assert "upper bound" in entry["step_time_source"]


def test_train_summary_keeps_the_default_unless_clearly_faster():
    entries = [_train_entry("fixed", False, cpu_s=20.0), _train_entry("dynamic", False, 20.6),
               _train_entry("dynamic", True, 18.0)]
    summary = sweep.train_summary(entries, on_gpu=False)
    # fixed saves 20.6 / 20 = 3% of the CPU time per image: under the 5% margin, dynamic stays.
    assert summary["input_shape"]["chosen"] == "dynamic"
    assert summary["input_shape"]["speedup"] == pytest.approx(1.03)
    # XLA on the dynamic model: 20.6 / 18 = 14% less: chosen.
    assert summary["xla"]["chosen"] is True
    assert summary["fastest"]["1"]["xla"] is True


def _result(**train_overrides):
    """A minimal results dict, as run_benchmarks returns it, for compute_targets."""
    train = [dict(precision="float32", xla=False, input_shape="fixed", batch_size=1,
                  status="done", step_s=10.0, cpu_s_per_step=20.0, images_per_s=0.1,
                  gflops=60.0, fraction_of_ceiling=0.6),
             dict(precision="mixed_bfloat16", xla=True, input_shape="fixed", batch_size=1,
                  status="done", step_s=7.0, cpu_s_per_step=12.5, images_per_s=1 / 7,
                  gflops=90.0, fraction_of_ceiling=0.9)]
    train[0].update(train_overrides)
    torch_run = {"status": "done", "train": {"s": 12.0}, "forward": {"s": 3.0}}
    return {"machine": {"native_bf16_cpu": True, "gpus": []},
            "settings": {"quick": False, "batch_sizes": [1], "image_size": 321,
                         "inference_size": [375, 500]},
            "ceiling": {"gflops": {"float32": 100.0, "bfloat16": 100.0}}, "train": train,
            "flops": {"train_gflop": 300.0, "inference_forward_gflop": 150.0},
            "pipeline": {"status": "done", "images_per_s": 700.0, "cpu_ms_per_image": 2.5,
                         "cores": 2},
            "converter": {"status": "done", "extrapolated_voc_sbd_s": 31.0, "fixed_s": 1.0,
                          "per_image_ms": 2.5, "images_per_s": 380.0, "images": 600},
            "inference": {"status": "done", "serving_uint8": {"ms_per_image": 2500.0}},
            "versus": {"torch_skipped": None,
                       "precisions": {"float32": None, "mixed_bfloat16": None},
                       "torch": {"float32": dict(torch_run, precision="float32"),
                                 "mixed_bfloat16": dict(torch_run, precision="bf16_autocast",
                                                        train={"s": 8.4},
                                                        forward={"s": 1.5})},
                       "tf_forward": {"float32": {"status": "done", "runs": [
                           {"precision": "float32", "xla": False, "ms": 2000.0},
                           {"precision": "float32", "xla": True, "ms": 1500.0}]}}},
            "wall_s": 500.0}


def test_targets_are_computed_from_the_measurements():
    results = _result()
    got = [(t["measured"], t["met"]) for t in targets.compute_targets(results)]
    # float32 at 60% of the ceiling (< 80%); bf16 20 / 12.5 CPU s per image = 1.6x (>= 1.25x,
    # compared by CPU time on a CPU, which other load disturbs less than wall time); pipeline
    # 700 images/s (>= 600); converter 31 s (not < 30 s); the fastest train step (bf16, 7 s) vs
    # PyTorch's best (bf16 autocast, 8.4 s) = 1.2x (< 1.5x); the SavedModel's forward 2.5 s vs
    # PyTorch's best 1.5 s = 0.6x; whole run 500 s (< 600 s).
    assert got == [(0.6, False), (1.6, True), (700.0, True), (31.0, False),
                   (pytest.approx(1.2), False), (pytest.approx(0.6), False), (500.0, True)]
    # Without native bf16 the bf16 target is reported but not judged.
    results["machine"]["native_bf16_cpu"] = False
    bf16 = targets.compute_targets(results)[1]
    assert (bf16["measured"], bf16["met"]) == (1.6, None)
    assert "not applicable" in bf16["note"]
    # Without PyTorch the two side-by-side targets say why they have no figure.
    results["versus"] = {"torch_skipped": "skipped: PyTorch is not installed", "torch": {}}
    side_by_side = targets.compute_targets(results)[4:6]
    assert [(t["measured"], t["met"]) for t in side_by_side] == [(None, None)] * 2
    assert all("not installed" in t["note"] for t in side_by_side)


def test_side_by_side_rows():
    rows = versus.comparison(_result())
    by_key = {(r["work"].split(",")[0], r["precision"]): r for r in rows}
    train32 = by_key[("train step", "float32")]
    # PyTorch 12 s / TF 10 s (the sweep's only float32 entry): TF 1.2x faster; 300 GFLOP in 10 s
    # is 30% of the 100 GFLOP/s ceiling, in 12 s 25%.
    assert (train32["tf_s"], train32["torch_s"], train32["ratio"]) == (10.0, 12.0, 1.2)
    assert (train32["tf_fraction_of_ceiling"], train32["torch_fraction_of_ceiling"]) == \
        pytest.approx((0.3, 0.25))
    # Forward: the faster TF run (XLA on, 1.5 s) against PyTorch's 3 s.
    forward32 = by_key[("forward", "float32")]
    assert (forward32["tf_s"], forward32["tf_config"], forward32["ratio"]) == (1.5, "XLA on", 2.0)
    # No TF bf16 forward was measured: the row is there, without a ratio.
    assert by_key[("forward", "mixed_bfloat16")]["ratio"] is None
    assert by_key[("train step", "mixed_bfloat16")]["ratio"] == pytest.approx(8.4 / 7.0)


def test_bf16_rows_are_skipped_where_bf16_is_emulated():
    reasons = versus.precisions_compared({"machine": {"native_bf16_cpu": False, "gpus": []}},
                                         ["float32", "mixed_bfloat16"])
    assert reasons["float32"] is None
    assert reasons["mixed_bfloat16"].startswith("not native, skipped")
    reasons = versus.precisions_compared({"machine": {"gpus": [{"compute_capability": [8, 0]}]}},
                                         ["float32", "mixed_bfloat16"])
    assert reasons == {"float32": None, "mixed_bfloat16": None}


def test_pytorch_rows_say_why_they_are_missing(monkeypatch):
    from bench import settings as settings_lib

    quick = settings_lib.settings_for(True)
    on_cpu = {"machine": {"gpus": []}}
    monkeypatch.setattr(versus.importlib.util, "find_spec", lambda name: None)
    assert "PyTorch is not installed" in versus.torch_missing_reason(quick, on_cpu)
    assert "requirements/bench-torch.txt" in versus.torch_missing_reason(quick, on_cpu)
    no_torch = settings_lib.settings_for(True, pytorch=False)
    assert versus.torch_missing_reason(no_torch, on_cpu) == "skipped: --nopytorch"


def test_side_by_side_children_are_skipped_when_the_budget_is_spent():
    from bench import settings as settings_lib

    class SpentRunner:
        """A ChildRunner with 10 s left: less than a child needs."""
        def remaining_s(self):
            return 10.0 + settings.serve_reserve_s

        def run(self, tasks, timeout_s):
            raise AssertionError(f"started a child for {tasks} with {timeout_s} s")

    settings = settings_lib.settings_for(True)
    out = versus.run_versus(SpentRunner(), settings, {"machine": {"gpus": []}}, ["float32"])
    entries = [out["tf_forward"]["float32"]] + list(out["torch"].values())
    assert len(entries) == (2 if HAVE_TORCH else 1)
    for entry in entries:
        assert entry["skipped"] == "time budget (--time_budget_s) used up"


# ------------------------------------------------------------------------------- PyTorch FCN-8s --
@needs_torch
def test_torch_fcn8s_keeps_the_input_size():
    import torch
    from bench import torch_fcn8s

    net = torch_fcn8s.FCN8s(num_classes=3, fc_units=16).eval()
    with torch.no_grad():
        for height, width in ((1, 1), (7, 33), (45, 30)):  # pools round up; fc6 sees >= 7x7
            assert tuple(net(torch.zeros(1, 3, height, width)).shape) == (1, 3, height, width)


@needs_torch
def test_torch_fcn8s_gives_the_keras_logits():
    """The same weights in both nets give the same logits: they are the same FCN-8s (pad, pools,
    fc6, crops at 5/9/31, skip scales, transposed-conv layout)."""
    import torch
    from bench import torch_fcn8s
    from fcn8s_tf import model as model_lib

    keras_net = model_lib.build_fcn8s(num_classes=3, fc_units=16, weights=None)
    rng = np.random.default_rng(0)
    # Score layers start at zero, which would hide the skips; random upsampling kernels pin the
    # transposed convolutions' kernel layout (a bilinear kernel is symmetric).
    for name in ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4",
                 "upscore8"):
        layer = keras_net.get_layer(name)
        layer.set_weights([rng.normal(0, 1, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    torch_net = torch_fcn8s.FCN8s(num_classes=3, fc_units=16).eval()
    torch_fcn8s.copy_keras_weights(torch_net, lambda n: keras_net.get_layer(n).get_weights())
    for height, width in ((37, 53), (5, 3)):
        rgb = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        expected = keras_net(model_lib.preprocess(rgb), training=False).numpy()
        with torch.no_grad():
            got = torch_net(torch_fcn8s.preprocess(rgb)).numpy().transpose(0, 2, 3, 1)
        # Logits reach ~200 here; float32 sums in another order differ by ~1e-6 of that.
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@needs_torch
def test_torch_fcn8s_constants_are_the_models():
    from bench import torch_fcn8s
    from fcn8s_tf import model as model_lib

    for name in ("BGR_MEAN", "INPUT_PAD", "POOL4_SCALE", "POOL3_SCALE", "POOL4_CROP_OFFSET",
                 "POOL3_CROP_OFFSET", "FINAL_CROP_OFFSET"):
        assert getattr(torch_fcn8s, name) == getattr(model_lib, name), name
    # Keras (k, k, out, in) vs PyTorch ConvTranspose2d (in, out, k, k).
    np.testing.assert_array_equal(torch_fcn8s.bilinear_kernel(16, 3).numpy(),
                                  model_lib.bilinear_kernel(16, 3).transpose(3, 2, 0, 1))


@needs_torch
def test_torch_task_trains_and_predicts():
    from bench import torch_tasks

    recorded = {}
    result = torch_tasks.torch_step_and_forward(
        lambda **fields: recorded.update(fields), precision="float32", image_size=24,
        batch_size=1, inference_size=[11, 17], fc_units=8, num_classes=3, repeats=0,
        deadline_unix=math.inf)  # repeats=0: one (untimed-first) call each, enough to run
    assert result["train"]["s"] > 0 and result["forward"]["s"] > 0
    assert "upper bound" in result["train"]["time_source"]
    assert result["forward"]["image_size"] == [11, 17]
    assert recorded["environment"]["torch"].startswith("2.")


# ------------------------------------------------------------------------------ the whole tool --
def _numbers(value, path=""):
    """(path, number) for every number in a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")


def _check_positive(results, positive):
    for section, keys in positive.items():
        for key in keys:
            value = results[section]
            for part in key.split("."):
                value = value[part]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, \
                (section, key, value)


def _check_side_by_side(results, report):
    rows = {(r["work"].split(",")[0], r["precision"]): r for r in results["versus_rows"]}
    assert set(rows) == {(work, precision) for work in ("train step", "forward")
                         for precision in ("float32", "mixed_bfloat16")}
    assert rows[("forward", "float32")]["tf_s"] > 0
    # --quick trains in float32 only: the bf16 rows say so instead of showing a figure.
    for work in ("train step", "forward"):
        assert rows[(work, "mixed_bfloat16")]["note"] == "not measured (--precisions)"
    assert "## Side by side: PyTorch" in report
    if HAVE_TORCH:
        for work in ("train step", "forward"):
            row = rows[(work, "float32")]
            assert row["torch_s"] > 0 and row["ratio"] > 0, row
    else:
        assert "PyTorch rows skipped: PyTorch is not installed" in report


@pytest.mark.slow
def test_quick_run_measures_every_section(tmp_path):
    # No --sample_voc_root: the synthetic images a fresh clone gets.
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    process = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", f"--output={md}",
         f"--json_output={js}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(js.read_text())
    assert results["sample"]["source"].startswith("synthetic")
    _check_positive(results, {
        "ceiling": ["gflops.float32", "gflops.bfloat16"],
        "converter": ["images_per_s", "extrapolated_voc_sbd_s", "peak_rss_mb"],
        "pipeline": ["images_per_s", "cpu_ms_per_image", "peak_rss_mb"],
        "flops": ["forward_gflop", "train_gflop", "inference_forward_gflop",
                  "profiler_conv2d_gflop"],
        "inference": ["serving_uint8.ms_per_image", "serving_default.ms_per_image",
                      "serving_uint8.fraction_of_ceiling", "peak_rss_mb"],
    })
    assert results["augment"]["batches"][0]["ms_per_batch"] > 0
    # Two counts of the same convolutions.
    assert results["flops"]["profiler_conv2d_over_analytic"] == pytest.approx(1.0, rel=1e-6)
    assert 2.5 < results["flops"]["train_over_forward"] < 3.0

    train = {(e["xla"], e["input_shape"]): e for e in results["train"]}
    assert {(False, "fixed"), (False, "dynamic")} <= set(train)
    for (xla, _), entry in train.items():
        if xla and entry["status"] != "done":  # XLA may fail on a platform: recorded, not fatal
            assert entry["error"]
            continue
        assert entry["status"] == "done", entry
        for key in ("step_s", "images_per_s", "gflops", "fraction_of_ceiling",
                    "cpu_s_per_step", "peak_rss_mb"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (key, entry)
    assert results["train_summary"]["input_shape"]["chosen"] in ("fixed", "dynamic")
    assert len(results["targets"]) == 6  # the run-time target is judged on full runs only
    for path, number in _numbers(results):
        assert math.isfinite(number), path

    report = md.read_text()
    for heading in ("## Targets", "## Machine ceiling", "## Training step", "## Side by side",
                    "## Host stages", "## Inference", "## FLOPs"):
        assert heading in report
    assert "| target | goal | measured | met? | note |" in report
    assert "| float32 | off | fixed | 1 |" in report
    assert "tools/benchmark.py --quick" in report  # the command that made it
    assert "| sample images | 8 JPEGs" in report and "synthetic" in report
    _check_side_by_side(results, report)


def test_make_bench_passes_a_sample_voc_root_with_spaces_whole(tmp_path):
    # `make bench SAMPLE_VOC_ROOT=...` as a user types it, with a stand-in for the venv's python
    # that records its arguments (the real benchmark takes minutes).
    root = tmp_path / "VOC devkit" / "VOC2012"
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$ARGS_OUT"\n')
    fake_python.chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.write_text("")
    args_out = tmp_path / "args.txt"
    proc = subprocess.run(["make", "-s", "bench", f"PY={fake_python}", f"STAMP={stamp}",
                           f"SAMPLE_VOC_ROOT={root}"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "ARGS_OUT": str(args_out)})
    assert proc.returncode == 0, proc.stderr
    assert f"--sample_voc_root={root}" in args_out.read_text().splitlines()
