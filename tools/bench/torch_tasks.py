"""Child task: PyTorch's FCN-8s (torch_fcn8s.py) on the shapes the TensorFlow children measure.

A train step (Adam, masked cross-entropy ignoring 255, one batch of crops) and a forward pass on
one inference-size image, in float32 or under bf16 autocast. This module never imports TensorFlow.
"""

import contextlib
import os
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from torch.nn import functional as F

from fcn8s_tf.class_info import IGNORE_LABEL  # numpy only, no TensorFlow

from bench import torch_fcn8s

PRECISIONS = ("float32", "bf16_autocast")


def environment() -> Dict:
    """torch's version, threads and the CPU kernels it dispatches to."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cuda": torch.cuda.is_available()}


def _autocast(precision: str):
    if precision == "bf16_autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _timed_calls(fn: Callable[[], None], repeats: int, deadline_unix: float) -> List[float]:
    """Seconds of an untimed-first call, then up to `repeats` more before the deadline."""
    times = []
    while len(times) < repeats + 1:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.time() + times[-1] > deadline_unix:
            break
    return times


def _summary(times: List[float]) -> Dict:
    timed = times[1:] or times[:1]
    return {"first_s": times[0], "s": statistics.median(timed), "calls_s": timed,
            "time_source": (f"median of {len(timed)} timed call(s)" if times[1:] else
                            "first call only: an upper bound")}


def _train_step(net: torch_fcn8s.FCN8s, precision: str, batch_size: int, image_size: int,
                num_classes: int, rng: np.random.Generator) -> Callable[[], float]:
    """step() -> loss: forward, masked cross-entropy, backward, Adam, on one fixed batch."""
    images = torch_fcn8s.preprocess(
        rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8))
    labels = rng.integers(0, num_classes, (batch_size, image_size, image_size))
    labels[:, :, ::16] = IGNORE_LABEL  # as tf_tasks' batch: a void column every 16 pixels
    labels = torch.from_numpy(labels)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5,
                                 eps=1e-8)  # fcn8s_tf.train's Adam

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            logits = net(images)
        # Mean over the non-ignored pixels: fcn8s_tf.train's loss on one replica.
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def torch_step_and_forward(progress, precision: str, image_size: int, batch_size: int,
                           inference_size: List[int], fc_units: int, num_classes: int,
                           repeats: int, deadline_unix: float, seed: int = 0) -> Dict:
    """Train step and forward pass seconds of torch_fcn8s.FCN8s in one precision.

    Args:
      precision: "float32" or "bf16_autocast" (torch.autocast on the CPU, bfloat16).
      image_size, batch_size: the training crop and batch, as the TensorFlow train task's.
      inference_size: (height, width) of the forward pass, as the TensorFlow forward task's.
      repeats: timed calls after an untimed first one; fewer if the deadline comes first.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    # As many threads as CPUs this process may use, as TensorFlow takes (torch's default is
    # the physical cores, which differs where the CPUs are hyperthreads).
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    progress(environment=environment(), precision=precision)
    net = torch_fcn8s.FCN8s(num_classes=num_classes, fc_units=fc_units).train()
    step = _train_step(net, precision, batch_size, image_size, num_classes, rng)
    train = _summary(_timed_calls(step, repeats, deadline_unix))
    progress(train=dict(train, batch_size=batch_size, crop=image_size))

    net.eval()
    height, width = inference_size
    image = torch_fcn8s.preprocess(rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8))

    def forward():
        with torch.inference_mode(), _autocast(precision):
            logits = net(image)
        if tuple(logits.shape) != (1, num_classes, height, width):
            raise RuntimeError(f"logits of shape {tuple(logits.shape)} for a {height}x{width} "
                               "image")

    forward_times = _timed_calls(forward, repeats, deadline_unix)
    return {"precision": precision, "train": dict(train, batch_size=batch_size, crop=image_size),
            "forward": dict(_summary(forward_times), image_size=[height, width])}
