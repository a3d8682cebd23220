"""The training losses on tensors: the twins of `uvit_numpy.losses`, which autograd
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


def l1_loss(input, target):
    """mean(|input - target|) over every element."""
    check_floating("l1_loss: input", input)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"l1_loss: expected target shaped like input {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    return F.l1_loss(input, target)


RECONSTRUCTION_LOSSES = {"l2": mse_loss, "l1": l1_loss}


def vq_autoencoder_loss(outputs, target, reconstruction="l2", quantizer_weight=1.0):
    """rec(sample, target) + quantizer_weight * commit_loss, on outputs = (sample, commit_loss)
    of `VQModel(x, return_dict=False)` (see `uvit_numpy.losses.vq_autoencoder_loss`)."""
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"vq_autoencoder_loss: expected reconstruction in "
                         f"{sorted(RECONSTRUCTION_LOSSES)}, got {reconstruction!r}")
    if not isinstance(outputs, tuple) or len(outputs) != 2:
        raise TypeError("vq_autoencoder_loss: expected outputs = (sample, commit_loss), what "
                        "VQModel(x, return_dict=False) returns")
    sample, commit_loss = outputs
    return RECONSTRUCTION_LOSSES[reconstruction](sample, target) + quantizer_weight * commit_loss
