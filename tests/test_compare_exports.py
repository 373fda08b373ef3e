"""tools/compare_exports.py: identical exports pass, a changed weight is found and named."""

import numpy as np
import pytest

from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.serving import export as export_lib
from helpers import encode_image, run_python

TINY = dict(num_classes=3, fc_units=8)
TOOL = "tools/compare_exports.py"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The same net exported twice, and once more with one weight changed; two images."""
    root = tmp_path_factory.mktemp("compare")
    model = model_lib.build_fcn8s(weights=None, **TINY)
    score = model.get_layer("score_fr")
    score.kernel.assign(np.random.default_rng(0).normal(size=score.kernel.shape))
    first = export_lib.export_saved_model(model, str(root / "a"), model_kwargs=TINY)
    second = export_lib.export_saved_model(model, str(root / "b"), model_kwargs=TINY)
    score.kernel.assign(score.kernel.numpy() * -1)
    changed = export_lib.export_saved_model(model, str(root / "c"), model_kwargs=TINY)
    rng = np.random.default_rng(1)
    for name, size in (("x.png", (30, 40)), ("y.png", (25, 17))):
        (root / name).write_bytes(encode_image(rng.integers(0, 256, (*size, 3), np.uint8),
                                               "PNG"))
    return first, second, changed, str(root / "*.png")


def test_the_same_net_exported_twice_is_identical(exports):
    first, second, _, images = exports
    proc = run_python(TOOL, f"--a={first}", f"--b={second}", f"--images={images}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Identical: " in proc.stdout and "on 2 images" in proc.stdout


def test_a_changed_weight_is_found(exports):
    first, _, changed, images = exports
    proc = run_python(TOOL, f"--a={first}", f"--b={changed}", f"--images={images}")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("compare_exports: error: not identical: ") and "differs" in line


def test_nothing_to_compare_on_is_one_line(exports, tmp_path):
    first, second, _, _ = exports
    proc = run_python(TOOL, f"--a={first}", f"--b={second}", f"--images={tmp_path}/*.jpg")
    assert proc.returncode == 1 and "matches no file" in proc.stderr.strip().splitlines()[-1]
