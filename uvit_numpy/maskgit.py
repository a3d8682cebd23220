"""Masked-token generation (MaskGIT), as aMUSEd's scheduler and pipeline decode: from a grid of
mask tokens to a grid of codes in a few parallel steps.

Each step, the model predicts logits over the codebook for every position; a code is sampled for
every masked position; then the least confident of the new predictions are masked again, fewer each
step along a schedule (cosine by default), until none is left. The pieces:

* `mask_schedule`, `mask_ratio` and `masked_count`: how many tokens stay masked after each step
  (the ratio and the count in float32, exactly as diffusers' `AmusedScheduler` computes them);
* `add_noise`: mask known tokens at random, as much as a step of the schedule has masked;
* `decoding_temperatures` and `gumbel_noise`: the annealed noise added to the confidences
  (`scheduler_temperatures`: the same, bit for bit as diffusers' scheduler computes them);
* `masked_decoding_step`: one step (sample, then re-mask), as `AmusedScheduler.step`;
* `generate`: the whole loop with classifier-free guidance on the logits, as `AmusedPipeline`
  (from an all-mask grid, or from a partly masked one at a later step, as aMUSEd's img2img and
  inpainting pipelines start).

Randomness comes from an `np.random.Generator` or, for exact replays across implementations, from
the uniform draws themselves (`noise=`). `uvit_torch.maskgit` is the twin on tensors.
"""

import math

import numpy as np

from . import functional as F
from .checks import (check_floating, check_integer, check_numpy, check_numpy_model,
                     check_rank)
from .module import as_rng

__all__ = ["mask_schedule", "mask_ratio", "masked_count", "add_noise", "decoding_temperatures",
           "linspace_float32", "scheduler_temperatures", "gumbel_noise", "masked_decoding_step",
           "generate"]


def mask_schedule(ratio, schedule="cosine"):
    """Fraction of the tokens that stay masked once a fraction `ratio` in (0, 1] of the steps is
    done: cos(ratio pi / 2) ("cosine", aMUSEd's default) or 1 - ratio ("linear")."""
    if schedule == "cosine":
        return math.cos(ratio * math.pi / 2)
    if schedule == "linear":
        return 1.0 - ratio
    raise ValueError(f"mask_schedule: schedule must be 'cosine' or 'linear', got {schedule!r}")


def mask_ratio(step, num_steps, schedule="cosine"):
    """The fraction of the tokens masked once 0-based step `step` of `num_steps` is done, as a
    float32 computed exactly as diffusers' `AmusedScheduler` computes it (on float32 tensors):
    r = (step + 1) / num_steps, then cos(r pi / 2) ("cosine") or 1 - r ("linear")."""
    r = np.float32(step + 1) / np.float32(num_steps)
    if schedule == "cosine":
        return np.cos(r * np.float32(math.pi) / np.float32(2.0))
    if schedule == "linear":
        return np.float32(1.0) - r
    raise ValueError(f"mask_ratio: schedule must be 'cosine' or 'linear', got {schedule!r}")


def masked_count(num_tokens, step, num_steps, schedule="cosine", starting_mask_ratio=1.0):
    """How many of `num_tokens` stay masked after 0-based step `step` of `num_steps`:
    floor(L * starting_mask_ratio * mask_schedule((step + 1) / num_steps)).

    Computed in float32, exactly as diffusers' `AmusedScheduler` computes it (on float32 tensors),
    not in float64: the two disagree where the product lands on an integer. At step 8 of 12 the
    cosine is cos(pi / 3) = 0.5; float32 gives 0.49999997, so floor(256 * 0.49999997) = 127 tokens
    stay masked on a 16x16 grid (31 on 8x8), where float64 would give 128 (32).
    """
    m = mask_ratio(step, num_steps, schedule)
    return int(np.floor(np.float32(num_tokens) * (np.float32(starting_mask_ratio) * m)))


def add_noise(tokens, step, num_steps, mask_token_id, rng=None, schedule="cosine", noise=None):
    """Mask a grid of known tokens at random, as much as the schedule has masked after step
    `step`: diffusers' `AmusedScheduler.add_noise` (aMUSEd's img2img starts from this).

    tokens: (B, H, W) ids. Each token is masked independently where u < mask_ratio(step), u a
    uniform draw (B, H*W) from `rng`, or given as `noise`. diffusers names the step by its
    timestep, num_steps - 1 - step. Returns the new grid (B, H, W); `tokens` is left as it was.
    (After the last step the cosine ratio is cos(pi / 2), -4.4e-8 in float32: nothing is masked.)
    """
    check_integer("add_noise: tokens", tokens)
    check_rank("add_noise: tokens", tokens, 3, "(B, H, W)")
    B, H, W = tokens.shape
    u = as_rng(rng).random((B, H * W)) if noise is None else np.asarray(noise)
    masking = u.reshape(B, H, W) < mask_ratio(step, num_steps, schedule)  # (B, H*W) -> (B, H, W)
    return np.where(masking, mask_token_id, tokens)


def decoding_temperatures(temperature, num_steps):
    """The per-step Gumbel temperatures (num_steps,) float32, as aMUSEd's scheduler sets them: a
    pair (a, b) goes linearly from a to b, a single number t from t to 0.01; an array of
    num_steps values is used as it is (pass `AmusedScheduler.temperatures` to replay diffusers
    exactly: torch's float32 linspace can differ from this correctly rounded one by an ulp)."""
    if isinstance(temperature, np.ndarray) or hasattr(temperature, "numpy"):
        temps = np.asarray(temperature, dtype=np.float32).reshape(-1)
        if len(temps) != num_steps:
            raise ValueError(f"decoding_temperatures: expected {num_steps} temperatures, one per "
                             f"step, got {len(temps)}")
        return temps
    a, b = (temperature if isinstance(temperature, (tuple, list)) else (temperature, 0.01))
    return np.linspace(a, b, num_steps).astype(np.float32)


def linspace_float32(start, end, num):
    """`torch.linspace(start, end, num)` in float32 on the CPU, bit for bit: (num,) float32.

    torch computes step = (end - start) / (num - 1) in float32, then the first half of the values
    as start + step * i and the second half as end - step * (num - 1 - i), each a fused
    multiply-add (one rounding). The result can differ from `np.linspace`'s correctly rounded
    values by an ulp (at (2, 0) over 12 steps, two of the twelve do). Each fused product is done
    here in float64, where it is exact, then rounded once to float32.
    """
    start, end = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([start], dtype=np.float32)
    step = np.float64((end - start) / np.float32(num - 1))  # a float32 step, held in float64
    i = np.arange(num)
    first = np.float64(start) + step * i                  # exact in float64, rounded below
    second = np.float64(end) - step * (num - 1 - i)
    return np.where(i < num // 2, first, second).astype(np.float32)


def scheduler_temperatures(temperature, num_steps):
    """The per-step temperatures (num_steps,) float32 exactly as diffusers' `AmusedScheduler`
    sets them: a pair (a, b) is `torch.linspace(a, b, num_steps)`, a number t is
    `torch.linspace(t, 0.01, num_steps)` (`linspace_float32`, without torch); an array of
    num_steps values is used as it is. The pipelines use these, so that they replay diffusers'
    draws exactly; `decoding_temperatures` is the correctly rounded variant."""
    if isinstance(temperature, np.ndarray) or hasattr(temperature, "numpy"):
        return decoding_temperatures(temperature, num_steps)
    a, b = (temperature if isinstance(temperature, (tuple, list)) else (temperature, 0.01))
    return linspace_float32(a, b, num_steps)


def gumbel_noise(u):
    """Gumbel(0, 1) samples from uniforms u in [0, 1): -log(-log(u)), both logs clamped at 1e-20."""
    return -np.log(np.maximum(-np.log(np.maximum(u, 1e-20)), 1e-20))


def masked_decoding_step(logits, tokens, step, num_steps, mask_token_id, temperature=1.0,
                         rng=None, schedule="cosine", starting_mask_ratio=1.0, noise=None):
    """One step of MaskGIT decoding, as diffusers' `AmusedScheduler.step` takes it.

    logits: (B, K, H, W) from the model; tokens: (B, H, W) ids, masked positions = mask_token_id.
    step: 0-based index of this step among `num_steps`. temperature: scale of the Gumbel noise
    added to the confidences (aMUSEd anneals it from 2 to 0 over the steps).
    Returns (next_tokens, predicted), both (B, H, W):
      1. sample a code for every position from softmax(logits); known tokens are kept;
      2. after the last step, return the prediction; otherwise keep the mask on the
         n = `masked_count(L, step, num_steps, ...)` least confident predictions (at least 1, at
         most one less than are masked now; the count in float32, as diffusers), where the
         confidence is
         log p(sampled code) + temperature * Gumbel noise and known tokens are never re-masked.
    Randomness: two uniform arrays (B, L), one to sample codes (by inverse CDF) and one for the
    Gumbel noise, drawn from `rng` (Generator or seed) unless given as `noise=(u_sample, u_gumbel)`.
    """
    check_floating("masked_decoding_step: logits", logits)
    check_rank("masked_decoding_step: logits", logits, 4, "(B, K, H, W)")
    check_integer("masked_decoding_step: tokens", tokens)
    B, K, H, W = logits.shape
    if tuple(tokens.shape) != (B, H, W):
        raise ValueError(f"masked_decoding_step: expected tokens of shape {(B, H, W)} to match "
                         f"logits {tuple(logits.shape)}, got {tuple(tokens.shape)}")
    if not 0 <= step < num_steps:
        raise ValueError(f"masked_decoding_step: expected 0 <= step < {num_steps}, got {step}")
    L = H * W
    if noise is None:
        rng = as_rng(rng)
        noise = (rng.random((B, L)), rng.random((B, L)))
    u_sample, u_gumbel = (np.asarray(u).reshape(B, L) for u in noise)  # 2 x (B, L)
    tok = tokens.reshape(B, L)                            # (B, H, W) -> (B, L)
    unknown = tok == mask_token_id                        # (B, L)
    scores = logits.reshape(B, K, L).transpose(0, 2, 1)   # (B, K, H, W) -> (B, L, K)
    probs = F.softmax(scores.astype(np.float64), axis=-1)  # (B, L, K), float64 for sampling
    # 1. sample by inverse CDF: the first code whose cumulative probability reaches u
    cdf = np.cumsum(probs, axis=-1)                       # (B, L, K)
    sampled = np.sum(cdf < (u_sample * cdf[..., -1])[..., None], axis=-1)
    sampled = np.minimum(sampled, K - 1)                  # (B, L)
    predicted = np.where(unknown, sampled, tok)
    if step == num_steps - 1:
        out = predicted.reshape(B, H, W)                  # (B, L) -> (B, H, W)
        return out, out
    # 2. how many stay masked (in float32, as diffusers' AmusedScheduler)
    mask_len = np.full(B, masked_count(L, step, num_steps, schedule, starting_mask_ratio))
    mask_len = np.minimum(unknown.sum(axis=-1) - 1, mask_len)
    mask_len = np.maximum(1, mask_len)                    # (B,)
    # 3. confidence of each prediction; known tokens get the largest value so they stay
    chosen = np.take_along_axis(probs, predicted[..., None], axis=-1)[..., 0]  # (B, L)
    chosen = np.where(unknown, chosen, np.finfo(chosen.dtype).max)
    confidence = np.log(np.maximum(chosen, 1e-20)) + temperature * gumbel_noise(u_gumbel)
    cut = np.take_along_axis(np.sort(confidence, axis=-1), mask_len[:, None], axis=-1)  # (B, 1)
    masking = confidence < cut
    next_tokens = np.where(masking, mask_token_id, predicted)
    return next_tokens.reshape(B, H, W), predicted.reshape(B, H, W)  # (B, L) -> (B, H, W)


def generate(model, encoder_hidden_states, pooled_text_emb, micro_conds, height, width,
             num_steps=12, temperature=(2.0, 0.0), mask_token_id=None, guidance_scale=0.0,
             negative_encoder_hidden_states=None, negative_pooled_text_emb=None, rng=None,
             schedule="cosine", noise=None, return_history=False, tokens=None, start_step=0,
             starting_mask_ratio=1.0, callback=None):
    """Decode a grid of token ids from nothing but masks, as aMUSEd's pipeline does.

    Starts from a (B, height, width) grid of `mask_token_id` (default vocab_size - 1, aMUSEd's
    choice), then runs `num_steps` of model + `masked_decoding_step`, with the temperature going
    linearly from temperature[0] to temperature[1] (a single number t means t -> 0.01).
    With guidance_scale > 1 the model also runs on the negative (unconditional) text, and the
    logits become uncond + guidance_scale * (cond - uncond).
    Starting elsewhere (aMUSEd's img2img and inpainting): `tokens` (B, height, width) is the
    starting grid, some of it masked; `start_step` the first step of the `num_steps`-step schedule
    to run (the steps before it are skipped, as diffusers' `strength` skips them);
    `starting_mask_ratio` scales the masked count of every step (`masked_count`).
    noise: optional list of (u_sample, u_gumbel) pairs, one per step that runs (num_steps -
    start_step), for exact reproducibility across implementations. callback: called as
    callback(step, tokens) after every step. Returns the final tokens (B, height, width), and the
    list of the token grids after every step run if `return_history`.
    """
    check_numpy_model("generate", model)
    for name, value in (("encoder_hidden_states", encoder_hidden_states),
                        ("pooled_text_emb", pooled_text_emb), ("micro_conds", micro_conds)):
        check_numpy(f"generate: {name}", value)
    check_numpy("generate: negative_encoder_hidden_states", negative_encoder_hidden_states,
                optional=True)
    check_numpy("generate: negative_pooled_text_emb", negative_pooled_text_emb, optional=True)
    B = encoder_hidden_states.shape[0]
    if mask_token_id is None:
        mask_token_id = model.config["vocab_size"] - 1
    if not 0 <= start_step < num_steps:
        raise ValueError(f"generate: expected 0 <= start_step < num_steps = {num_steps}, got "
                         f"{start_step}")
    if noise is not None and len(noise) != num_steps - start_step:
        raise ValueError(f"generate: expected one (u_sample, u_gumbel) pair per step that runs, "
                         f"{num_steps - start_step}, got {len(noise)}")
    temps = decoding_temperatures(temperature, num_steps)   # float32, as the scheduler's
    rng = as_rng(rng)
    guided = guidance_scale > 1.0
    if guided:
        if negative_encoder_hidden_states is None or negative_pooled_text_emb is None:
            raise ValueError("generate: guidance_scale > 1 needs negative_encoder_hidden_states "
                             "and negative_pooled_text_emb")
        ehs = np.concatenate([negative_encoder_hidden_states, encoder_hidden_states])  # (2B, S, E)
        pooled = np.concatenate([negative_pooled_text_emb, pooled_text_emb])           # (2B, D_p)
        mc = np.concatenate([micro_conds, micro_conds])                                # (2B, M)
    else:
        ehs, pooled, mc = encoder_hidden_states, pooled_text_emb, micro_conds
    if tokens is None:
        tokens = np.full((B, height, width), mask_token_id, dtype=np.int64)
    elif tuple(tokens.shape) != (B, height, width):
        raise ValueError(f"generate: expected starting tokens of shape {(B, height, width)}, got "
                         f"{tuple(tokens.shape)}")
    history = []
    for step in range(start_step, num_steps):
        model_in = np.concatenate([tokens, tokens]) if guided else tokens  # (2B, H, W) if guided
        logits = model(model_in, ehs, pooled, mc)         # (B or 2B, K, H, W)
        if guided:
            uncond, cond = logits[:B], logits[B:]
            logits = uncond + guidance_scale * (cond - uncond)
        tokens, _ = masked_decoding_step(
            logits, tokens, step, num_steps, mask_token_id, temperature=float(temps[step]),
            rng=rng, schedule=schedule, starting_mask_ratio=starting_mask_ratio,
            noise=None if noise is None else noise[step - start_step])
        history.append(tokens)
        if callback is not None:
            callback(step, tokens)
    return (tokens, history) if return_history else tokens
