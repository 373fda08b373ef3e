"""The serving contract along TF Serving's own path.

TF Serving's C++ server loads a SavedModel with the session-based loader (SavedModelBundle: a
Session, the saver's restore op, then the signature's tensors); `saved_model_cli run` and
`tf.compat.v1.saved_model.loader.load` take the same path. `tf.saved_model.load` (object-based) does
not, and passed while the session path failed on every signature. So every check here runs in a
fresh interpreter in which `import fcn8s_tf` fails, loads the export both ways, and compares.

Exports come from the three places users get them: training (the eval twin), the
`python -m fcn8s_tf.export` CLI on a workdir, and a run trained under mixed_bfloat16.
"""

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf import pixels
from fcn8s_tf.serving import budget as serving_budget
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import warmup as serving_warmup
from fcn8s_tf.training import loop as train_lib

import model_utils  # noqa: E402 (tests/ is on the path)
from test_export import NO_PROJECT_CODE  # noqa: E402 (tests/ is on the path)
from test_train import tiny_config  # pytest puts tests/ on sys.path (rootdir conftest)
from helpers import REPO, encode_image


def _images():
    rng = np.random.default_rng(3)
    jpeg = encode_image(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8), "JPEG")
    png = encode_image(rng.integers(0, 256, (23, 30, 3), dtype=np.uint8), "PNG")
    return jpeg, png


# Runs where TF Serving runs: no project code importable. Reads a JSON request on stdin, prints
# RESULT<json>. Every array goes back as a list so that the parent can compare.
SERVER_SIDE = NO_PROJECT_CODE + textwrap.dedent("""
    request = json.load(sys.stdin)

    def _plain(value):  # bytes (string tensors) -> str, for JSON
        if isinstance(value, list):
            return [_plain(v) for v in value]
        return value.decode() if isinstance(value, bytes) else value

    def inputs_of(case):
        if "image_bytes" in case:
            return {"image_bytes": np.array([base64.b64decode(b) for b in case["image_bytes"]],
                                            dtype=object)}
        if "unused" in case:
            return {"unused": np.array(case["unused"], np.int32)}
        return {"images": np.array(case["images"], np.uint8).reshape(case["shape"])}

    def run_session(export_dir, cases):
        out = []
        graph = tf.Graph()
        with tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
            for case in cases:
                sig = meta.signature_def[case["signature"]]
                feeds = {sig.inputs[k].name: v for k, v in inputs_of(case).items()}
                fetches = {k: t.name for k, t in sig.outputs.items()}
                try:
                    result = sess.run(fetches, feeds)
                    # A string scalar (metadata's precision) comes back as bytes, not an array.
                    result = {k: np.asarray(v) for k, v in result.items()}
                    out.append({k: {"shape": list(v.shape), "values": _plain(v.tolist())}
                                for k, v in result.items()})
                except tf.errors.OpError as e:  # the server answers the request with an error
                    out.append({"error": type(e).__name__, "message": e.message})
        return out

    def run_object(export_dir, cases):
        loaded = tf.saved_model.load(export_dir)
        out = []
        for case in cases:
            fn = loaded.signatures[case["signature"]]
            inputs = {k: tf.constant(v) for k, v in inputs_of(case).items()}
            out.append({k: {"shape": list(v.shape), "values": _plain(np.asarray(v).tolist())}
                        for k, v in fn(**inputs).items()})
        return out

    def warmup(export_dir):
        from tensorflow_serving.apis import prediction_log_pb2
        path = export_dir + "/assets.extra/tf_serving_warmup_requests"
        cases = []
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            req = log.predict_log.request
            case = {"signature": req.model_spec.signature_name, "model": req.model_spec.name}
            for key, proto in req.inputs.items():
                value = tf.make_ndarray(proto)
                if key == "image_bytes":
                    case[key] = [base64.b64encode(b).decode() for b in value]
                elif key == "unused":
                    case[key] = int(value)
                else:
                    case[key], case["shape"] = value.ravel().tolist(), list(value.shape)
            cases.append(case)
        return cases

    result = {}
    for export_dir in request["exports"]:
        entry = {"session": run_session(export_dir, request["cases"]),
                 "object": run_object(export_dir, request["cases"])}
        if request.get("warmup"):
            entry["warmup_cases"] = warmup(export_dir)
            entry["warmup_session"] = run_session(export_dir, entry["warmup_cases"])
        if request.get("bad_cases"):
            entry["bad"] = run_session(export_dir, request["bad_cases"])
        result[export_dir] = entry
    print("RESULT" + json.dumps(result))
""")


def serve(exports, cases, warmup=False, bad_cases=None):
    """Runs SERVER_SIDE on `exports`; returns its result per export directory."""
    request = {"exports": [str(e) for e in exports], "cases": cases, "warmup": warmup,
               "bad_cases": bad_cases or []}
    proc = subprocess.run([sys.executable, "-c", SERVER_SIDE], input=json.dumps(request),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def good_cases():
    jpeg, png = _images()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[np.newaxis]
    return [
        {"signature": "serving_default", "image_bytes": [_b64(jpeg), _b64(png)]},
        {"signature": "serving_probabilities", "image_bytes": [_b64(jpeg), _b64(png)]},
        {"signature": "serving_uint8", "images": pixels.ravel().tolist(),
         "shape": list(pixels.shape)},
        {"signature": "metadata", "unused": 0},
    ]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, trained_workdir):
    """Export directories made by training (the session's trained_workdir, whose answers vary from
    pixel to pixel), by the export CLI from that run, and by a mixed-precision run."""
    root = tmp_path_factory.mktemp("serving")
    trained = serving.find_saved_model(str(trained_workdir / "export"))
    assert trained is not None, f"{trained_workdir} has no export"
    cli = subprocess.run([sys.executable, "-m", "fcn8s_tf.export", f"--workdir={trained_workdir}",
                          f"--export_dir={root / 'cli'}"],  # the shared run stays as it is
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    from_cli = cli.stdout.strip().splitlines()[-1]
    mixed = tiny_config(root / "bf16", train_steps=1, learning_rate=0.05, eval_every=0,
                        precision="mixed_bfloat16")
    mixed_export = train_lib.train(mixed)["export"]
    return {"train": trained, "cli": from_cli, "mixed_bfloat16": mixed_export}


@pytest.mark.slow
def test_every_signature_runs_under_the_session_loader(exports):
    assert Path(exports["cli"]).name == "1"  # a fresh --export_dir starts at version 1
    results = serve(exports.values(), good_cases(), warmup=True)
    for name, export_dir in exports.items():
        entry = results[export_dir]
        for case, session, objective in zip(good_cases(), entry["session"], entry["object"]):
            assert "error" not in session, (name, case["signature"], session)
            assert sorted(session) == sorted(objective)
            for key in session:
                got, want = np.array(session[key]["values"]), np.array(objective[key]["values"])
                assert got.shape == want.shape, (name, key)
                if got.dtype.kind in "US":  # class names
                    assert got.tolist() == want.tolist(), (name, key)
                    continue
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7,
                                           err_msg=f"{name} {case['signature']} {key}")
        probabilities = np.array(entry["session"][1]["probabilities"]["values"])
        assert probabilities.shape == (2, 37, 45, 3)
        # Not a constant answer: the comparison above would not see a wrong restore otherwise.
        assert probabilities[0].std(axis=(0, 1)).max() > 1e-4, name
        assert entry["session"][0]["height"]["values"] == [37, 23]
        # The warmup file: one request per signature, parsed by TF Serving's own generated
        # classes, each of which runs through the session loader as TF Serving replays it.
        signatures = sorted(c["signature"] for c in entry["warmup_cases"])
        assert signatures == sorted(serving.ALL_SIGNATURES)
        # The classes the run trained on, readable by a client without the project.
        metadata = entry["session"][3]
        assert metadata["class_names"]["values"] == ["class_0", "class_1", "class_2"]
        assert metadata["palette"]["shape"] == [3, 3]
        assert metadata["ignore_label"]["values"] == 255
        # Training's exports compute in float32; the CLI's follows --precision=auto here.
        from fcn8s_tf import precision as precision_lib
        expected = (precision_lib.resolve_export_precision("auto")[0] if name == "cli"
                    else "float32")
        assert metadata["precision"]["values"] == expected, name
        names_file = Path(export_dir) / "assets" / serving.CLASS_NAMES_ASSET
        assert names_file.read_text().split() == ["class_0", "class_1", "class_2"]
        assert all(c["model"] == "fcn8s" for c in entry["warmup_cases"])
        for case, answer in zip(entry["warmup_cases"], entry["warmup_session"]):
            assert "error" not in answer, (name, case["signature"], answer)
            if case["signature"] != serving.SIGNATURE_METADATA:
                assert answer["labels"]["shape"][1:3] == list(serving_warmup.WARMUP_IMAGE_SIZE)


def _truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


@pytest.mark.slow
def test_bad_requests_fail_alone_and_name_the_item(exports):
    jpeg, png = _images()
    bad = {
        "not an image": (b"hello, this is text", "is not a JPEG, PNG, GIF or BMP image"),
        "empty": (b"", "is an empty string"),
        "truncated jpeg": (_truncated(jpeg), "is a truncated JPEG"),
        "truncated png": (_truncated(png), "is a truncated PNG"),
    }
    cases = []
    for signature in ("serving_default", "serving_probabilities"):
        for data, _ in bad.values():
            cases.append({"signature": signature, "image_bytes": [_b64(data)]})
        # A mixed batch names the bad item (index 1), not the good one before it.
        cases.append({"signature": signature, "image_bytes": [_b64(jpeg), _b64(b"GIF?no")]})
        # Zero images: outputs with a zero batch dimension, not an error.
        cases.append({"signature": signature, "image_bytes": []})
        # The server is still alive and right after all of the above.
        cases.append({"signature": signature, "image_bytes": [_b64(png)]})
    cases.append({"signature": "serving_uint8", "images": [], "shape": [0, 8, 8, 3]})
    export_dir = exports["train"]
    answers = serve([export_dir], [], bad_cases=cases)[export_dir]["bad"]
    per_signature = len(bad) + 3
    for s in range(2):
        block = answers[s * per_signature:(s + 1) * per_signature]
        for answer, (name, (_, message)) in zip(block, bad.items()):
            assert answer.get("error") == "InvalidArgumentError", (name, answer)
            assert "image_bytes[0] " + message in answer["message"], (name, answer["message"])
        mixed = block[len(bad)]
        assert mixed.get("error") == "InvalidArgumentError"
        assert "image_bytes[1] is not a JPEG, PNG, GIF or BMP image" in mixed["message"]
        empty = block[len(bad) + 1]
        assert empty["labels"]["shape"][0] == 0 and empty["height"]["shape"] == [0]
        assert block[len(bad) + 2]["labels"]["shape"] == [1, 23, 30]
    assert answers[-1]["labels"]["shape"] == [0, 8, 8]
    assert answers[-1]["probabilities"]["shape"] == [0, 8, 8, 3]


def test_large_images_are_downscaled_then_labels_resized_back(tmp_path):
    import keras
    from fcn8s_tf.serving import export
    from fcn8s_tf.model import fcn8s as model_lib
    keras.utils.set_random_seed(0)
    model = model_lib.build_fcn8s(num_classes=3, fc_units=16)  # at fc 8 this seed answers one class
    model_utils.randomise_scores(model)  # so that answers vary per pixel
    rng = np.random.default_rng(0)
    limit = 40 * 40  # the net budget: the padded area of a 40 x 40 image, 240 x 240
    path = export.export_saved_model(model, str(tmp_path / "export"), max_image_pixels=limit)
    loaded = tf.saved_model.load(path)
    big = rng.integers(0, 256, (1, 61, 83, 3), dtype=np.uint8)  # padded 261 x 283 > 240 x 240
    small = big[:, :40, :40]  # exactly at the limit: untouched
    out = loaded.signatures["serving_uint8"](images=tf.constant(big))
    assert out["labels"].shape == (1, 61, 83) and out["probabilities"].shape == (1, 61, 83, 3)
    size = serving_budget.net_input_size(61, 83, limit).numpy()
    # The image scaled, aspect kept, until its padded area fits (both sides rounded down).
    assert (size[0] + 200) * (size[1] + 200) <= 240 * 240 < (size[0] + 201) * (size[1] + 201)
    assert list(size) == [33, 46]
    # A strip one pixel high keeps that pixel, and takes all the width the budget leaves.
    assert (list(serving_budget.net_input_size(1, 50000, limit).numpy())
            == [1, 240 * 240 // 201 - 200])
    resized = tf.image.resize(big, size, antialias=True)
    logits = model(pixels.preprocess(resized), training=False)
    labels = tf.argmax(logits, -1, output_type=tf.int32)[..., tf.newaxis]
    expected = tf.image.resize(labels, [61, 83], method="nearest")[..., 0].numpy()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(out["labels"].numpy(), expected)
    exact = loaded.signatures["serving_uint8"](images=tf.constant(small))["labels"].numpy()
    np.testing.assert_array_equal(
        exact, np.argmax(model(pixels.preprocess(small), training=False).numpy(), -1))
    # The string signatures apply the same limit per image.
    default = loaded.signatures["serving_default"](
        image_bytes=tf.constant([encode_image(big[0], "PNG")]))
    np.testing.assert_array_equal(default["labels"].numpy(), expected)


def test_warmup_record_is_a_prediction_log():
    """The hand-written wire format parses with TF Serving's generated classes."""
    prediction_log_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.prediction_log_pb2",
        reason="tensorflow-serving-api (installed by `make install` with --no-deps) is needed to "
               "parse the warmup file back")
    records = serving_warmup.warmup_requests("my_model")
    assert sorted(records) == sorted(serving.ALL_SIGNATURES)
    for signature, record in records.items():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "my_model"
        assert request.model_spec.signature_name == signature
        (key, proto), = request.inputs.items()
        value = tf.make_ndarray(proto)
        if signature == serving.SIGNATURE_UINT8:
            assert key == "images" and value.shape == (1, 64, 64, 3) and value.dtype == np.uint8
        elif signature == serving.SIGNATURE_METADATA:
            assert key == "unused" and value.shape == () and value.dtype == np.int32
        else:
            assert key == "image_bytes" and value.shape == (1,)
            assert tf.io.decode_jpeg(value[0]).shape == (64, 64, 3)


def test_saved_model_cli_show_lists_named_inputs_and_outputs(exports):
    cli = Path(sys.executable).parent / "saved_model_cli"
    proc = subprocess.run([str(cli), "show", "--all", "--dir", exports["cli"]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for signature in serving.ALL_SIGNATURES:
        assert f"signature_def['{signature}']" in proc.stdout
    for name in ("inputs['image_bytes']", "inputs['images']", "outputs['labels']",
                 "outputs['probabilities']", "outputs['height']", "outputs['width']"):
        assert name in proc.stdout


@pytest.mark.slow
def test_saved_model_cli_run_as_the_readme_says(exports, tmp_path):
    """BUILD.md's pre-deployment check, typed as a user types it."""
    jpeg, _ = _images()
    np.save(tmp_path / "b.npy", np.array([jpeg], dtype=object), allow_pickle=True)
    cli = Path(sys.executable).parent / "saved_model_cli"
    proc = subprocess.run([str(cli), "run", "--dir", exports["train"], "--tag_set", "serve",
                           "--signature_def", "serving_default",
                           "--inputs", f"image_bytes={tmp_path / 'b.npy'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Result for output key labels" in proc.stdout
    assert "Result for output key height:\n[37]" in proc.stdout
