"""The U-ViT paper's sampler on torch tensors: the twin of `uvit_numpy.dpm_solver`.

Same classes, functions, arguments and formulas (the NumPy file's docstrings carry the equations
and the notes on where the paper's `dpm_solver_pp.py` differs). Everything runs on the sample's
device and in its dtype: times, alpha, sigma, lambda and every coefficient. The model runs under
`torch.no_grad()` (classifier guidance turns gradients back on for its classifier only, as the
paper's code does). The pure-Python pieces (the order list of "fast", the "time_quadratic" grid,
the argument checks) are the NumPy file's own.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from uvit_numpy.dpm_solver import (METHODS, QUADRATIC_GRID_SIZE, SCHEDULES,  # noqa: F401
                                   SKIP_TYPES, SOLVER_TYPES, TIME_INPUT_TYPES,
                                   _check_sample_arguments, _check_solver_type, fast_orders,
                                   quadratic_time_steps)

__all__ = ["NoiseScheduleVP", "DPM_Solver", "model_wrapper", "interpolate_fn", "fast_orders",
           "quadratic_time_steps", "classifier_log_prob_grad"]


# --------------------------------------------------------------------------------------------------
# The noise schedule
# --------------------------------------------------------------------------------------------------
def interpolate_fn(x, xp, yp):
    """Piecewise-linear interpolation through (xp, yp) (K,), continued by straight lines; x: any
    shape. y = (1 - w) yp[i] + w yp[i+1], exact at the knots (see the NumPy twin)."""
    xp = xp.to(device=x.device, dtype=x.dtype)
    yp = yp.to(device=x.device, dtype=x.dtype)
    i = torch.searchsorted(xp, x.contiguous(), right=True) - 1
    i = i.clamp(0, len(xp) - 2)                                          # x's shape, ints
    x_lo, x_hi, y_lo, y_hi = xp[i], xp[i + 1], yp[i], yp[i + 1]
    w = (x - x_lo) / (x_hi - x_lo)
    return (1 - w) * y_lo + w * y_hi


class NoiseScheduleVP:
    """alpha_t, sigma_t, lambda_t of a VP diffusion ('discrete', 'linear' or 'cosine'), for
    times t of any shape (a float or a tensor), returned in t's shape, dtype and device. See
    `uvit_numpy.dpm_solver.NoiseScheduleVP`. `betas` may be a tensor (the paper passes float32
    ones) or an array or list (float64)."""

    def __init__(self, schedule="discrete", beta_0=1e-4, beta_1=2e-2, total_N=1000, betas=None,
                 alphas_cumprod=None):
        if schedule not in SCHEDULES:
            raise ValueError(f"NoiseScheduleVP: expected schedule in {SCHEDULES}, "
                             f"got {schedule!r}")
        self.schedule = schedule
        self.total_N = total_N
        self.beta_0 = beta_0 * 1000.0
        self.beta_1 = beta_1 * 1000.0
        if schedule == "discrete":
            log_alphas = _discrete_log_alphas(betas, alphas_cumprod)           # (N,)
            self.total_N = len(log_alphas)
            self.t_discrete = torch.linspace(1.0 / self.total_N, 1.0, self.total_N,
                                             dtype=torch.float64)             # (N,) n / N
            self.log_alpha_discrete = log_alphas
        self.cosine_s = 0.008
        self.cosine_beta_max = 999.0
        self.cosine_t_max = (math.atan(self.cosine_beta_max * (1.0 + self.cosine_s) / math.pi)
                             * 2.0 * (1.0 + self.cosine_s) / math.pi - self.cosine_s)
        self.cosine_log_alpha_0 = math.log(math.cos(self.cosine_s / (1.0 + self.cosine_s)
                                                    * math.pi / 2.0))
        self.T = 0.9946 if schedule == "cosine" else 1.0

    def marginal_log_mean_coeff(self, t):
        """log alpha_t, shaped like t."""
        t = _as_time(t)
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        if self.schedule == "discrete":
            return interpolate_fn(t, self.t_discrete, self.log_alpha_discrete)
        s = self.cosine_s                                                       # "cosine"
        return torch.log(torch.cos((t + s) / (1.0 + s) * math.pi / 2.0)) - self.cosine_log_alpha_0

    def marginal_alpha(self, t):
        """alpha_t = exp(log alpha_t)."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        """sigma_t = sqrt(1 - alpha_t^2)."""
        return torch.sqrt(-torch.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        """lambda_t = log alpha_t - log sigma_t."""
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(-torch.expm1(2.0 * log_mean_coeff))
        return log_mean_coeff - log_std

    def inverse_lambda(self, lamb):
        """The time t whose lambda_t is `lamb`, shaped like lamb."""
        lamb = _as_time(lamb)
        zero = torch.zeros_like(lamb)
        log_alpha = -0.5 * torch.logaddexp(zero, -2.0 * lamb)
        if self.schedule == "linear":
            tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lamb, zero)
            delta = self.beta_0 ** 2 + tmp
            return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        if self.schedule == "discrete":
            return interpolate_fn(log_alpha, torch.flip(self.log_alpha_discrete, [0]),
                                  torch.flip(self.t_discrete, [0]))
        s = self.cosine_s                                                       # "cosine"
        return (torch.arccos(torch.exp(log_alpha + self.cosine_log_alpha_0)) * 2.0 * (1.0 + s)
                / math.pi - s)


def _discrete_log_alphas(betas, alphas_cumprod):
    """log alpha at the N discrete steps, (N,) in the table's dtype (on the CPU)."""
    if betas is None and alphas_cumprod is None:
        raise ValueError("NoiseScheduleVP('discrete'): expected betas or alphas_cumprod, got "
                         "neither")
    name = "betas" if betas is not None else "alphas_cumprod"
    table = _as_float_table(f"NoiseScheduleVP: {name}", betas if betas is not None
                            else alphas_cumprod)
    if not bool(torch.all((table > 0) & (table < 1))):
        raise ValueError(f"NoiseScheduleVP: expected {name} strictly between 0 and 1, got values "
                         f"in [{float(table.min())}, {float(table.max())}]")
    if betas is not None:
        return 0.5 * torch.cumsum(torch.log1p(-table), dim=0)
    if bool(torch.any(torch.diff(table) >= 0)):
        raise ValueError("NoiseScheduleVP: expected alphas_cumprod strictly decreasing")
    return 0.5 * torch.log(table)


def _as_float_table(name, values):
    """values (a tensor, an array or a list) as a 1-D floating CPU tensor with >= 2 entries;
    lists and integer tables become float64."""
    if isinstance(values, torch.Tensor):
        table = values.detach().cpu()
    else:
        table = torch.from_numpy(np.array(values))
    if not table.is_floating_point():
        table = table.to(torch.float64)
    if table.ndim != 1 or len(table) < 2:
        raise ValueError(f"{name}: expected a 1-D table of at least 2 values, got shape "
                         f"{tuple(table.shape)}")
    return table


def _as_time(t):
    """t (a float or a tensor) as a floating tensor; floats and integer tensors become float64."""
    if not isinstance(t, torch.Tensor):
        return torch.as_tensor(np.asarray(t, dtype=np.float64))
    return t if t.is_floating_point() else t.to(torch.float64)


# --------------------------------------------------------------------------------------------------
# The model, seen from continuous time
# --------------------------------------------------------------------------------------------------
def model_wrapper(model, noise_schedule=None, is_cond_classifier=False, classifier_fn=None,
                  classifier_scale=1.0, time_input_type="1", total_N=1000, model_kwargs=None,
                  is_deis=False):
    """Turn `model(x, t_input, **model_kwargs) -> eps` into `model_fn(x, t_continuous) -> eps`
    (see the NumPy twin). Classifier guidance takes grad_x log p(y | x_t) by autograd:
    `classifier_fn(x, t_input) -> logits (B, K)` is any differentiable torch function."""
    if time_input_type not in TIME_INPUT_TYPES:
        raise ValueError(f"model_wrapper: expected time_input_type in {TIME_INPUT_TYPES}, got "
                         f"{time_input_type!r}")
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if is_cond_classifier:
        if classifier_fn is None or noise_schedule is None:
            raise ValueError("model_wrapper: classifier guidance needs classifier_fn and "
                             "noise_schedule")
        if model_kwargs.get("y") is None:
            raise ValueError("model_wrapper: for classifier guidance, pass the labels as "
                             "model_kwargs['y']")

    def get_model_input_time(t_continuous):
        if time_input_type == "0":
            return t_continuous
        if time_input_type == "1":
            return 1000.0 * torch.clamp(t_continuous - 1.0 / total_N, min=0.0)
        return (total_N - 1) / total_N * 1000.0 * t_continuous                  # "2"

    def model_fn(x, t_continuous):
        t_continuous = _as_time(t_continuous).to(device=x.device, dtype=x.dtype)
        if t_continuous.numel() == 1:                   # one time for the whole batch
            t_continuous = t_continuous.reshape(()).expand(x.shape[0])
        t_input = get_model_input_time(t_continuous)
        noise = model(x, t_input, **model_kwargs)
        if not is_cond_classifier:
            return noise
        grad = classifier_scale * classifier_log_prob_grad(classifier_fn, x, t_input,
                                                           model_kwargs["y"])
        sigma_t = noise_schedule.marginal_std(t_continuous / 1000.0 if is_deis else t_continuous)
        return noise - _expand(sigma_t, grad) * grad

    return model_fn


def classifier_log_prob_grad(classifier_fn, x, t_input, y):
    """grad_x sum_b log softmax(classifier_fn(x, t_input))[b, y_b], shaped like x (autograd)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier_fn(x_in, t_input), dim=-1)      # (B, K)
        y = torch.as_tensor(y, device=x.device).reshape(-1)                  # (B,)
        selected = log_probs[torch.arange(len(y), device=x.device), y]       # (B,)
        return torch.autograd.grad(selected.sum(), x_in)[0]


# --------------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------------
class DPM_Solver:
    """DPM-Solver (noise prediction) or DPM-Solver++ (`predict_x0=True`, data prediction) on
    tensors; see `uvit_numpy.dpm_solver.DPM_Solver` for the arguments and every equation."""

    def __init__(self, model_fn, noise_schedule, predict_x0=False, thresholding=False,
                 max_val=1.0):
        if not callable(model_fn):
            raise TypeError(f"DPM_Solver: expected a callable model_fn(x, t), got "
                            f"{type(model_fn).__name__}")
        self.model = model_fn
        self.noise_schedule = noise_schedule
        self.predict_x0 = predict_x0
        self.thresholding = thresholding
        self.max_val = max_val

    # --- the model's output as the solver uses it --------------------------------------------
    def model_fn(self, x, t):
        """eps(x, t), or with predict_x0 x0 = (x - sigma_t eps) / alpha_t (thresholded if asked)."""
        noise = self.model(x, t)
        if not self.predict_x0:
            return noise
        ns = self.noise_schedule
        x0 = (x - _expand(ns.marginal_std(t), x) * noise) / _expand(ns.marginal_alpha(t), x)
        return self.threshold(x0) if self.thresholding else x0

    def threshold(self, x0):
        """Dynamic thresholding: the 0.995 quantile q of |x0| per sample (at least 1), x0 clipped
        to [-q, q] and divided by q / max_val."""
        q = torch.quantile(x0.abs().reshape(x0.shape[0], -1), 0.995, dim=1)     # (B,)
        q = _expand(torch.clamp(q, min=1.0), x0)                                # (B, 1, ..., 1)
        return torch.clamp(x0, -q, q) / (q / self.max_val)

    def denoise_fn(self, x, s, noise_s=None):
        """The x0 estimate at s (B,): the data prediction (predict_x0), else
        (x - sigma eps) / alpha."""
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:
            return noise_s
        ns = self.noise_schedule
        return (x - _expand(ns.marginal_std(s), x) * noise_s) / _expand(ns.marginal_alpha(s), x)

    def _marginals(self, t):
        ns = self.noise_schedule
        return ns.marginal_alpha(t), ns.marginal_std(t), ns.marginal_lambda(t)

    # --- time grids ---------------------------------------------------------------------------
    def get_time_steps(self, skip_type, t_T, t_0, N, device=None, dtype=torch.float64):
        """N + 1 times from t_T down to t_0, (N + 1,) on `device` in `dtype`."""
        if skip_type == "logSNR":
            lambda_T, lambda_0 = self.noise_schedule.marginal_lambda(
                torch.tensor([t_T, t_0], dtype=dtype, device=device))
            return self.noise_schedule.inverse_lambda(
                torch.linspace(lambda_T.item(), lambda_0.item(), N + 1, dtype=dtype,
                               device=device))
        if skip_type == "t2":
            return torch.linspace(t_T ** 0.5, t_0 ** 0.5, N + 1, dtype=dtype, device=device) ** 2
        if skip_type == "time_uniform":
            return torch.linspace(t_T, t_0, N + 1, dtype=dtype, device=device)
        if skip_type == "time_quadratic":
            return torch.tensor(quadratic_time_steps(t_T, t_0, N), dtype=dtype, device=device)
        raise ValueError(f"get_time_steps: expected skip_type in {SKIP_TYPES}, got {skip_type!r}")

    def get_time_steps_for_dpm_solver_fast(self, skip_type, t_T, t_0, steps, order, device=None,
                                           dtype=torch.float64):
        """The orders of DPM-Solver-fast and its K + 1 times (K as the paper computes it)."""
        orders = fast_orders(steps, order)
        K = steps // 3 + 1 if order == 3 else steps // 2
        return orders, self.get_time_steps(skip_type, t_T, t_0, K, device, dtype)

    # --- singlestep updates -------------------------------------------------------------------
    def dpm_solver_first_update(self, x, s, t, noise_s=None, return_noise=False):
        """DPM-Solver-1 (DDIM) from s to t (B,)."""
        alpha_s, sigma_s, lambda_s = self._marginals(s)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h = lambda_t - lambda_s
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:   # x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0_s
            x_t = (_expand(sigma_t / sigma_s, x) * x
                   - _expand(alpha_t * torch.expm1(-h), x) * noise_s)
        else:                 # x_t = (alpha_t / alpha_s) x - sigma_t (e^{h} - 1) eps_s
            x_t = (_expand(alpha_t / alpha_s, x) * x
                   - _expand(sigma_t * torch.expm1(h), x) * noise_s)
        return (x_t, {"noise_s": noise_s}) if return_noise else x_t

    def dpm_solver_second_update(self, x, s, t, r1=0.5, noise_s=None, return_noise=False,
                                 solver_type="dpm_solver"):
        """DPM-Solver-2 / DPM-Solver++(2S) from s to t via lambda_s + r1 h."""
        _check_solver_type(solver_type)
        r1 = 0.5 if r1 is None else r1
        alpha_s, sigma_s, lambda_s = self._marginals(s)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h = lambda_t - lambda_s
        s1 = self.noise_schedule.inverse_lambda(lambda_s + r1 * h)
        alpha_s1, sigma_s1, _ = self._marginals(s1)
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:
            x_s1 = (_expand(sigma_s1 / sigma_s, x) * x
                    - _expand(alpha_s1 * torch.expm1(-r1 * h), x) * noise_s)
            noise_s1 = self.model_fn(x_s1, s1)
            D1 = noise_s1 - noise_s
            phi_1 = torch.expm1(-h)
            x_t = _expand(sigma_t / sigma_s, x) * x - _expand(alpha_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":   # - alpha_t / (2 r1) (e^{-h} - 1) D1
                x_t = x_t - _expand(0.5 / r1 * alpha_t * phi_1, x) * D1
            else:                             # + alpha_t / r1 ((e^{-h} - 1) / h + 1) D1
                x_t = x_t + _expand(1.0 / r1 * alpha_t * (phi_1 / h + 1.0), x) * D1
        else:
            x_s1 = (_expand(alpha_s1 / alpha_s, x) * x
                    - _expand(sigma_s1 * torch.expm1(r1 * h), x) * noise_s)
            noise_s1 = self.model_fn(x_s1, s1)
            D1 = noise_s1 - noise_s
            phi_1 = torch.expm1(h)
            x_t = _expand(alpha_t / alpha_s, x) * x - _expand(sigma_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":   # - sigma_t / (2 r1) (e^{h} - 1) D1
                x_t = x_t - _expand(0.5 / r1 * sigma_t * phi_1, x) * D1
            else:                             # - sigma_t / r1 ((e^{h} - 1) / h - 1) D1
                x_t = x_t - _expand(1.0 / r1 * sigma_t * (phi_1 / h - 1.0), x) * D1
        if return_noise:
            return x_t, {"noise_s": noise_s, "noise_s1": noise_s1}
        return x_t

    def dpm_solver_third_update(self, x, s, t, r1=1.0 / 3.0, r2=2.0 / 3.0, noise_s=None,
                                noise_s1=None, noise_s2=None, return_noise=False,
                                solver_type="dpm_solver"):
        """DPM-Solver-3 / its data-prediction twin from s to t via lambda_s + r1 h, + r2 h."""
        _check_solver_type(solver_type)
        r1 = 1.0 / 3.0 if r1 is None else r1
        r2 = 2.0 / 3.0 if r2 is None else r2
        ns = self.noise_schedule
        alpha_s, sigma_s, lambda_s = self._marginals(s)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h = lambda_t - lambda_s
        s1 = ns.inverse_lambda(lambda_s + r1 * h)
        s2 = ns.inverse_lambda(lambda_s + r2 * h)
        alpha_s1, sigma_s1, _ = self._marginals(s1)
        alpha_s2, sigma_s2, _ = self._marginals(s2)
        sign = -1.0 if self.predict_x0 else 1.0       # exponents in -h (data) or +h (noise)
        phi_11 = torch.expm1(sign * r1 * h)
        phi_12 = torch.expm1(sign * r2 * h)
        phi_1 = torch.expm1(sign * h)
        phi_22 = torch.expm1(sign * r2 * h) / (r2 * h) - sign
        phi_2 = phi_1 / h - sign
        phi_3 = phi_2 / h - 0.5
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:
            if noise_s1 is None:
                x_s1 = (_expand(sigma_s1 / sigma_s, x) * x
                        - _expand(alpha_s1 * phi_11, x) * noise_s)
                noise_s1 = self.model_fn(x_s1, s1)
            if noise_s2 is None:
                x_s2 = (_expand(sigma_s2 / sigma_s, x) * x
                        - _expand(alpha_s2 * phi_12, x) * noise_s
                        + _expand(r2 / r1 * alpha_s2 * phi_22, x) * (noise_s1 - noise_s))
                noise_s2 = self.model_fn(x_s2, s2)
            x_t = _expand(sigma_t / sigma_s, x) * x - _expand(alpha_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":
                x_t = x_t + _expand(1.0 / r2 * alpha_t * phi_2, x) * (noise_s2 - noise_s)
            else:
                D1, D2 = _taylor_derivatives(noise_s, noise_s1, noise_s2, r1, r2)
                x_t = x_t + _expand(alpha_t * phi_2, x) * D1 - _expand(alpha_t * phi_3, x) * D2
        else:
            if noise_s1 is None:
                x_s1 = (_expand(alpha_s1 / alpha_s, x) * x
                        - _expand(sigma_s1 * phi_11, x) * noise_s)
                noise_s1 = self.model_fn(x_s1, s1)
            if noise_s2 is None:
                x_s2 = (_expand(alpha_s2 / alpha_s, x) * x
                        - _expand(sigma_s2 * phi_12, x) * noise_s
                        - _expand(r2 / r1 * sigma_s2 * phi_22, x) * (noise_s1 - noise_s))
                noise_s2 = self.model_fn(x_s2, s2)
            x_t = _expand(alpha_t / alpha_s, x) * x - _expand(sigma_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":
                x_t = x_t - _expand(1.0 / r2 * sigma_t * phi_2, x) * (noise_s2 - noise_s)
            else:
                D1, D2 = _taylor_derivatives(noise_s, noise_s1, noise_s2, r1, r2)
                x_t = x_t - _expand(sigma_t * phi_2, x) * D1 - _expand(sigma_t * phi_3, x) * D2
        if return_noise:
            return x_t, {"noise_s": noise_s, "noise_s1": noise_s1, "noise_s2": noise_s2}
        return x_t

    def dpm_solver_update(self, x, s, t, order, return_noise=False, solver_type="dpm_solver",
                          r1=None, r2=None):
        """One singlestep update of order 1, 2 or 3 from s to t (B,)."""
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_noise=return_noise)
        if order == 2:
            return self.dpm_solver_second_update(x, s, t, r1=r1, return_noise=return_noise,
                                                 solver_type=solver_type)
        if order == 3:
            return self.dpm_solver_third_update(x, s, t, r1=r1, r2=r2, return_noise=return_noise,
                                                solver_type=solver_type)
        raise ValueError(f"dpm_solver_update: expected order 1, 2 or 3, got {order}")

    # --- multistep updates --------------------------------------------------------------------
    def dpm_multistep_second_update(self, x, noise_prev_list, t_prev_list, t,
                                    solver_type="dpm_solver"):
        """DPM-Solver++(2M) and its noise twin, from t_prev_list[-1] to t."""
        _check_solver_type(solver_type)
        noise_prev_1, noise_prev_0 = noise_prev_list
        t_prev_1, t_prev_0 = t_prev_list
        ns = self.noise_schedule
        alpha_0, sigma_0, lambda_prev_0 = self._marginals(t_prev_0)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h_0 = lambda_prev_0 - ns.marginal_lambda(t_prev_1)
        h = lambda_t - lambda_prev_0
        r0 = h_0 / h
        D1_0 = _expand(1.0 / r0, x) * (noise_prev_0 - noise_prev_1)
        if self.predict_x0:
            phi_1 = torch.expm1(-h)
            x_t = _expand(sigma_t / sigma_0, x) * x - _expand(alpha_t * phi_1, x) * noise_prev_0
            if solver_type == "dpm_solver":
                return x_t - _expand(0.5 * alpha_t * phi_1, x) * D1_0
            return x_t + _expand(alpha_t * (phi_1 / h + 1.0), x) * D1_0
        phi_1 = torch.expm1(h)
        x_t = _expand(alpha_t / alpha_0, x) * x - _expand(sigma_t * phi_1, x) * noise_prev_0
        if solver_type == "dpm_solver":
            return x_t - _expand(0.5 * sigma_t * phi_1, x) * D1_0
        return x_t - _expand(sigma_t * (phi_1 / h - 1.0), x) * D1_0

    def dpm_multistep_third_update(self, x, noise_prev_list, t_prev_list, t,
                                   solver_type="dpm_solver"):
        """DPM-Solver++(3M) and its noise twin, from t_prev_list[-1] to t, as the paper's code
        writes it (its D2 estimates h^2 m'' / 2 where h^2 m'' is needed: second order; see the
        NumPy twin's module docstring)."""
        _check_solver_type(solver_type)
        noise_prev_2, noise_prev_1, noise_prev_0 = noise_prev_list
        t_prev_2, t_prev_1, t_prev_0 = t_prev_list
        ns = self.noise_schedule
        alpha_0, sigma_0, lambda_prev_0 = self._marginals(t_prev_0)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        lambda_prev_1, lambda_prev_2 = ns.marginal_lambda(t_prev_1), ns.marginal_lambda(t_prev_2)
        h_1 = lambda_prev_1 - lambda_prev_2
        h_0 = lambda_prev_0 - lambda_prev_1
        h = lambda_t - lambda_prev_0
        r0, r1 = h_0 / h, h_1 / h
        D1_0 = _expand(1.0 / r0, x) * (noise_prev_0 - noise_prev_1)
        D1_1 = _expand(1.0 / r1, x) * (noise_prev_1 - noise_prev_2)
        D1 = D1_0 + _expand(r0 / (r0 + r1), x) * (D1_0 - D1_1)
        D2 = _expand(1.0 / (r0 + r1), x) * (D1_0 - D1_1)
        sign = -1.0 if self.predict_x0 else 1.0
        phi_1 = torch.expm1(sign * h)
        phi_2 = phi_1 / h - sign
        phi_3 = phi_2 / h - 0.5
        if self.predict_x0:
            return (_expand(sigma_t / sigma_0, x) * x - _expand(alpha_t * phi_1, x) * noise_prev_0
                    + _expand(alpha_t * phi_2, x) * D1 - _expand(alpha_t * phi_3, x) * D2)
        return (_expand(alpha_t / alpha_0, x) * x - _expand(sigma_t * phi_1, x) * noise_prev_0
                - _expand(sigma_t * phi_2, x) * D1 - _expand(sigma_t * phi_3, x) * D2)

    def dpm_multistep_update(self, x, noise_prev_list, t_prev_list, t, order,
                             solver_type="taylor"):
        """One multistep update of order 1, 2 or 3 from t_prev_list[-1] to t."""
        if order == 1:
            return self.dpm_solver_first_update(x, t_prev_list[-1], t,
                                                noise_s=noise_prev_list[-1])
        if order == 2:
            return self.dpm_multistep_second_update(x, noise_prev_list[-2:], t_prev_list[-2:], t,
                                                    solver_type=solver_type)
        if order == 3:
            return self.dpm_multistep_third_update(x, noise_prev_list[-3:], t_prev_list[-3:], t,
                                                   solver_type=solver_type)
        raise ValueError(f"dpm_multistep_update: expected order 1, 2 or 3, got {order}")

    # --- adaptive step size -------------------------------------------------------------------
    def dpm_solver_adaptive(self, x, order, t_T, t_0, h_init=0.05, atol=0.0078, rtol=0.05,
                            theta=0.9, t_err=1e-5, solver_type="dpm_solver"):
        """DPM-Solver-12 / -23 with adaptive steps in lambda (see the NumPy twin)."""
        if order == 2:
            r1 = 0.5

            def lower_update(x, s, t):
                return self.dpm_solver_first_update(x, s, t, return_noise=True)

            def higher_update(x, s, t, **outputs):
                return self.dpm_solver_second_update(x, s, t, r1=r1, solver_type=solver_type,
                                                     **outputs)
        elif order == 3:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0

            def lower_update(x, s, t):
                return self.dpm_solver_second_update(x, s, t, r1=r1, return_noise=True,
                                                     solver_type=solver_type)

            def higher_update(x, s, t, **outputs):
                return self.dpm_solver_third_update(x, s, t, r1=r1, r2=r2,
                                                    solver_type=solver_type, **outputs)
        else:
            raise ValueError(f"dpm_solver_adaptive: expected order 2 or 3, got {order}")
        ns = self.noise_schedule
        B = x.shape[0]
        like = dict(dtype=x.dtype, device=x.device)
        s = torch.full((B,), t_T, **like)
        lambda_s = ns.marginal_lambda(s)
        lambda_0 = ns.marginal_lambda(torch.full((B,), t_0, **like))
        h = torch.full((B,), h_init, **like)
        x_prev = x
        while float((s - t_0).abs().mean()) > t_err:
            t = ns.inverse_lambda(lambda_s + h)
            x_lower, outputs = lower_update(x, s, t)
            x_higher = higher_update(x, s, t, **outputs)
            delta = torch.clamp(rtol * torch.maximum(x_lower.abs(), x_prev.abs()), min=atol)
            ratio = ((x_higher - x_lower) / delta).reshape(B, -1)           # (B, rest)
            E = ratio.square().mean(dim=-1).sqrt().max()                    # worst sample's RMS
            if not bool(torch.isfinite(E)):
                raise FloatingPointError("dpm_solver_adaptive: the error estimate is not finite "
                                         "(did the model return inf or nan?)")
            if bool(E <= 1.0):                                              # accept the step
                x, s, x_prev = x_higher, t, x_lower
                lambda_s = ns.marginal_lambda(s)
            h = torch.minimum(theta * h * E ** (-1.0 / order), lambda_0 - lambda_s)
        return x

    # --- the sampling loops -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, x, steps=10, eps=1e-4, T=None, order=3, skip_type="time_uniform",
               denoise=False, method="fast", solver_type="dpm_solver", atol=0.0078, rtol=0.05):
        """Solve the diffusion ODE from x (B, ...) at time T to time `eps`; see the NumPy twin
        for the methods. Returns (B, ...) on x's device, in x's dtype."""
        t_T = self.noise_schedule.T if T is None else T
        t_0 = eps
        _check_sample_arguments(x, steps, t_T, t_0, order, skip_type, method, solver_type, atol,
                                rtol)
        if method == "adaptive":
            x = self.dpm_solver_adaptive(x, order=order, t_T=t_T, t_0=t_0, atol=atol, rtol=rtol,
                                         solver_type=solver_type)
        elif method == "multistep":
            x = self._sample_multistep(x, steps, t_T, t_0, order, skip_type, solver_type)
        elif method == "fast":
            x = self._sample_fast(x, steps, t_T, t_0, order, skip_type, solver_type)
        else:
            x = self._sample_singlestep(x, steps, t_T, t_0, order, skip_type, solver_type)
        if denoise:
            x = self.denoise_fn(x, torch.full((x.shape[0],), t_0, dtype=x.dtype,
                                              device=x.device))
        return x

    def _sample_fast(self, x, steps, t_T, t_0, order, skip_type, solver_type):
        B = x.shape[0]
        timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, x.device, x.dtype)
        lambdas = self.noise_schedule.marginal_lambda(timesteps)               # (steps + 1,)
        i = 0
        for k in fast_orders(steps, order):
            s, t = timesteps[i].expand(B), timesteps[i + k].expand(B)
            h = lambdas[i + k] - lambdas[i]
            r1 = None if k <= 1 else (lambdas[i + 1] - lambdas[i]) / h
            r2 = None if k <= 2 else (lambdas[i + 2] - lambdas[i]) / h
            x = self.dpm_solver_update(x, s, t, k, solver_type=solver_type, r1=r1, r2=r2)
            i += k
        return x

    def _sample_singlestep(self, x, steps, t_T, t_0, order, skip_type, solver_type):
        B = x.shape[0]
        n_steps = steps // order
        timesteps = self.get_time_steps(skip_type, t_T, t_0, n_steps, x.device, x.dtype)
        for i in range(n_steps):
            s, t = timesteps[i].expand(B), timesteps[i + 1].expand(B)
            x = self.dpm_solver_update(x, s, t, order, solver_type=solver_type)
        return x

    def _sample_multistep(self, x, steps, t_T, t_0, order, skip_type, solver_type):
        B = x.shape[0]
        timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, x.device, x.dtype)
        t = timesteps[0].expand(B)
        noise_prev_list, t_prev_list = [self.model_fn(x, t)], [t]               # oldest first
        for step in range(1, steps + 1):
            t = timesteps[step].expand(B)
            x = self.dpm_multistep_update(x, noise_prev_list, t_prev_list, t, min(step, order),
                                          solver_type=solver_type)
            t_prev_list = (t_prev_list + [t])[-order:]
            if step < steps:
                noise_prev_list = (noise_prev_list + [self.model_fn(x, t)])[-order:]
        return x


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _taylor_derivatives(m_s, m_s1, m_s2, r1, r2):
    """D1 ~ h m', D2 ~ h^2 m'' through three model outputs (see the NumPy twin)."""
    D1_1 = (1.0 / r1) * (m_s1 - m_s)
    D1_2 = (1.0 / r2) * (m_s2 - m_s)
    D1 = (r2 * D1_1 - r1 * D1_2) / (r2 - r1)
    D2 = 2.0 * (D1_2 - D1_1) / (r2 - r1)
    return D1, D2


def _expand(c, x):
    """A per-sample coefficient (B,) (or a scalar) as (B, 1, ..., 1) in x's dtype and device."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))
