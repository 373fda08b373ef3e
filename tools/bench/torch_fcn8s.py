"""FCN-8s ("at once") in PyTorch, layer for layer the Caffe net, to measure the project against.

Written for the benchmark only; PyTorch is never a dependency of fcn8s_tf
(requirements/bench-torch.txt installs it for `make bench`). The net is Caffe's voc-fcn8s-atonce,
as fcn8s_tf.model.fcn8s builds it in Keras:

    conv1_1 pads the input by 100; 3x3 convs (pad 1) + ReLU; 2x2/2 max pools rounding up
    (ceil_mode) -> fc6 7x7 valid + ReLU + dropout -> fc7 1x1 + ReLU + dropout -> score_fr
    -> upscore2 (4x4/2) + crop(score_pool4(pool4 * 0.01), 5) -> upscore_pool4 (4x4/2)
    + crop(score_pool3(pool3 * 0.0001), 9) -> upscore8 (16x16/8) -> crop 31 to the input size

The transposed convolutions have no bias, start bilinear and stay fixed; the score layers start at
zero. The constants are repeated here rather than imported, because fcn8s_tf.model.fcn8s imports
TensorFlow, which a PyTorch measurement must not load; tests/test_benchmark.py proves the two nets
are the same by copying the Keras weights into this one and comparing logits.
"""

from typing import Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# fcn8s_tf.model.fcn8s's constants (the Caffe net's).
BGR_MEAN = (104.00699, 116.66877, 122.67892)
INPUT_PAD = 100
POOL4_SCALE, POOL3_SCALE = 0.01, 0.0001
POOL4_CROP_OFFSET, POOL3_CROP_OFFSET, FINAL_CROP_OFFSET = 5, 9, 31
# VGG16's conv widths per block; the layers are conv<block>_<i> as in Caffe.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def bilinear_kernel(size: int, channels: int) -> torch.Tensor:
    """(C, C, k, k) ConvTranspose2d weight, the FCN reference's `upsample_filt` per class."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    filt_1d = 1.0 - np.abs(np.arange(size) - center) / factor
    weight = np.zeros((channels, channels, size, size), np.float32)
    weight[range(channels), range(channels)] = np.outer(filt_1d, filt_1d)
    return torch.from_numpy(weight)


def _upsampling(num_classes: int, size: int, stride: int) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(num_classes, num_classes, size, stride=stride, bias=False)
    layer.weight.data.copy_(bilinear_kernel(size, num_classes))
    layer.weight.requires_grad_(False)  # fixed, as in the reference
    return layer


def _score(in_channels: int, num_classes: int) -> nn.Conv2d:
    layer = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _crop(x: torch.Tensor, ref: torch.Tensor, offset: int) -> torch.Tensor:
    """Caffe Crop: the window of ref's spatial size starting at (offset, offset)."""
    return x[:, :, offset:offset + ref.shape[2], offset:offset + ref.shape[3]]


class FCN8s(nn.Module):
    """(B, 3, H, W) BGR mean-subtracted images -> (B, num_classes, H, W) float32 logits."""

    def __init__(self, num_classes: int = 21, fc_units: int = 4096, dropout_rate: float = 0.5,
                 skip_scales: Tuple[float, float] = (POOL4_SCALE, POOL3_SCALE)):
        super().__init__()
        self.skip_scales = tuple(skip_scales)
        channels = 3
        for block, widths in enumerate(VGG16_BLOCKS, 1):
            for i, width in enumerate(widths, 1):
                padding = INPUT_PAD if (block, i) == (1, 1) else 1
                setattr(self, f"conv{block}_{i}", nn.Conv2d(channels, width, 3, padding=padding))
                channels = width
        self.fc6 = nn.Conv2d(512, fc_units, 7)
        self.drop6 = nn.Dropout(dropout_rate)
        self.fc7 = nn.Conv2d(fc_units, fc_units, 1)
        self.drop7 = nn.Dropout(dropout_rate)
        self.score_fr = _score(fc_units, num_classes)
        self.upscore2 = _upsampling(num_classes, 4, 2)
        self.score_pool4 = _score(512, num_classes)
        self.upscore_pool4 = _upsampling(num_classes, 4, 2)
        self.score_pool3 = _score(256, num_classes)
        self.upscore8 = _upsampling(num_classes, 16, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, pools = images, []
        for block, widths in enumerate(VGG16_BLOCKS, 1):
            for i in range(1, len(widths) + 1):
                x = F.relu(getattr(self, f"conv{block}_{i}")(x))
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)  # rounds up, as Caffe's pooling
            pools.append(x)
        pool3, pool4, pool5 = pools[2:]
        x = self.drop7(F.relu(self.fc7(self.drop6(F.relu(self.fc6(pool5))))))
        upscore2 = self.upscore2(self.score_fr(x))
        score_pool4 = self.score_pool4(pool4 * self.skip_scales[0])
        upscore_pool4 = self.upscore_pool4(
            upscore2 + _crop(score_pool4, upscore2, POOL4_CROP_OFFSET))
        score_pool3 = self.score_pool3(pool3 * self.skip_scales[1])
        upscore8 = self.upscore8(
            upscore_pool4 + _crop(score_pool3, upscore_pool4, POOL3_CROP_OFFSET))
        return _crop(upscore8, images, FINAL_CROP_OFFSET).float()


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) RGB 0-255 -> (B, 3, H, W) float32 BGR minus BGR_MEAN, as pixels.preprocess."""
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))


def keras_layer_name(name: str) -> str:
    """This net's layer name -> fcn8s_tf.model.fcn8s's: conv<b>_<i> -> block<b>_conv<i>, others
    same."""
    if name.startswith("conv"):
        block, i = name[4:].split("_")
        return f"block{block}_conv{i}"
    return name


@torch.no_grad()
def copy_keras_weights(net: FCN8s, layer_weights) -> None:
    """Copies an fcn8s_tf.model.fcn8s FCN-8s's weights into net, in place.

    Args:
      net: an FCN8s of the same num_classes and fc_units.
      layer_weights: Keras layer name -> that layer's get_weights() (numpy arrays), e.g.
        `lambda name: keras_model.get_layer(name).get_weights()`.
    """
    for name, module in net.named_children():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        weights: Sequence[np.ndarray] = layer_weights(keras_layer_name(name))
        # Keras: Conv2D (kh, kw, in, out), Conv2DTranspose (kh, kw, out, in). PyTorch: Conv2d
        # (out, in, kh, kw), ConvTranspose2d (in, out, kh, kw). Both are the same transpose.
        module.weight.copy_(torch.from_numpy(np.transpose(weights[0], (3, 2, 0, 1)).copy()))
        if module.bias is not None:
            module.bias.copy_(torch.from_numpy(weights[1]))
