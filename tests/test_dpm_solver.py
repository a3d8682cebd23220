"""The paper's sampler (`dpm_solver.py` in both packages) against mathematics that does not
depend on any implementation, and the two packages against each other.

* The schedule: at the knots t = n / N of the 'discrete' schedule, alpha_t^2 is the cumulative
  product of 1 - beta (np.cumprod), sigma_t^2 = 1 - alpha_t^2, lambda_t = 1/2 log(abar / (1 - abar))
  and inverse_lambda gives n / N back; in between, log alpha is linear and lambda monotone, and
  inverse_lambda inverts marginal_lambda. The 'linear' and 'cosine' schedules against their
  closed forms.
* The solver on Gaussian data x0 ~ N(mu, s^2 I): the exact noise predictor is linear in x,
      eps(x, t) = sigma_t (x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2),
  and the probability-flow ODE carries x_T to
      x_t = alpha_t mu + sqrt(v_t / v_T) (x_T - alpha_T mu),   v_t = alpha_t^2 s^2 + sigma_t^2
  (the only increasing affine map between the two Gaussian marginals). Each method's error against
  it must fall at its order as the steps grow (log-log slope), over the paper's interval
  [1/1000, 1] of Stable Diffusion's schedule.
* Order 1 is DDIM: one step against DDIM's formula, and a 49-step run against this project's own
  `DDIMScheduler`.
* The adaptive solver keeps its global error within the tolerance it is given.
* NumPy against torch, float64 <= 1e-10 (float32 <= 1e-5), for every method, order, skip type,
  solver type and prediction, with a deterministic nonlinear model.
"""

import itertools

import numpy as np
import pytest
import torch

from uvit_numpy import dpm_solver as ND
from uvit_numpy import layers as NL
from uvit_numpy.module import Module
from uvit_numpy.schedulers import DDIMScheduler, make_betas
from uvit_torch import dpm_solver as TD
from uvit_torch.parity.harness import TOLERANCE, assert_close

N_TRAIN = 1000
SD_BETAS = make_betas("scaled_linear", N_TRAIN, 0.00085, 0.012)          # (1000,) float64
ABAR = np.cumprod(1.0 - SD_BETAS)                                      # the oracle's abar
MU, S = 0.3, 0.5                                                       # the Gaussian data


def discrete(pkg=ND):
    return pkg.NoiseScheduleVP("discrete", betas=SD_BETAS)


# --------------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------------
def test_discrete_marginals_at_the_knots_are_the_schedule():
    ns = discrete()
    n = np.arange(1, N_TRAIN + 1)
    t = n / N_TRAIN
    alpha, sigma = ns.marginal_alpha(t), ns.marginal_std(t)
    np.testing.assert_allclose(alpha ** 2, ABAR, rtol=1e-13)
    np.testing.assert_allclose(sigma ** 2, 1.0 - ABAR, rtol=1e-12)
    lam = ns.marginal_lambda(t)
    np.testing.assert_allclose(lam, 0.5 * np.log(ABAR / (1.0 - ABAR)), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ns.inverse_lambda(lam), t, rtol=1e-12)
    # exactly the table at its own knots (w = 0 or 1 in the interpolation)
    assert np.array_equal(ns.marginal_log_mean_coeff(ns.t_discrete), ns.log_alpha_discrete)


def test_discrete_marginals_between_the_knots():
    ns = discrete()
    n = np.arange(1, N_TRAIN)
    mid = (n + 0.5) / N_TRAIN                                          # halfway between knots
    log_a = 0.5 * np.log(ABAR)
    np.testing.assert_allclose(ns.marginal_log_mean_coeff(mid), 0.5 * (log_a[:-1] + log_a[1:]),
                               rtol=1e-12)                           # linear in t
    t = np.linspace(1.0 / N_TRAIN, 1.0, 20_001)
    alpha, sigma, lam = ns.marginal_alpha(t), ns.marginal_std(t), ns.marginal_lambda(t)
    assert np.all(np.diff(alpha) < 0) and np.all(np.diff(sigma) > 0) and np.all(np.diff(lam) < 0)
    np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, rtol=1e-14)
    np.testing.assert_allclose(ns.inverse_lambda(lam), t, rtol=1e-11)
    grid = np.linspace(lam[-1], lam[0], 777)
    np.testing.assert_allclose(ns.marginal_lambda(ns.inverse_lambda(grid)), grid, atol=1e-12)


def test_alphas_cumprod_and_float32_betas_give_the_same_schedule():
    ns, ns_abar = discrete(), ND.NoiseScheduleVP("discrete", alphas_cumprod=ABAR)
    t = np.linspace(0.001, 1.0, 101)
    np.testing.assert_allclose(ns_abar.marginal_lambda(t), ns.marginal_lambda(t), rtol=1e-11)
    ns32 = ND.NoiseScheduleVP("discrete", betas=SD_BETAS.astype(np.float32))   # as the paper
    assert ns32.log_alpha_discrete.dtype == np.float32
    # a float32 running sum of 1000 logs: ~1000 roundings of 6e-8, measured 2e-6 at t = 1
    np.testing.assert_allclose(ns32.marginal_alpha(t), ns.marginal_alpha(t), rtol=5e-6)


def test_linear_and_cosine_schedules_are_their_closed_forms():
    t = np.linspace(1e-3, 1.0, 501)
    lin = ND.NoiseScheduleVP("linear")                      # U-ViT's VP-SDE: beta 0.1 -> 20
    np.testing.assert_allclose(lin.marginal_alpha(t) ** 2, np.exp(-0.1 * t - 9.95 * t ** 2),
                               rtol=1e-13)
    cos = ND.NoiseScheduleVP("cosine")
    assert cos.T == 0.9946
    tc = t * cos.T

    def f(u):
        return np.cos((u + 0.008) / 1.008 * np.pi / 2)
    np.testing.assert_allclose(cos.marginal_alpha(tc), f(tc) / f(0.0), rtol=1e-12)
    for ns, ts in ((lin, t), (cos, tc)):
        np.testing.assert_allclose(ns.inverse_lambda(ns.marginal_lambda(ts)), ts, rtol=1e-9)


@pytest.mark.parametrize("schedule", ["discrete", "linear", "cosine"])
def test_schedule_numpy_vs_torch(schedule):
    kw = dict(betas=SD_BETAS) if schedule == "discrete" else {}
    ours, twin = ND.NoiseScheduleVP(schedule, **kw), TD.NoiseScheduleVP(schedule, **kw)
    t = np.linspace(2e-4, ours.T, 999)                    # below 1/N too: the line continues
    for name in ("marginal_log_mean_coeff", "marginal_alpha", "marginal_std", "marginal_lambda"):
        assert_close(name, getattr(ours, name)(t), getattr(twin, name)(torch.from_numpy(t)),
                     1e-13)
    lam = ours.marginal_lambda(t)
    assert_close("inverse_lambda", ours.inverse_lambda(lam),
                 twin.inverse_lambda(torch.from_numpy(lam)), 1e-12)


# --------------------------------------------------------------------------------------------------
# Time grids and the order list of "fast"
# --------------------------------------------------------------------------------------------------
def test_fast_orders_sum_to_the_steps():
    assert ND.fast_orders(50, 3) == [3] * 16 + [2]                  # U-ViT's 50 steps
    for steps, order in itertools.product(range(1, 40), (2, 3)):
        orders = ND.fast_orders(steps, order)
        assert sum(orders) == steps and set(orders[:-2]) <= {order}


def test_time_grids():
    solver = ND.DPM_Solver(lambda x, t: x, discrete())
    ns = solver.noise_schedule
    t = solver.get_time_steps("time_uniform", 1.0, 1e-3, 10)
    np.testing.assert_allclose(np.diff(t), -0.0999, rtol=1e-12)
    lam = ns.marginal_lambda(solver.get_time_steps("logSNR", 1.0, 1e-3, 10))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam).mean(), rtol=1e-9)
    t2 = solver.get_time_steps("t2", 1.0, 1e-3, 10)
    np.testing.assert_allclose(np.diff(np.sqrt(t2)), np.diff(np.sqrt(t2)).mean(), rtol=1e-12)
    quad = solver.get_time_steps("time_quadratic", 1.0, 1e-3, 10)
    assert quad[0] == 1.0 and quad[-1] == 1e-3
    np.testing.assert_allclose(quad, t2, atol=(1.0 - 1e-3) / (ND.QUADRATIC_GRID_SIZE - 1))


def test_time_quadratic_is_the_papers_grid_search():
    """The paper searches a uniform grid for the first time whose sqrt reaches each target; here
    the grid is built (10^5 points) and searched, against the ceiling formula."""
    t_T, t_0, N, size = 1.0, 1e-3, 25, 100_000
    grid = np.linspace(t_0, t_T, size)
    q = np.sqrt(grid)
    idx = np.searchsorted(q, np.linspace(q[0], q[-1], N + 1))[:-1]
    searched = np.concatenate([grid[idx], [t_T]])[::-1]
    np.testing.assert_allclose(ND.quadratic_time_steps(t_T, t_0, N, grid_size=size), searched,
                               rtol=1e-13)


# --------------------------------------------------------------------------------------------------
# Gaussian data: the exact solution
# --------------------------------------------------------------------------------------------------
def gaussian_eps(ns):
    """The exact noise predictor of x0 ~ N(MU, S^2 I) under the schedule `ns`."""
    def model_fn(x, t):
        a, s = ns.marginal_alpha(t)[:, None], ns.marginal_std(t)[:, None]   # (B, 1)
        return s * (x - a * MU) / (a * a * S * S + s * s)
    return model_fn


def exact_flow(x_T, abar_T, abar_0):
    """The probability-flow ODE's solution at the time of abar_0, from x_T at the time of abar_T."""
    v_T, v_0 = abar_T * S * S + 1.0 - abar_T, abar_0 * S * S + 1.0 - abar_0
    return np.sqrt(abar_0) * MU + np.sqrt(v_0 / v_T) * (x_T - np.sqrt(abar_T) * MU)


X_T = np.random.default_rng(0).standard_normal((3, 6))              # (B, C) starting noise
EXACT = exact_flow(X_T, ABAR[-1], ABAR[0])                          # from t = 1 to t = 1/N


def gaussian_error(method, order, steps, predict_x0, skip_type="logSNR", **kw):
    ns = discrete()
    solver = ND.DPM_Solver(gaussian_eps(ns), ns, predict_x0=predict_x0)
    x = solver.sample(X_T.copy(), steps=steps, eps=1.0 / N_TRAIN, T=1.0, order=order,
                      skip_type=skip_type, method=method, **kw)
    return np.abs(x - EXACT).max() / np.abs(EXACT).max()


def loglog_slope(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


CONVERGENCE = [
    # (method, order, steps, expected order of convergence)
    ("singlestep", 1, (16, 32, 64), 1),
    ("singlestep", 2, (16, 32, 64), 2),
    ("singlestep", 3, (48, 96, 192), 3),
    ("fast", 2, (16, 32, 64), 2),
    ("fast", 3, (65, 128, 257), 3),       # steps % 3 == 2: sixteen 3s and a final 2, as U-ViT's
    ("multistep", 1, (16, 32, 64), 1),
    ("multistep", 2, (16, 32, 64), 2),
    # 3M as the paper's code writes it converges at order 2 (smaller error than 2M, checked
    # below): its second difference D2 has half the weight the Taylor expansion asks for
    # (test_third_order_updates_on_a_quadratic_model_output)
    ("multistep", 3, (16, 32, 64), 2),
]


@pytest.mark.parametrize("predict_x0", [True, False], ids=["data", "noise"])
@pytest.mark.parametrize("method, order, steps, expected", CONVERGENCE,
                         ids=[f"{m}-{o}" for m, o, *_ in CONVERGENCE])
def test_gaussian_error_falls_at_the_order(method, order, steps, expected, predict_x0):
    errors = [gaussian_error(method, order, n, predict_x0) for n in steps]
    slope = loglog_slope(steps, errors)
    assert abs(slope - expected) < 0.3, f"errors {errors} at steps {steps}: slope {slope:.2f}"


@pytest.mark.parametrize("method, order, steps", [("singlestep", 2, (16, 32, 64)),
                                                  ("singlestep", 3, (48, 96, 192)),
                                                  ("multistep", 2, (16, 32, 64))])
def test_taylor_solver_type_falls_at_the_order(method, order, steps):
    errors = [gaussian_error(method, order, n, True, solver_type="taylor") for n in steps]
    slope = loglog_slope(steps, errors)
    assert abs(slope - order) < 0.3, f"errors {errors} at steps {steps}: slope {slope:.2f}"


def test_multistep_3_beats_2_at_equal_steps():
    for predict_x0 in (True, False):
        assert (gaussian_error("multistep", 3, 64, predict_x0)
                < 0.5 * gaussian_error("multistep", 2, 64, predict_x0))


@pytest.mark.parametrize("predict_x0", [True, False], ids=["data", "noise"])
def test_third_order_updates_on_a_quadratic_model_output(predict_x0):
    """A model output m(lambda) = c0 + c1 lambda + c2 lambda^2 (the same for every x), against
    the integral of the exponential integrator by quadrature (scipy):
        data:  x_t = (sigma_t / sigma_0) x + sigma_t int e^{lambda} m dlambda
        noise: x_t = (alpha_t / alpha_0) x - alpha_t int e^{-lambda} m dlambda.
    The Taylor third-order singlestep update is exact for it. 3M (the paper's formula, also
    DPM-Solver's and diffusers') is exact for a linear m, but off by c phi_3 h^2 m'' / 2 for a
    quadratic one (c = alpha_t for data, sigma_t for noise): its D2 = (D1_0 - D1_1) / (r0 + r1)
    estimates h^2 m'' / 2 where the expansion needs h^2 m''. So it is a second-order method."""
    integrate = pytest.importorskip("scipy.integrate")
    ns = ND.NoiseScheduleVP("linear")
    t_prev, t = [np.array([0.5]), np.array([0.45]), np.array([0.4])], np.array([0.3])
    lam = [float(ns.marginal_lambda(v)[0]) for v in (*t_prev, t)]       # lambda_2, _1, _0, _t
    x = np.array([[0.7, -1.3]])                                        # (B, C) = (1, 2)
    sign = -1.0 if predict_x0 else 1.0

    for c in ((0.3, 0.5, -0.7), (0.3, 0.5, 0.0)):
        def m(lmb, c=c):
            return c[0] + c[1] * lmb + c[2] * lmb ** 2

        class Poly(ND.DPM_Solver):
            def model_fn(self, x, t, m=m):
                return np.ones_like(x) * m(self.noise_schedule.marginal_lambda(t))[:, None]
        solver = Poly(lambda x, t: x, ns, predict_x0=predict_x0)
        a_0, s_0 = ns.marginal_alpha(t_prev[2]), ns.marginal_std(t_prev[2])
        a_t, s_t = ns.marginal_alpha(t), ns.marginal_std(t)
        integral = integrate.quad(lambda v: np.exp(-sign * v) * m(v), lam[2], lam[3],
                                  epsabs=0, epsrel=1e-13)[0]
        if predict_x0:
            exact = (s_t / s_0)[:, None] * x + s_t[:, None] * integral
        else:
            exact = (a_t / a_0)[:, None] * x - a_t[:, None] * integral
        taylor = solver.dpm_solver_third_update(x, t_prev[2], t, solver_type="taylor")
        np.testing.assert_allclose(taylor, exact, rtol=1e-11)
        history = [solver.model_fn(x, v) for v in t_prev]
        multistep = solver.dpm_multistep_third_update(x, history, t_prev, t)
        h = lam[3] - lam[2]
        phi_3 = (np.expm1(sign * h) / h - sign) / h - 0.5
        coef = (a_t if predict_x0 else s_t)[0]
        np.testing.assert_allclose(multistep - exact, coef * phi_3 * h ** 2 * (2 * c[2]) / 2,
                                   rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("order, steps", [(1, (16, 32, 64)), (2, (16, 32, 64)),
                                          (3, (24, 48, 96))])
def test_time_uniform_error_falls_at_the_order(order, steps):
    """U-ViT's time-uniform grid (on [0.1, 1]: toward t = 1/1000 a time-uniform step spans a large
    lambda interval, and the slope settles only for thousands of steps)."""
    ns = discrete()
    solver = ND.DPM_Solver(gaussian_eps(ns), ns, predict_x0=True)
    exact = exact_flow(X_T, ABAR[-1], ns.marginal_alpha(np.array(0.1)) ** 2)
    errors = [np.abs(solver.sample(X_T.copy(), steps=n, eps=0.1, T=1.0, order=order,
                                   method="singlestep") - exact).max() for n in steps]
    slope = loglog_slope(steps, errors)
    assert abs(slope - order) < 0.3, f"errors {errors}: slope {slope:.2f}"


def test_uvit_default_sampler_on_gaussian_data():
    """The call U-ViT makes (fast, order 3, time-uniform, 50 steps): its error is small and falls
    with more steps."""
    errors = [gaussian_error("fast", 3, n, True, skip_type="time_uniform") for n in (20, 50, 200)]
    assert errors[1] < 2e-2 and errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("order, tolerances", [(2, (1e-2, 1e-4)), (3, (1e-3, 1e-5))])
def test_adaptive_reaches_the_requested_tolerance(order, tolerances):
    nfes = []
    for tol in tolerances:
        ns = discrete()
        calls = []
        eps_fn = gaussian_eps(ns)

        def counted(x, t, calls=calls, eps_fn=eps_fn):
            calls.append(1)
            return eps_fn(x, t)
        x = ND.DPM_Solver(counted, ns, predict_x0=True).sample(
            X_T.copy(), eps=1.0 / N_TRAIN, T=1.0, order=order, method="adaptive", atol=tol,
            rtol=tol)
        scaled = (x - EXACT) / np.maximum(tol, tol * np.abs(EXACT))   # the solver's own norm
        assert np.sqrt(np.mean(scaled ** 2)) <= 1.0
        nfes.append(len(calls))
    assert nfes[0] < nfes[1]                                          # tighter costs more


# --------------------------------------------------------------------------------------------------
# Order 1 is DDIM
# --------------------------------------------------------------------------------------------------
def nonlinear_model(pkg):
    """A deterministic noise "network" eps(x, t) of x (B, ...) and t (B,), in either package."""
    W = np.random.default_rng(1).standard_normal((8, 8)) * 0.5
    if pkg is ND:
        def model_fn(x, t):
            flat = x.reshape(x.shape[0], -1)                           # (B, ...) -> (B, 8)
            out = (np.tanh(flat @ W.astype(x.dtype)) * (0.5 + t[:, None])
                   + 0.3 * np.sin(3 * t)[:, None])
            return out.reshape(x.shape)
        return model_fn

    def model_fn(x, t):
        flat = x.reshape(x.shape[0], -1)
        out = (torch.tanh(flat @ torch.from_numpy(W).to(x)) * (0.5 + t[:, None])
               + 0.3 * torch.sin(3 * t)[:, None])
        return out.reshape(x.shape)
    return model_fn


@pytest.mark.parametrize("predict_x0", [True, False], ids=["data", "noise"])
def test_first_order_step_is_ddim(predict_x0):
    """One step from n_s to n_t (different per sample): x_t = alpha_t x0 + sigma_t eps with
    x0 = (x_s - sigma_s eps) / alpha_s, alpha^2 = abar from np.cumprod."""
    ns = discrete()
    model = nonlinear_model(ND)
    solver = ND.DPM_Solver(model, ns, predict_x0=predict_x0)
    n_s, n_t = np.array([1000, 731, 400, 57]), np.array([979, 500, 399, 1])
    s, t = n_s / N_TRAIN, n_t / N_TRAIN
    x = np.random.default_rng(2).standard_normal((4, 2, 2, 2))
    eps = model(x, s)
    a_s = np.sqrt(ABAR[n_s - 1])[:, None, None, None]                     # (B, 1, 1, 1)
    a_t = np.sqrt(ABAR[n_t - 1])[:, None, None, None]
    x0 = (x - np.sqrt(1 - a_s ** 2) * eps) / a_s
    ddim = a_t * x0 + np.sqrt(1 - a_t ** 2) * eps
    assert_close("first update vs DDIM", solver.dpm_solver_first_update(x, s, t), ddim, 1e-12)


@pytest.mark.parametrize("predict_x0", [True, False], ids=["data", "noise"])
def test_first_order_sampling_is_the_projects_ddim(predict_x0):
    """DDIM (trailing, 50 steps: 999, 979, ..., 19) for its first 49 steps, 999 -> 19, is
    DPM-Solver-1 on the time-uniform grid 1, 0.98, ..., 0.02 (index n is time (n + 1) / N)."""
    ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         clip_sample=False, timestep_spacing="trailing")
    ddim.set_timesteps(50)
    model = nonlinear_model(ND)
    x0 = np.random.default_rng(3).standard_normal((2, 2, 2, 2))
    x = x0.copy()
    for index in ddim.timesteps[:-1]:
        t = np.full((2,), (int(index) + 1) / N_TRAIN)
        x = ddim.step(model(x, t), index, x, eta=0.0).prev_sample
    ns = ND.NoiseScheduleVP("discrete", betas=ddim.betas)
    ours = ND.DPM_Solver(model, ns, predict_x0=predict_x0).sample(
        x0.copy(), steps=49, eps=0.02, T=1.0, order=1, method="singlestep")
    assert_close("DPM-Solver-1 vs DDIMScheduler", ours, x, 1e-12)


# --------------------------------------------------------------------------------------------------
# NumPy vs torch
# --------------------------------------------------------------------------------------------------
def run_both(kw, dtype=np.float64, schedule="discrete", predict_x0=True, thresholding=False,
             seed=4):
    sched_kw = dict(betas=SD_BETAS) if schedule == "discrete" else {}
    x = np.random.default_rng(seed).standard_normal((3, 2, 2, 2)).astype(dtype)
    opts = dict(predict_x0=predict_x0, thresholding=thresholding, max_val=1.5)
    ours = ND.DPM_Solver(nonlinear_model(ND), ND.NoiseScheduleVP(schedule, **sched_kw), **opts)
    twin = TD.DPM_Solver(nonlinear_model(TD), TD.NoiseScheduleVP(schedule, **sched_kw), **opts)
    eps = 1.0 / N_TRAIN if schedule == "discrete" else 1e-3
    a = ours.sample(x.copy(), eps=eps, **kw)
    b = twin.sample(torch.from_numpy(x.copy()), eps=eps, **kw)
    assert b.dtype == torch.from_numpy(x).dtype and a.dtype == x.dtype
    return a, b


PARITY = ([("fast", o, st) for o in (2, 3) for st in ND.SOLVER_TYPES]
          + [(m, o, st) for m in ("singlestep", "multistep") for o in (1, 2, 3)
             for st in ND.SOLVER_TYPES]
          + [("adaptive", o, st) for o in (2, 3) for st in ND.SOLVER_TYPES])


@pytest.mark.parametrize("method, order, solver_type", PARITY,
                         ids=["-".join(map(str, case)) for case in PARITY])
def test_numpy_vs_torch_float64(method, order, solver_type):
    """Every method, order and solver type, both predictions, on a logSNR grid (whose lambda
    ratios r1, r2 in "fast" are not round numbers)."""
    kw = dict(steps=7, order=order, skip_type="logSNR", method=method, solver_type=solver_type,
              atol=1e-2, rtol=1e-2)
    for predict_x0 in (True, False):
        a, b = run_both(kw, predict_x0=predict_x0)
        assert_close(f"{method} order {order} {solver_type} predict_x0={predict_x0}", a, b,
                     TOLERANCE[np.dtype(np.float64)])


@pytest.mark.parametrize("skip_type", ND.SKIP_TYPES)
def test_numpy_vs_torch_every_skip_type(skip_type):
    ours = ND.DPM_Solver(nonlinear_model(ND), discrete(ND))
    twin = TD.DPM_Solver(nonlinear_model(TD), discrete(TD))
    assert_close(f"{skip_type} grid", ours.get_time_steps(skip_type, 1.0, 1e-3, 17),
                 twin.get_time_steps(skip_type, 1.0, 1e-3, 17), 1e-14)
    for method, order in (("fast", 3), ("singlestep", 2), ("multistep", 3)):
        a, b = run_both(dict(steps=8, order=order, skip_type=skip_type, method=method))
        assert_close(f"{method} {skip_type}", a, b, TOLERANCE[np.dtype(np.float64)])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("method, order", [("fast", 3), ("singlestep", 2), ("multistep", 3),
                                           ("adaptive", 2)])
def test_numpy_vs_torch_other_schedules(schedule, method, order):
    kw = dict(steps=9, order=order, skip_type="logSNR", method=method, atol=1e-2, rtol=1e-2)
    a, b = run_both(kw, schedule=schedule, predict_x0=method != "singlestep")
    assert_close(f"{schedule} {method}", a, b, TOLERANCE[np.dtype(np.float64)])


@pytest.mark.parametrize("method, order", [("fast", 3), ("singlestep", 3), ("multistep", 2)])
def test_numpy_vs_torch_thresholding_and_denoise(method, order):
    kw = dict(steps=9, order=order, method=method, denoise=True)
    a, b = run_both(kw, thresholding=True)
    assert_close(f"thresholded {method}", a, b, TOLERANCE[np.dtype(np.float64)])


@pytest.mark.parametrize("method, order, skip_type", [("fast", 3, "time_uniform"),
                                                      ("singlestep", 2, "logSNR"),
                                                      ("multistep", 3, "time_quadratic"),
                                                      ("adaptive", 3, "time_uniform")])
def test_numpy_vs_torch_float32(method, order, skip_type):
    kw = dict(steps=12, order=order, skip_type=skip_type, method=method, atol=1e-2, rtol=1e-2)
    a, b = run_both(kw, dtype=np.float32)
    assert_close(f"float32 {method}", a, b, TOLERANCE[np.dtype(np.float32)])


def test_denoise_returns_the_data_prediction():
    """With predict_x0 the final x0 estimate is the model's data prediction at eps."""
    ns = discrete()
    model = nonlinear_model(ND)
    x = np.random.default_rng(5).standard_normal((2, 2, 2, 2))
    solver = ND.DPM_Solver(model, ns, predict_x0=True)
    plain = solver.sample(x.copy(), steps=6, eps=0.01, T=1.0)
    t0 = np.full((2,), 0.01)
    x0 = (plain - ns.marginal_std(t0)[:, None, None, None] * model(plain, t0)) \
        / ns.marginal_alpha(t0)[:, None, None, None]
    assert_close("denoise", solver.sample(x.copy(), steps=6, eps=0.01, T=1.0, denoise=True), x0,
                 1e-13)


# --------------------------------------------------------------------------------------------------
# model_wrapper
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("time_input_type, expected", [
    ("0", lambda t: t), ("1", lambda t: 1000 * np.maximum(t - 1 / 1000, 0)),
    ("2", lambda t: 999 * t)])
def test_model_wrapper_time_input(time_input_type, expected):
    seen = {}

    def model(x, t_input, scale=1.0):
        seen["t"] = t_input
        return scale * x
    x = np.ones((3, 2))
    t = np.array([0.0005, 0.5, 1.0])
    out = ND.model_wrapper(model, time_input_type=time_input_type,
                           model_kwargs={"scale": 2.0})(x, t)
    np.testing.assert_allclose(seen["t"], expected(t), rtol=1e-15)
    assert np.array_equal(out, 2 * x)
    ND.model_wrapper(model, time_input_type=time_input_type)(x, 0.5)      # one time, any batch
    np.testing.assert_allclose(seen["t"], expected(np.full(3, 0.5)), rtol=1e-15)
    TD.model_wrapper(model, time_input_type=time_input_type)(torch.from_numpy(x),
                                                             torch.tensor(0.5))
    np.testing.assert_allclose(seen["t"].numpy(), expected(np.full(3, 0.5)), rtol=1e-15)


class LinearClassifier(Module):
    """logits = Linear(x) for x (B, C), ignoring the time: a classifier with a backward."""

    def __init__(self, C, K):
        super().__init__(np.float64)
        self.fc = NL.Linear(C, K, dtype=np.float64, rng=7)

    def forward(self, x, t_input):
        return self.fc(x)

    def backward(self, grad_out):
        return self.fc.backward(grad_out)


def test_model_wrapper_classifier_guidance_numpy_vs_autograd():
    B, C, K = 4, 8, 5
    ns_n, ns_t = discrete(ND), discrete(TD)
    clf = LinearClassifier(C, K)
    lin = torch.nn.Linear(C, K, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(clf.fc.weight))
        lin.bias.copy_(torch.from_numpy(clf.fc.bias))
    y = np.array([0, 3, 4, 1])
    model_n = nonlinear_model(ND)

    def model_t(x, t_input):
        return torch.from_numpy(model_n(x.numpy(), t_input.numpy()))
    common = dict(is_cond_classifier=True, classifier_scale=2.5, time_input_type="0")
    guided_n = ND.model_wrapper(lambda x, t, y: model_n(x, t), ns_n, classifier_fn=clf,
                                model_kwargs={"y": y}, **common)
    guided_t = TD.model_wrapper(lambda x, t, y: model_t(x, t), ns_t,
                                classifier_fn=lambda x, t: lin(x),
                                model_kwargs={"y": torch.from_numpy(y)}, **common)
    x = np.random.default_rng(6).standard_normal((B, C))
    t = np.array([0.2, 0.5, 0.7, 0.99])
    a, b = guided_n(x, t), guided_t(torch.from_numpy(x), torch.from_numpy(t))
    assert_close("classifier-guided eps", a, b, 1e-12)
    assert np.abs(a - model_n(x, t)).max() > 1e-2                    # the guidance did something


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors before any model evaluation
# --------------------------------------------------------------------------------------------------
def never_called(x, t):
    raise AssertionError("the model ran before the arguments were checked")


BAD_SAMPLE = [
    (dict(method="dpm"), ValueError, r"expected method in \('fast', 'singlestep'"),
    (dict(skip_type="cosine"), ValueError, r"expected skip_type in"),
    (dict(solver_type="heun"), ValueError, r"expected solver_type in \('dpm_solver', 'taylor'\)"),
    (dict(method="fast", order=1), ValueError, r"method 'fast' takes order in \(2, 3\), got 1"),
    (dict(method="adaptive", order=1), ValueError, r"method 'adaptive' takes order in \(2, 3\)"),
    (dict(method="singlestep", order=4), ValueError, r"takes order in \(1, 2, 3\), got 4"),
    (dict(method="multistep", order=3, steps=2), ValueError, r"needs steps >= 3, got 2"),
    (dict(steps=2.5), TypeError, r"expected an int number of steps, got 2.5"),
    (dict(eps=1.0, T=0.5), ValueError, r"expected 0 < eps < T, got eps=1.0, T=0.5"),
    (dict(method="adaptive", atol=0.0), ValueError, r"expected atol > 0 and rtol >= 0"),
]


@pytest.mark.parametrize("pkg", [ND, TD], ids=["numpy", "torch"])
@pytest.mark.parametrize("kwargs, error, message", BAD_SAMPLE,
                         ids=[str(case[0]) for case in BAD_SAMPLE])
def test_sample_bad_arguments(pkg, kwargs, error, message):
    solver = pkg.DPM_Solver(never_called, discrete(pkg), predict_x0=True)
    x = np.zeros((2, 3)) if pkg is ND else torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(error, match=message):
        solver.sample(x, **{"steps": 10, "eps": 1e-3, **kwargs})


@pytest.mark.parametrize("pkg", [ND, TD], ids=["numpy", "torch"])
def test_schedule_and_sample_bad_input(pkg):
    with pytest.raises(ValueError, match=r"expected schedule in \('discrete', 'linear', 'cosine'"):
        pkg.NoiseScheduleVP("quadratic")
    with pytest.raises(ValueError, match=r"expected betas or alphas_cumprod, got neither"):
        pkg.NoiseScheduleVP("discrete")
    with pytest.raises(ValueError, match=r"betas strictly between 0 and 1, got values in \[0.0"):
        pkg.NoiseScheduleVP("discrete", betas=np.linspace(0.0, 0.02, 10))
    with pytest.raises(ValueError, match=r"expected a 1-D table of at least 2 values"):
        pkg.NoiseScheduleVP("discrete", betas=np.full((2, 5), 0.01))
    with pytest.raises(ValueError, match=r"alphas_cumprod strictly decreasing"):
        pkg.NoiseScheduleVP("discrete", alphas_cumprod=np.full(5, 0.5))
    solver = pkg.DPM_Solver(never_called, discrete(pkg))
    ints = np.zeros((2, 3), np.int64) if pkg is ND else torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"x: expected a floating-point array, got dtype int64"):
        solver.sample(ints)
    with pytest.raises(TypeError, match=r"expected a callable model_fn"):
        pkg.DPM_Solver(None, discrete(pkg))
    with pytest.raises(ValueError, match=r"expected time_input_type in \('0', '1', '2'\)"):
        pkg.model_wrapper(never_called, time_input_type=1)
