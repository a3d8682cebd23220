"""Training-trajectory parity: the same steps of training in NumPy and in torch, step by step.

Both sides start from the same weights (float64), see the same batches, noise and masks (drawn
once, by the project's seeded plan, and handed to both), and step with their own optimizer:
`uvit_numpy.optim` on one side, `torch.optim` on the other, each after its own gradient clipping.
After every step the largest relative difference between the two sets of parameters is recorded.
A backward that is wrong by a constant factor barely moves AdamW (its update ignores the scale
of the gradient), which is why SGD runs too.

    diffs, losses = run("uvit", "sgd", steps=30)       # one relative difference per step
"""

import numpy as np
import torch

import uvit_numpy as N
from uvit_numpy import losses as NL
from uvit_numpy import optim
from uvit_numpy.training import class_condition, mask_tokens, step_rng

from .. import uvit as TU
from .. import uvit2d as T2
from .harness import make_pair

UVIT_TINY = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2,
                 num_classes=5)
UVIT2D_TINY = dict(hidden_size=16, block_out_channels=8, in_channels=8, vocab_size=33,
                   codebook_size=32, num_res_blocks=2, num_hidden_layers=1,
                   num_attention_heads=2, block_num_heads=2, intermediate_size=24,
                   cond_embed_dim=6, micro_cond_encode_dim=4, micro_cond_embed_dim=20,
                   encoder_hidden_size=6, use_bias=True)
MICRO = (32.0, 32.0, 0.0, 0.0, 6.0)


def _uvit_task(seed):
    ours, theirs = make_pair(TU.UViT, N.UViT, **UVIT_TINY, seed=seed)
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))

    def batch(step):
        rng = step_rng(seed, step)
        x0 = rng.uniform(-1, 1, (4, 1, 8, 8))
        t = rng.integers(0, 1000, 4)
        y = rng.integers(0, UVIT_TINY["num_classes"], 4)
        noise = rng.standard_normal(x0.shape)
        a = abar[t].reshape(-1, 1, 1, 1)
        return np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise, t, y, noise

    def numpy_loss(model, b):
        xt, t, y, noise = b
        loss, cache = NL.mse_loss(model(xt, t, y), noise, return_cache=True)
        model.backward(NL.mse_loss_backward(1.0, cache))
        return float(loss)

    def torch_loss(model, b):
        xt, t, y, noise = (torch.from_numpy(v) for v in b)
        return torch.nn.functional.mse_loss(model(xt, t, y), noise)
    return ours, theirs, batch, numpy_loss, torch_loss


def _uvit2d_task(seed):
    ours, theirs = make_pair(T2.UVit2DModel, N.UVit2DModel, **UVIT2D_TINY, seed=seed)
    K, mask_id = UVIT2D_TINY["codebook_size"], UVIT2D_TINY["vocab_size"] - 1

    def batch(step):
        rng = step_rng(seed, step)
        tokens = rng.integers(0, K, (4, 4, 4))
        ids, labels = mask_tokens(tokens, rng, mask_id)
        _, pooled = class_condition(rng.integers(0, 6, 4), 5, np.float64)
        # three text tokens, not one: with a single key every query's softmax is exactly 1, the
        # gradients of attn2's to_q and to_k are exactly zero, and AdamW turns their rounding
        # noise (~1e-18) into different updates on the two sides
        ehs = rng.standard_normal((4, 3, 6))
        return ids, ehs, pooled, np.tile(MICRO, (4, 1)), labels

    def numpy_loss(model, b):
        ids, ehs, pooled, micro, labels = b
        loss, cache = NL.cross_entropy(model(ids, ehs, pooled, micro), labels,
                                       label_smoothing=0.1, return_cache=True)
        model.backward(NL.cross_entropy_backward(1.0, cache))
        return float(loss)

    def torch_loss(model, b):
        ids, ehs, pooled, micro, labels = (torch.from_numpy(v) for v in b)
        return torch.nn.functional.cross_entropy(model(ids, ehs, pooled, micro), labels,
                                                 label_smoothing=0.1)
    return ours, theirs, batch, numpy_loss, torch_loss


TASKS = {"uvit": _uvit_task, "uvit2d": _uvit2d_task}


def _optimizers(name, ours, theirs):
    if name == "adamw":
        kw = dict(lr=2e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.03)
        return optim.AdamW(ours, **kw), torch.optim.AdamW(theirs.parameters(), **kw)
    if name == "sgd":
        kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
        return optim.SGD(ours, **kw), torch.optim.SGD(theirs.parameters(), **kw)
    raise ValueError(f"trajectory: expected optimizer 'adamw' or 'sgd', got {name!r}")


def max_relative_difference(ours, theirs):
    """The largest of max|ours - torch| / max|torch| over every parameter."""
    sd = ours.state_dict()
    return max(float(np.max(np.abs(sd[k] - v.detach().numpy())) / np.max(np.abs(v.numpy())))
               for k, v in theirs.state_dict().items())


def run(task="uvit", optimizer="adamw", steps=30, seed=0, max_norm=1.0):
    """`steps` steps of training on both sides. Returns (differences, losses): the largest
    relative parameter difference after each step, and the (NumPy, torch) loss of each step."""
    ours, theirs, batch, numpy_loss, torch_loss = TASKS[task](seed)
    ours.train()
    theirs.train()
    opt_ours, opt_theirs = _optimizers(optimizer, ours, theirs)
    diffs, losses = [], []
    for step in range(1, steps + 1):
        b = batch(step)
        ours.zero_grad()
        loss_ours = numpy_loss(ours, b)
        optim.clip_grad_norm(ours, max_norm)
        opt_ours.step()
        opt_theirs.zero_grad()
        loss_theirs = torch_loss(theirs, b)
        loss_theirs.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
        opt_theirs.step()
        diffs.append(max_relative_difference(ours, theirs))
        losses.append((loss_ours, loss_theirs.item()))
    return diffs, losses
