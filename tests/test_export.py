"""Export round trip: save, reload in a fresh process that cannot import fcn8s_tf, compare.

A narrow model (fc_units=16, 3 classes) keeps this fast; the export code does not depend on size.
"""

import io
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf import pixels
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import export

import model_utils  # noqa: E402 (tests/ is on the path)


def _image_bytes(rng, size, fmt):
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = model_lib.build_fcn8s(num_classes=3, fc_units=16)
    model_utils.randomise_scores(model)  # else every answer is class 0 and comparisons vacuous
    base = tmp_path_factory.mktemp("export")
    path = export.export_saved_model(model, str(base))
    return model, base, path


# The start of a script for a fresh interpreter in which `import fcn8s_tf` fails: what TF
# Serving sees. tests/test_serving.py uses it too.
NO_PROJECT_CODE = textwrap.dedent("""
    import base64, json, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "fcn8s_tf":
                raise ImportError("fcn8s_tf must not be needed to serve")
    sys.meta_path.insert(0, Block())
    import numpy as np, tensorflow as tf
""")

RELOAD_SCRIPT = NO_PROJECT_CODE + textwrap.dedent("""
    request = json.load(sys.stdin)
    images = [base64.b64decode(b) for b in request["images"]]
    loaded = tf.saved_model.load(request["path"])
    serve = loaded.signatures["serving_default"]
    batch = serve(image_bytes=tf.constant(images))
    alone = [serve(image_bytes=tf.constant([b])) for b in images]
    uint8 = [loaded.signatures["serving_uint8"](
        images=tf.io.decode_image(b, channels=3)[tf.newaxis]) for b in images]
    probs = loaded.signatures["serving_probabilities"](image_bytes=tf.constant(images))
    print("RESULT" + json.dumps({
        "signatures": sorted(loaded.signatures.keys()),
        "batch_labels": batch["labels"].numpy().tolist(),
        "height": batch["height"].numpy().tolist(), "width": batch["width"].numpy().tolist(),
        "alone": [a["labels"].numpy()[0].tolist() for a in alone],
        "uint8": [u["labels"].numpy()[0].tolist() for u in uint8],
        "prob_sums": probs["probabilities"].numpy().sum(-1).tolist(),
    }))
""")


@pytest.mark.slow
def test_round_trip_in_fresh_process(exported):
    model, _, path = exported
    rng = np.random.default_rng(1)
    images = [_image_bytes(rng, (41, 57), "JPEG"), _image_bytes(rng, (23, 30), "PNG")]
    import base64
    request = {"path": path, "images": [base64.b64encode(b).decode() for b in images]}
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT], input=json.dumps(request),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["signatures"] == ["metadata", "serving_default", "serving_probabilities",
                                 "serving_uint8"]
    assert out["height"] == [41, 23] and out["width"] == [57, 30]
    batch = np.array(out["batch_labels"])
    assert batch.shape == (2, 41, 57)
    for i, data in enumerate(images):
        decoded = tf.io.decode_image(data, channels=3)[tf.newaxis]
        logits = model(pixels.preprocess(decoded), training=False)
        expected = np.argmax(logits.numpy()[0], axis=-1)
        h, w = expected.shape
        assert len(np.unique(expected)) > 1  # a real map, not a constant
        np.testing.assert_array_equal(batch[i, :h, :w], expected)
        # Padding beyond the image is the ignore label...
        assert np.all(batch[i, h:, :] == 255) and np.all(batch[i, :, w:] == 255)
        # ...and batch-mates do not change the answer.
        np.testing.assert_array_equal(np.array(out["alone"][i]), expected)
        np.testing.assert_array_equal(np.array(out["uint8"][i]), expected)
    sums = np.array(out["prob_sums"])
    np.testing.assert_allclose(sums[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(sums[1, :23, :30], 1.0, rtol=1e-5)
    assert np.all(sums[1, 23:, :] == 0.0)


def test_versions_increase_and_never_overwrite(exported, tmp_path):
    model, base, first = exported
    assert first.endswith("/1")
    assert serving.next_version(str(base)) == 2
    with pytest.raises(FileExistsError, match="already exists"):
        export.export_saved_model(model, str(base), version=1)
    # No temporary directory is left behind beside the versions.
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_fixed_size_model_gets_an_any_size_twin():
    keras.utils.set_random_seed(0)
    fixed = model_lib.build_fcn8s(num_classes=3, fc_units=16, input_shape=(32, 32, 3))
    # Score layers start at zero: randomise them, or a twin that copied no weight would agree too.
    model_utils.randomise_scores(fixed)
    twin = model_lib.serving_twin(fixed, dict(num_classes=3, fc_units=16))
    assert twin.input_shape == (None, None, None, 3)
    image = np.random.default_rng(0).normal(0, 50, (1, 32, 32, 3)).astype(np.float32)
    expected = fixed(image).numpy()
    assert expected.std() > 1e-3  # a real answer, not the zero-score constant
    np.testing.assert_array_equal(twin(image).numpy(), expected)
    assert twin(image[:, :17, :23]).shape == (1, 17, 23, 3)


def test_mixed_precision_model_exports_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = model_lib.build_fcn8s(num_classes=3, fc_units=8)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    twin = model_lib.serving_twin(mixed, dict(num_classes=3, fc_units=8))
    assert twin.dtype_policy.name == "float32"
    assert twin.get_layer("fc6").compute_dtype == "float32"
    for a, b in zip(mixed.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two exports of the full conv blocks over 30 VOC images (~1 min)
def test_bfloat16_export_answers_as_float32_on_voc_images(voc_sample_dir, tmp_path):
    """The bf16 export (what --precision=auto picks where bf16 is native) keeps the answers."""
    keras.utils.set_random_seed(0)
    kwargs = dict(num_classes=21, fc_units=16)
    model = model_lib.build_fcn8s(**kwargs)
    model_utils.randomise_scores(model)
    answers = {}
    for precision in ("float32", "bfloat16"):
        path = export.export_saved_model(model, str(tmp_path / precision), model_kwargs=kwargs,
                                         precision=precision)
        loaded = tf.saved_model.load(path)
        meta = loaded.signatures["metadata"](unused=tf.constant(0))
        assert meta["precision"].numpy().decode() == precision
        serve = loaded.signatures["serving_default"]
        answers[precision] = [
            serve(image_bytes=tf.constant([jpeg.read_bytes()]))["labels"].numpy()
            for jpeg in sorted((voc_sample_dir / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))]
    same = sum(int((a == b).sum()) for a, b in zip(answers["float32"], answers["bfloat16"]))
    total = sum(a.size for a in answers["float32"])
    assert len(answers["float32"]) == 30
    assert len(np.unique(np.concatenate([a.ravel() for a in answers["float32"]]))) > 3
    assert same / total >= 0.995, same / total
    # Variables are stored in bfloat16: the export is about half the float32 one's size.
    sizes = {p: sum(f.stat().st_size for f in (tmp_path / p).rglob("variables.data-*"))
             for p in answers}
    assert sizes["bfloat16"] < 0.6 * sizes["float32"], sizes


def test_export_cli_precision_in_the_log_and_the_metadata(trained_workdir, tmp_path):
    from pathlib import Path
    from fcn8s_tf import precision as precision_lib
    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_lib.resolve_export_precision("float16")
    # auto follows the training decision on this machine: bf16 where bf16 is native.
    policy, why = precision_lib.resolve_precision("auto")
    auto = "bfloat16" if policy == "mixed_bfloat16" else "float32"
    for flag, expected in (("auto", auto), ("bfloat16", "bfloat16")):
        proc = subprocess.run(
            [sys.executable, "-m", "fcn8s_tf.export", f"--workdir={trained_workdir}",
             f"--export_dir={tmp_path / flag}", f"--precision={flag}"],
            capture_output=True, text=True, cwd=repo, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"Export precision {expected} (precision={flag}: " in proc.stderr
        loaded = tf.saved_model.load(proc.stdout.strip().splitlines()[-1])
        meta = loaded.signatures["metadata"](unused=tf.constant(0))
        assert meta["precision"].numpy().decode() == expected


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    for args, named in (([f"--workdir={tmp_path / 'nowhere'}"],
                         "nowhere: no such file or directory"),):
        proc = subprocess.run([sys.executable, "-m", "fcn8s_tf.export", *args], cwd=repo,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert named in proc.stderr.strip().splitlines()[-1]
