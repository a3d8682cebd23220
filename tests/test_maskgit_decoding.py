"""MaskGIT decoding equals diffusers' `AmusedScheduler` at aMUSEd's real step counts.

The masked count after each step is computed in float32 as the scheduler computes it (at step 8
of 12, cos(pi/3) is 0.49999997 in float32: 127 masked on 16x16, not 128); every (steps, grid) pair
is checked, and whole 12- and 24-step decodes on 8x8 and 16x16 grids agree step by step with the
scheduler, its two random draws replaced by the same uniforms on both sides.
"""

import numpy as np
import pytest
import torch

import uvit_numpy.maskgit as NM
import uvit_numpy.uvit2d as N
import uvit_torch.maskgit as TM

amused = pytest.importorskip("diffusers.schedulers.scheduling_amused")
MASK = 999


def _patch_draws(monkeypatch, u_sample, u_gumbel, K):
    """Make AmusedScheduler draw from our uniforms: inverse-CDF sampling for torch.multinomial
    (as our step samples) and Gumbel noise from the given uniforms."""
    def multinomial(probs, num_samples, generator=None):
        cdf = torch.cumsum(probs, -1)
        u = torch.from_numpy(u_sample).reshape(-1, 1).to(cdf.dtype) * cdf[:, -1:]
        return (cdf < u).sum(-1, keepdim=True).clamp(max=K - 1)
    monkeypatch.setattr(torch, "multinomial", multinomial)
    monkeypatch.setattr(amused, "gumbel_noise",
                        lambda t, generator=None: torch.from_numpy(NM.gumbel_noise(u_gumbel))
                        .to(t.dtype))


@pytest.mark.parametrize("L", [16, 49, 64, 256])
def test_masked_count_equals_the_scheduler_for_every_step_count(L):
    """From an all-mask grid the scheduler leaves exactly its count masked: compare ours with it
    for every step of every step count from 2 to 32, and 48 and 64."""
    sched = amused.AmusedScheduler(mask_token_id=MASK)
    logits = torch.zeros((1, 4, 1, L))
    sample = torch.full((1, 1, L), MASK)
    mismatches = []
    for n in [*range(2, 33), 48, 64]:
        sched.set_timesteps(n)
        for step in range(n - 1):
            out = sched.step(logits, sched.timesteps[step], sample).prev_sample
            theirs = int((out == MASK).sum())
            ours = max(1, min(L - 1, NM.masked_count(L, step, n)))
            if ours != theirs:
                mismatches.append((n, step, ours, theirs))
    assert not mismatches, f"L={L}: (steps, step, ours, scheduler's) {mismatches[:5]}"


def test_masked_count_at_the_cosine_half_point():
    """The case that float64 gets wrong: step index 7 of 12 lands on cos(pi/3) = 0.5."""
    assert NM.masked_count(256, 7, 12) == 127
    assert NM.masked_count(64, 7, 12) == 31
    assert np.floor(256 * NM.mask_schedule(8 / 12)) == 128     # float64: one more


@pytest.mark.parametrize("num_steps", [12, 24])
@pytest.mark.parametrize("side", [8, 16])
def test_whole_decode_equals_the_scheduler(monkeypatch, num_steps, side):
    """A full decode from an all-mask grid, logits drawn fresh each step (a stand-in model):
    ours (NumPy and torch) and the scheduler produce the same grid after every step."""
    B, K, L = 2, 32, side * side
    rng = np.random.default_rng(num_steps * 100 + side)
    sched = amused.AmusedScheduler(mask_token_id=MASK)
    sched.set_timesteps(num_steps, temperature=(2.0, 0.0))
    temps = NM.decoding_temperatures(sched.temperatures.numpy(), num_steps)
    assert np.allclose(temps, NM.decoding_temperatures((2.0, 0.0), num_steps), rtol=0, atol=3e-7)
    ours = np.full((B, side, side), MASK)
    ours_t = torch.from_numpy(ours.copy())
    theirs = torch.from_numpy(ours.copy())
    for step in range(num_steps):
        logits = (3 * rng.standard_normal((B, K, side, side))).astype(np.float32)
        noise = (rng.random((B, L)), rng.random((B, L)))
        _patch_draws(monkeypatch, *noise, K)
        theirs = sched.step(torch.from_numpy(logits), sched.timesteps[step], theirs).prev_sample
        ours, _ = NM.masked_decoding_step(logits, ours, step, num_steps, MASK,
                                         temperature=float(temps[step]), noise=noise)
        ours_t, _ = TM.masked_decoding_step(torch.from_numpy(logits), ours_t, step, num_steps,
                                           MASK, temperature=float(temps[step]),
                                           noise=tuple(torch.from_numpy(u) for u in noise))
        assert np.array_equal(ours, theirs.numpy()), f"step {step} of {num_steps} on {side}^2"
        assert np.array_equal(ours, ours_t.numpy())
    assert (ours != MASK).all()


@pytest.mark.parametrize("num_steps, side", [(12, 8), (24, 16)])
def test_generate_equals_the_scheduler_driven_by_the_same_model(monkeypatch, num_steps, side):
    """`generate` (guided, from all masks) against aMUSEd's pipeline loop around the scheduler:
    the same model's logits, guided as uncond + s (cond - uncond), then `AmusedScheduler.step`."""
    cfg = N.resolve_config("tiny", downsample=False, upsample=False, vocab_size=33,
                           codebook_size=32)
    model = N.UVit2DModel(**cfg, rng=0).eval()
    B, L, mask = 2, side * side, cfg["vocab_size"] - 1
    rng = np.random.default_rng(side)
    ehs = rng.standard_normal((B, 3, cfg["encoder_hidden_size"])).astype(np.float32)
    pooled = rng.standard_normal((B, cfg["cond_embed_dim"])).astype(np.float32)
    neg_ehs, neg_pooled = np.zeros_like(ehs), np.zeros_like(pooled)
    micro = np.tile(np.float32([256, 256, 0, 0, 6]), (B, 1))
    noise = [(rng.random((B, L)), rng.random((B, L))) for _ in range(num_steps)]
    sched = amused.AmusedScheduler(mask_token_id=mask)
    sched.set_timesteps(num_steps, temperature=(2.0, 0.0))
    ours, history = NM.generate(model, ehs, pooled, micro, side, side, num_steps=num_steps,
                               temperature=sched.temperatures.numpy(), guidance_scale=4.0,
                               negative_encoder_hidden_states=neg_ehs,
                               negative_pooled_text_emb=neg_pooled, noise=noise,
                               return_history=True)
    tokens = torch.full((B, side, side), mask)
    for step in range(num_steps):
        batch = np.concatenate([tokens.numpy(), tokens.numpy()])
        logits = model(batch, np.concatenate([neg_ehs, ehs]), np.concatenate([neg_pooled, pooled]),
                       np.concatenate([micro, micro]))
        guided = logits[:B] + 4.0 * (logits[B:] - logits[:B])
        _patch_draws(monkeypatch, *noise[step], cfg["codebook_size"])
        tokens = sched.step(torch.from_numpy(guided), sched.timesteps[step], tokens).prev_sample
        assert np.array_equal(history[step], tokens.numpy()), f"step {step} of {num_steps}"
    assert np.array_equal(ours, tokens.numpy()) and (ours != mask).all()


def test_scheduler_temperatures_are_torch_linspace_bit_for_bit():
    """`linspace_float32` is torch's float32 linspace (fused multiply-adds from both ends), which
    `np.linspace` misses by an ulp at aMUSEd's own (2, 0) over 12 steps."""
    rng = np.random.default_rng(0)
    pairs = [(2, 0), (3, 0), (2.5, 0.5), (5, 0.01)] + [tuple(rng.uniform(-5, 5, 2))
                                                        for _ in range(20)]
    for a, b in pairs:
        for n in range(1, 70):
            ours = NM.linspace_float32(a, b, n)
            assert ours.dtype == np.float32
            assert np.array_equal(ours, torch.linspace(a, b, n).numpy()), (a, b, n)
    sched = amused.AmusedScheduler(mask_token_id=MASK)
    for temperature in [(2, 0), 3.0, [1.5, 0.5]]:
        sched.set_timesteps(12, temperature=temperature)
        assert np.array_equal(NM.scheduler_temperatures(temperature, 12),
                              sched.temperatures.numpy())
    assert not np.array_equal(NM.decoding_temperatures((2, 0), 12),
                              NM.scheduler_temperatures((2, 0), 12))    # the ulp that differs


@pytest.mark.parametrize("schedule, start_step", [("cosine", 5), ("linear", 0)])
def test_generate_from_a_partly_masked_grid_equals_the_scheduler(monkeypatch, schedule,
                                                                 start_step):
    """`generate(tokens=..., start_step=..., starting_mask_ratio=...)` (img2img and inpainting)
    against the scheduler's loop from the same grid and step, with its `starting_mask_ratio`."""
    cfg = N.resolve_config("tiny", downsample=False, upsample=False, vocab_size=33,
                           codebook_size=32)
    model = N.UVit2DModel(**cfg, rng=1).eval()
    B, side, num_steps, mask = 2, 8, 12, cfg["vocab_size"] - 1
    L = side * side
    rng = np.random.default_rng(7)
    ehs = rng.standard_normal((B, 3, cfg["encoder_hidden_size"])).astype(np.float32)
    pooled = rng.standard_normal((B, cfg["cond_embed_dim"])).astype(np.float32)
    micro = np.tile(np.float32([16, 16, 0, 0, 6]), (B, 1))
    start = rng.integers(0, 32, (B, side, side))
    start[rng.random((B, side, side)) < 0.4] = mask
    ratio = np.float32((start == mask).sum()) / np.float32(start.size)
    noise = [(rng.random((B, L)), rng.random((B, L))) for _ in range(num_steps - start_step)]
    sched = amused.AmusedScheduler(mask_token_id=mask, masking_schedule=schedule)
    sched.set_timesteps(num_steps, temperature=(2, 0))
    seen = []
    ours, history = NM.generate(model, ehs, pooled, micro, side, side, num_steps=num_steps,
                                temperature=NM.scheduler_temperatures((2, 0), num_steps),
                                schedule=schedule, noise=noise, return_history=True,
                                tokens=start.copy(), start_step=start_step,
                                starting_mask_ratio=ratio,
                                callback=lambda step, tokens: seen.append(step))
    assert seen == list(range(start_step, num_steps))
    tokens_t = TM.generate(_torch_model(model, cfg), *(torch.from_numpy(x) for x in (ehs, pooled,
                                                                                    micro)),
                           side, side, num_steps=num_steps,
                           temperature=NM.scheduler_temperatures((2, 0), num_steps),
                           schedule=schedule, tokens=torch.from_numpy(start.copy()),
                           noise=[tuple(torch.from_numpy(u) for u in pair) for pair in noise],
                           start_step=start_step, starting_mask_ratio=ratio)
    tokens = torch.from_numpy(start.copy())
    for k, step in enumerate(range(start_step, num_steps)):
        logits = model(tokens.numpy(), ehs, pooled, micro)
        _patch_draws(monkeypatch, *noise[k], cfg["codebook_size"])
        tokens = sched.step(torch.from_numpy(logits), sched.timesteps[step], tokens,
                            starting_mask_ratio=torch.tensor(ratio)).prev_sample
        assert np.array_equal(history[k], tokens.numpy()), f"step {step} of {num_steps}"
    assert np.array_equal(ours, tokens.numpy()) and (ours != mask).all()
    assert np.array_equal(ours, tokens_t.numpy())
    with pytest.raises(ValueError, match="one .u_sample, u_gumbel. pair per step that runs"):
        NM.generate(model, ehs, pooled, micro, side, side, num_steps=num_steps, noise=noise[1:],
                    tokens=start, start_step=start_step)


def _torch_model(model, cfg):
    """The torch twin of a NumPy UVit2DModel, holding the same weights."""
    import uvit_torch.uvit2d as T
    twin = T.UVit2DModel(**cfg).eval()
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return twin


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_add_noise_equals_the_scheduler(monkeypatch, schedule):
    """`add_noise` masks where the scheduler's `add_noise` does, for every step of 12 (the
    scheduler's own uniform draw replaced by ours, in float32 as torch.rand draws it)."""
    sched = amused.AmusedScheduler(mask_token_id=MASK, masking_schedule=schedule)
    sched.set_timesteps(12)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 32, (2, 8, 8))
    for step in range(12):
        u = rng.random((2, 64)).astype(np.float32)
        monkeypatch.setattr(torch, "rand",
                            lambda shape, u=u, **kw: torch.from_numpy(u).reshape(shape))
        theirs = sched.add_noise(torch.from_numpy(tokens), sched.timesteps[step])
        monkeypatch.undo()
        ours = NM.add_noise(tokens, step, 12, MASK, schedule=schedule, noise=u)
        ours_t = TM.add_noise(torch.from_numpy(tokens), step, 12, MASK, schedule=schedule,
                              noise=torch.from_numpy(u))
        assert np.array_equal(ours, theirs.numpy()), f"step {step}"
        assert np.array_equal(ours, ours_t.numpy())
        assert (ours == MASK).any() == (step < 11)       # after the last step: nothing masked
