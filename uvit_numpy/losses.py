"""The training losses, forward and backward, as `torch.nn.functional` defines them.

* `mse_loss`: U-ViT's noise-prediction loss, the mean of (prediction - target)^2 over every element.
* `cross_entropy`: aMUSEd's masked-token loss over logits (B, K, H, W) (or (N, K)), targets -100
  (`ignore_index`) where nothing is to be predicted, optional label smoothing.
* `vq_autoencoder_loss`: a VQ-GAN's loss without the GAN, on the two outputs of
  `VQModel(x, return_dict=False)`: the reconstruction error (L2 or L1) plus a weight times the
  quantiser's own loss (its codebook and commitment terms).

Each forward can hand back what its backward needs (`return_cache=True`), and each backward takes
the upstream gradient of the scalar loss (1.0 when the loss is what is minimised) and that cache.
A backward returns the gradient of each of the model's outputs: one array, or a tuple of them in
the order the model returns them (the VQ autoencoder's: the image and the quantiser's loss).
"""

import numpy as np

from .checks import check_floating, check_integer


def mse_loss(input, target, return_cache=False):
    """mean((input - target)^2) over every element, a scalar of the input's dtype.

    input, target: floating arrays of the same shape.
    """
    check_floating("mse_loss: input", input)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"mse_loss: expected target shaped like input {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    diff = input - target
    loss = np.mean(diff * diff)
    return (loss, diff) if return_cache else loss


def mse_loss_backward(dloss, cache):
    """d mean(diff^2) / d input = 2 diff / numel, times the upstream dloss. Returns d input."""
    diff = cache
    return (2.0 * float(dloss) / diff.size) * diff


def log_softmax(x, axis=-1):
    """log softmax, stably: (x - max) - log(sum(exp(x - max)))."""
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _class_last(logits):
    """(B, K, *spatial) -> (B * prod(spatial), K), rows in row-major order (as the targets)."""
    if logits.ndim == 2:
        return logits
    K = logits.shape[1]
    moved = np.moveaxis(logits, 1, -1)                    # (B, K, H, W) -> (B, H, W, K)
    return moved.reshape(-1, K)                           # (B*H*W, K)


def check_cross_entropy_inputs(logits, target, label_smoothing):
    """Floating logits (N, K) or (B, K, *spatial), integer targets shaped like the logits without
    their class axis, smoothing in [0, 1] (both packages check with this)."""
    check_floating("cross_entropy: logits", logits)
    check_integer("cross_entropy: target", target)
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"cross_entropy: expected target of shape {expected} for logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: expected label_smoothing in [0, 1], got "
                         f"{label_smoothing}")


def cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, return_cache=False):
    """Mean cross-entropy over the positions whose target is not `ignore_index`.

    logits: (N, K) or (B, K, *spatial) floating; target: (N,) or (B, *spatial) ints in [0, K) or
    ignore_index. With p = softmax(logits) over K and smoothing e, each counted position adds
        (1 - e) (-log p[target]) + e mean_k(-log p[k]),
    and the sum is divided by the number of counted positions (torch's reduction="mean").
    A batch in which every target is ignored gives nan, as torch does.
    """
    check_cross_entropy_inputs(logits, target, label_smoothing)
    rows = _class_last(logits)                            # (N, K)
    t = target.reshape(-1)                                # (N,)
    K = rows.shape[1]
    valid = t != ignore_index                             # (N,) bool
    bad = valid & ((t < 0) | (t >= K))
    if bad.any():
        raise ValueError(f"cross_entropy: expected targets in [0, {K}) or {ignore_index}, got "
                         f"{int(t[bad][0])}")
    logp = log_softmax(rows, axis=-1)                     # (N, K)
    safe_t = np.where(valid, t, 0)
    nll = -logp[np.arange(len(t)), safe_t]                # (N,)
    smooth = -logp.mean(axis=-1)                          # (N,): mean over the K classes
    per_row = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    count = int(valid.sum())
    loss = np.sum(np.where(valid, per_row, 0.0)) / count if count else np.float64(np.nan)
    loss = np.asarray(loss, dtype=logits.dtype)
    cache = (logp, safe_t, valid, count, label_smoothing, logits.shape)
    return (loss, cache) if return_cache else loss


def cross_entropy_backward(dloss, cache):
    """Gradient of `cross_entropy` w.r.t. the logits, shaped like them.

    On a counted row: (softmax - q) / count, q = (1 - e) onehot(target) + e / K; ignored rows get 0.
    """
    logp, safe_t, valid, count, e, shape = cache
    N, K = logp.shape
    q = np.full((N, K), e / K, dtype=logp.dtype)
    q[np.arange(N), safe_t] += 1.0 - e
    scale = float(dloss) / count if count else np.nan
    g = (np.exp(logp) - q) * (valid[:, None] * scale)      # (N, K)
    if len(shape) == 2:
        return g
    B, spatial = shape[0], shape[2:]
    g = g.reshape((B,) + tuple(spatial) + (K,))            # (B*H*W, K) -> (B, H, W, K)
    return np.moveaxis(g, -1, 1)                           # (B, H, W, K) -> (B, K, H, W)


def l1_loss(input, target, return_cache=False):
    """mean(|input - target|) over every element, a scalar of the input's dtype.

    input, target: floating arrays of the same shape.
    """
    check_floating("l1_loss: input", input)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"l1_loss: expected target shaped like input {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    diff = input - target
    loss = np.mean(np.abs(diff))
    return (loss, diff) if return_cache else loss


def l1_loss_backward(dloss, cache):
    """d mean|diff| / d input = sign(diff) / numel (0 where diff = 0, as torch), times dloss."""
    diff = cache
    return (float(dloss) / diff.size) * np.sign(diff)


RECONSTRUCTION_LOSSES = {"l2": (mse_loss, mse_loss_backward), "l1": (l1_loss, l1_loss_backward)}


def vq_autoencoder_loss(outputs, target, reconstruction="l2", quantizer_weight=1.0,
                        return_cache=False):
    """A VQ autoencoder's training loss: reconstruction + quantizer_weight * quantiser loss.

    outputs: (sample (B, C, H, W), commit_loss ()), what `VQModel(x, return_dict=False)` returns;
    target: (B, C, H, W), the images it was given. `reconstruction`: "l2" (mean squared error) or
    "l1" (mean absolute error), over every element. commit_loss is diffusers' `VectorQuantizer`
    loss (`functional.vq_loss`: a codebook and a commitment term), so
        loss = rec(sample, target) + quantizer_weight * commit_loss.
    Returns a 0-d array of the sample's dtype.
    """
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"vq_autoencoder_loss: expected reconstruction in "
                         f"{sorted(RECONSTRUCTION_LOSSES)}, got {reconstruction!r}")
    if not isinstance(outputs, tuple) or len(outputs) != 2:
        raise TypeError("vq_autoencoder_loss: expected outputs = (sample, commit_loss), what "
                        "VQModel(x, return_dict=False) returns")
    sample, commit_loss = outputs
    rec_fn, _ = RECONSTRUCTION_LOSSES[reconstruction]
    rec, rec_cache = rec_fn(sample, target, return_cache=True)
    loss = np.asarray(rec + quantizer_weight * commit_loss, dtype=sample.dtype)
    return (loss, (reconstruction, rec_cache, quantizer_weight)) if return_cache else loss


def vq_autoencoder_loss_backward(dloss, cache):
    """Gradients of `vq_autoencoder_loss` w.r.t. its two inputs: (d sample (B, C, H, W), d
    commit_loss, a number): the reconstruction's backward, and quantizer_weight * dloss."""
    reconstruction, rec_cache, quantizer_weight = cache
    _, rec_backward = RECONSTRUCTION_LOSSES[reconstruction]
    return rec_backward(dloss, rec_cache), quantizer_weight * float(dloss)
