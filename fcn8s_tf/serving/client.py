"""Clients of an export: a SavedModel in this process (LocalModel), or TF Serving over REST
(RestModel); predict_files segments files with either and writes their pictures.

The library of `python -m fcn8s_tf.predict` (whose docstring says what a user gets). Both clients
use the exported `serving_default` signature: `image_bytes` (JPEG or PNG strings) in; `labels`
int32 (B, Hmax, Wmax) padded with 255, `height` and `width` int32 (B,) out. Over REST the request
is `{"signature_name": "serving_default", "instances": [{"image_bytes": {"b64": ...}}]}` and TF
Serving answers `{"predictions": [{"labels": ..., "height": ..., "width": ...}]}`. Class names and
colours come from the export's `metadata` signature (VOC's for older exports). One image per
request: the export guarantees an image's labels do not depend on its batch-mates, and a failure
then names one file.
"""

import base64
import dataclasses
import glob
import http.client
import io
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from fcn8s_tf import render
from fcn8s_tf.class_info import ClassInfo
from fcn8s_tf.serving import contract as serving
from fcn8s_tf.serving import loader

SIGNATURE = serving.SIGNATURE_DEFAULT


class PredictError(Exception):
    """A failure the user can fix; the message names the file, URL or directory."""


# ------------------------------------------------------------------------------------- images --
@dataclasses.dataclass
class InputImage:
    """An image to segment: its path, the bytes sent to the model, and its RGB pixels."""
    path: str
    data: bytes        # JPEG or PNG bytes
    rgb: np.ndarray    # uint8 (H, W, 3)


def read_image(path: str) -> InputImage:
    """Reads and fully decodes an image with PIL, so that a bad file fails before any request.

    PNGs and RGB or grayscale JPEGs are sent as they are; anything else PIL reads (CMYK JPEG,
    BMP, GIF, WebP, TIFF ...) is re-encoded as PNG, which the exported graph surely decodes.

    Raises:
      PredictError: the file is missing or is not a decodable image.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PredictError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: catches truncated files that open() alone accepts
            send_as_is = image.format == "PNG" or (image.format == "JPEG"
                                                   and image.mode in ("RGB", "L"))
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise PredictError(f"{path}: not an image PIL can decode ({e})") from None
    if not send_as_is:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        data = buffer.getvalue()
    return InputImage(path=path, data=data, rgb=rgb)


# ------------------------------------------------------------------------------------ backends --
def _crop(labels: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """The (height, width) top-left window of a padded label map, checked."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] < height or labels.shape[1] < width:
        raise PredictError(f"{what}: labels of shape {labels.shape} cannot hold an image of "
                           f"{height}x{width}")
    return labels[:height, :width].astype(np.int32)


class LocalModel:
    """The `serving_default` signature of a SavedModel loaded in this process."""

    def __init__(self, model_dir: str):
        """Loads the export at model_dir (serving/loader.py); raises loader.ModelLoadError."""
        self._model = loader.load(model_dir, kinds=(loader.SAVED_MODEL,))  # keeps variables alive
        self.export_dir = self.name = self._model.path
        self._signature = self._model.signature(SIGNATURE)
        inputs = self._signature.structured_input_signature[1]
        if serving.BYTES_INPUT not in inputs:
            raise loader.ModelLoadError(f"{self.export_dir}: {SIGNATURE} takes {sorted(inputs)}, "
                                        f"not {serving.BYTES_INPUT!r}")
        # The export's own classes (the loader read them); VOC's for exports that do not say.
        self.classes = self._model.classes or ClassInfo.default()

    def predict(self, data: bytes) -> Tuple[np.ndarray, int, int]:
        """One encoded image -> (padded labels (Hmax, Wmax) int32, height, width)."""
        try:
            outputs = self._signature(**{serving.BYTES_INPUT: tf.constant([data])})
        except tf.errors.OpError as e:
            raise PredictError(f"the SavedModel {self.export_dir} failed: {e.message}") from None
        return (outputs["labels"][0].numpy(), int(outputs["height"][0]),
                int(outputs["width"][0]))


class RestModel:
    """`serving_default` of a model served by TF Serving, over its REST API."""

    def __init__(self, server: str, timeout: float = 60.0):
        server = server.rstrip("/")
        if not server.startswith(("http://", "https://")):
            raise PredictError(f"--server={server}: expected a URL like "
                               "http://host:8501/v1/models/fcn8s")
        self.url = server if server.endswith(":predict") else server + ":predict"
        self.timeout = timeout
        self.name = self.url
        self._class_info = None

    @property
    def classes(self) -> ClassInfo:
        """The served model's classes, asked for at first use (after the images are read)."""
        if self._class_info is None:
            self._class_info = self._classes()
        return self._class_info

    def _classes(self) -> ClassInfo:
        """The served model's classes (its metadata signature); VOC's if it has none."""
        try:
            answer = self._post({"signature_name": serving.SIGNATURE_METADATA,
                                 "inputs": {serving.METADATA_INPUT: 0}})
            outputs = answer["outputs"]
            return ClassInfo(tuple(outputs["class_names"]),
                             tuple(tuple(int(c) for c in rgb) for rgb in outputs["palette"]),
                             int(outputs["ignore_label"]))
        except PredictError as e:
            if "HTTP 4" not in str(e):  # an unreachable server: say so now
                raise
        except (KeyError, TypeError, ValueError):
            pass
        return ClassInfo.default()  # an export made before the metadata signature

    def predict(self, data: bytes) -> Tuple[np.ndarray, int, int]:
        """One encoded image -> (padded labels (Hmax, Wmax) int32, height, width)."""
        answer = self._post({
            "signature_name": SIGNATURE,
            "instances": [{serving.BYTES_INPUT: {"b64": base64.b64encode(data).decode("ascii")}}],
        })
        try:
            prediction = answer["predictions"][0]
            labels = np.asarray(prediction["labels"], dtype=np.int32)
            return labels, int(prediction["height"]), int(prediction["width"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise PredictError(f"TF Serving at {self.url}: unexpected response (want "
                               "{'predictions': [{'labels', 'height', 'width'}]}): "
                               f"{str(answer)[:300]}") from None

    def _post(self, payload: dict) -> dict:
        """POSTs a JSON request to the :predict URL; returns the JSON answer."""
        body = json.dumps(payload).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise PredictError(f"TF Serving at {self.url} answered HTTP {e.code}: "
                               f"{str(detail)[:500]}") from None
        except urllib.error.URLError as e:
            raise PredictError(f"TF Serving at {self.url} did not answer: {e.reason}") from None
        except (socket.timeout, TimeoutError):
            raise PredictError(f"TF Serving at {self.url} did not answer within "
                               f"{self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:  # reset, closed mid-answer ...
            raise PredictError(f"TF Serving at {self.url}: the connection failed ({e!r})") from None
        except ValueError as e:
            raise PredictError(f"TF Serving at {self.url} sent a response that is not JSON "
                               f"({e})") from None
        return answer


# ------------------------------------------------------------------------------------- outputs --


MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"


def output_stems(paths: Sequence[str], output_dir: str) -> Dict[str, str]:
    """{input path: its output stem (the file name without extension)}, one per distinct file.

    `<stem>_mask.png` and `<stem>_overlay.png` can never be one another, so distinct stems
    mean distinct outputs. Stems are compared ignoring case (macOS and Windows file systems do).
    A path repeated, or another path to the same file, is kept once: its outputs would be equal.

    Raises:
      PredictError: two files share a stem, or an output would overwrite an input.
    """
    stems: Dict[str, str] = {}
    by_key: Dict[str, List[str]] = {}
    inputs: Dict[str, str] = {}  # real path -> the path as given
    for path in paths:
        real = os.path.realpath(path)
        if real in inputs:
            continue
        inputs[real] = path
        stems[path] = os.path.splitext(os.path.basename(path))[0]
        by_key.setdefault(stems[path].casefold(), []).append(path)
    problems = [f"{', '.join(group[:-1])} and {group[-1]} would "
                f"{'both' if len(group) == 2 else 'all'} write {stems[group[0]]}{MASK_SUFFIX} "
                f"and {stems[group[0]]}{OVERLAY_SUFFIX}"
                for group in by_key.values() if len(group) > 1]
    if problems:
        raise PredictError(f"{'; '.join(problems)} in --output_dir={output_dir}: give the inputs "
                           "distinct file names, or predict them in separate runs with separate "
                           "--output_dir")
    for path, stem in stems.items():
        for suffix in (MASK_SUFFIX, OVERLAY_SUFFIX):
            output = os.path.join(output_dir, stem + suffix)
            if os.path.realpath(output) in inputs:
                raise PredictError(f"{path}: its output {output} would overwrite the input "
                                   f"{inputs[os.path.realpath(output)]}; choose another "
                                   "--output_dir")
    return stems


def predict_files(model, paths: Sequence[str], output_dir: str,
                  classes: Optional[ClassInfo] = None, print_fn=print) -> List[Dict]:
    """Segments each image and writes its mask and overlay PNGs.

    Every file is decoded first, so a bad one stops the run before any request is sent; before
    that, inputs that would write the same outputs stop it (output_stems).

    Args:
      model: a LocalModel or RestModel (anything with predict(bytes) -> (labels, height, width)).
      paths: image files (JPEG, PNG, or anything PIL reads); distinct stems (a file given twice
        is segmented once).
      output_dir: created if missing.
      classes: names and colours; default the model's own (`model.classes`), else VOC's.
      print_fn: where the per-image lines go.
    Returns:
      One dict per distinct image: path, mask, overlay (written paths), labels ((H, W) int32),
      classes ([(name, fraction)]).
    Raises:
      PredictError: two inputs with one stem, a file that is not an image, a server that does
        not answer, a bad answer.
    """
    stems = output_stems(paths, output_dir)  # before any file is read or written
    images = [read_image(path) for path in stems]
    classes = classes or getattr(model, "classes", None) or ClassInfo.default()
    try:
        os.makedirs(output_dir, exist_ok=True)
    except FileExistsError:
        raise PredictError(f"--output_dir={output_dir} is a file, not a folder") from None
    except OSError as e:
        raise PredictError(f"--output_dir={output_dir}: cannot create it ({e.strerror})") from None
    results = []
    for image in images:
        height, width = image.rgb.shape[:2]
        try:
            padded, out_h, out_w = model.predict(image.data)
        except PredictError as e:
            raise PredictError(f"{image.path}: {e}") from None
        if (out_h, out_w) != (height, width):
            raise PredictError(f"{image.path}: the model says the image is {out_w}x{out_h}, "
                               f"PIL says {width}x{height}")
        labels = _crop(padded, height, width, f"{image.path} via {model.name}")
        mask_path = os.path.join(output_dir, stems[image.path] + MASK_SUFFIX)
        overlay_path = os.path.join(output_dir, stems[image.path] + OVERLAY_SUFFIX)
        render.write_mask_png(labels, mask_path, classes.palette)
        blended = render.overlay(image.rgb, labels, palette=classes.palette)
        Image.fromarray(render.legend(blended, labels, classes)).save(overlay_path, format="PNG")
        found = render.class_fractions(labels, classes.names)
        print_fn(f"{image.path} ({width}x{height}): "
                 + ", ".join(f"{name} {100 * fraction:.1f}%" for name, fraction in found)
                 + f" -> {mask_path}, {overlay_path}")
        results.append(dict(path=image.path, mask=mask_path, overlay=overlay_path,
                            labels=labels, classes=found))
    return results


def collect_paths(positional: Sequence[str], pattern: Optional[str]) -> List[str]:
    """Positional paths (which must exist) plus the sorted matches of a glob (which must match)."""
    paths = list(positional)
    for path in paths:
        if not os.path.exists(path):
            raise PredictError(f"{path}: no such file")
    if pattern:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise PredictError(f"--images={pattern}: no file matches")
        paths += matches
    if not paths:
        raise PredictError("no images given: pass image paths as arguments or --images=GLOB")
    return paths
