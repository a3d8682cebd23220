"""Exercises on aMUSEd's UVit2DModel: the token embedding (UVit2DConvEmbed), the adaptive RMS norm,
the ConvNeXt block with FiLM conditioning and one masked-token (MaskGIT) decoding step.

All activations are channel-last, as in `uvit_numpy.uvit2d`: (B, H, W, C) for pixel grids and
(B, L, C) for token sequences. Parameters come in dicts keyed as the modules' state dicts, so the
same dict loads into `uvit_numpy.uvit2d.ConvNextBlock` and friends.

Notebook: book/exercises/05_amused_blocks.ipynb.
"""

import math

import numpy as np

from .. import functional as F
from .catalogue import Case, Exercise, Mistake, functional_names, register, rng_for

NOTEBOOK = "05_amused_blocks.ipynb"
# the notebook's point is the wiring: its solutions may call the functions its text names
ALLOWED = functional_names("rms_norm", "linear", "gelu", "silu", "softmax", "conv2d",
                           "global_response_norm")


def _lin(rng, out_features, in_features):
    return (rng.standard_normal((out_features, in_features)) / math.sqrt(in_features),
            0.1 * rng.standard_normal(out_features))


def _split_scale_shift(c, weight, bias, silu=True):
    """[scale; shift] = Lin(silu(c)), split on the last axis, scale first.

    c: (B, D) -> two (B, C) arrays."""
    m = F.linear(F.silu(c) if silu else c, weight, bias)   # (B, 2C)
    scale, shift = np.split(m, 2, axis=-1)                  # (B, 2C) -> 2 x (B, C)
    return scale, shift


def _per_sample(v, ndim):
    """(B, C) -> (B, 1, ..., 1, C) with `ndim` axes in all, to broadcast over tokens or pixels."""
    return v.reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


# --------------------------------------------------------------------------------------------------
# uvit2d_conv_embed
# --------------------------------------------------------------------------------------------------
def uvit2d_conv_embed(input_ids, params, eps=1e-6):
    """input_ids: (B, H, W) ints in [0, V). params: "embeddings.weight" (V, C_in),
    "layer_norm.weight" (C_in,), "conv.weight" (C_b, C_in, 1, 1), "conv.bias" (C_b,).
    Embedding lookup -> RMSNorm over C_in -> 1x1 conv. Returns channel-last (B, H, W, C_b)."""
    x = F.embedding(input_ids, params["embeddings.weight"])          # (B, H, W, C_in)
    x = F.rms_norm(x, params["layer_norm.weight"], eps=eps)
    return F.linear(x, params["conv.weight"][:, :, 0, 0], params.get("conv.bias"))


def _conv_embed_with(norm="rms", norm_after=False, weight_transposed=False, channel_first=False,
                     eps_outside=False):
    def wrong(input_ids, params, eps=1e-6):
        x = params["embeddings.weight"][input_ids]                   # (B, H, W, C_in)
        W = params["conv.weight"][:, :, 0, 0]                        # (C_b, C_in)
        if weight_transposed:
            W = W.T

        def normalise(x, weight):
            if norm == "layer":
                return F.layer_norm(x, weight, None, eps=eps)
            ms = np.mean(x * x, axis=-1, keepdims=True)
            return x / (np.sqrt(ms) + eps if eps_outside else np.sqrt(ms + eps)) * weight
        if norm_after:
            y = x @ W.T + params["conv.bias"]
            y = normalise(y, params["layer_norm.weight"].mean())
        else:
            y = normalise(x, params["layer_norm.weight"]) @ W.T + params["conv.bias"]
        return y.transpose(0, 3, 1, 2) if channel_first else y       # (B, C_b, H, W)
    return wrong


def _conv_embed_params(rng, V, C_in, C_b, table_scale=1.0):
    w, b = _lin(rng, C_b, C_in)
    return {"embeddings.weight": table_scale * rng.standard_normal((V, C_in)),
            "layer_norm.weight": 1.0 + 0.3 * rng.standard_normal(C_in),
            "conv.weight": w[:, :, None, None], "conv.bias": b}


def _conv_embed_cases():
    rng = rng_for("uvit2d_conv_embed")
    return [
        Case("random (B=2, H=3, W=4, V=11, C_in=5, C_b=6)",
             (rng.integers(0, 11, (2, 3, 4)), _conv_embed_params(rng, 11, 5, 6))),
        Case("batch 1, one row, odd width, C_in = C_b (B=1, H=1, W=5, V=7, C=4)",
             (rng.integers(0, 7, (1, 1, 5)), _conv_embed_params(rng, 7, 4, 4))),
        Case("near-zero embeddings ~1e-4 (B=2, H=2, W=3, V=9, C_in=6, C_b=3)",
             (rng.integers(0, 9, (2, 2, 3)), _conv_embed_params(rng, 9, 6, 3, 1e-4))),
    ]


register(Exercise(
    name="uvit2d_conv_embed",
    allowed=ALLOWED,
    summary="aMUSEd's UVit2DConvEmbed: embedding lookup -> RMSNorm -> 1x1 conv, channel-last",
    notebook=NOTEBOOK,
    reference=uvit2d_conv_embed,
    make_cases=_conv_embed_cases,
    mistakes=(
        Mistake("layer_norm_instead",
                "the embeddings are normalised with RMSNorm (no mean subtracted, no bias), not "
                "LayerNorm.",
                _conv_embed_with(norm="layer")),
        Mistake("norm_after_conv",
                "the order is: look up the rows, RMSNorm over C_in, then the 1x1 conv.",
                _conv_embed_with(norm_after=True)),
        Mistake("conv_weight_transposed",
                "a 1x1 conv weight (out, in, 1, 1) acts per pixel as y = x @ W[:, :, 0, 0].T + b; "
                "you used W without the transpose.",
                _conv_embed_with(weight_transposed=True)),
        Mistake("channel_first_output",
                "return channel-last (B, H, W, C_b), as uvit_numpy.uvit2d keeps every grid; "
                "yours is (B, C_b, H, W).",
                _conv_embed_with(channel_first=True)),
        Mistake("eps_outside_sqrt",
                "eps goes inside the square root of the RMSNorm: x / sqrt(mean(x^2) + eps).",
                _conv_embed_with(eps_outside=True)),
    ),
))


# --------------------------------------------------------------------------------------------------
# ada_rms_norm
# --------------------------------------------------------------------------------------------------
def ada_rms_norm(x, c, params, eps=1e-6):
    """x: (B, L, D) tokens, c: (B, Dc) conditioning. params: "linear.weight" (2D, Dc),
    "linear.bias" (2D,), "norm.weight" (D,). [scale; shift] = linear(silu(c)) (scale first);
    returns rms_norm(x) * (1 + scale) + shift, (B, L, D)."""
    scale, shift = _split_scale_shift(c, params["linear.weight"], params.get("linear.bias"))
    y = F.rms_norm(x, params.get("norm.weight"), eps=eps)              # (B, L, D)
    return y * (1.0 + _per_sample(scale, x.ndim)) + _per_sample(shift, x.ndim)


def _ada_with(swap=False, one_plus=True, silu=True, norm="rms"):
    def wrong(x, c, params, eps=1e-6):
        scale, shift = _split_scale_shift(c, params["linear.weight"], params["linear.bias"], silu)
        if swap:
            scale, shift = shift, scale
        if norm == "rms":
            y = F.rms_norm(x, params["norm.weight"], eps=eps)
        else:
            y = F.layer_norm(x, params["norm.weight"], None, eps=eps)
        s = _per_sample(scale, x.ndim)
        return y * ((1.0 + s) if one_plus else s) + _per_sample(shift, x.ndim)
    return wrong


def _ada_params(rng, D, Dc):
    w, b = _lin(rng, 2 * D, Dc)
    return {"linear.weight": w, "linear.bias": b, "norm.weight": 1.0 + 0.3 * rng.standard_normal(D)}


def _ada_cases():
    rng = rng_for("ada_rms_norm")
    return [
        Case("random (B=2, L=5, D=6, Dc=4)",
             (rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 4)), _ada_params(rng, 6, 4))),
        Case("batch 1, one token, odd D (B=1, L=1, D=3, Dc=7)",
             (rng.standard_normal((1, 1, 3)), rng.standard_normal((1, 7)), _ada_params(rng, 3, 7))),
        Case("near-zero tokens ~1e-4 (B=2, L=3, D=4, Dc=4)",
             (1e-4 * rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4)),
              _ada_params(rng, 4, 4))),
    ]


register(Exercise(
    name="ada_rms_norm",
    allowed=ALLOWED,
    summary="the adaptive RMS norm (AdaLayerNormContinuous): rms_norm(x) * (1 + scale) + shift",
    notebook=NOTEBOOK,
    reference=ada_rms_norm,
    make_cases=_ada_cases,
    mistakes=(
        Mistake("shift_scale_swapped",
                "split the projection as (scale, shift): the scale is the FIRST half "
                "(some other diffusers norms put the shift first; this one does not).",
                _ada_with(swap=True)),
        Mistake("scale_without_one",
                "modulate with (1 + scale), so that a zero projection leaves the norm "
                "unchanged; yours multiplies by scale alone.",
                _ada_with(one_plus=False)),
        Mistake("silu_missing",
                "apply silu to the conditioning before the linear: linear(silu(c)).",
                _ada_with(silu=False)),
        Mistake("layer_norm_instead",
                "this adaptive norm uses RMSNorm (no mean subtracted), not LayerNorm.",
                _ada_with(norm="layer")),
    ),
))


# --------------------------------------------------------------------------------------------------
# convnext_block
# --------------------------------------------------------------------------------------------------
def convnext_block(x, c, params, eps=1e-6):
    """aMUSEd's ConvNextBlock, channel-last. x: (B, H, W, C), c: (B, D). Returns (B, H, W, C).

    depthwise 3x3 (padding 1) -> RMSNorm -> Linear(C, 4C) -> exact GELU -> GRN -> Linear(4C, C),
    plus the input (residual); then FiLM: y * (1 + scale) + shift with
    [scale; shift] = cond_embeds_mapper(silu(c)), scale first.
    """
    C = x.shape[-1]
    h = x.transpose(0, 3, 1, 2)                                      # (B, H, W, C) -> (B, C, H, W)
    h = F.conv2d(h, params["depthwise.weight"], params.get("depthwise.bias"), padding=1, groups=C)
    h = h.transpose(0, 2, 3, 1)                                      # (B, C, H, W) -> (B, H, W, C)
    h = F.rms_norm(h, params.get("norm.weight"), eps=eps)
    h = F.gelu(F.linear(h, params["channelwise_linear_1.weight"],
                        params.get("channelwise_linear_1.bias")))    # (B, H, W, 4C)
    h = F.global_response_norm(h, params["channelwise_norm.gamma"], params["channelwise_norm.beta"])
    h = F.linear(h, params["channelwise_linear_2.weight"],
                 params.get("channelwise_linear_2.bias"))            # (B, H, W, C)
    h = h + x
    scale, shift = _split_scale_shift(c, params["cond_embeds_mapper.weight"],
                                      params.get("cond_embeds_mapper.bias"))
    return h * (1.0 + _per_sample(scale, 4)) + _per_sample(shift, 4)


def _convnext_with(swap=False, one_plus=True, film_before_residual=False, approximate="none",
                   grn=True, silu=True, norm="rms"):
    def wrong(x, c, params, eps=1e-6):
        C = x.shape[-1]
        h = F.conv2d(x.transpose(0, 3, 1, 2), params["depthwise.weight"],
                     params["depthwise.bias"], padding=1, groups=C).transpose(0, 2, 3, 1)
        if norm == "rms":
            h = F.rms_norm(h, params["norm.weight"], eps=eps)
        else:
            h = F.layer_norm(h, params["norm.weight"], None, eps=eps)
        h = F.gelu(F.linear(h, params["channelwise_linear_1.weight"],
                            params["channelwise_linear_1.bias"]), approximate=approximate)
        if grn:
            h = F.global_response_norm(h, params["channelwise_norm.gamma"],
                                       params["channelwise_norm.beta"])
        h = F.linear(h, params["channelwise_linear_2.weight"], params["channelwise_linear_2.bias"])
        scale, shift = _split_scale_shift(c, params["cond_embeds_mapper.weight"],
                                          params["cond_embeds_mapper.bias"], silu)
        if swap:
            scale, shift = shift, scale
        s = _per_sample(scale, 4)
        factor = (1.0 + s) if one_plus else s
        if film_before_residual:
            return h * factor + _per_sample(shift, 4) + x
        return (h + x) * factor + _per_sample(shift, 4)
    return wrong


def convnext_params(rng, C, D):
    """Random parameters for `convnext_block` with C channels and conditioning width D (the keys
    of `uvit_numpy.uvit2d.ConvNextBlock` with use_bias=True)."""
    p = {}
    p["depthwise.weight"] = rng.standard_normal((C, 1, 3, 3)) / 3.0
    p["depthwise.bias"] = 0.1 * rng.standard_normal(C)
    p["norm.weight"] = 1.0 + 0.3 * rng.standard_normal(C)
    p["channelwise_linear_1.weight"], p["channelwise_linear_1.bias"] = _lin(rng, 4 * C, C)
    p["channelwise_norm.gamma"] = 0.5 * rng.standard_normal((1, 1, 1, 4 * C))
    p["channelwise_norm.beta"] = 0.3 * rng.standard_normal((1, 1, 1, 4 * C))
    p["channelwise_linear_2.weight"], p["channelwise_linear_2.bias"] = _lin(rng, C, 4 * C)
    p["cond_embeds_mapper.weight"], p["cond_embeds_mapper.bias"] = _lin(rng, 2 * C, D)
    return p


def _convnext_cases():
    rng = rng_for("convnext_block")
    return [
        Case("random (B=2, H=3, W=4, C=4, D=5)",
             (rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 5)),
              convnext_params(rng, 4, 5))),
        Case("batch 1, one row, odd sizes (B=1, H=1, W=3, C=3, D=2)",
             (rng.standard_normal((1, 1, 3, 3)), rng.standard_normal((1, 2)),
              convnext_params(rng, 3, 2))),
        Case("odd grid (B=2, H=5, W=3, C=2, D=4)",
             (rng.standard_normal((2, 5, 3, 2)), rng.standard_normal((2, 4)),
              convnext_params(rng, 2, 4))),
    ]


register(Exercise(
    name="convnext_block",
    allowed=ALLOWED,
    summary="aMUSEd's ConvNeXt block: dwconv, RMSNorm, MLP with GELU + GRN, residual, then FiLM",
    notebook=NOTEBOOK,
    reference=convnext_block,
    make_cases=_convnext_cases,
    mistakes=(
        Mistake("shift_scale_swapped",
                "split cond_embeds_mapper(silu(c)) as (scale, shift): the scale is the FIRST "
                "half.",
                _convnext_with(swap=True)),
        Mistake("scale_without_one",
                "modulate with (1 + scale), not scale alone.",
                _convnext_with(one_plus=False)),
        Mistake("film_before_residual",
                "add the residual first, then modulate: out = (block(x) + x) * (1 + scale) + "
                "shift. The FiLM acts on the sum.",
                _convnext_with(film_before_residual=True)),
        Mistake("tanh_gelu",
                "the GELU is the exact erf form, not the tanh approximation.",
                _convnext_with(approximate="tanh")),
        Mistake("grn_missing",
                "apply GlobalResponseNorm (channelwise_norm) between the GELU and the second "
                "linear.",
                _convnext_with(grn=False)),
        Mistake("silu_missing",
                "apply silu to the conditioning before cond_embeds_mapper.",
                _convnext_with(silu=False)),
        Mistake("layer_norm_instead",
                "the norm after the depthwise conv is RMSNorm (no mean subtracted), not "
                "LayerNorm.",
                _convnext_with(norm="layer")),
    ),
))


# --------------------------------------------------------------------------------------------------
# masked_decoding_step
# --------------------------------------------------------------------------------------------------
def masked_decoding_step(logits, tokens, step, num_steps, mask_token_id, temperature, u_sample,
                         u_gumbel):
    """One MaskGIT decoding step, as aMUSEd's scheduler takes it (cosine schedule).

    logits: (B, K, H, W); tokens: (B, H, W) ints, mask_token_id where unknown; step: 0-based
    index among num_steps; u_sample, u_gumbel: (B, H, W) uniforms in [0, 1).
    1. For every position, sample code k from softmax over K: the first k whose cumulative
       probability reaches u_sample. Known tokens keep their value: the prediction.
    2. On the last step return (prediction, prediction). Otherwise
       n = floor(L * cos(pi/2 * (step + 1) / num_steps)), clamped to [1, masked now - 1];
       confidence = log p(predicted code) + temperature * Gumbel, Gumbel = -log(-log(u_gumbel));
       known tokens count as infinitely confident (they are never re-masked);
       re-mask the n least confident positions: those whose confidence is below the value at
       index n of the row's sorted confidences.
    Returns (next_tokens, prediction), both (B, H, W) ints.
    """
    return _decode(logits, tokens, step, num_steps, mask_token_id, temperature, u_sample,
                   u_gumbel)


def _decode(logits, tokens, step, num_steps, mask_token_id, temperature, u_sample, u_gumbel,
            sample="cdf", keep_known=True, protect_known=True, log_conf=True, use_noise=True,
            schedule="cosine", ratio_offset=1, clamp=True, last_step=True, lowest=True,
            logits_layout="BKHW"):
    """The decoding step with switches for the usual mistakes (defaults: the right answer)."""
    B, K, H, W = logits.shape
    L = H * W
    if logits_layout == "BKHW":
        scores = logits.reshape(B, K, L).transpose(0, 2, 1)         # (B, K, H, W) -> (B, L, K)
    else:
        scores = logits.reshape(B, L, K)                            # misread as (B, H, W, K)
    tok = tokens.reshape(B, L)                                      # (B, H, W) -> (B, L)
    unknown = tok == mask_token_id                                  # (B, L)
    probs = F.softmax(scores, axis=-1)                              # (B, L, K)
    if sample == "cdf":
        cdf = np.cumsum(probs, axis=-1)                             # (B, L, K)
        u = u_sample.reshape(B, L) * cdf[..., -1]                   # (B, L)
        sampled = np.minimum(np.sum(cdf < u[..., None], axis=-1), K - 1)
    else:
        sampled = np.argmax(probs, axis=-1)                         # the mode, not a sample
    predicted = np.where(unknown, sampled, tok) if keep_known else sampled
    if step == num_steps - 1 and last_step:
        out = predicted.reshape(B, H, W)
        return out, out
    r = (step + ratio_offset) / num_steps
    ratio = math.cos(math.pi / 2 * r) if schedule == "cosine" else 1.0 - r
    n = np.full(B, math.floor(L * ratio))                           # (B,)
    if clamp:
        n = np.maximum(1, np.minimum(unknown.sum(axis=-1) - 1, n))
    n = np.clip(n, 0, L - 1)
    chosen = np.take_along_axis(probs, predicted[..., None], axis=-1)[..., 0]   # (B, L)
    conf = np.log(np.maximum(chosen, 1e-20)) if log_conf else chosen
    if use_noise:
        gumbel = -np.log(np.maximum(-np.log(np.maximum(u_gumbel.reshape(B, L), 1e-20)), 1e-20))
        conf = conf + temperature * gumbel
    if protect_known:
        conf = np.where(unknown, conf, np.inf)
    if not lowest:
        conf = np.where(unknown, -conf, -np.inf) if protect_known else -conf
    cut = np.take_along_axis(np.sort(conf, axis=-1), n[:, None], axis=-1)        # (B, 1)
    next_tokens = np.where(conf < cut, mask_token_id, predicted)
    return next_tokens.reshape(B, H, W), predicted.reshape(B, H, W)


def _decode_with(**switches):
    def wrong(logits, tokens, step, num_steps, mask_token_id, temperature, u_sample, u_gumbel):
        return _decode(logits, tokens, step, num_steps, mask_token_id, temperature, u_sample,
                       u_gumbel, **switches)
    return wrong


def _decoding_cases():
    rng = rng_for("masked_decoding_step")
    M = 99                                                           # the mask token id

    def case(label, B, K, H, W, masked_fraction, step, num_steps, temperature):
        logits = 2.0 * rng.standard_normal((B, K, H, W))
        tokens = rng.integers(0, K, (B, H, W))
        masked = rng.random((B, H, W)) < masked_fraction
        masked[:, 0, 0] = True                                       # at least one per sample
        tokens = np.where(masked, M, tokens)
        return Case(label, (logits, tokens, step, num_steps, M, temperature,
                            rng.random((B, H, W)), rng.random((B, H, W))))
    return [
        case("first step, everything masked (B=2, K=6, H=3, W=4), step 0 of 4, temperature 2",
             2, 6, 3, 4, 1.0, 0, 4, 2.0),
        case("middle step, batch 1, odd grid, all masked (B=1, K=5, H=3, W=5), step 2 of 6",
             1, 5, 3, 5, 1.0, 2, 6, 1.0),
        case("step 1 of 4, about half masked (B=2, K=8, H=4, W=4), temperature 1",
             2, 8, 4, 4, 0.5, 1, 4, 1.0),
        case("last step (B=2, K=4, H=2, W=3), step 3 of 4: every mask filled",
             2, 4, 2, 3, 0.5, 3, 4, 0.5),
        case("few masks left, the count is clamped (B=3, K=5, H=3, W=3), step 1 of 8",
             3, 5, 3, 3, 0.25, 1, 8, 1.5),
    ]


register(Exercise(
    name="masked_decoding_step",
    allowed=ALLOWED,
    summary="one MaskGIT decoding step of aMUSEd: sample codes, re-mask the least confident",
    notebook=NOTEBOOK,
    reference=masked_decoding_step,
    make_cases=_decoding_cases,
    exact=True,
    mistakes=(
        Mistake("logits_axes",
                "logits are (B, K, H, W), codes on axis 1: move K last with a transpose "
                "((B, K, L) -> (B, L, K)) before the softmax; a plain reshape to (B, L, K) "
                "mixes codes and positions.",
                _decode_with(logits_layout="BHWK")),
        Mistake("argmax_not_sampled",
                "sample the codes (the first k whose cumulative probability reaches u_sample), "
                "do not take the argmax: u_sample is unused in your step.",
                _decode_with(sample="argmax")),
        Mistake("known_tokens_overwritten",
                "keep the known tokens: only masked positions take the sampled code "
                "(np.where(tokens == mask_token_id, sampled, tokens)).",
                _decode_with(keep_known=False)),
        Mistake("known_tokens_remasked",
                "known tokens must never be re-masked: give them the largest confidence "
                "(aMUSEd uses the float maximum) before choosing which positions to mask.",
                _decode_with(protect_known=False)),
        Mistake("most_confident_masked",
                "re-mask the LEAST confident predictions (confidence below the cut), not the "
                "most confident ones.",
                _decode_with(lowest=False)),
        Mistake("probabilities_not_logs",
                "the confidence is log p(predicted code) + temperature * Gumbel noise; you "
                "added the noise to the probability itself.",
                _decode_with(log_conf=False)),
        Mistake("noise_ignored",
                "add temperature * Gumbel noise, -log(-log(u_gumbel)), to the log-probabilities "
                "before ranking them.",
                _decode_with(use_noise=False)),
        Mistake("step_off_by_one",
                "the fraction still masked after this step is cos(pi/2 * (step + 1) / "
                "num_steps): step is 0-based, so use step + 1.",
                _decode_with(ratio_offset=0)),
        Mistake("linear_schedule",
                "aMUSEd uses the cosine schedule, cos(pi/2 * (step + 1) / num_steps), not "
                "1 - (step + 1) / num_steps.",
                _decode_with(schedule="linear")),
        Mistake("mask_count_not_clamped",
                "clamp the number to re-mask: at least 1 and at most one less than the number "
                "masked now (n = max(1, min(masked - 1, n))).",
                _decode_with(clamp=False)),
        Mistake("last_step_remasks",
                "on the last step (step == num_steps - 1) return the prediction itself: "
                "nothing stays masked.",
                _decode_with(last_step=False)),
    ),
))
