"""Models for tests whose answers vary from pixel to pixel.

FCN-8s's score layers start at zero (as the Caffe reference), so an untrained net answers class 0
everywhere and hides a wrong restore, a lost weight or a precision error. randomise_scores gives
them random kernels, scaled to undo the skip scales (0.01, 0.0001) so that all three paths count.
"""

import numpy as np

SCORE_GAINS = (("score_fr", 1.0), ("score_pool4", 1e2), ("score_pool3", 1e4))


def randomise_scores(model, seed: int = 0) -> None:
    """Replaces the score layers' kernels of an FCN-8s with N(0, 1) * the skip scale's inverse."""
    rng = np.random.default_rng(seed)
    for name, gain in SCORE_GAINS:
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights(
            [gain * rng.normal(0, 1, kernel.shape).astype(np.float32), bias])
