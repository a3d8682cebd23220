"""The samplers: whole loops against the torch twins and against stock diffusers, the timesteps,
add_noise, guided sampling in both packages, and clear errors.

Against diffusers the floor is its float32 schedule tables (and DPM-Solver's float32 step): every
loop is within 1e-5 relative, except DPM-Solver on the cosine schedule from t = 999, measured at
~1e-4 (abar_999 = 2.4e-9, so the x0 estimate divides diffusers' float32 rounding by
sqrt(abar) = 5e-5) and checked at 2e-4 with that cause named. With `table_dtype="float32"`
(diffusers' tables and coefficients, the cases named "float32 tables", that one included) every
loop agrees to ~4e-7; tests/test_scheduler_float32_tables.py reproduces diffusers' own test
numbers with it.
"""

import numpy as np
import pytest
import torch

import uvit_numpy as N
import uvit_torch as T
from tests.parity_params import assert_case_passes, case_params
from uvit_numpy import sampling as NSamp
from uvit_numpy import schedulers as NS
from uvit_torch import parity
from uvit_torch import sampling as TSamp
from uvit_torch import schedulers as TS
from uvit_torch.parity import schedulers as PS
from uvit_torch.parity.harness import compare, make_pair

diffusers = pytest.importorskip("diffusers")
DIFFUSERS = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler,
             "dpmsolver++": diffusers.DPMSolverMultistepScheduler}


@pytest.mark.parametrize("case, dtype, batch", case_params(PS.cases()))
def test_sampling_loop_numpy_vs_torch(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


@pytest.mark.parametrize("case, dtype, batch",
                         case_params(PS.diffusers_cases(dtypes=("float32", "float64"))))
def test_sampling_loop_vs_stock_diffusers(case, dtype, batch):
    """float32 and float64 inputs alike: diffusers' float32 tables set the floor, under 1e-5."""
    row = parity.run_case(case, dtype, batch)
    assert row.max_rel <= 1e-5, row.detail


@pytest.mark.parametrize("name, bound", list(PS.DIFFUSERS_FLOOR_EXCEPTIONS.items()))
def test_cosine_schedule_from_999_vs_diffusers_at_its_measured_floor(name, bound):
    loop = next(loop for loop in PS.LOOPS if loop[0] == name)
    case = PS._torch_vs_diffusers(*loop, dtypes=("float32",))
    row = parity.run_case(case, "float32", 4)
    assert row.max_rel <= bound, row.detail


def test_the_cosine_floor_is_diffusers_float32_step_not_its_table():
    """With diffusers' own float32 abar table in our float64 scheduler the gap stays ~1e-4, so it
    comes from float32 arithmetic inside diffusers' step, not from the table (table_dtype="float32"
    rounds the step's coefficients too, and closes it: parity case "DPM++ 2M float32 tables
    cosine linspace 15 (from t=999)", 4e-7)."""
    kind, kw, steps = "dpmsolver++", dict(beta_schedule="squaredcos_cap_v2"), 15
    theirs = DIFFUSERS[kind](**kw)
    ours = NS.SCHEDULERS[kind](**kw)
    ours.alphas_cumprod = theirs.alphas_cumprod.double().numpy()
    x, noises = PS._inputs("floor", 4, np.float64, steps)
    a = PS.run_loop(ours, x.copy(), steps, None, noises, "numpy")
    b = PS.run_loop(theirs, torch.from_numpy(x), steps, None, noises, "diffusers")
    assert 2e-5 < compare("floor", a, b).max_rel < 2e-4


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 30, 50, 1000])
def test_timesteps_are_diffusers(kind, spacing, steps):
    if kind == "dpmsolver++" and steps == 1000:
        steps = 999
    kw = dict(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ours, twin, theirs = NS.SCHEDULERS[kind](**kw), TS.SCHEDULERS[kind](**kw), DIFFUSERS[kind](**kw)
    if spacing == "leading" and steps >= 999:
        # the offset moves the last timestep to 1000, past the schedule: diffusers accepts it
        # and fails at the first step with an IndexError; we say so at once
        with pytest.raises(ValueError, match=r"steps_offset 1 moves the timesteps to \[.*, 1000\]"):
            ours.set_timesteps(steps)
        return
    for s in (ours, twin, theirs):
        s.set_timesteps(steps)
    assert np.array_equal(ours.timesteps, theirs.timesteps.numpy())
    assert torch.equal(twin.timesteps, theirs.timesteps)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_and_add_noise_match_diffusers(schedule):
    kw = dict(beta_schedule=schedule)
    if schedule == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    ours, theirs = NS.DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
    # diffusers' table is float32; the cosine's last betas are capped at 0.999, so 1 - beta is
    # 0.001 with a float32 rounding of 6e-8 / 0.001 = 6e-5 relative
    rtol = 1e-4 if schedule == "squaredcos_cap_v2" else 3e-6
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.double().numpy(),
                               rtol=rtol)
    rng = np.random.default_rng(0)
    x, eps = rng.standard_normal((5, 1, 4, 4)), rng.standard_normal((5, 1, 4, 4))
    t = np.array([0, 10, 500, 900, 999])
    a = ours.add_noise(x, eps, t)
    b = theirs.add_noise(torch.from_numpy(x), torch.from_numpy(eps), torch.from_numpy(t))
    assert compare("add_noise", a, b).max_rel <= 1e-5
    c = TS.DDPMScheduler(**kw).add_noise(torch.from_numpy(x), torch.from_numpy(eps),
                                         torch.from_numpy(t))
    assert compare("add_noise twin", a, c).max_rel <= 1e-14


def test_epsilon_mse_is_mse():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 1, 4, 4)), rng.standard_normal((3, 1, 4, 4))
    assert NS.epsilon_mse(a, b) == pytest.approx(np.mean((a - b) ** 2), rel=1e-15)
    assert float(TS.epsilon_mse(torch.from_numpy(a), torch.from_numpy(b))) == pytest.approx(
        np.mean((a - b) ** 2), rel=1e-15)


def test_ddpm_replays_exactly_with_the_same_noise_and_differs_without():
    x, noises = PS._inputs("replay", 2, np.float64, 20)
    a = PS.run_loop(NS.DDPMScheduler(), x.copy(), 20, None, noises, "numpy")
    b = PS.run_loop(NS.DDPMScheduler(), x.copy(), 20, None, noises, "numpy")
    assert np.array_equal(a, b)
    s = NS.DDPMScheduler(clip_sample=False)
    s.set_timesteps(5)
    t = s.timesteps[0]
    r1 = s.step(x, t, x, generator=np.random.default_rng(1)).prev_sample
    r2 = s.step(x, t, x, generator=np.random.default_rng(2)).prev_sample
    assert not np.array_equal(r1, r2)


def test_dpm_solver_last_step_returns_the_data_prediction():
    s = NS.DPMSolverMultistepScheduler()
    s.set_timesteps(5)
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    for t in s.timesteps[:-1]:
        x = s.step(0.1 * x, t, x).prev_sample
    out = s.step(0.1 * x, s.timesteps[-1], x)
    np.testing.assert_array_equal(out.prev_sample, out.pred_original_sample)


def test_scheduler_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="timestep_spacing in"):
        NS.DDIMScheduler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="beta_schedule in"):
        NS.DDIMScheduler(beta_schedule="cosine")
    s = NS.DDIMScheduler()
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="call set_timesteps"):
        s.step(x, 10, x)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match=r"variance_noise shaped like the sample \(1, 1, 2, 2\)"):
        s.step(x, s.timesteps[0], x, eta=1.0, variance_noise=np.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="model_output shaped like the sample"):
        s.step(np.zeros((1, 1, 3, 2)), s.timesteps[0], x)
    with pytest.raises(ValueError, match=r"num_inference_steps <= num_train_timesteps = 1000"):
        s.set_timesteps(2000)
    d = NS.DPMSolverMultistepScheduler()
    d.set_timesteps(2)
    for t in d.timesteps:
        d.step(x, t, x)
    with pytest.raises(ValueError, match="all 2 steps are done"):
        d.step(x, d.timesteps[-1], x)
    with pytest.raises(ValueError, match="only algorithm_type='dpmsolver\\+\\+'"):
        NS.DPMSolverMultistepScheduler(algorithm_type="dpmsolver")


# --------------------------------------------------------------------------------------------------
# Guided sampling
# --------------------------------------------------------------------------------------------------
def test_guided_epsilon_is_the_papers_formula():
    c, u = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    np.testing.assert_allclose(NSamp.guided_epsilon(c, u, 1.4), 1.4 * c - 0.4 * u)  # s = 0.4
    np.testing.assert_array_equal(NSamp.guided_epsilon(c, u, 1.0), c)


def _tiny_pair():
    return make_pair(T.UViT, N.UViT, img_size=8, patch_size=4, in_chans=1, embed_dim=16,
                     depth=2, num_heads=2, num_classes=4)


@pytest.mark.parametrize("kind, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0),
                                       ("dpmsolver++", 0.0)])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_guided_sampling_numpy_vs_torch(kind, eta, guidance):
    ours, theirs = _tiny_pair()
    labels = np.array([0, 1, 2, 2])
    a = NSamp.sample(ours, labels, NS.SCHEDULERS[kind](clip_sample=False)
                     if kind != "dpmsolver++" else NS.SCHEDULERS[kind](), 6, guidance, seed=3,
                     eta=eta)
    b = TSamp.sample(theirs, labels, TS.SCHEDULERS[kind](clip_sample=False)
                     if kind != "dpmsolver++" else TS.SCHEDULERS[kind](), 6, guidance, seed=3,
                     eta=eta)
    assert compare(kind, a, b).max_rel <= 1e-10
    assert a.shape == (4, 1, 8, 8) and np.isfinite(a).all()


def test_guided_sampling_runs_one_batched_forward_per_step(monkeypatch):
    ours, _ = _tiny_pair()
    calls = []
    real = ours.forward
    monkeypatch.setattr(ours, "forward", lambda x, t, y: calls.append(tuple(y)) or real(x, t, y))
    NSamp.sample(ours, np.array([0, 1]), NS.DDIMScheduler(), 3, 2.0)
    assert len(calls) == 3 and all(c == (0, 1, 3, 3) for c in calls)   # [labels; null]
    calls.clear()
    NSamp.sample(ours, np.array([0, 1]), NS.DDIMScheduler(), 3, 1.0)
    assert calls == [(0, 1)] * 3                                          # no guidance: no null


def test_sampling_leaves_nothing_recorded_and_restores_the_mode():
    ours, _ = _tiny_pair()
    ours.train()
    NSamp.sample(ours, np.array([1]), NS.DPMSolverMultistepScheduler(), 3)
    assert ours.training and all(not m._tape for _, m in ours.named_modules())


def test_sampling_labels_are_checked():
    ours, _ = _tiny_pair()
    with pytest.raises(ValueError, match=r"expected values in \[0, 3\)"):
        NSamp.sample(ours, np.array([3]), NS.DDIMScheduler(), 2)      # 3 is the null class
    with pytest.raises(TypeError, match="integer"):
        NSamp.sample(ours, np.array([0.5]), NS.DDIMScheduler(), 2)
