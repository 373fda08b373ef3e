"""FLOPs of FCN-8s: counted analytically per layer, and cross-checked with TensorFlow's profiler."""

import math
from typing import Dict, Sequence

import keras
import tensorflow as tf


def count_flops(model: keras.Model) -> Dict:
    """FLOPs of one image through a Keras model built for a fixed input size, counted by layer.

    Only convolutions are counted (a multiply-add is 2 FLOPs):
      Conv2D:           2 * H_out * W_out * kh * kw * C_in * C_out
      Conv2DTranspose:  2 * H_in * W_in * kh * kw * C_in * C_out (each input position scatters)
    A training step is the forward pass plus, per convolution, a weight gradient (same FLOPs as
    its forward) when it has trainable weights, and an input gradient (same again) when its input
    depends on some trainable weight. For FCN-8s that is 3x the forward pass less block1_conv1's
    input gradient (it sees the image) and the fixed bilinear layers' weight gradients. Biases,
    activations, pooling, dropout, the loss and Adam's update are left out: they are elementwise,
    about 1% of the forward count at 321x321 (see the profiler cross-check).

    Args:
      model: a functional keras.Model whose layers have static output shapes.
    Returns:
      {"forward": int, "train": int, "layers": [{"name", "type", "forward", "train"}, ...]} per
      image.
    Raises:
      ValueError: a convolution's spatial shape is unknown (the model was built with None sizes).
    """
    needs_input_grad = {}  # layer name -> its output depends on a trainable weight
    layers, forward_total, train_total = [], 0, 0
    for layer in model.layers:
        node = layer._inbound_nodes[0]  # pylint: disable=protected-access
        input_depends = any(needs_input_grad[p.operation.name] for p in node.parent_nodes)
        trainable = bool(layer.trainable and layer.trainable_weights)
        needs_input_grad[layer.name] = input_depends or trainable
        if isinstance(layer, keras.layers.Conv2DTranspose):
            positions = layer.input.shape[1:3]
        elif isinstance(layer, keras.layers.Conv2D):
            positions = layer.output.shape[1:3]
        else:
            continue
        if None in positions:
            raise ValueError(f"count_flops needs a model built for a fixed input size; layer "
                             f"{layer.name} has spatial shape {tuple(positions)}")
        forward = 2 * positions[0] * positions[1] * math.prod(layer.kernel.shape)
        train = forward * (1 + int(trainable) + int(input_depends))
        layers.append({"name": layer.name, "type": type(layer).__name__, "forward": forward,
                       "train": train})
        forward_total += forward
        train_total += train
    return {"forward": forward_total, "train": train_total, "layers": layers}


def profiler_forward_flops(model: keras.Model, input_shape: Sequence[int]) -> Dict[str, int]:
    """FLOPs of the forward graph by tf.compat.v1.profiler: all ops, and Conv2D ops alone."""
    forward = tf.function(lambda images: model(images, training=False), autograph=False)
    graph = forward.get_concrete_function(tf.TensorSpec(input_shape, tf.float32)).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    counts = {}
    for key, regex in (("all", ".*"), ("conv2d", "Conv2D"),
                       ("conv2d_transpose", "Conv2DBackpropInput")):
        options = builder(builder.float_operation()).with_empty_output().build()
        options["account_type_regexes"] = [regex]
        counts[key] = int(tf.compat.v1.profiler.profile(graph=graph, options=options)
                          .total_float_ops)
    return counts


def flops_summary(train: Dict, profiled: Dict[str, int], inference: Dict,
                  image_size: int, inference_size: Sequence[int]) -> Dict:
    """The report's FLOP figures (GFLOP) from count_flops at the training crop and the inference
    size, and profiler_forward_flops at the crop."""
    analytic_conv2d = sum(layer["forward"] for layer in train["layers"]
                          if layer["type"] == "Conv2D")
    top = sorted(train["layers"], key=lambda layer: -layer["train"])[:4]
    return {
        "method": "analytic: per-layer convolution FLOPs (count_flops), training step = forward + "
                  "weight gradients of trainable layers + input gradients of layers whose input "
                  "depends on a trainable weight; elementwise ops excluded",
        "image_size": [image_size, image_size],
        "forward_gflop": train["forward"] / 1e9,
        "train_gflop": train["train"] / 1e9,
        "train_over_forward": train["train"] / train["forward"],
        "top_layers": [{"name": layer["name"], "train_gflop": layer["train"] / 1e9}
                       for layer in top],
        "profiler_forward_gflop": profiled["all"] / 1e9,
        "profiler_conv2d_gflop": profiled["conv2d"] / 1e9,
        "profiler_conv2d_transpose_gflop": profiled["conv2d_transpose"] / 1e9,
        "analytic_conv2d_transpose_gflop": (train["forward"] - analytic_conv2d) / 1e9,
        "profiler_conv2d_over_analytic": profiled["conv2d"] / analytic_conv2d,
        "profiler_all_over_analytic": profiled["all"] / train["forward"],
        "inference_size": list(inference_size),
        "inference_forward_gflop": inference["forward"] / 1e9,
    }
