"""On-accelerator augmentation: random scale, flip and crop/pad as one projective transform.

Runs inside the training step, per replica (docs/DESIGN.md: the host only decodes and resizes). Each
sample gets a scale s, a horizontal flip and a crop/pad offset, composed into ONE transform that
`tf.raw_ops.ImageProjectiveTransformV3` applies once to the image batch (bilinear) and once to the
label batch (nearest), so images and labels cannot drift apart by a pixel.

Geometry (the convention the tests check). The op samples input pixel centres at integer
coordinates and maps OUTPUT pixel (x, y) to INPUT point (a0*x + a1*y + a2, b0*x + b1*y + b2).
Pixel i covers [i, i + 1) in edge coordinates, its centre is i + 0.5 (half-pixel centres, as
tf.image.resize). Scaling the source by s and cropping the scaled picture at offset (oy, ox):

    output centre x + 0.5  ->  scaled edge coordinate x + 0.5 + ox
                           ->  source edge coordinate (x + 0.5 + ox) / s
                           ->  source index x_in = (x + 0.5 + ox) / s - 0.5

A horizontal flip of the source then maps x_in to (W - 1) - x_in. A negative offset places the
scaled picture inside the crop (padding above/left of it). With s = 1, no flip and zero offset the
transform is exactly the identity (the bilinear weights are exactly 1 and 0). Labels use the op's
NEAREST mode, which rounds half away from zero; so output label pixel x takes source pixel
floor((x + 0.5 + ox) / s), i.e. a source pixel lands exactly on the output pixels whose centres fall
inside its scaled footprint.

Fill: the op takes one scalar fill value, but the mean colour differs per channel. Images are
therefore mean-subtracted (pixels.preprocess, the one place that happens) BEFORE the transform and
filled with 0. That equals "fill with the mean colour, then subtract": a bilinear blend is an affine
combination, so subtracting the mean commutes with it, fill included.

Randomness comes from `seed` (stateless ops: the same seed gives the same augmentation on every
call; the trainer passes [seed, step * 1024 + replica], so a fixed --seed replays the same
augmentations and a resumed run continues the stream without saved state), or `rng` (a
tf.random.Generator, advanced by each call), or neither (TF's global random state; not
reproducible).

Not for jit_compile: ImageProjectiveTransformV3 has CPU and GPU kernels but no XLA kernel, so call
augment_batch outside any `tf.function(jit_compile=True)`; compile only the model step.
"""

from typing import Optional, Sequence, Tuple, Union

import tensorflow as tf

from fcn8s_tf import pixels
from fcn8s_tf.class_info import IGNORE_LABEL

DEFAULT_CROP_SIZE = (321, 321)
DEFAULT_SCALE_RANGE = (0.5, 1.3)
DEFAULT_FLIP_PROB = 0.5

SeedLike = Union[int, Sequence[int], tf.Tensor]


def _projective_transform(images: tf.Tensor, transforms: tf.Tensor, crop_size: Tuple[int, int],
                          interpolation: str, fill_value: float) -> tf.Tensor:
    """ImageProjectiveTransformV3 with constant fill; returns (B, ch, cw, C) in images' dtype."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant(crop_size, tf.int32),
        fill_value=tf.constant(fill_value, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    out.set_shape([images.shape[0], crop_size[0], crop_size[1], images.shape[-1]])
    return out


def transforms_for(scales: tf.Tensor, flips: tf.Tensor, offsets: tf.Tensor,
                   image_size: tf.Tensor) -> tf.Tensor:
    """Builds the per-sample output->input transforms (see the module docstring).

    Args:
      scales: (B,) float, scale factor s > 0 applied to the source.
      flips: (B,) bool, flip the source horizontally.
      offsets: (B, 2) float (oy, ox), top-left corner of the crop in the scaled picture's pixels;
        negative values pad (the picture starts -oy rows below the crop's top).
      image_size: (2,) int or float (H, W) of the source images.
    Returns:
      (B, 8) float32 transforms for tf.raw_ops.ImageProjectiveTransformV3.
    """
    scales = tf.cast(scales, tf.float32)
    offsets = tf.cast(offsets, tf.float32)
    width = tf.cast(image_size[1], tf.float32)
    inv = 1.0 / scales
    y_shift = (offsets[:, 0] + 0.5) * inv - 0.5
    x_shift = (offsets[:, 1] + 0.5) * inv - 0.5
    flips = tf.cast(flips, tf.bool)
    a0 = tf.where(flips, -inv, inv)
    a2 = tf.where(flips, (width - 1.0) - x_shift, x_shift)
    zeros = tf.zeros_like(inv)
    return tf.stack([a0, zeros, a2, zeros, inv, y_shift, zeros, zeros], axis=1)


def transform_batch(images: tf.Tensor, labels: tf.Tensor, scales: tf.Tensor, flips: tf.Tensor,
                    offsets: tf.Tensor, crop_size: Tuple[int, int] = DEFAULT_CROP_SIZE,
                    dtype: tf.DType = tf.float32) -> Tuple[tf.Tensor, tf.Tensor]:
    """Scales, flips and crops/pads a batch with explicit per-sample parameters.

    The deterministic half of augment_batch, exposed so tests (and callers with their own sampling)
    can set the geometry.

    Args:
      images: (B, H, W, 3) uint8 or float RGB on the 0-255 scale.
      labels: (B, H, W, 1) integer class indices (uint8 or int32), IGNORE_LABEL = void.
      scales: (B,) float scale factors.
      flips: (B,) bool horizontal flips.
      offsets: (B, 2) float (oy, ox) crop corners in scaled-picture pixels (negative: pad).
      crop_size: (ch, cw) output size.
      dtype: output image dtype (e.g. a mixed-precision compute dtype).
    Returns:
      images: (B, ch, cw, 3) `dtype`, BGR minus pixels.BGR_MEAN; 0 where the crop leaves the source.
      labels: (B, ch, cw, 1) labels' dtype; IGNORE_LABEL where the crop leaves the source.
    """
    images = tf.convert_to_tensor(images)
    labels = tf.convert_to_tensor(labels)
    if images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    if labels.shape.rank != 4 or labels.shape[-1] != 1:
        raise ValueError(f"labels must be (B, H, W, 1), got shape {labels.shape}")
    if labels.dtype not in (tf.uint8, tf.int32, tf.int64):
        raise ValueError(f"labels must be uint8, int32 or int64, got {labels.dtype.name}")
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    transforms = transforms_for(scales, flips, offsets, tf.shape(images)[1:3])
    # Mean subtraction before the transform so that fill 0 is the mean colour (module docstring).
    centred = pixels.preprocess(images, tf.float32)
    out_images = _projective_transform(centred, transforms, crop_size, "BILINEAR", 0.0)
    # NEAREST copies input values, so labels keep exactly their values; transformed in their own
    # integer dtype (uint8 and int32 have CPU and GPU kernels), no float round trip.
    out_labels = _projective_transform(labels, transforms, crop_size, "NEAREST",
                                       float(IGNORE_LABEL))
    return tf.cast(out_images, dtype), out_labels


def _uniform(shape, seed: Optional[SeedLike], rng: Optional[tf.random.Generator]) -> tf.Tensor:
    """U[0, 1) float32 from rng, a stateless seed, or the global random state."""
    if rng is not None and seed is not None:
        raise ValueError("pass either seed or rng to augment_batch, not both")
    if rng is not None:
        return rng.uniform(shape, dtype=tf.float32)
    if seed is not None:
        if isinstance(seed, int):
            seed = [seed, 0]
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
    return tf.random.uniform(shape, dtype=tf.float32)


def sample_params(batch_size, image_size, crop_size: Tuple[int, int] = DEFAULT_CROP_SIZE,
                  scale_range: Tuple[float, float] = DEFAULT_SCALE_RANGE,
                  flip_prob: float = DEFAULT_FLIP_PROB,
                  seed: Optional[SeedLike] = None,
                  rng: Optional[tf.random.Generator] = None):
    """Draws per-sample (scales, flips, offsets) for transform_batch.

    Scale is uniform in scale_range. The offset is uniform over every placement that keeps the crop
    inside the scaled picture (picture larger than the crop) or the picture inside the crop (picture
    smaller; the rest is padding); per axis, offset = u * (scaled size - crop size), u ~ U[0, 1),
    covers both cases.

    Returns:
      scales (B,) float32, flips (B,) bool, offsets (B, 2) float32 (oy, ox).
    """
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0.0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
    u = _uniform(tf.stack([batch_size, 4]), seed, rng)
    scales = lo + (hi - lo) * u[:, 0]
    flips = u[:, 1] < flip_prob
    scaled_size = scales[:, None] * tf.cast(image_size, tf.float32)[None, :]
    offsets = u[:, 2:4] * (scaled_size - tf.constant(crop_size, tf.float32)[None, :])
    return scales, flips, offsets


def augment_batch(images: tf.Tensor, labels: tf.Tensor,
                  crop_size: Tuple[int, int] = DEFAULT_CROP_SIZE,
                  scale_range: Tuple[float, float] = DEFAULT_SCALE_RANGE,
                  flip_prob: float = DEFAULT_FLIP_PROB, seed: Optional[SeedLike] = None,
                  rng: Optional[tf.random.Generator] = None,
                  dtype: tf.DType = tf.float32) -> Tuple[tf.Tensor, tf.Tensor]:
    """Random scale + horizontal flip + crop/pad, then RGB->BGR and mean subtraction.

    Call inside the replica step, outside any jit_compile'd function (no XLA kernel for the op).

    Args:
      images: (B, H, W, 3) uint8 or float RGB, 0-255 (the input pipeline gives uint8).
      labels: (B, H, W, 1) uint8 or int32 class indices in {0..20, 255}.
      crop_size: (ch, cw) output size.
      scale_range: (lo, hi) of the uniform per-sample scale.
      flip_prob: probability of a horizontal flip per sample.
      seed: int or shape-(2,) int tensor for stateless sampling: the same seed gives the same
        augmentation each call (pass e.g. [seed, step] to vary it). Exclusive with rng.
      rng: a tf.random.Generator to draw from (advances its state). Exclusive with seed.
      dtype: output image dtype (the compute dtype under mixed precision).
    Returns:
      images: (B, ch, cw, 3) `dtype`, BGR minus pixels.BGR_MEAN, 0 in the padding.
      labels: (B, ch, cw, 1) labels' dtype, values of the input labels plus IGNORE_LABEL (padding).
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    scales, flips, offsets = sample_params(shape[0], shape[1:3], crop_size, scale_range, flip_prob,
                                           seed=seed, rng=rng)
    return transform_batch(images, labels, scales, flips, offsets, crop_size, dtype)
