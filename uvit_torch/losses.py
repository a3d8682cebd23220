"""The two training losses on tensors: the twins of `uvit_numpy.losses`, which autograd
differentiates (`torch.nn.functional`'s own definitions)."""

import torch.nn.functional as F

from uvit_numpy.checks import check_floating
from uvit_numpy.losses import check_cross_entropy_inputs


def mse_loss(input, target):
    """mean((input - target)^2) over every element (U-ViT's noise-prediction loss)."""
    check_floating("mse_loss: input", input)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"mse_loss: expected target shaped like input {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    return F.mse_loss(input, target)


def cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0):
    """Mean cross-entropy over the positions whose target is not `ignore_index`.

    logits: (N, K) or (B, K, *spatial); target: (N,) or (B, *spatial) int64.
    """
    check_cross_entropy_inputs(logits, target, label_smoothing)
    return F.cross_entropy(logits, target, ignore_index=ignore_index,
                           label_smoothing=label_smoothing)
