"""Exercises on attention: scaled dot-product attention, diffusers-style multi-head attention and
the U-ViT transformer block with its long skip connection.

Notebook: book/exercises/03_attention_and_uvit_block.ipynb.
"""

import math

import numpy as np

from .. import functional as F
from .catalogue import Case, Exercise, Mistake, functional_names, register, rng_for

NOTEBOOK = "03_attention_and_uvit_block.ipynb"


def _attend(q, k, v, scale="sqrt", softmax_axis=-1, stable=True):
    """softmax(q k^T * scale) v with one knob turned: the scale, the softmax axis, stability.

    q: (B, nh, L, hd), k, v: (B, nh, S, hd). scale: "sqrt" (1/sqrt(hd)), "d" (1/hd), "none",
    or a number.
    """
    hd = q.shape[-1]
    factor = {"sqrt": 1.0 / math.sqrt(hd), "d": 1.0 / hd, "none": 1.0}.get(scale, scale)
    scores = (q @ k.swapaxes(-1, -2)) * factor                # (B, nh, L, S)
    if stable:
        scores = scores - np.max(scores, axis=softmax_axis, keepdims=True)
    e = np.exp(scores)
    weights = e / np.sum(e, axis=softmax_axis, keepdims=True)
    return weights @ v                                         # (B, nh, L, hd)


# --------------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# --------------------------------------------------------------------------------------------------
def scaled_dot_product_attention(q, k, v):
    """q: (B, nh, L, hd), k, v: (B, nh, S, hd). softmax(q k^T / sqrt(hd)) v -> (B, nh, L, hd)."""
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_cases():
    rng = rng_for("scaled_dot_product_attention")

    def qkv(B, nh, L, S, hd, scale=1.0):
        return (scale * rng.standard_normal((B, nh, L, hd)),
                scale * rng.standard_normal((B, nh, S, hd)), rng.standard_normal((B, nh, S, hd)))
    return [
        Case("random (B=2, nh=2, L=3, S=5, hd=4)", qkv(2, 2, 3, 5, 4)),
        Case("batch 1, one query, odd sizes (B=1, nh=1, L=1, S=7, hd=3)", qkv(1, 1, 1, 7, 3)),
        Case("self-attention shapes (B=1, nh=3, L=S=4, hd=2)", qkv(1, 3, 4, 4, 2)),
        Case("large logits: q, k ~ 30 (B=2, nh=1, L=3, S=6, hd=4)", qkv(2, 1, 3, 6, 4, 30.0)),
    ]


register(Exercise(
    name="scaled_dot_product_attention",
    summary="softmax(q k^T / sqrt(hd)) v over (B, nh, tokens, hd) arrays",
    notebook=NOTEBOOK,
    reference=scaled_dot_product_attention,
    make_cases=_sdpa_cases,
    mistakes=(
        Mistake("missing_scale",
                "scale the scores by 1/sqrt(hd), hd = q.shape[-1], before the softmax; without "
                "it the softmax saturates as hd grows.",
                lambda q, k, v: _attend(q, k, v, scale="none")),
        Mistake("scale_one_over_d",
                "the scale is 1/sqrt(hd), not 1/hd.",
                lambda q, k, v: _attend(q, k, v, scale="d")),
        Mistake("softmax_over_queries",
                "each query's weights must sum to 1 over the keys: take the softmax over the "
                "last axis (S) of the (B, nh, L, S) scores, not over the queries.",
                lambda q, k, v: _attend(q, k, v, softmax_axis=-2)),
        Mistake("no_max_subtraction",
                "exp overflows on large scores: subtract each row's maximum before exp (a "
                "stable softmax), or call your stable softmax.",
                lambda q, k, v: _attend(q, k, v, stable=False)),
        Mistake("k_v_swapped",
                "the scores compare queries with keys (q k^T); the weights then average the "
                "values v. You used v for the scores and k for the average.",
                lambda q, k, v: _attend(q, v, k)),
    ),
))


# --------------------------------------------------------------------------------------------------
# multi_head_attention
# --------------------------------------------------------------------------------------------------
def multi_head_attention(x, params, heads, context=None):
    """diffusers' Attention. x: (B, L, C); context: (B, S, Cc) or None (self-attention).

    params: "to_q.weight" (I, C), "to_k.weight", "to_v.weight" (I, Cc), "to_out.0.weight" (C, I),
    "to_out.0.bias" (C,), with I = heads * hd. Returns (B, L, C).
    """
    ctx = x if context is None else context
    q = F.split_heads(F.linear(x, params["to_q.weight"], params.get("to_q.bias")), heads)
    k = F.split_heads(F.linear(ctx, params["to_k.weight"], params.get("to_k.bias")), heads)
    v = F.split_heads(F.linear(ctx, params["to_v.weight"], params.get("to_v.bias")), heads)
    out = F.merge_heads(F.scaled_dot_product_attention(q, k, v))    # (B, L, I)
    return F.linear(out, params["to_out.0.weight"], params.get("to_out.0.bias"))


def _mha_with(split="blocks", scale="sqrt", merge="transpose", project=True, out_bias=True):
    def wrong(x, params, heads, context=None):
        ctx = x if context is None else context
        q, k, v = (ctx_ @ params[f"to_{n}.weight"].T
                   for n, ctx_ in (("q", x), ("k", ctx), ("v", ctx)))   # (B, tokens, I)
        I = q.shape[-1]
        hd = I // heads

        def heads_of(t):
            B, T, _ = t.shape
            if split == "blocks":
                return t.reshape(B, T, heads, hd).transpose(0, 2, 1, 3)   # (B, nh, T, hd)
            return t.reshape(B, T, hd, heads).transpose(0, 3, 1, 2)       # interleaved
        s = 1.0 / math.sqrt(I) if scale == "full" else scale
        o = _attend(heads_of(q), heads_of(k), heads_of(v), scale=s)       # (B, nh, L, hd)
        B, _, L, _ = o.shape
        if merge == "transpose" and split == "blocks":
            o = o.transpose(0, 2, 1, 3).reshape(B, L, I)                  # (B, L, nh*hd)
        elif merge == "transpose":
            o = o.transpose(0, 2, 3, 1).reshape(B, L, I)                  # undo the interleave
        else:
            o = o.reshape(B, L, I)                                        # no transpose
        if not project:
            return o
        y = o @ params["to_out.0.weight"].T
        return y + params["to_out.0.bias"] if out_bias else y
    return wrong


def _mha_cases():
    rng = rng_for("multi_head_attention")

    def params(C, Cc, I):
        return {"to_q.weight": rng.standard_normal((I, C)) / math.sqrt(C),
                "to_k.weight": rng.standard_normal((I, Cc)) / math.sqrt(Cc),
                "to_v.weight": rng.standard_normal((I, Cc)) / math.sqrt(Cc),
                "to_out.0.weight": rng.standard_normal((C, I)) / math.sqrt(I),
                "to_out.0.bias": 0.1 * rng.standard_normal(C)}
    return [
        Case("self-attention (B=2, L=5, C=12, heads=3, hd=4)",
             (rng.standard_normal((2, 5, 12)), params(12, 12, 12), 3)),
        Case("cross-attention, batch 1 (B=1, L=4, C=6, S=7, Cc=5, heads=2, hd=3)",
             (rng.standard_normal((1, 4, 6)), params(6, 5, 6), 2),
             {"context": rng.standard_normal((1, 7, 5))}),
        Case("inner width differs from C (B=2, L=3, C=6, heads=2, hd=5)",
             (rng.standard_normal((2, 3, 6)), params(6, 6, 10), 2)),
        Case("one head (B=1, L=3, C=4, heads=1)",
             (rng.standard_normal((1, 3, 4)), params(4, 4, 4), 1)),
    ]


register(Exercise(
    name="multi_head_attention",
    summary="diffusers' multi-head Attention (to_q, to_k, to_v, to_out.0), self or cross",
    notebook=NOTEBOOK,
    reference=multi_head_attention,
    make_cases=_mha_cases,
    mistakes=(
        Mistake("heads_interleaved",
                "split the channels into consecutive blocks: head r owns channels "
                "[r*hd, (r+1)*hd), so reshape (B, L, I) to (B, L, heads, hd), not "
                "(B, L, hd, heads).",
                _mha_with(split="interleaved")),
        Mistake("scale_full_width",
                "the scale uses the head size: 1/sqrt(hd) with hd = I / heads, not 1/sqrt(I).",
                _mha_with(scale="full")),
        Mistake("missing_scale",
                "scale the scores by 1/sqrt(hd) before the softmax.",
                _mha_with(scale="none")),
        Mistake("merge_without_transpose",
                "merge the heads back with a transpose: (B, nh, L, hd) -> (B, L, nh, hd) -> "
                "(B, L, nh*hd); a plain reshape mixes tokens and heads.",
                _mha_with(merge="reshape")),
        Mistake("output_projection_missing",
                "finish with the output projection to_out.0: out @ W.T + b.",
                _mha_with(project=False)),
        Mistake("output_bias_missing",
                "to_out.0 has a bias: add params['to_out.0.bias'] after the projection.",
                _mha_with(out_bias=False)),
    ),
))


# --------------------------------------------------------------------------------------------------
# uvit_block
# --------------------------------------------------------------------------------------------------
UVIT_LN_EPS = 1e-5   # torch.nn.LayerNorm's default, which the U-ViT code keeps


def uvit_block(x, params, num_heads, skip=None):
    """One U-ViT transformer block. x: (B, L, D); skip: (B, L, D) or None. Returns (B, L, D).

    With a skip: x = skip_linear(concat([x, skip], -1)) first. Then pre-norm residuals:
    x = x + attn(norm1(x)), x = x + mlp(norm2(x)); attn has a fused qkv (3D, D) laid out as
    (3, nh, hd), mlp is fc1 -> exact GELU -> fc2, LayerNorm eps 1e-5.
    """
    if skip is not None:
        xs = np.concatenate([x, skip], axis=-1)                         # (B, L, 2D)
        x = F.linear(xs, params["skip_linear.weight"], params["skip_linear.bias"])
    h = F.layer_norm(x, params["norm1.weight"], params["norm1.bias"], eps=UVIT_LN_EPS)
    x = x + _fused_attention(h, params, num_heads)
    h = F.layer_norm(x, params["norm2.weight"], params["norm2.bias"], eps=UVIT_LN_EPS)
    h = F.gelu(F.linear(h, params["mlp.fc1.weight"], params["mlp.fc1.bias"]))
    return x + F.linear(h, params["mlp.fc2.weight"], params["mlp.fc2.bias"])


def _fused_attention(h, params, num_heads, layout="3_nh_hd", scale="sqrt"):
    B, L, D = h.shape
    qkv = F.linear(h, params["attn.qkv.weight"], params.get("attn.qkv.bias"))   # (B, L, 3D)
    if layout == "3_nh_hd":
        qkv = qkv.reshape(B, L, 3, num_heads, D // num_heads)                # (B, L, 3, nh, hd)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)                               # 3 x (B, nh, L, hd)
    else:
        qkv = qkv.reshape(B, L, num_heads, 3, D // num_heads)                # (B, L, nh, 3, hd)
        q, k, v = qkv.transpose(3, 0, 2, 1, 4)                               # 3 x (B, nh, L, hd)
    out = F.merge_heads(_attend(q, k, v, scale=scale))                      # (B, L, D)
    return F.linear(out, params["attn.proj.weight"], params["attn.proj.bias"])


def _uvit_block_with(skip_first=False, skip_after_attention=False, post_norm=False,
                     layout="3_nh_hd", scale="sqrt", approximate="none"):
    def wrong(x, params, num_heads, skip=None):
        def merge(x):
            parts = [skip, x] if skip_first else [x, skip]
            xs = np.concatenate(parts, axis=-1)                              # (B, L, 2D)
            return F.linear(xs, params["skip_linear.weight"], params["skip_linear.bias"])

        def norm(x, i):
            return F.layer_norm(x, params[f"norm{i}.weight"], params[f"norm{i}.bias"],
                                eps=UVIT_LN_EPS)

        def mlp(h):
            h = F.gelu(F.linear(h, params["mlp.fc1.weight"], params["mlp.fc1.bias"]),
                       approximate=approximate)
            return F.linear(h, params["mlp.fc2.weight"], params["mlp.fc2.bias"])

        def attn(h):
            return _fused_attention(h, params, num_heads, layout=layout, scale=scale)
        if skip is not None and not skip_after_attention:
            x = merge(x)
        if post_norm:
            x = norm(x + attn(x), 1)
        else:
            x = x + attn(norm(x, 1))
        if skip is not None and skip_after_attention:
            x = merge(x)
        return norm(x + mlp(x), 2) if post_norm else x + mlp(norm(x, 2))
    return wrong


def _norm_params(rng, D):
    return 1.0 + 0.2 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)


def uvit_block_params(rng, D, with_skip=True, qkv_bias=False):
    """Random parameters for `uvit_block` with width D (the U-ViT Block's state-dict keys)."""
    def lin(o, i):
        return rng.standard_normal((o, i)) / math.sqrt(i), 0.1 * rng.standard_normal(o)
    p = {}
    if with_skip:
        p["skip_linear.weight"], p["skip_linear.bias"] = lin(D, 2 * D)
    p["norm1.weight"], p["norm1.bias"] = _norm_params(rng, D)
    p["attn.qkv.weight"], qkv_b = lin(3 * D, D)
    if qkv_bias:
        p["attn.qkv.bias"] = qkv_b
    p["attn.proj.weight"], p["attn.proj.bias"] = lin(D, D)
    p["norm2.weight"], p["norm2.bias"] = _norm_params(rng, D)
    p["mlp.fc1.weight"], p["mlp.fc1.bias"] = lin(4 * D, D)
    p["mlp.fc2.weight"], p["mlp.fc2.bias"] = lin(D, 4 * D)
    return p


def _uvit_block_cases():
    rng = rng_for("uvit_block")
    return [
        Case("output block with a long skip (B=2, L=5, D=8, heads=2)",
             (rng.standard_normal((2, 5, 8)), uvit_block_params(rng, 8), 2),
             {"skip": rng.standard_normal((2, 5, 8))}),
        Case("input block, no skip, batch 1 (B=1, L=3, D=6, heads=3)",
             (rng.standard_normal((1, 3, 6)), uvit_block_params(rng, 6, with_skip=False), 3)),
        Case("skip, batch 1, odd L (B=1, L=7, D=4, heads=1)",
             (rng.standard_normal((1, 7, 4)), uvit_block_params(rng, 4), 1),
             {"skip": rng.standard_normal((1, 7, 4))}),
    ]


register(Exercise(
    name="uvit_block",
    # the block is the wiring: the notebook lets you use these (and your own attention)
    allowed=functional_names("linear", "layer_norm", "gelu"),
    summary="the U-ViT block: long skip (concat x then skip, Linear 2D -> D), pre-norm attn + MLP",
    notebook=NOTEBOOK,
    reference=uvit_block,
    make_cases=_uvit_block_cases,
    mistakes=(
        Mistake("skip_order_swapped",
                "concatenate the block's input first and the long skip second: "
                "skip_linear(concat([x, skip], -1)). The order decides which half of "
                "skip_linear's weight meets which tensor.",
                _uvit_block_with(skip_first=True)),
        Mistake("skip_after_attention",
                "the long skip is merged first, before the attention: the block starts with "
                "x = skip_linear(concat([x, skip], -1)).",
                _uvit_block_with(skip_after_attention=True)),
        Mistake("post_norm",
                "U-ViT blocks are pre-norm: x = x + attn(norm1(x)), then x = x + mlp(norm2(x)); "
                "the residual path is never normalised.",
                _uvit_block_with(post_norm=True)),
        Mistake("qkv_split_wrong",
                "the fused qkv output is laid out as (3, nh, hd) on the feature axis: all of q, "
                "then all of k, then all of v; reshape to (B, L, 3, nh, hd).",
                _uvit_block_with(layout="nh_3_hd")),
        Mistake("missing_scale",
                "scale the attention scores by 1/sqrt(hd), hd = D / num_heads.",
                _uvit_block_with(scale="none")),
        Mistake("tanh_gelu",
                "the MLP uses the exact erf GELU, not the tanh approximation.",
                _uvit_block_with(approximate="tanh")),
    ),
))
