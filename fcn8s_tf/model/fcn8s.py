"""The FCN-8s network ("at once" variant) on keras.applications.VGG16, and its preprocessing.

The net is the Caffe reference voc-fcn8s-atonce (Long, Shelhamer, Darrell), constant for constant:

    image (H, W) --pad 100--> VGG16 conv blocks, 2x2/2 max pools rounding up (Caffe)
      pool5 -> fc6 (7x7 valid, relu, dropout) -> fc7 (1x1, relu, dropout) -> score_fr
        -> upscore2 (4x4/2) ----------------------------+
      pool4 * 0.01 -> score_pool4 -> crop at 5 ---------+-> fuse_pool4 -> upscore_pool4 (4x4/2) --+
      pool3 * 0.0001 -> score_pool3 -> crop at 9 --------------------------------------------------+
        -> fuse_pool3 -> upscore8 (16x16/8) -> crop at 31 to (H, W) -> logits (float32)

Why the offsets are 5, 9 and 31: map each tensor's coordinates to input pixels (Caffe's
coord_map). After the 100 px pad, block-k pool index t lies at input pixel 2^k t + (2^k-1)/2 - 100;
the 7x7 valid fc6 moves the centre by 3 pool5 cells; a transposed conv of kernel k, stride s maps
input index i to output s i + (k - 1)/2. That puts upscore2 index u at 16 u - 11.5 and score_pool4
index t at 16 t - 91.5, so t = u + 5; likewise 9 for score_pool3 and 31 for the final crop, for
every input size (tests/test_model.py checks this on the built graph and by behaviour).
"""

import inspect
import os
from typing import Dict, Optional

import h5py
import numpy as np
from absl import logging

import keras

# Caffe's conv1_1 pads the input by 100 so that fc6's 7x7 valid conv has something to see on small
# images and the crops below are non-negative; keras's block1_conv1 pads 1 itself ('same').
INPUT_PAD = 100
# The skip branches are scaled before scoring, as in the "at once" net, so that all three streams
# can be learned jointly from the start (PAMI 2016, section 4.2).
POOL4_SCALE = 0.01
POOL3_SCALE = 0.0001
# Top/left crop offsets of score_pool4, score_pool3 and the final upscore8 (module docstring).
POOL4_CROP_OFFSET = 5
POOL3_CROP_OFFSET = 9
FINAL_CROP_OFFSET = 31

# VGG16's fc layers, in the with-top weights, and the FCN layers they become.
_VGG16_FC_TO_FCN = {"fc1": "fc6", "fc2": "fc7"}
_VGG16_FC_UNITS = 4096


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """Bilinear upsampling kernel of the FCN reference (`surgery.upsample_filt`), float32.

    Args:
      size: spatial size k of the square kernel (4 for 2x, 16 for 8x upsampling).
      channels: number of classes C; class i only feeds class i.
    Returns:
      (k, k, C, C) kernel, the layout of keras Conv2DTranspose: (rows, cols, out, in).
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt_1d = 1.0 - np.abs(og - center) / factor
    filt = np.outer(filt_1d, filt_1d)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for i in range(channels):
        kernel[:, :, i, i] = filt
    return kernel


@keras.saving.register_keras_serializable(package="fcn8s_tf")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initializer for a Conv2DTranspose kernel (k, k, C, C): `bilinear_kernel` per class."""

    def __call__(self, shape, dtype=None):
        rows, cols, out_channels, in_channels = shape
        if rows != cols or out_channels != in_channels:
            raise ValueError(
                f"BilinearUpsampling needs a square (k, k, C, C) kernel, got shape {tuple(shape)}"
            )
        return keras.ops.convert_to_tensor(bilinear_kernel(rows, out_channels), dtype=dtype)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="fcn8s_tf")
class CropToReference(keras.layers.Layer):
    """Keeps the top-left (ref height, ref width) window of x: the size-dependent part of a crop.

    Called on [x, ref] with x (B, h, w, C) and ref (B, H, W, ...), H <= h, W <= w; returns
    (B, H, W, C). The fixed top/left offset is a Cropping2D before it (Caffe's Crop layer = both).
    """

    def call(self, inputs):
        x, ref = inputs
        ref_shape = keras.ops.shape(ref)
        return x[:, : ref_shape[1], : ref_shape[2], :]

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def _crop(x, ref, offset: int, name: str):
    """Caffe Crop(axis=2, offset): the window of ref's spatial size starting at (offset, offset)."""
    x = keras.layers.Cropping2D(((offset, 0), (offset, 0)), name=f"{name}_offset")(x)
    return CropToReference(name=name)([x, ref])


def _upsample(x, num_classes: int, size: int, stride: int, trainable: bool, name: str):
    """Transposed conv without bias, bilinear-initialised (Caffe Deconvolution, pad 0)."""
    layer = keras.layers.Conv2DTranspose(
        num_classes,
        size,
        strides=stride,
        padding="valid",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        name=name,
    )
    layer.trainable = trainable
    return layer(x)


def _score(x, num_classes: int, name: str):
    """1x1 class scores; zero-initialised as in the reference, so training starts from 0 logits."""
    return keras.layers.Conv2D(
        num_classes, 1, kernel_initializer="zeros", bias_initializer="zeros", name=name
    )(x)


def default_kwargs() -> dict:
    """build_fcn8s's default arguments (the paper's net): the one source for other modules."""
    return {name: p.default for name, p in inspect.signature(build_fcn8s).parameters.items()}


def build_fcn8s(
    num_classes: int = 21,
    weights=None,
    learnable_upsampling: bool = False,
    fc_units: int = _VGG16_FC_UNITS,
    dropout_rate: float = 0.5,
    input_shape=(None, None, 3),
    name: str = "fcn8s",
    skip_scales=(POOL4_SCALE, POOL3_SCALE),
    train_backbone: bool = True,
) -> keras.Model:
    """Builds FCN-8s ("at once") as a keras functional model on keras.applications.VGG16.

    The conv layers are VGG16's, rebuilt from its configs under the same names (block1_conv1 ...
    block5_pool) with the pools switched to padding='same', which rounds up as Caffe's pooling does,
    so any input of H, W >= 1 works. Layer names otherwise follow the Caffe net (fc6, fc7, score_fr,
    upscore2, score_pool4, upscore_pool4, score_pool3, upscore8) so weights from other ports map by
    name.

    Args:
      num_classes: number of output classes (21 for PASCAL VOC: background + 20).
      weights: None (random init, Keras defaults for the conv layers), "imagenet" (Keras's
        VGG16-with-top download), or the path of a local VGG16 weights file, with top (fc1/fc2
        become fc6/fc7) or without (fc6/fc7 stay random; a warning is logged). See
        `load_vgg16_weights`.
      learnable_upsampling: whether upscore2/upscore_pool4/upscore8 train. The Caffe reference keeps
        them fixed at bilinear (False).
      fc_units: width of fc6 and fc7. The product uses the paper's 4096 (the only width VGG16's fc
        weights fit); a narrower value exists only so that tests and demos can build a small,
        fast net from random init.
      dropout_rate: dropout after fc6 and after fc7 (0.5 in the reference).
      input_shape: (H, W, 3) of one image; None for a size fixed only at run time.
      name: model name.
      skip_scales: (pool4, pool3) factors before score_pool4/score_pool3. The reference's
        (0.01, 0.0001) suit ImageNet features; the CPU demo uses (1, 1) so that the skip scores
        on random-init features learn within minutes (configs/demo.flags says so).
      train_backbone: False freezes the VGG16 conv blocks (block1..block5). The product trains
        them; the CPU demo freezes them because their backward pass is ~3/4 of a step's time.
    Returns:
      A keras.Model mapping (B, H, W, 3) float images in the training convention
      (fcn8s_tf/pixels.preprocess: BGR, mean-subtracted, 0-255 scale) to (B, H, W, num_classes)
      logits, float32 even under a mixed-precision policy.
    Raises:
      ValueError: a bad argument, or a weights file that is not VGG16 weights.
      FileNotFoundError: `weights` names a file that does not exist.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if fc_units < 1:
        raise ValueError(f"fc_units must be >= 1, got {fc_units}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if len(skip_scales) != 2:
        raise ValueError(f"skip_scales must be (pool4, pool3), got {skip_scales}")
    pool4_scale, pool3_scale = (float(v) for v in skip_scales)

    image = keras.Input(shape=input_shape, name="image")

    # --- VGG16 conv blocks, pad 100 in front, pools rounding up.
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    x = keras.layers.ZeroPadding2D(INPUT_PAD - 1, name="block1_pad")(image)
    skips = {}
    for layer in vgg.layers[1:]:
        config = layer.get_config()
        if isinstance(layer, keras.layers.MaxPooling2D):
            config["padding"] = "same"
        elif config.get("padding") != "same":  # The pad and crop arithmetic rely on it.
            raise RuntimeError(f"keras.applications.VGG16 changed: {layer.name} is {config}")
        config["trainable"] = train_backbone
        x = layer.__class__.from_config(config)(x)
        skips[layer.name] = x
    del vgg
    pool3, pool4, pool5 = skips["block3_pool"], skips["block4_pool"], skips["block5_pool"]

    # --- VGG16's classifier as convolutions.
    x = keras.layers.Conv2D(fc_units, 7, padding="valid", activation="relu", name="fc6")(pool5)
    x = keras.layers.Dropout(dropout_rate, name="drop6")(x)
    x = keras.layers.Conv2D(fc_units, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout_rate, name="drop7")(x)
    score_fr = _score(x, num_classes, "score_fr")

    # --- Skip fusion at stride 16, then 8, then upsample to the input.
    upscore2 = _upsample(score_fr, num_classes, 4, 2, learnable_upsampling, "upscore2")
    scaled_pool4 = keras.layers.Rescaling(pool4_scale, name="scale_pool4")(pool4)
    score_pool4 = _score(scaled_pool4, num_classes, "score_pool4")
    score_pool4c = _crop(score_pool4, upscore2, POOL4_CROP_OFFSET, "score_pool4c")
    fuse_pool4 = keras.layers.Add(name="fuse_pool4")([upscore2, score_pool4c])

    upscore_pool4 = _upsample(fuse_pool4, num_classes, 4, 2, learnable_upsampling, "upscore_pool4")
    scaled_pool3 = keras.layers.Rescaling(pool3_scale, name="scale_pool3")(pool3)
    score_pool3 = _score(scaled_pool3, num_classes, "score_pool3")
    score_pool3c = _crop(score_pool3, upscore_pool4, POOL3_CROP_OFFSET, "score_pool3c")
    fuse_pool3 = keras.layers.Add(name="fuse_pool3")([upscore_pool4, score_pool3c])

    upscore8 = _upsample(fuse_pool3, num_classes, 16, 8, learnable_upsampling, "upscore8")
    cropped = _crop(upscore8, image, FINAL_CROP_OFFSET, "score_crop")
    # Logits leave in float32 whatever the policy: the loss and argmax want full precision.
    logits = keras.layers.Activation("linear", dtype="float32", name="score")(cropped)

    model = keras.Model(image, logits, name=name)
    if weights is not None:
        load_vgg16_weights(model, weights)
    return model


def _has_vgg16_top(path: str) -> bool:
    """Whether an HDF5 file holds VGG16's fc1 and fc2 kernels, told by shape in any Keras format.

    Shapes, not names: Keras 3 `.weights.h5` files key layers by class ("dense_1"), legacy files by
    layer name ("fc1").
    """
    shapes = set()

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset):
            shapes.add(obj.shape)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return {(7 * 7 * 512, _VGG16_FC_UNITS), (_VGG16_FC_UNITS, _VGG16_FC_UNITS)} <= shapes


def load_vgg16_weights(model: keras.Model, source) -> None:
    """Net surgery: copies VGG16 weights into an FCN-8s built by `build_fcn8s`, in place.

    Conv layers are copied by name (block1_conv1 ... block5_conv3). With VGG16's top, the fully
    connected layers become convolutions: fc1's (25088, 4096) kernel, which reads a flattened
    (7, 7, 512) pool5 in channels-last order, reshapes to fc6's (7, 7, 512, 4096) and fc2's
    (4096, 4096) to fc7's (1, 1, 4096, 4096); biases are copied as they are.

    Args:
      model: an FCN-8s from `build_fcn8s`.
      source: "imagenet" (keras.applications' VGG16-with-top download) or the path of a local
        VGG16 weights file loadable by keras.applications.VGG16: Keras's own .h5 files (with or
        without top), a full legacy .h5 save, or a Keras 3 .weights.h5.
    Raises:
      FileNotFoundError: `source` is a path that does not exist.
      ValueError: the file is not VGG16 weights, or it has the top but the model's fc6/fc7 are not
        4096 wide.
    """
    if isinstance(source, str) and source == "imagenet":
        vgg = keras.applications.VGG16(include_top=True, weights="imagenet")
        has_top = True
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG16 weights file not found: {path}")
        expected = (
            "a VGG16 weights file as keras.applications.VGG16 loads it (e.g. Keras's "
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5, or VGG16.save_weights('*.weights.h5'))"
        )
        try:
            has_top = _has_vgg16_top(path)
        except OSError as e:
            raise ValueError(f"{path} is not an HDF5 file; expected {expected}") from e
        fc6_units = model.get_layer("fc6").filters
        if has_top and fc6_units != _VGG16_FC_UNITS:
            raise ValueError(
                f"{path} holds VGG16's fc1/fc2 ({_VGG16_FC_UNITS} wide), which only fit fc6/fc7 of "
                f"an FCN built with fc_units={_VGG16_FC_UNITS}; this model has fc_units={fc6_units}"
            )
        try:
            vgg = keras.applications.VGG16(
                include_top=has_top, weights=path, input_shape=(224, 224, 3)
            )
        except Exception as e:  # Keras raises ValueError, KeyError, ... on a foreign file.
            top = "with" if has_top else "without"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{path} could not be loaded as VGG16 weights {top} the top; expected {expected}. "
                f"Keras said: {reason}"
            ) from e

    for layer in vgg.layers:
        if isinstance(layer, keras.layers.Conv2D):
            model.get_layer(layer.name).set_weights(layer.get_weights())
    if has_top:
        for vgg_name, fcn_name in _VGG16_FC_TO_FCN.items():
            kernel, bias = vgg.get_layer(vgg_name).get_weights()
            target = model.get_layer(fcn_name)
            target.set_weights([kernel.reshape(target.kernel.shape), bias])
    else:
        logging.warning(
            "!!! VGG16 weights %s have no top (fc1/fc2): fc6/fc7 of FCN-8s stay RANDOMLY "
            "initialised. FCN-8s will NOT reach its published accuracy this way (typical symptom: "
            "all-background predictions, low mIoU). Use the VGG16 weights with the top "
            "(include_top=True, e.g. weights='imagenet').",
            source,
        )


def serving_twin(model: keras.Model, model_kwargs: Optional[Dict],
                 dtype: str = "float32") -> keras.Model:
    """A model for any input size with `model`'s weights computing in `dtype`, or `model` itself
    if it is one already.

    Training may build the net for its fixed crop size (faster, BENCHMARKS.md) and under a
    mixed-precision policy; evaluation and serving need every image size. dtype "float32", or
    "bfloat16": the twin's variables are bfloat16 too (Keras policy "bfloat16", not
    "mixed_bfloat16"), so that a forward pass does not cast 134 M float32 weights on every call.
    model_kwargs are the build_fcn8s arguments (None: use `model` as it is; float32 only).
    """
    dynamic = all(d is None for d in model.input_shape[1:3])
    if dynamic and model.dtype_policy.name == dtype:
        return model
    if model_kwargs is None:
        if dtype != "float32":
            raise ValueError(f"a {dtype} twin of {model.name} needs its build_fcn8s arguments")
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(dtype)
    try:
        twin = build_fcn8s(weights=None, **model_kwargs)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(model.get_weights())
    return twin
