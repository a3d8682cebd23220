"""Masked-token generation (MaskGIT) on tensors: the twin of `uvit_numpy.maskgit`, with the same
functions and arguments (uniform draws from a `torch.Generator`, or given as `noise=` to replay
the NumPy side or diffusers exactly). The masked count and the temperatures are the NumPy module's
own functions (they compute in float32, as diffusers' `AmusedScheduler`).
"""

import torch

from uvit_numpy.checks import check_floating, check_integer, check_rank
from uvit_numpy.maskgit import (decoding_temperatures, linspace_float32,  # noqa: F401
                                mask_ratio, mask_schedule, masked_count, scheduler_temperatures)

from . import functional as UF

__all__ = ["mask_schedule", "mask_ratio", "masked_count", "add_noise", "decoding_temperatures",
           "linspace_float32", "scheduler_temperatures", "gumbel_noise", "masked_decoding_step",
           "generate"]


def add_noise(tokens, step, num_steps, mask_token_id, generator=None, schedule="cosine",
              noise=None):
    """Mask known tokens at random as much as step `step` of the schedule has (see
    `uvit_numpy.maskgit.add_noise`): where u < mask_ratio(step), u (B, H*W) uniforms from
    `generator` or given as `noise`. tokens (B, H, W) -> (B, H, W)."""
    UF.check_tensor("add_noise: tokens", tokens)
    check_integer("add_noise: tokens", tokens)
    check_rank("add_noise: tokens", tokens, 3, "(B, H, W)")
    B, H, W = tokens.shape
    u = (torch.rand((B, H * W), generator=generator, dtype=torch.float64) if noise is None
         else torch.as_tensor(noise))
    masking = u.reshape(B, H, W) < float(mask_ratio(step, num_steps, schedule))
    return torch.where(masking, mask_token_id, tokens)


def gumbel_noise(u):
    """Gumbel(0, 1) samples from uniforms u: -log(-log(u)), both logs clamped at 1e-20."""
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def masked_decoding_step(logits, tokens, step, num_steps, mask_token_id, temperature=1.0,
                         generator=None, schedule="cosine", starting_mask_ratio=1.0, noise=None):
    """One MaskGIT step (see `uvit_numpy.maskgit.masked_decoding_step`). logits (B, K, H, W),
    tokens (B, H, W). Uniforms come from `generator` (a torch.Generator) unless given as
    `noise=(u_sample, u_gumbel)`. Returns (next_tokens, predicted), both (B, H, W)."""
    UF.check_tensor("masked_decoding_step: logits", logits)
    UF.check_tensor("masked_decoding_step: tokens", tokens)
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
        noise = (torch.rand((B, L), generator=generator, dtype=torch.float64),
                 torch.rand((B, L), generator=generator, dtype=torch.float64))
    u_sample, u_gumbel = (torch.as_tensor(u).reshape(B, L) for u in noise)
    tok = tokens.reshape(B, L)
    unknown = tok == mask_token_id
    probs = torch.softmax(logits.reshape(B, K, L).transpose(1, 2).to(torch.float64), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    sampled = (cdf < (u_sample.to(torch.float64) * cdf[..., -1])[..., None]).sum(dim=-1)
    sampled = sampled.clamp(max=K - 1)
    predicted = torch.where(unknown, sampled, tok)
    if step == num_steps - 1:
        out = predicted.reshape(B, H, W)
        return out, out
    count = masked_count(L, step, num_steps, schedule, starting_mask_ratio)  # float32, as diffusers
    mask_len = torch.full((B,), count, dtype=torch.long)
    mask_len = torch.minimum(unknown.sum(dim=-1) - 1, mask_len).clamp(min=1)
    chosen = torch.gather(probs, -1, predicted[..., None])[..., 0]
    chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
    confidence = (torch.log(chosen.clamp(min=1e-20))
                  + temperature * gumbel_noise(u_gumbel.to(torch.float64)))
    cut = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len[:, None])
    next_tokens = torch.where(confidence < cut, mask_token_id, predicted)
    return next_tokens.reshape(B, H, W), predicted.reshape(B, H, W)


@torch.no_grad()
def generate(model, encoder_hidden_states, pooled_text_emb, micro_conds, height, width,
             num_steps=12, temperature=(2.0, 0.0), mask_token_id=None, guidance_scale=0.0,
             negative_encoder_hidden_states=None, negative_pooled_text_emb=None, generator=None,
             schedule="cosine", noise=None, return_history=False, tokens=None, start_step=0,
             starting_mask_ratio=1.0, callback=None):
    """MaskGIT decoding from an all-mask grid, or from `tokens` at `start_step` (see
    `uvit_numpy.maskgit.generate`); callback is called as `callback(step, tokens)` after every
    step."""
    for name, value in (("encoder_hidden_states", encoder_hidden_states),
                        ("pooled_text_emb", pooled_text_emb), ("micro_conds", micro_conds)):
        UF.check_tensor(f"generate: {name}", value)
    UF.check_tensor("generate: negative_encoder_hidden_states", negative_encoder_hidden_states,
                    optional=True)
    UF.check_tensor("generate: negative_pooled_text_emb", negative_pooled_text_emb,
                    optional=True)
    UF.check_tensor("generate: tokens", tokens, optional=True)
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
    guided = guidance_scale > 1.0
    if guided:
        if negative_encoder_hidden_states is None or negative_pooled_text_emb is None:
            raise ValueError("generate: guidance_scale > 1 needs negative_encoder_hidden_states "
                             "and negative_pooled_text_emb")
        ehs = torch.cat([negative_encoder_hidden_states, encoder_hidden_states])
        pooled = torch.cat([negative_pooled_text_emb, pooled_text_emb])
        mc = torch.cat([micro_conds, micro_conds])
    else:
        ehs, pooled, mc = encoder_hidden_states, pooled_text_emb, micro_conds
    if tokens is None:
        tokens = torch.full((B, height, width), mask_token_id, dtype=torch.long)
    elif tuple(tokens.shape) != (B, height, width):
        raise ValueError(f"generate: expected starting tokens of shape {(B, height, width)}, got "
                         f"{tuple(tokens.shape)}")
    history = []
    for step in range(start_step, num_steps):
        model_in = torch.cat([tokens, tokens]) if guided else tokens
        logits = model(model_in, ehs, pooled, mc)
        if guided:
            uncond, cond = logits[:B], logits[B:]
            logits = uncond + guidance_scale * (cond - uncond)
        tokens, _ = masked_decoding_step(
            logits, tokens, step, num_steps, mask_token_id, temperature=float(temps[step]),
            generator=generator, schedule=schedule, starting_mask_ratio=starting_mask_ratio,
            noise=None if noise is None else noise[step - start_step])
        history.append(tokens)
        if callback is not None:
            callback(step, tokens)
    return (tokens, history) if return_history else tokens
