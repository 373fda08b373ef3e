"""Do two exports answer identically? Every image signature, every output, on your images.

    python tools/compare_exports.py --a=runs/voc/export/1 --b=/tmp/export_new/1 \
        --images='data/VOCdevkit/VOC2012/JPEGImages/*.jpg' --max_images=30

For a change that must not change answers (a refactor, a new TensorFlow): export the same
checkpoint with the old and the new code, then compare. Each image goes through serving_default
and serving_probabilities (encoded bytes) and serving_uint8 (decoded pixels) of both exports;
every output must have the same shape, dtype and values, bit for bit. The metadata signatures are
compared key by key and their differences printed (a newer export may say more, e.g. `precision`).
Exit status 0 when identical, 1 with the first difference otherwise.
"""

import glob

from absl import flags
import numpy as np
import tensorflow as tf

from fcn8s_tf import cli
from fcn8s_tf.serving import contract
from fcn8s_tf.serving import loader

FLAGS = flags.FLAGS
PROG = "compare_exports"


def define_flags() -> None:
    """The command-line flags; defined only when run as a program, as in every CLI."""
    flags.DEFINE_string("a", None, "An export: a version directory or a TF Serving base.",
                        required=True)
    flags.DEFINE_string("b", None, "The other export.", required=True)
    flags.DEFINE_string("images", None, "Glob of the images to compare on.", required=True)
    flags.DEFINE_integer("max_images", 30, "Compare on the first N images (sorted by path).",
                         lower_bound=1)


def _inputs(signature: str, data: tf.Tensor):
    if signature == contract.SIGNATURE_UINT8:
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        return {contract.UINT8_INPUT: pixels[tf.newaxis]}
    return {contract.BYTES_INPUT: tf.stack([data])}


def compare(a: loader.LoadedModel, b: loader.LoadedModel, paths) -> int:
    """Outputs compared; raises AssertionError naming the first that differs."""
    compared = 0
    for path in paths:
        data = tf.io.read_file(path)
        for name in contract.SIGNATURES:
            outputs_a = a.signature(name)(**_inputs(name, data))
            outputs_b = b.signature(name)(**_inputs(name, data))
            if sorted(outputs_a) != sorted(outputs_b):
                raise AssertionError(f"{name}: outputs {sorted(outputs_a)} vs {sorted(outputs_b)}")
            for key in outputs_a:
                x, y = outputs_a[key].numpy(), outputs_b[key].numpy()
                if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
                    raise AssertionError(f"{path}: {name} {key} differs (shapes {x.shape} vs "
                                         f"{y.shape}, dtypes {x.dtype} vs {y.dtype})")
                compared += 1
    return compared


def _metadata(model: loader.LoadedModel) -> dict:
    if contract.SIGNATURE_METADATA not in model.saved_model.signatures:
        return {}
    answer = model.signature(contract.SIGNATURE_METADATA)(
        **{contract.METADATA_INPUT: tf.constant(0)})
    return {key: value.numpy().tolist() if hasattr(value.numpy(), "tolist") else value.numpy()
            for key, value in answer.items()}


def main(argv):
    cli.no_positional_arguments(argv)
    paths = sorted(glob.glob(FLAGS.images))[:FLAGS.max_images]
    if not paths:
        cli.fail(PROG, f"--images={FLAGS.images} matches no file")
    try:
        a = loader.load(FLAGS.a, kinds=(loader.SAVED_MODEL,))
        b = loader.load(FLAGS.b, kinds=(loader.SAVED_MODEL,))
        compared = compare(a, b, paths)
    except loader.ModelLoadError as e:
        cli.fail(PROG, e)
    except AssertionError as e:
        cli.fail(PROG, f"not identical: {e}")
    meta_a, meta_b = _metadata(a), _metadata(b)
    for key in sorted(set(meta_a) | set(meta_b)):
        if meta_a.get(key) != meta_b.get(key):
            print(f"metadata {key}: {meta_a.get(key)!r} in --a, {meta_b.get(key)!r} in --b")
    print(f"Identical: {compared} outputs of {len(contract.SIGNATURES)} signatures on "
          f"{len(paths)} images")


if __name__ == "__main__":
    cli.run(define_flags, main)
