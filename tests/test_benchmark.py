"""tools/benchmark.py: the FLOP count by hand, the targets table, and a --quick run end to end.

The --quick run is what keeps `make bench` from rotting: it runs every measurement (converter,
host pipeline, augmentation, FLOP count, training steps with XLA off and on, SavedModel inference,
matmul ceiling) at tiny sizes through the same child processes as the full run.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark", REPO / "tools" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def _tiny_model():
    """8x8x3 -> conv 3x3 'same' (4 channels) -> fixed (non-trainable) 4x4/2 transposed conv (2)."""
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(image)
    up = keras.layers.Conv2DTranspose(2, 4, strides=2, use_bias=False, name="up")
    up.trainable = False
    return keras.Model(image, up(x))


def test_count_flops_by_hand():
    counts = benchmark.count_flops(_tiny_model())
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
        benchmark.count_flops(model)


def test_profiler_agrees_with_the_hand_count():
    counts = benchmark.profiler_forward_flops(_tiny_model(), (1, 8, 8, 3))
    assert counts["conv2d"] == 13_824
    # Its Conv2DBackpropInput formula counts per OUTPUT position over the stride: 2 * 18*18*2 *
    # 4*4*4 / 2**2 = 20,736 for the 18x18 valid output, vs 16,384 actual multiply-adds * 2.
    assert counts["conv2d_transpose"] == 20_736


def test_make_voc_copy(tmp_path, voc_sample_dir):
    root = tmp_path / "VOC2012"
    counts = benchmark.make_voc_copy(str(voc_sample_dir / "VOCdevkit" / "VOC2012"), str(root), 7,
                                     val_every=3)
    assert counts == {"train": 4, "val": 3}  # ids 0, 3, 6 go to val
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert val == ["bench_00000", "bench_00003", "bench_00006"]
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 7
    assert len(list((root / "SegmentationClass").glob("*.png"))) == 7


def _train_entry(input_shape, xla, cpu_s, batch_size=1, first_only=False):
    """A finished training task as the child records it: raw step times only."""
    entry = dict(precision="float32", xla=xla, input_shape=input_shape, batch_size=batch_size,
                 status="done", first_step_s=30.0, first_step_cpu_s=40.0)
    if not first_only:
        entry.update(step_times_s=[9.0, 11.0, 10.0], step_cpu_s=[cpu_s, cpu_s + 2, cpu_s - 2])
    benchmark.summarise_train_entry(entry)
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
    summary = benchmark.train_summary(entries, on_gpu=False)
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
    return {"machine": {"native_bf16_cpu": True, "gpus": []}, "settings": {"quick": False},
            "ceiling": {"gflops": {"float32": 100.0, "bfloat16": 100.0}}, "train": train,
            "pipeline": {"status": "done", "images_per_s": 700.0, "cpu_ms_per_image": 2.5,
                         "cores": 2},
            "converter": {"status": "done", "extrapolated_voc_sbd_s": 31.0, "fixed_s": 1.0,
                          "per_image_ms": 2.5, "images_per_s": 380.0, "images": 600},
            "wall_s": 500.0}


def test_targets_are_computed_from_the_measurements():
    targets = benchmark.compute_targets(_result())
    # float32 at 60% of the ceiling (< 80%); bf16 20 / 12.5 CPU s per image = 1.6x (>= 1.25x,
    # compared by CPU time on a CPU, which other load disturbs less than wall time); pipeline
    # 700 images/s (>= 600); converter 31 s (not < 30 s); whole run 500 s (< 600 s).
    assert [(t["measured"], t["met"]) for t in targets] == [
        (0.6, False), (1.6, True), (700.0, True), (31.0, False), (500.0, True)]
    # Without native bf16 the bf16 target is reported but not judged.
    results = _result()
    results["machine"]["native_bf16_cpu"] = False
    bf16 = benchmark.compute_targets(results)[1]
    assert (bf16["measured"], bf16["met"]) == (1.6, None)
    assert "not applicable" in bf16["note"]


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


@pytest.mark.slow
def test_quick_run_measures_every_section(tmp_path, voc_sample_dir):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    process = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", f"--output={md}",
         f"--json_output={js}",
         f"--sample_voc_root={voc_sample_dir / 'VOCdevkit' / 'VOC2012'}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(js.read_text())

    positive = {
        "ceiling": ["gflops.float32", "gflops.bfloat16"],
        "converter": ["images_per_s", "extrapolated_voc_sbd_s", "peak_rss_mb"],
        "pipeline": ["images_per_s", "cpu_ms_per_image", "peak_rss_mb"],
        "flops": ["forward_gflop", "train_gflop", "inference_forward_gflop",
                  "profiler_conv2d_gflop"],
        "inference": ["serving_uint8.ms_per_image", "serving_default.ms_per_image",
                      "serving_uint8.fraction_of_ceiling", "peak_rss_mb"],
    }
    for section, keys in positive.items():
        for key in keys:
            value = results[section]
            for part in key.split("."):
                value = value[part]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, \
                (section, key, value)
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
    assert len(results["targets"]) == 4  # the run-time target is judged on full runs only
    for path, number in _numbers(results):
        assert math.isfinite(number), path

    report = md.read_text()
    for heading in ("## Targets", "## Machine ceiling", "## Training step", "## Host stages",
                    "## Inference", "## FLOPs"):
        assert heading in report
    assert "| target | goal | measured | met? | note |" in report
    assert "| float32 | off | fixed | 1 |" in report
    assert "tools/benchmark.py --quick" in report  # the command that made it
