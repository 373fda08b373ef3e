"""Tests for fcn8s_tf.predict: a fake SavedModel and a fake TF Serving obeying the export contract
(serving_default: image_bytes in; labels padded with 255, height, width out)."""

import base64
import http.server
import io
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf import render
from fcn8s_tf.class_info import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE
from fcn8s_tf.serving import client as predict
from fcn8s_tf.serving import loader

from helpers import encode_image, free_port, run_python

PERSON = 15


class _FakeFCN(tf.Module):
    """serving_default as the export defines it; the 'net' says person where red > 128."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(self, image_bytes):
        def shape(data):
            return tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))[:2]

        sizes = tf.map_fn(shape, image_bytes, fn_output_signature=tf.int32)
        max_h, max_w = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])

        def segment(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            labels = tf.where(tf.cast(image[..., 0], tf.int32) > 128, PERSON, 0)
            h, w = tf.shape(labels)[0], tf.shape(labels)[1]
            return tf.pad(labels, [[0, max_h - h], [0, max_w - w]], constant_values=IGNORE_LABEL)

        labels = tf.map_fn(segment, image_bytes,
                           fn_output_signature=tf.TensorSpec([None, None], tf.int32))
        return {"labels": labels, "height": sizes[:, 0], "width": sizes[:, 1]}


@pytest.fixture(scope="module")
def export_base(tmp_path_factory):
    """A TF Serving base dir holding version 1 of the fake model."""
    base = tmp_path_factory.mktemp("export")
    module = _FakeFCN()
    tf.saved_model.save(module, str(base / "1"),
                        signatures={"serving_default": module.serving_default})
    return base


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A JPEG (40 wide, 30 high, red on the left) and a PNG (25 wide, 50 high, red on top)."""
    root = tmp_path_factory.mktemp("images")
    jpeg = np.zeros((30, 40, 3), np.uint8)
    jpeg[:, :16] = (250, 20, 20)
    jpeg[:, 16:] = (40, 90, 160)
    png = np.full((50, 25, 3), 30, np.uint8)
    png[:20] = (220, 60, 60)
    (root / "left.jpg").write_bytes(encode_image(jpeg, "JPEG", quality=95))
    (root / "top.png").write_bytes(encode_image(png, "PNG"))
    return [root / "left.jpg", root / "top.png"]


def _expected_labels(path: Path) -> np.ndarray:
    """What the fake net answers, from TF's own decode of the file."""
    image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False).numpy()
    return np.where(image[..., 0].astype(int) > 128, PERSON, 0)


def _check_outputs(out: Path, path: Path, want: np.ndarray, palette=VOC_PALETTE) -> None:
    with Image.open(out / f"{path.stem}_mask.png") as mask:
        assert mask.mode == "P" and mask.size == (want.shape[1], want.shape[0])
        np.testing.assert_array_equal(np.array(mask), want)
        saved = np.array(mask.getpalette(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(saved, palette)
    with Image.open(path) as source:
        rgb = np.asarray(source.convert("RGB")).astype(np.float64)
    h, w = want.shape
    with Image.open(out / f"{path.stem}_overlay.png") as overlay:
        pixels = np.asarray(overlay)
    assert pixels.shape[1] == w and pixels.shape[0] > h  # the picture, then the legend strip
    blended = np.round(0.5 * rgb + 0.5 * palette[want]).astype(np.uint8)
    np.testing.assert_array_equal(pixels[:h], blended)
    legend = pixels[h:]
    for class_id in np.unique(want):  # each class present has its colour swatch in the legend
        assert (legend == palette[class_id]).all(axis=-1).sum() >= 100, class_id


def test_local_saved_model_writes_masks_and_overlays(export_base, images, tmp_path):
    model = predict.LocalModel(str(export_base))
    assert model.export_dir == str(export_base / "1")
    lines = []
    results = predict.predict_files(model, [str(p) for p in images], str(tmp_path),
                                    print_fn=lines.append)
    for path, result in zip(images, results):
        want = _expected_labels(path)
        assert 0 < (want == PERSON).mean() < 1
        np.testing.assert_array_equal(result["labels"], want)
        _check_outputs(tmp_path, path, want)
    assert lines[0].startswith(f"{images[0]} (40x30): background ")
    assert lines[1].startswith(f"{images[1]} (25x50): background 60.0%, person 40.0%")
    assert dict(results[1]["classes"]) == {"background": 0.6, "person": 0.4}


def test_overlay_leaves_void_pixels_alone():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, PERSON], [IGNORE_LABEL, 1]])
    out = render.overlay(rgb, labels)
    np.testing.assert_array_equal(out[1, 0], rgb[1, 0])
    np.testing.assert_array_equal(out[0, 0], [50, 50, 50])  # background is black in the palette
    np.testing.assert_array_equal(out[0, 1], np.round(50 + VOC_PALETTE[PERSON] / 2))


@pytest.mark.parametrize("names, expected", [
    (["a/x.jpg", "b/x.png"], "a/x.jpg and b/x.png would both write x_mask.png and x_overlay.png"),
    (["a/X.jpg", "b/x.jpg", "c/x.bmp"],  # one name on a case-insensitive file system
     "a/X.jpg, b/x.jpg and c/x.bmp would all write X_mask.png and X_overlay.png"),
    (["out/a.png", "out/a_mask.png"], "out/a.png: its output out/a_mask.png would overwrite the "
                                      "input out/a_mask.png"),
])
def test_inputs_that_would_share_an_output_are_refused(tmp_path, monkeypatch, names, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(predict.PredictError) as error:
        predict.output_stems(names, "out")
    assert expected in str(error.value)


def test_a_file_given_twice_is_segmented_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    assert predict.output_stems(["d/x.jpg", "x_1.jpg", "./d/x.jpg", "d/../d/x.jpg"],
                                "out") == {"d/x.jpg": "x", "x_1.jpg": "x_1"}


# ------------------------------------------------------------------------------------ REST --
# The served model's own classes (its metadata signature): VOC's, with person renamed and
# recoloured.
SERVED_NAMES = ["human" if n == "person" else n for n in VOC_CLASSES]
SERVED_PALETTE = VOC_PALETTE.copy()
SERVED_PALETTE[PERSON] = (10, 200, 30)


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/models/fcn8s:predict like TF Serving's REST API (row format), padding the
    labels as if the image had been batched with a larger one."""

    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if self.path != "/v1/models/fcn8s:predict":
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        if body.get("signature_name") == "metadata":  # columnar answer, as TF Serving gives
            return self._reply(200, {"outputs": {
                "class_names": SERVED_NAMES, "palette": SERVED_PALETTE[:21].tolist(),
                "ignore_label": 255}})
        data = base64.b64decode(body["instances"][0]["image_bytes"]["b64"])
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        labels = np.where(rgb[..., 0].astype(int) > 128, PERSON, 0)
        padded = np.pad(labels, [(0, 5), (0, 7)], constant_values=IGNORE_LABEL)
        self._reply(200, {"predictions": [{"labels": padded.tolist(), "height": labels.shape[0],
                                           "width": labels.shape[1]}]})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A fake TF Serving on 127.0.0.1 (free port) in a thread; yields its base URL."""
    _FakeServing.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_rest_server_path(server, images, tmp_path):
    model = predict.RestModel(f"{server}/v1/models/fcn8s/", timeout=10)
    assert model.url == f"{server}/v1/models/fcn8s:predict"
    results = predict.predict_files(model, [str(p) for p in images], str(tmp_path),
                                    print_fn=lambda _: None)
    assert _FakeServing.requests[0][1] == {"signature_name": "metadata",
                                           "inputs": {"unused": 0}}
    assert model.classes.names[PERSON] == "human"
    path, body = _FakeServing.requests[1]
    assert body["signature_name"] == "serving_default"
    assert base64.b64decode(body["instances"][0]["image_bytes"]["b64"]) == images[0].read_bytes()
    for image_path, result in zip(images, results):
        with Image.open(image_path) as source:
            want = np.where(np.asarray(source.convert("RGB"))[..., 0].astype(int) > 128, PERSON, 0)
        np.testing.assert_array_equal(result["labels"], want)  # the padding was cropped off
        _check_outputs(tmp_path, image_path, want, SERVED_PALETTE)
        assert dict(result["classes"]).keys() <= {"background", "human"}


def test_rest_error_answer_is_reported(server, images):
    model = predict.RestModel(f"{server}/v1/models/nope", timeout=10)
    with pytest.raises(predict.PredictError, match="HTTP 404: Servable not found"):
        model.predict(images[0].read_bytes())


def test_server_with_nothing_listening(images):
    url = f"http://127.0.0.1:{free_port()}/v1/models/fcn8s"
    with pytest.raises(predict.PredictError, match=f"TF Serving at {url}:predict did not answer"):
        predict.RestModel(url, timeout=5).predict(images[0].read_bytes())


def test_server_that_never_answers_times_out(images):
    with socket.socket() as listener:  # accepts connections (kernel backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/models/fcn8s"
        with pytest.raises(predict.PredictError, match="did not answer"):
            predict.RestModel(url, timeout=0.5).predict(images[0].read_bytes())


def test_formats_other_than_jpeg_and_png_are_sent_as_png(images, tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    (tmp_path / "a.bmp").write_bytes(encode_image(rgb, "BMP"))
    buffer = io.BytesIO()
    Image.new("CMYK", (6, 4), (0, 50, 100, 0)).save(buffer, format="JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(buffer.getvalue())
    for name in ("a.bmp", "cmyk.jpg"):
        image = predict.read_image(str(tmp_path / name))
        with Image.open(io.BytesIO(image.data)) as sent:
            assert sent.format == "PNG" and sent.mode == "RGB" and sent.size == (6, 4)
    np.testing.assert_array_equal(predict.read_image(str(tmp_path / "a.bmp")).rgb, rgb)
    assert predict.read_image(str(images[0])).data == images[0].read_bytes()


def test_bad_server_url():
    with pytest.raises(predict.PredictError, match="expected a URL"):
        predict.RestModel("localhost:8501/v1/models/fcn8s")


# ---------------------------------------------------------------------------------- errors --
def test_not_an_image_fails_before_any_request(server, images, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images[0].read_bytes()[:300])
    model = predict.RestModel(f"{server}/v1/models/fcn8s", timeout=10)
    for bad in (text, truncated):
        with pytest.raises(predict.PredictError, match=f"{bad}: not an image"):
            predict.predict_files(model, [str(images[0]), str(bad)], str(tmp_path / "out"))
    assert _FakeServing.requests == []


def test_model_dir_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "3").mkdir()  # a numeric dir without saved_model.pb does not count
    with pytest.raises(loader.ModelLoadError, match="empty is not a SavedModel"):
        predict.LocalModel(str(tmp_path / "empty"))
    with pytest.raises(loader.ModelLoadError, match="nowhere: no such file or directory"):
        predict.LocalModel(str(tmp_path / "nowhere"))


def test_collect_paths(images, tmp_path):
    glob_pattern = str(images[0].parent / "*.png")
    assert predict.collect_paths([str(images[0])], glob_pattern) == [str(images[0]), str(images[1])]
    with pytest.raises(predict.PredictError, match="missing.jpg: no such file"):
        predict.collect_paths([str(tmp_path / "missing.jpg")], None)
    with pytest.raises(predict.PredictError, match="no file matches"):
        predict.collect_paths([], str(tmp_path / "*.jpg"))
    with pytest.raises(predict.PredictError, match="no images given"):
        predict.collect_paths([], None)


# ------------------------------------------------------------------------------------- CLI --
def _run_cli(*args):
    return run_python("-m", "fcn8s_tf.predict", *args)


def test_cli_local_model(export_base, images, tmp_path):
    proc = _run_cli(f"--model={export_base}", f"--output_dir={tmp_path}", str(images[0]),
                    f"--images={images[1].parent / '*.png'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "person" in proc.stdout and "Masks and overlays of 2 image(s)" in proc.stdout
    for path in images:
        _check_outputs(tmp_path, path, _expected_labels(path))


def test_cli_refuses_two_inputs_with_one_output_name(export_base, images, tmp_path):
    # The case: d1/x.jpg, d2/x.jpg and x_1.jpg used to write two results to x_1_mask.png.
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
    (tmp_path / "d1" / "x.jpg").write_bytes(images[0].read_bytes())
    (tmp_path / "d2" / "x.jpg").write_bytes(images[0].read_bytes())
    (tmp_path / "x_1.jpg").write_bytes(images[0].read_bytes())
    inputs = [str(tmp_path / "d1" / "x.jpg"), str(tmp_path / "d2" / "x.jpg"),
              str(tmp_path / "x_1.jpg")]
    proc = _run_cli(f"--model={export_base}", f"--output_dir={tmp_path / 'out'}", *inputs)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"fcn8s_tf.predict: error: {inputs[0]} and {inputs[1]} would both write x_mask.png "
            f"and x_overlay.png in --output_dir={tmp_path / 'out'}: give the inputs distinct "
            "file names") in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is written

    # Without the clash, x.jpg and x_1.jpg each keep their own outputs (no _1 suffix scheme).
    (tmp_path / "d2" / "x_1.png").write_bytes(images[1].read_bytes())
    inputs = [str(tmp_path / "d1" / "x.jpg"), str(tmp_path / "d2" / "x_1.png")]
    proc = _run_cli(f"--model={export_base}", f"--output_dir={tmp_path / 'out'}", *inputs,
                    inputs[0])  # a file given twice is segmented once
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Masks and overlays of 2 image(s)" in proc.stdout
    for path in inputs:
        _check_outputs(tmp_path / "out", Path(path), _expected_labels(Path(path)))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "x_1_mask.png", "x_1_overlay.png", "x_mask.png", "x_overlay.png"]


@pytest.mark.parametrize("case", ["not_an_image", "no_server", "not_a_saved_model"])
def test_cli_errors_exit_1_with_a_message_and_no_traceback(case, images, tmp_path):
    if case == "not_an_image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG garbage")
        url = f"http://127.0.0.1:{free_port()}/v1/models/fcn8s"
        args, named = [f"--server={url}", str(bad)], str(bad)
    elif case == "no_server":
        url = f"http://127.0.0.1:{free_port()}/v1/models/fcn8s"
        args, named = [f"--server={url}", "--timeout=5", str(images[0])], url
    else:
        args, named = [f"--model={tmp_path}", str(images[0])], str(tmp_path)
    proc = _run_cli(f"--output_dir={tmp_path / 'out'}", *args)
    assert proc.returncode == 1
    assert "fcn8s_tf.predict: error:" in proc.stderr and named in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_output_dir_that_is_a_file(export_base, images, tmp_path):
    (tmp_path / "taken").write_text("a file")
    proc = _run_cli(f"--model={export_base}", f"--output_dir={tmp_path / 'taken'}",
                    str(images[0]))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"--output_dir={tmp_path / 'taken'} is a file, not a folder" in proc.stderr
