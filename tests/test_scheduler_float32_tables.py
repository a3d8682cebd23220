"""The samplers with diffusers' float32 tables (`table_dtype="float32"`) against the numbers that
diffusers' own scheduler tests hard-code; the pieces that make those tables (torch's float32
linspace and cumprod); zero terminal SNR; dynamic thresholding's quantile.

diffusers' full-loop tests (tests/schedulers/test_scheduler_ddpm.py, test_scheduler_ddim.py and
test_scheduler_dpm_multi.py of huggingface/diffusers, read at commit 58eb52c) run a scheduler on a
fixed "model", x t / (t + 1), from a fixed sample: the numbers k / 768, k = 0 .. 767, written in
order into a (C, H, W, B) = (3, 8, 8, 4) array and moved to (B, C, H, W); their noise is the same
numbers in reverse order (SchedulerCommonTest's dummy_model, dummy_sample_deter and
dummy_noise_deter). Each test asserts the sum and the mean of |x| at the end, to 1e-2 and 1e-3.
`dummy_sample` and `dummy_model` below rebuild them from that description; `full_loop` runs the
loops, with our NumPy schedulers and with their torch twins.

Measured (diffusers 0.42.1, torch 2.13 CPU): published value, ours with table_dtype="float32"
(NumPy and torch twin alike), ours with the float64 default; sum / mean.

    DDPM  no noise (1000 steps)     258.9606 / 0.3372     258.9606 / 0.33719    258.9591 / 0.33719
    DDPM  v-prediction              202.0296 / 0.2631     202.0296 / 0.26306    202.0283 / 0.26306
    DDPM  with noise (t = 1, 0)     387.9466 / 0.5051     387.9466 / 0.50514    387.9669 / 0.50516
    DDIM  no noise (10 steps)       172.0067 / 0.223967   172.0067 / 0.223967   172.0065 / 0.223967
    DDIM  v-prediction               52.5302 / 0.0684      52.5302 / 0.06840     52.5301 / 0.06840
    DDIM  set_alpha_to_one          149.8295 / 0.1951     149.8295 / 0.19509    149.8295 / 0.19509
    DDIM  no set_alpha_to_one       149.0784 / 0.1941     149.0784 / 0.19411    149.0784 / 0.19411
    DDIM  with noise (2 steps)      354.5418 / 0.4616     354.5418 / 0.46164    354.5415 / 0.46164
    DPM   no noise (10 steps)              - / 0.3301     253.5514 / 0.33014    253.5529 / 0.33015
    DPM   with noise (5 steps)      318.4111 / 0.4146     318.4111 / 0.41460    318.4130 / 0.41460
    DPM   thresholding 0.87, max 0.5       - / 1.1364     872.7270 / 1.13636    872.7355 / 1.13637
    DPM   v-prediction                     - / 0.2251     172.8740 / 0.22510    172.8763 / 0.22510

With float32 tables every published number is reproduced to its last printed digit (within
5e-5; diffusers 0.42.1 itself, run here, gives 258.9611 for DDPM's 1000-step loop: its float32
sqrt is torch's), and the tests below assert diffusers' own tolerances. The float64 default holds
every one but DDPM's noisy loop, 0.0203 off with a tolerance of 0.01: its two steps divide by
1 - abar_1, which diffusers' float32 table has 1.5e-4 too large (abar_1 = 0.99978 is rounded to
float32's 6e-8 spacing near 1), see `test_float64_tables_miss_the_noisy_ddpm_loop_and_why`.
diffusers' Karras and Lu sigma tests (`use_karras_sigmas`, `use_lu_lambdas`) have no counterpart
here: our DPM-Solver++ does not implement those spacings.
"""

from unittest import mock

import numpy as np
import pytest
import torch

from uvit_numpy import schedulers as NS
from uvit_torch import schedulers as TS
from uvit_torch.parity import schedulers as PS
from uvit_torch.parity.harness import compare

diffusers = pytest.importorskip("diffusers")

# torch's float32 linspace and lerp round a fused multiply-add once on CPUs that have one (torch's
# AVX2 and AVX-512 kernels); the bit-for-bit checks of those two assume such a CPU
FUSED = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
needs_fma = pytest.mark.skipif(not FUSED, reason="torch kernels without fused multiply-add")


# --------------------------------------------------------------------------------------------------
# diffusers' full-loop tests
# --------------------------------------------------------------------------------------------------
def dummy_sample(reverse=False):
    """diffusers' deterministic test sample (reverse=True: its noise), float32 (4, 3, 8, 8)."""
    k = np.arange(768, dtype=np.float32)[::-1 if reverse else 1]
    grid = (k / np.float32(768)).reshape(3, 8, 8, 4)              # (C, H, W, B), in order
    return np.ascontiguousarray(grid.transpose(3, 0, 1, 2))         # -> (B, C, H, W)


def dummy_model(x, t):
    """diffusers' test "model": x t / (t + 1), t (an integer, exact in float32) in x's dtype."""
    t = float(t)
    return x * t / (t + 1.0)


DPM_TEST_CONFIG = dict(solver_order=2, prediction_type="epsilon", thresholding=False,
                       sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint",
                       lower_order_final=False, euler_at_final=False,
                       final_sigmas_type="sigma_min")


def full_loop(kind, config, lib, noisy_from=None):
    """One of diffusers' full loops; returns (sum, mean) of |x| at the end.

    DDPM runs all 1000 timesteps without set_timesteps, drawing its noise from a torch generator
    seeded 0 (the twin draws it itself, as diffusers does; the NumPy scheduler is handed the same
    draws); DDIM (eta 0) and DPM-Solver++ run 10 steps. noisy_from: start at that index of the
    timesteps, from the sample noised there with `add_noise` (the "with noise" tests).
    """
    scheduler = (NS if lib == "numpy" else TS).SCHEDULERS[kind](**config)
    as_array = np.asarray if lib == "numpy" else torch.from_numpy
    if kind != "ddpm":
        scheduler.set_timesteps(10)
    timesteps = list(scheduler.timesteps)
    x = as_array(dummy_sample())
    if noisy_from is not None:
        timesteps = timesteps[noisy_from:]
        t0 = as_array(np.full(4, int(timesteps[0])))
        x = scheduler.add_noise(x, as_array(dummy_sample(reverse=True)), t0)
    generator = torch.Generator().manual_seed(0)                    # torch.manual_seed(0)'s draws
    for t in timesteps:
        kw = {"eta": 0.0} if kind == "ddim" else {}
        if kind == "ddpm" and lib == "torch":
            kw["generator"] = generator
        elif kind == "ddpm" and int(t) > 0:
            kw["variance_noise"] = torch.randn(x.shape, generator=generator).numpy()
        x = scheduler.step(dummy_model(x, t), t, x, **kw).prev_sample
    x = np.abs(np.asarray(x, dtype=np.float64))
    return x.sum(), x.mean()


# (diffusers' test, scheduler, config, start index or None, published sum or None, published mean)
PUBLISHED = [
    ("ddpm::test_full_loop_no_noise", "ddpm", {}, None, 258.9606, 0.3372),
    ("ddpm::test_full_loop_with_v_prediction", "ddpm", {"prediction_type": "v_prediction"}, None,
     202.0296, 0.2631),
    ("ddpm::test_full_loop_with_noise", "ddpm", {}, 998, 387.9466, 0.5051),
    ("ddim::test_full_loop_no_noise", "ddim", {}, None, 172.0067, 0.223967),
    ("ddim::test_full_loop_with_v_prediction", "ddim", {"prediction_type": "v_prediction"}, None,
     52.5302, 0.0684),
    ("ddim::test_full_loop_with_set_alpha_to_one", "ddim",
     {"set_alpha_to_one": True, "beta_start": 0.01}, None, 149.8295, 0.1951),
    ("ddim::test_full_loop_with_no_set_alpha_to_one", "ddim",
     {"set_alpha_to_one": False, "beta_start": 0.01}, None, 149.0784, 0.1941),
    ("ddim::test_full_loop_with_noise", "ddim", {}, 8, 354.5418, 0.4616),
    ("dpm_multi::test_full_loop_no_noise", "dpmsolver++", DPM_TEST_CONFIG, None, None, 0.3301),
    ("dpm_multi::test_full_loop_with_noise", "dpmsolver++", DPM_TEST_CONFIG, 5, 318.4111, 0.4146),
    ("dpm_multi::test_full_loop_no_noise_thres", "dpmsolver++",
     {**DPM_TEST_CONFIG, "thresholding": True, "dynamic_thresholding_ratio": 0.87,
      "sample_max_value": 0.5}, None, None, 1.1364),
    ("dpm_multi::test_full_loop_with_v_prediction", "dpmsolver++",
     {**DPM_TEST_CONFIG, "prediction_type": "v_prediction"}, None, None, 0.2251),
]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("test, kind, config, noisy_from, want_sum, want_mean", PUBLISHED,
                         ids=[p[0] for p in PUBLISHED])
def test_diffusers_published_full_loops_hold_with_float32_tables(test, kind, config, noisy_from,
                                                                 want_sum, want_mean, lib):
    got_sum, got_mean = full_loop(kind, {**config, "table_dtype": "float32"}, lib, noisy_from)
    if want_sum is not None:
        assert abs(got_sum - want_sum) < 1e-2, f"{test}: sum {got_sum:.4f}, published {want_sum}"
    assert abs(got_mean - want_mean) < 1e-3, f"{test}: mean {got_mean:.6f}, published {want_mean}"


def test_float64_tables_miss_the_noisy_ddpm_loop_and_why():
    """The float64 default ends DDPM's noisy loop 0.0203 from the published sum (tolerance 0.01).
    Its two steps (t = 1, then 0) divide by 1 - abar_1 = 2.1991e-4; diffusers' float32 table holds
    abar_1 = 0.99978006, rounded to float32's spacing of 6e-8 near 1, so its 1 - abar_1 is
    2.1994e-4, 1.5e-4 relative too large."""
    got_sum, _ = full_loop("ddpm", {}, "numpy", noisy_from=998)
    assert 0.015 < abs(got_sum - 387.9466) < 0.03
    abar64 = NS.DDPMScheduler().alphas_cumprod[1]
    abar32 = NS.DDPMScheduler(table_dtype="float32").alphas_cumprod[1]
    assert abar32 == diffusers.DDPMScheduler().alphas_cumprod[1].item()
    one_minus = (np.float32(1.0) - abar32).astype(np.float64)        # as diffusers computes it
    assert 1.4e-4 < (one_minus - (1.0 - abar64)) / (1.0 - abar64) < 1.6e-4


def _one_ddpm_step(table_dtype, t, rng):
    """One DDPM step at t (T steps, so from t to t - 1) from the same float32 input: ours with
    `table_dtype` vs diffusers', with the same noise. Returns the relative difference."""
    ours = NS.DDPMScheduler(clip_sample=False, table_dtype=table_dtype)
    theirs = diffusers.DDPMScheduler(clip_sample=False)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    eps = PS.gaussian_eps(x, t, NS.DDPMScheduler().alphas_cumprod).astype(np.float32)
    z = rng.standard_normal(x.shape).astype(np.float32)
    a = ours.step(eps, t, x, variance_noise=z if t > 0 else None).prev_sample
    import diffusers.schedulers.scheduling_ddpm as ddpm   # its step draws; hand it z instead
    with mock.patch.object(ddpm, "randn_tensor", lambda *args, **kw: torch.from_numpy(z)):
        b = theirs.step(torch.from_numpy(eps), t, torch.from_numpy(x)).prev_sample.numpy()
    return compare(f"DDPM step t={t}", a, b).max_rel


def test_one_step_precision_against_diffusers_is_what_the_docstring_says():
    """uvit_numpy.schedulers' precision paragraph: with float64 tables one DDPM step differs from
    diffusers' by ~1e-7 relative at high noise but by up to ~1e-4 in the last steps (here up to
    8e-5, at t = 2, for t <= 9, and under 1e-6 for t >= 100); with float32 tables by < 4e-7 at
    every t (here at most 1.4e-7)."""
    rng = np.random.default_rng(0)
    late = [_one_ddpm_step("float64", t, rng) for t in range(1, 10)]
    early = [_one_ddpm_step("float64", t, rng) for t in (999, 700, 400, 100)]
    assert 2e-5 < max(late) < 3e-4, late
    assert max(early) < 1.5e-6, early
    same = [_one_ddpm_step("float32", t, rng) for t in (999, 400, 100, 9, 5, 2, 1, 0)]
    assert max(same) < 4e-7, same


# --------------------------------------------------------------------------------------------------
# The float32 tables: torch's linspace and cumprod
# --------------------------------------------------------------------------------------------------
@needs_fma
@pytest.mark.parametrize("start, end, steps", [(1e-4, 0.02, 1000), (0.00085 ** 0.5, 0.012 ** 0.5,
                                                                    1000), (0.01, 0.02, 37),
                                               (0.1, 2.0, 4000), (1e-4, 0.02, 2), (0.3, 0.3, 1)])
def test_linspace_float32_is_torch_linspace(start, end, steps):
    ours = NS.linspace_float32(start, end, steps)
    theirs = torch.linspace(start, end, steps, dtype=torch.float32).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    if steps == 1000:   # rounding np.linspace's float64 values instead is an ulp off, often
        assert (np.linspace(start, end, steps).astype(np.float32) != theirs).sum() > 50


def test_cumulative_product_is_torch_cumprod_not_a_float32_running_product():
    alphas = 1.0 - NS.linspace_float32(1e-4, 0.02, 1000)
    theirs = torch.cumprod(torch.from_numpy(alphas), 0).numpy()
    np.testing.assert_array_equal(NS.cumulative_product(alphas), theirs)
    assert (np.cumprod(alphas) != theirs).sum() > 500             # 853: torch keeps a double


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
@pytest.mark.parametrize("schedule", [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "linear", "num_train_timesteps": 37, "beta_start": 0.01},
    {"trained_betas": list(np.linspace(1e-4, 0.02, 1000) ** 1.1)},
])
def test_float32_tables_are_diffusers_bit_for_bit(kind, schedule):
    if not FUSED and "trained_betas" not in schedule and \
            schedule["beta_schedule"] != "squaredcos_cap_v2":
        pytest.skip("torch's linspace without fused multiply-add")
    ours = NS.SCHEDULERS[kind](**schedule, table_dtype="float32")
    twin = TS.SCHEDULERS[kind](**schedule, table_dtype="float32")
    theirs = getattr(diffusers, type(ours).__name__)(**schedule)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert getattr(ours, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name).numpy(), name)
        np.testing.assert_array_equal(getattr(twin, name), getattr(ours, name), name)


def test_float32_dpm_sigmas_within_an_ulp_of_diffusers():
    """DPM-Solver's sigmas sqrt((1 - abar) / abar): IEEE's sqrt here, torch's (not correctly
    rounded) there, so one float32 ulp apart at most."""
    for spacing in ("linspace", "leading", "trailing"):
        ours = NS.DPMSolverMultistepScheduler(timestep_spacing=spacing, table_dtype="float32",
                                              final_sigmas_type="sigma_min")
        theirs = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing,
                                                       final_sigmas_type="sigma_min")
        ours.set_timesteps(17)
        theirs.set_timesteps(17)
        assert ours.sigmas.dtype == np.float32
        ulps = np.abs(ours.sigmas.view(np.int32) - theirs.sigmas.numpy().view(np.int32))
        assert ulps.max() <= 1


def test_table_dtype_float64_is_the_default_and_float32_changes_only_the_tables():
    default, f64 = NS.DDIMScheduler(), NS.DDIMScheduler(table_dtype="float64")
    f32 = NS.DDIMScheduler(table_dtype="float32")
    assert default.config.table_dtype == "float64" and default.alphas_cumprod.dtype == np.float64
    np.testing.assert_array_equal(default.alphas_cumprod, f64.alphas_cumprod)
    np.testing.assert_allclose(f32.alphas_cumprod, default.alphas_cumprod, rtol=5e-7)
    rng = np.random.default_rng(1)
    x, z = rng.standard_normal((2, 2, 1, 4, 4)).astype(np.float32)
    a = NS.DDPMScheduler().step(0.5 * x, 1, x, variance_noise=z).prev_sample
    b = NS.DDPMScheduler(table_dtype="float32").step(0.5 * x, 1, x, variance_noise=z).prev_sample
    assert a.dtype == b.dtype == np.float32                       # the sample keeps its dtype
    assert 1e-6 < compare("float64 vs float32 tables, t = 1", a, b).max_rel < 3e-4


# --------------------------------------------------------------------------------------------------
# Zero terminal SNR
# --------------------------------------------------------------------------------------------------
def test_rescale_zero_terminal_snr_ends_at_zero_and_keeps_the_start():
    betas = NS.make_betas("linear")
    abar = np.cumprod(1.0 - betas)
    new = np.cumprod(1.0 - NS.rescale_zero_terminal_snr(betas))
    assert abar[-1] > 4e-5 and new[-1] == 0.0                      # SNR 0 at t = T-1
    np.testing.assert_allclose(new[0], abar[0], rtol=1e-15)
    assert np.all(np.diff(new) < 0)
    theirs = diffusers.schedulers.scheduling_ddpm.rescale_zero_terminal_snr(
        torch.from_numpy(betas)).numpy()                           # diffusers' function, float64
    np.testing.assert_allclose(NS.rescale_zero_terminal_snr(betas), theirs, rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmsolver++"])
def test_zero_snr_tables_match_diffusers(kind):
    """float32: equal but for torch's float32 sqrt (not correctly rounded), which the rescale
    amplifies near t = T-1 (4e-6 relative at most, measured); float64: to float32's rounding.
    DPM-Solver's last abar is 2^-24 on both sides, the others' exactly 0."""
    theirs = getattr(diffusers, NS.SCHEDULERS[kind].__name__)(rescale_betas_zero_snr=True)
    want = theirs.alphas_cumprod.numpy().astype(np.float64)
    for dtype in ("float32", "float64"):
        ours = NS.SCHEDULERS[kind](rescale_betas_zero_snr=True, table_dtype=dtype)
        twin = TS.SCHEDULERS[kind](rescale_betas_zero_snr=True, table_dtype=dtype)
        np.testing.assert_array_equal(twin.alphas_cumprod, ours.alphas_cumprod)
        last = 2.0 ** -24 if kind == "dpmsolver++" else 0.0
        assert ours.alphas_cumprod[-1] == want[-1] == last
        np.testing.assert_allclose(ours.alphas_cumprod[:-1], want[:-1], rtol=1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_zero_snr_epsilon_prediction_cannot_give_x0_at_the_last_step(kind):
    """At abar_{T-1} = 0 the exact eps of any data is x itself, so x0 = (x - eps) / 0 = 0 / 0:
    nan in ours (NumPy and torch) and in diffusers alike, clip_sample or not; v-prediction gives
    x0 = -v there, finite."""
    kw = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    x = np.random.default_rng(2).standard_normal((2, 1, 4, 4))
    abar = np.cumprod(1.0 - NS.rescale_zero_terminal_snr(NS.make_betas("linear")))
    eps = PS.gaussian_output(x, 999, abar, "epsilon")
    np.testing.assert_array_equal(eps, x)
    outs = []
    for make in (NS.SCHEDULERS[kind], TS.SCHEDULERS[kind],
                 getattr(diffusers, NS.SCHEDULERS[kind].__name__)):
        s = make(**kw)
        s.set_timesteps(10)
        assert int(s.timesteps[0]) == 999                           # "trailing" starts at T-1
        xin = x if make is NS.SCHEDULERS[kind] else torch.from_numpy(x)
        ein = eps if make is NS.SCHEDULERS[kind] else torch.from_numpy(eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            outs.append(np.asarray(s.step(ein, s.timesteps[0], xin).pred_original_sample))
    assert all(np.isnan(o).all() for o in outs)
    v = PS.gaussian_output(x, 999, abar, "v_prediction")
    s = NS.SCHEDULERS[kind](**kw, prediction_type="v_prediction", clip_sample=False)
    s.set_timesteps(10)
    np.testing.assert_array_equal(s.step(v, 999, x).pred_original_sample, -v)


# --------------------------------------------------------------------------------------------------
# Dynamic thresholding
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.87, 0.995, 1.0])
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_quantile_rows_is_torch_quantile(q, batch):
    rng = np.random.default_rng(batch)
    x32 = np.abs(rng.standard_normal((batch, 192))).astype(np.float32) * 3
    x64 = np.abs(rng.standard_normal((batch, 192))) * 3
    np.testing.assert_allclose(NS.quantile_rows(x64, q),
                               torch.quantile(torch.from_numpy(x64), q, dim=1).numpy(),
                               rtol=3e-16, atol=0)                  # float64: an ulp at most
    theirs = torch.quantile(torch.from_numpy(x32), q, dim=1).numpy()
    if FUSED:
        np.testing.assert_array_equal(NS.quantile_rows(x32, q), theirs)
    np.testing.assert_allclose(NS.quantile_rows(x32, q), theirs, rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("ratio, max_value", [(0.995, 1.5), (0.87, 0.5), (0.6, 3.0)])
def test_dynamic_threshold_numpy_torch_and_diffusers(ratio, max_value):
    x0 = (np.random.default_rng(3).standard_normal((5, 3, 4, 4)) * 1.4).astype(np.float32)
    ours = NS.dynamic_threshold(x0, ratio, max_value)
    twin = TS.dynamic_threshold(torch.from_numpy(x0), ratio, max_value).numpy()
    theirs = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio,
                                     sample_max_value=max_value)._threshold_sample(
                                         torch.from_numpy(x0)).numpy()
    if FUSED:
        np.testing.assert_array_equal(ours, twin)
        np.testing.assert_array_equal(ours, theirs)
    assert compare("dynamic_threshold", ours, theirs).max_rel <= 1e-6
    s = np.clip(np.quantile(np.abs(x0).reshape(5, -1), ratio, axis=1), 1, None)
    s = np.minimum(s, max_value)[:, None, None, None]               # the definition, again
    np.testing.assert_allclose(ours, np.clip(x0, -s, s) / s, rtol=2e-6)


def test_dynamic_threshold_is_clipping_when_the_quantile_is_below_one():
    x0 = np.random.default_rng(4).uniform(-2, 2, (3, 1, 8, 8))
    x0[:, :, :4] *= 0.1                                             # half of each sample small
    np.testing.assert_array_equal(NS.dynamic_threshold(x0, 0.4, 5.0), np.clip(x0, -1, 1))


def test_thresholding_wins_over_clip_sample_as_in_diffusers():
    x = np.random.default_rng(5).standard_normal((2, 1, 8, 8)) * 3
    both = NS.DDIMScheduler(clip_sample=True, thresholding=True, sample_max_value=2.0)
    only = NS.DDIMScheduler(clip_sample=False, thresholding=True, sample_max_value=2.0)
    clip = NS.DDIMScheduler(clip_sample=True)
    for s in (both, only, clip):
        s.set_timesteps(10)
    a = both.step(0.1 * x, both.timesteps[-1], x).pred_original_sample
    b = only.step(0.1 * x, only.timesteps[-1], x).pred_original_sample
    c = clip.step(0.1 * x, clip.timesteps[-1], x).pred_original_sample
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() == 1.0 and not np.array_equal(a, c)     # s = 2 here: x0 / 2


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
def test_new_arguments_are_checked():
    with pytest.raises(ValueError, match=r"table_dtype in \('float64', 'float32'\), got 'float16'"):
        NS.DDPMScheduler(table_dtype="float16")
    with pytest.raises(ValueError, match="table_dtype in"):
        NS.make_betas("linear", table_dtype="half")
    with pytest.raises(ValueError, match=r"dynamic_thresholding_ratio in \[0, 1\]"):
        NS.DDIMScheduler(dynamic_thresholding_ratio=99.5)
    with pytest.raises(ValueError, match="sample_max_value > 0"):
        NS.DPMSolverMultistepScheduler(sample_max_value=0.0)
    with pytest.raises(ValueError, match=r"a \(B, C, ...\) array, got shape \(3,\)"):
        NS.dynamic_threshold(np.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        NS.dynamic_threshold(np.zeros((2, 3), dtype=np.int64))
