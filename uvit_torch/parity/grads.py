"""Gradient parity: every NumPy backward pass against torch autograd on the port.

    python -m uvit_torch.parity --grads              # every function, layer, block and model
    python -m uvit_torch.parity --grads --only UViT

A case runs the NumPy forward in training mode, draws a random upstream gradient dy shaped like the
output (never ones: an all-ones dy hides a LayerNorm term), calls the NumPy `backward(dy)`, and
compares with torch: the same inputs and weights, `(out * dy).sum().backward()`. Weights are the
forward cases' (random, every constant-initialised parameter perturbed, so no term is multiplied
by zero); embedding ids repeat, so the scatter-add is exercised.

Errors are relative to the size of each gradient: max |ours - torch| / max |torch|; where a
gradient is exactly zero (to_k's bias: softmax does not see a shift of all keys; q and k with a
single text token) and so below 1e-4 of the case's largest gradient, relative to that largest
gradient instead. Tolerances:
`GRAD_TOLERANCE`, 1e-10 in float64 and 1e-4 in float32.

Function cases wrap a NumPy forward that returns `(out, cache)` and its `*_backward`; module cases
are the forward report's module cases (`Case.grad_inputs` says which inputs take a gradient:
images, text and pooled features, never ids, labels, timesteps or micro-conditions).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as TF

import uvit_numpy.functional as NF
import uvit_numpy.losses as NLoss
from uvit_numpy.module import Module

from .. import functional as UF
from .case import Case, Function, _rng, function_case  # noqa: F401 (re-exported)
from .harness import to_numpy

GRAD_TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
ZERO_FLOOR = 1e-4          # a gradient below this fraction of the case's largest is "zero"


@dataclass
class GradRow:
    name: str
    dtype: str
    batch: int
    worst_input: str
    input_rel: float
    worst_param: str
    param_rel: float
    passed: bool
    detail: str = field(default="")


def _is_float(x):
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _relative(ours, theirs, largest):
    """max |ours - theirs| over max |theirs|, or over `largest` (the case's largest gradient) where
    theirs is below ZERO_FLOOR of it: there the exact gradient is zero and both sides hold only
    rounding noise, whose size is set by the gradients it came from."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        return np.inf
    own = float(np.max(np.abs(b))) if b.size else 0.0
    scale = own if own >= ZERO_FLOOR * largest else largest
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not np.isfinite(diff):
        return np.inf
    return diff / scale if scale > 0 else (0.0 if diff == 0 else np.inf)


def run_grad_case(case, dtype, batch):
    """Build the case, differentiate both sides with the same dy, compare every gradient."""
    dtype = np.dtype(dtype)
    ours, theirs, inputs = case.build(dtype, batch)
    if isinstance(ours, Module) != case.module:
        raise TypeError(f"gradient case {case.name!r}: module={case.module}, but its NumPy "
                        f"side is a {type(ours).__name__}")
    wrt = case.grad_inputs
    if wrt is None:
        wrt = tuple(i for i, x in enumerate(inputs) if _is_float(x))
    if isinstance(ours, Module):
        ours.train()
        ours.zero_grad()
    out = ours(*inputs)
    dy = _rng(f"upstream/{case.name}", batch).standard_normal(np.shape(out)).astype(dtype)
    grads_in = ours.backward(dy)
    grads_in = grads_in if isinstance(grads_in, tuple) else (grads_in,)
    ours_grads = {f"d input {i}": g for i, g in zip(wrt, grads_in)}
    if isinstance(ours, Module):
        ours_grads.update(ours.grads())

    tin = [torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(i in wrt)
           if isinstance(x, np.ndarray) else x for i, x in enumerate(inputs)]
    if isinstance(theirs, torch.nn.Module):
        theirs.train()
        theirs.zero_grad(set_to_none=True)
    (theirs(*tin) * torch.from_numpy(dy)).sum().backward()
    theirs_grads = {f"d input {i}": to_numpy(tin[i].grad) for i in wrt}
    if isinstance(theirs, torch.nn.Module):
        theirs_grads.update({k: (np.zeros(tuple(p.shape)) if p.grad is None else to_numpy(p.grad))
                             for k, p in theirs.named_parameters(remove_duplicate=False)})
    if set(ours_grads) != set(theirs_grads):
        missing = sorted(set(theirs_grads) - set(ours_grads))
        extra = sorted(set(ours_grads) - set(theirs_grads))
        return GradRow(case.name, dtype.name, batch, "-", np.inf, "-", np.inf, False,
                       f"{case.name}: gradients differ in names: missing {missing}, "
                       f"unexpected {extra}")
    largest = max((float(np.max(np.abs(g))) for g in theirs_grads.values() if g.size),
                  default=0.0)
    errors = {k: _relative(ours_grads[k], theirs_grads[k], largest)
              for k in theirs_grads}
    inputs_err = {k: e for k, e in errors.items() if k.startswith("d input")}
    params_err = {k: e for k, e in errors.items() if not k.startswith("d input")}
    worst_in = max(inputs_err, key=inputs_err.get) if inputs_err else "-"
    worst_p = max(params_err, key=params_err.get) if params_err else "-"
    tol = GRAD_TOLERANCE[dtype]
    worst = max(errors.values()) if errors else 0.0
    passed = bool(np.isfinite(worst) and worst <= tol)
    detail = (f"{case.name}: worst gradient {max(errors, key=errors.get)} rel error {worst:.3e}"
              if errors else case.name)
    return GradRow(case.name, dtype.name, batch, worst_in, inputs_err.get(worst_in, 0.0), worst_p,
                   params_err.get(worst_p, 0.0), passed, detail)


def format_grad_table(rows):
    """The gradient report within 100 columns: the worst input gradient ("in 0" is the forward's
    first input) and the worst parameter gradient (the end of its name) of every case."""
    w = min(42, max([20] + [len(r.name) for r in rows]))
    head = (f"{'case':<{w}} {'dt':<3} {'B':>1} {'input':<5} {'rel':>7} {'parameter':<24} "
            f"{'rel':>7} {'ok':<4}")
    lines = [head, "-" * len(head)]
    for r in rows:
        label = r.worst_input.replace("d input ", "in ")
        lines.append(f"{r.name[:w]:<{w}} {r.dtype.replace('float', 'f'):<3} {r.batch:>1} "
                     f"{label:<5} {r.input_rel:>7.1e} {r.worst_param[-24:]:<24} "
                     f"{r.param_rel:>7.1e} {'PASS' if r.passed else 'FAIL':<4}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Function cases: the functional forward/backward pairs against torch's functions
# --------------------------------------------------------------------------------------------------
def _embedding_case():
    name = "embedding, repeated ids"

    def build(dtype, batch):
        rng = _rng(name, batch)
        ids = rng.integers(0, 5, size=(batch, 12))                # 12 B ids in 5 rows: repeats
        weight = rng.standard_normal((5, 7)).astype(dtype)
        return (Function(lambda i, w: NF.embedding(i, w, return_cache=True),
                         NF.embedding_backward),
                lambda i, w: TF.embedding(i, w), (ids, weight))
    return Case(name, build, grad_inputs=(1,), module=False)


def _cross_entropy_case(smoothing):
    name = f"cross_entropy ignore -100, smoothing {smoothing}"

    def build(dtype, batch):
        rng = _rng(name, batch)
        logits = (3 * rng.standard_normal((batch, 11, 3, 4))).astype(dtype)
        target = rng.integers(0, 11, size=(batch, 3, 4))
        target[rng.random(target.shape) < 0.4] = -100
        target.reshape(-1)[0] = 2                                 # at least one counted position
        return (Function(lambda lg, t: NLoss.cross_entropy(lg, t, label_smoothing=smoothing,
                                                           return_cache=True),
                         NLoss.cross_entropy_backward),
                lambda lg, t: TF.cross_entropy(lg, t, label_smoothing=smoothing),
                (logits, target))
    return Case(name, build, grad_inputs=(0,), module=False)


def _sdpa_backward(dy, cache):
    return NF.scaled_dot_product_attention_backward(dy, cache)


def function_cases():
    """The functional forward/backward pairs of both models."""
    nograd = dict(return_cache=True)
    return [
        function_case("linear (B, 5, 33) -> 17", lambda x, w, b: NF.linear(x, w, b, **nograd),
                      NF.linear_backward, TF.linear, [(5, 33), (None, 17, 33), (None, 17)]),
        function_case("linear 4-d input, no bias", lambda x, w: NF.linear(x, w, **nograd),
                      lambda dy, c: NF.linear_backward(dy, c)[:2], TF.linear,
                      [(3, 4, 9), (None, 5, 9)]),
        _embedding_case(),
        function_case("layer_norm", lambda x, w, b: NF.layer_norm(x, w, b, **nograd),
                      NF.layer_norm_backward,
                      lambda x, w, b: TF.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
                      [(5, 33), (None, 33), (None, 33)], scale=2.0),
        function_case("rms_norm with weight", lambda x, w: NF.rms_norm(x, w, **nograd),
                      lambda dy, c: NF.rms_norm_backward(dy, c)[:2],
                      lambda x, w: TF.rms_norm(x, (x.shape[-1],), w, 1e-6),
                      [(5, 33), (None, 33)]),
        function_case("rms_norm without weight", lambda x: NF.rms_norm(x, **nograd),
                      lambda dy, c: NF.rms_norm_backward(dy, c)[0],
                      lambda x: TF.rms_norm(x, (x.shape[-1],), None, 1e-6), [(5, 33)]),
        function_case("global_response_norm", lambda x, g, b: NF.global_response_norm(
                          x, g, b, **nograd), NF.global_response_norm_backward,
                      UF.global_response_norm, [(5, 7, 13), (None, 1, 1, 1, 13),
                                                (None, 1, 1, 1, 13)]),
        function_case("softmax", _softmax_forward, lambda dy, p: NF.softmax_backward(dy, p),
                      lambda x: torch.softmax(x, -1), [(4, 9)], scale=5.0),
        function_case("attention_weights", lambda q, k: NF.attention_weights(q, k, **nograd),
                      NF.attention_weights_backward, _attention_weights_torch,
                      [(3, 5, 8), (3, 7, 8)], scale=2.0),
        function_case("scaled_dot_product_attention self",
                      lambda q, k, v: NF.scaled_dot_product_attention(q, k, v, **nograd),
                      _sdpa_backward, TF.scaled_dot_product_attention,
                      [(3, 6, 8), (3, 6, 8), (3, 6, 8)]),
        function_case("scaled_dot_product_attention cross",
                      lambda q, k, v: NF.scaled_dot_product_attention(q, k, v, **nograd),
                      _sdpa_backward, TF.scaled_dot_product_attention,
                      [(3, 5, 8), (3, 7, 8), (3, 7, 8)], scale=3.0),
        function_case("scaled_dot_product_attention causal",
                      lambda q, k, v: NF.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                      **nograd),
                      _sdpa_backward,
                      lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
                      [(3, 6, 8), (3, 6, 8), (3, 6, 8)]),
        function_case("scaled_dot_product_attention causal, 5 queries 7 keys",
                      lambda q, k, v: NF.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                      **nograd),
                      _sdpa_backward,
                      lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
                      [(3, 5, 8), (3, 7, 8), (3, 7, 8)], scale=3.0),
        function_case("split_heads / merge_heads",
                      lambda x: (NF.merge_heads(NF.split_heads(x, 3)), None),
                      lambda dy, c: NF.split_heads_backward(NF.merge_heads_backward(dy, 3)),
                      lambda x: 1.0 * x, [(5, 12)]),
        function_case("gelu exact", lambda x: (NF.gelu(x), x),
                      lambda dy, x: NF.gelu_backward(dy, x), TF.gelu, [(7, 33)], scale=3.0),
        function_case("gelu tanh", lambda x: (NF.gelu(x, "tanh"), x),
                      lambda dy, x: NF.gelu_backward(dy, x, "tanh"),
                      lambda x: TF.gelu(x, approximate="tanh"), [(7, 33)], scale=3.0),
        function_case("quick_gelu (CLIP)", lambda x: (NF.quick_gelu(x), x),
                      lambda dy, x: NF.quick_gelu_backward(dy, x), UF.quick_gelu, [(7, 33)],
                      scale=3.0),
        function_case("geglu", lambda u: (NF.geglu(u), u),
                      lambda dy, u: NF.geglu_backward(dy, u), UF.geglu, [(5, 2 * 9)], scale=2.0),
        function_case("silu", lambda x: (NF.silu(x), x),
                      lambda dy, x: NF.silu_backward(dy, x), TF.silu, [(7, 33)], scale=4.0),
        function_case("relu", lambda x: (NF.relu(x), x),
                      lambda dy, x: NF.relu_backward(dy, x), TF.relu, [(7, 33)], scale=2.0),
        function_case("conv2d 3x3 stride 2 pad 1",
                      lambda x, w, b: NF.conv2d(x, w, b, 2, 1, **nograd), NF.conv2d_backward,
                      lambda x, w, b: TF.conv2d(x, w, b, 2, 1),
                      [(5, 7, 9), (None, 4, 5, 3, 3), (None, 4)]),
        function_case("conv2d 2x2 stride 2 (patch embed)",
                      lambda x, w, b: NF.conv2d(x, w, b, 2, 0, **nograd), NF.conv2d_backward,
                      lambda x, w, b: TF.conv2d(x, w, b, 2, 0),
                      [(3, 8, 6), (None, 10, 3, 2, 2), (None, 10)]),
        function_case("conv2d groups=3",
                      lambda x, w, b: NF.conv2d(x, w, b, 1, 1, 3, **nograd), NF.conv2d_backward,
                      lambda x, w, b: TF.conv2d(x, w, b, 1, 1, 1, 3),
                      [(6, 5, 7), (None, 9, 2, 3, 3), (None, 9)]),
        function_case("conv_transpose2d 4x4 stride 2 pad 1",
                      lambda x, w, b: NF.conv_transpose2d(x, w, b, 2, 1, **nograd),
                      NF.conv_transpose2d_backward,
                      lambda x, w, b: TF.conv_transpose2d(x, w, b, 2, 1),
                      [(5, 3, 4), (None, 5, 6, 4, 4), (None, 6)]),
        function_case("conv1x1 (channel-last)", lambda x, w, b: NF.conv1x1(x, w, b, **nograd),
                      NF.conv1x1_backward, UF.conv1x1,
                      [(5, 6, 7), (None, 4, 7, 1, 1), (None, 4)]),
        function_case("conv1x1_to_channels_first",
                      lambda x, w, b: NF.conv1x1_to_channels_first(x, w, b, **nograd),
                      NF.conv1x1_to_channels_first_backward, UF.conv1x1_to_channels_first,
                      [(5, 6, 7), (None, 9, 7, 1, 1), (None, 9)]),
        function_case("depthwise_conv3x3 (channel-last)",
                      lambda x, w, b: NF.depthwise_conv3x3(x, w, b, **nograd),
                      NF.depthwise_conv3x3_backward, UF.depthwise_conv3x3,
                      [(5, 6, 7), (None, 7, 1, 3, 3), (None, 7)]),
        function_case("downsample_2x2 odd grid 5x7",
                      lambda x, w, b: NF.downsample_2x2(x, w, b, **nograd),
                      NF.downsample_2x2_backward, UF.downsample_2x2,
                      [(5, 7, 6), (None, 8, 6, 2, 2), (None, 8)]),
        function_case("upsample_2x2", lambda x, w, b: NF.upsample_2x2(x, w, b, **nograd),
                      NF.upsample_2x2_backward, UF.upsample_2x2,
                      [(3, 4, 6), (None, 6, 5, 2, 2), (None, 5)]),
        function_case("conv2d_channels_last 3x3 stride 2",
                      lambda x, w, b: NF.conv2d_channels_last(x, w, b, 2, 1, **nograd),
                      NF.conv2d_channels_last_backward,
                      lambda x, w, b: UF.conv2d_channels_last(x, w, b, 2, 1),
                      [(5, 7, 3), (None, 4, 3, 3, 3), (None, 4)]),
        function_case("conv_transpose2d_channels_last 4x4 stride 2 pad 1",
                      lambda x, w, b: NF.conv_transpose2d_channels_last(x, w, b, 2, 1, **nograd),
                      NF.conv_transpose2d_channels_last_backward,
                      lambda x, w, b: UF.conv_transpose2d_channels_last(x, w, b, 2, 1),
                      [(3, 4, 5), (None, 5, 6, 4, 4), (None, 6)]),
        function_case("adaptive_modulation x(1 + scale) + shift",
                      lambda x, s, t: NF.adaptive_modulation(x, s, t, **nograd),
                      NF.adaptive_modulation_backward, UF.adaptive_modulation,
                      [(4, 5, 6), (6,), (6,)]),
        function_case("concat / split (long skip)",
                      lambda x, s: (np.concatenate([x, s], axis=-1), x.shape[-1]),
                      lambda dy, D: NF.concat_backward(dy, (D, dy.shape[-1] - D)),
                      lambda x, s: torch.cat([x, s], dim=-1), [(5, 4), (5, 3)]),
        function_case("patchify P=2", lambda x: (NF.patchify(x, 2), x.shape),
                      lambda dy, shape: NF.patchify_backward(dy, shape),
                      lambda x: UF.patchify(x, 2), [(3, 6, 8)]),
        function_case("unpatchify P=2", lambda x: (NF.unpatchify(x, 3), None),
                      lambda dy, c: NF.unpatchify_backward(dy, 2),
                      lambda x: UF.unpatchify(x, 3), [(16, 12)]),
        function_case("tokens_to_grid 3x4", lambda x: (NF.tokens_to_grid(x, (3, 4)), None),
                      lambda dy, c: NF.tokens_to_grid_backward(dy),
                      lambda x: x.transpose(1, 2).reshape(x.shape[0], -1, 3, 4), [(12, 5)]),
        function_case("grid_to_tokens 3x4", lambda x: (NF.grid_to_tokens(x), x.shape[2:]),
                      lambda dy, grid: NF.grid_to_tokens_backward(dy, grid),
                      lambda x: x.flatten(2).transpose(1, 2), [(5, 3, 4)]),
        function_case("mse_loss", lambda a, b: NLoss.mse_loss(a, b, return_cache=True),
                      lambda dy, c: NLoss.mse_loss_backward(dy, c), TF.mse_loss,
                      [(1, 6, 6), (1, 6, 6)], wrt=(0,)),
        _cross_entropy_case(0.0),
        _cross_entropy_case(0.1),
    ]


def _attention_weights_torch(q, k):
    """softmax(q k^T / sqrt(hd)) over the keys, in torch."""
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)


def _softmax_forward(x):
    p = NF.softmax(x)
    return p, p                                                    # the backward needs p


def module_grad_cases(cases):
    """The forward cases whose NumPy side is a Module (and so has a backward), without dropout
    and the slow published-size models: train-mode dropout draws different masks in the two
    packages, and a full aMUSEd backward is timed by the benchmark instead. (Each case says
    whether it is a Module; `parity.run_case` checks that it says so truly.)"""
    return [case for case in cases
            if case.module and not case.slow and "Dropout" not in case.name]


def grad_cases():
    """Every gradient case: functions, then layers, U-ViT blocks and models, UVit2DModel blocks
    and models, CLIP's text blocks and models, then the autoencoders' functions, blocks,
    quantiser and VQ-GANs."""
    from . import clip, core, uvit, uvit2d, vae
    return (function_cases() + module_grad_cases(core.cases())
            + module_grad_cases(uvit.cases()) + module_grad_cases(uvit2d.cases("tiny"))
            + module_grad_cases(clip.cases())
            + vae.function_cases() + module_grad_cases(vae.cases()) + vae.vq_grad_cases())


def run_grads(only="", dtypes=None, progress=False):
    """Every gradient case whose name contains `only`, in the dtypes given (default both).
    progress: a progress bar on standard error, one tick per case, dtype and batch."""
    from uvit_numpy.cli import progress_bar
    jobs = [(case, dtype, batch) for case in grad_cases() if only in case.name
            for dtype in case.dtypes if not dtypes or dtype in dtypes
            for batch in case.batches]
    rows = []
    with progress_bar(len(jobs), "gradients", enabled=progress and bool(jobs),
                      unit="case") as bar:
        for case, dtype, batch in jobs:
            bar.set_postfix_str(case.name[:40], refresh=False)
            rows.append(run_grad_case(case, dtype, batch))
            bar.update(1)
    return rows
