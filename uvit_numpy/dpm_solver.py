"""The U-ViT paper's sampler: DPM-Solver and DPM-Solver++, as its `dpm_solver_pp.py` runs them.

**The ODE.** A VP diffusion noises data as x_t = alpha_t x0 + sigma_t eps with
alpha_t^2 + sigma_t^2 = 1. Its probability-flow ODE, written in the half-log-SNR
lambda_t = log alpha_t - log sigma_t (which falls as t grows), has an exact linear part, so from
time s to time t (variation of constants; Lu et al. 2022a, eq. 3.4; 2022b, eq. 8):

    noise prediction eps(x, t):  x_t = (alpha_t / alpha_s) x_s - alpha_t int e^{-lambda} eps dlambda
    data prediction  x0(x, t):   x_t = (sigma_t / sigma_s) x_s + sigma_t int e^{lambda} x0 dlambda

(integrals from lambda_s to lambda_t). DPM-Solver (`predict_x0=False`) and DPM-Solver++
(`predict_x0=True`, data prediction x0 = (x - sigma_t eps) / alpha_t) approximate the model's
output in those integrals by a Taylor polynomial in lambda, whose exponentially weighted integrals
are known in closed form: with h = lambda_t - lambda_s, order k needs the phi functions
e^{-h} - 1, (e^{-h} - 1) / h + 1, ... and k - 1 extra model evaluations ("singlestep") or the
k - 1 previous evaluations ("multistep"). Order 1 is DDIM. Each update below writes its equation
beside the line that computes it.

    DPM-Solver:   C. Lu et al., NeurIPS 2022, arXiv:2206.00927 (2022a)
    DPM-Solver++: C. Lu et al., arXiv:2211.01095 (2022b)

**How U-ViT calls it.** Its latent models (`eval_ldm_discrete.py`, `eval_t2i_discrete.py`,
`sample_t2i_discrete.py`, `train_*_discrete.py`) build
`NoiseScheduleVP('discrete', betas=float32 tensor)` over Stable Diffusion's betas
(linspace(sqrt(0.00085), sqrt(0.012), 1000)^2), wrap the network as
`model_fn(x, t) = nnet(x, t * 1000, ...)` (noise prediction, guidance inside) and call
`DPM_Solver(model_fn, schedule, predict_x0=True, thresholding=False).sample(x, steps=50,
eps=1/1000, T=1.)` with the defaults method="fast", order=3, skip_type="time_uniform",
solver_type="dpm_solver", denoise=False. The 'discrete' schedule puts the n-th of N discrete
steps at t = n / N and interpolates log alpha linearly in t between them, so the network is fed
fractional n = 1000 t in [1, 1000].

**What "fast" computes in this file (and the paper's).** Its docstring describes the original
DPM-Solver-fast (K = steps // 3 + 1 intervals uniform in logSNR). The code keeps only that
scheme's list of orders ([3, ..., 3, 2] for 50 steps), and runs it on a grid of `steps`
intervals of `skip_type` (time-uniform for U-ViT): an order-k step spans k grid intervals and
its intermediate evaluations fall on the grid points between (r1, r2 are their lambda ratios).
So 50 steps are 16 third-order and one second-order DPM-Solver++ singlestep updates, 50 model
evaluations, ending at t = 1/1000 (n = 1) without a final denoising step. On Stable Diffusion's
schedule lambda runs from -2.68 (t = 1) to 3.53 (t = 1/1000), and a time-uniform grid spends it
unevenly: the first of its 50 intervals spans 0.12 in lambda, the last one 1.55.

**Orders, as measured on Gaussian data (tests/test_dpm_solver.py).** Singlestep and "fast" reach
their nominal order, and so does 2M. 3M does not: as the paper's code writes it (and DPM-Solver's
and diffusers' `multistep_dpm_solver_third_order_update`), its second difference
D2 = (D1_0 - D1_1) / (r0 + r1) estimates h^2 m'' / 2, but is weighted as h^2 m'' (the weight
phi_3 of the singlestep Taylor update, whose D2 does estimate h^2 m''). A model output quadratic
in lambda is therefore not integrated exactly, and 3M converges at order 2, with a smaller error
than 2M. This file computes what the paper's code computes and leaves the factor as it is.

**Where this file differs from the paper's code** (found by running it; nothing here changes a
result U-ViT computes beyond float rounding):

* method="multistep" cannot run in the paper's code: `sample` reads a local `timesteps` before
  assigning it (`UnboundLocalError`). Its update functions are sound; this file runs them
  (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2, and 3M), and computes what the paper's code
  computes once `timesteps = None` is added before that line.
* `denoise=True` with `predict_x0=True`: the paper's `denoise_fn` treats the data prediction as
  noise, (x - sigma x0) / alpha. Here it returns the data prediction itself.
* The adaptive solver's step-size update casts E^(-1/order) to float32 (`.float()`), even for
  float64 samples; here it stays in the sample's dtype (the samples differ by ~1e-13). The
  paper's code also prints the number of model evaluations; this one does not.
* 1 - exp(.) and log(1 - beta) are written expm1/log1p (the same values, better rounded).
* "time_quadratic" picks, as the paper's code does, the first point of a uniform grid of 10^7
  times at or after each of N + 1 points uniform in sqrt(t), but finds it with a ceiling instead
  of building the grid (the paper's "t2" is the exact sqrt-uniform grid).
* `interpolate_fn` takes one row of knots (xp, yp: (K,)), not the paper's (C, K) channels.
* Bad arguments raise `ValueError`/`TypeError` before any work (the paper asserts or fails late).

**Precision.** The schedule arithmetic (times, alpha, sigma, lambda, every coefficient) runs in
the dtype of the sample x, as the paper's runs in torch's default dtype: pass float64 samples for
float64 throughout. There is no randomness: the torch twin (`uvit_torch.dpm_solver`) computes the
same numbers to float64 rounding.
"""

import math

import numpy as np

from .checks import check_floating
from .functional import softmax

SCHEDULES = ("discrete", "linear", "cosine")
SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic", "t2")
METHODS = ("fast", "singlestep", "multistep", "adaptive")
SOLVER_TYPES = ("dpm_solver", "taylor")
TIME_INPUT_TYPES = ("0", "1", "2")
QUADRATIC_GRID_SIZE = 10_000_000       # the paper's "time_quadratic" searches a grid this fine


# --------------------------------------------------------------------------------------------------
# The noise schedule
# --------------------------------------------------------------------------------------------------
def interpolate_fn(x, xp, yp):
    """Piecewise-linear interpolation through the knots (xp, yp), continued by straight lines.

    x: any shape. xp: (K,) increasing knots, K >= 2. yp: (K,) the values there. Returns x's shape
    in x's dtype. With i the last knot at or below x (clipped to the first and last segment):
        y = (1 - w) yp[i] + w yp[i+1],   w = (x - xp[i]) / (xp[i+1] - xp[i]),
    exact at every knot (w = 0 or 1). Beyond either end the outer segment's line continues, as in
    the paper's `interpolate_fn` (np.interp would hold the end value flat instead).
    """
    x = np.asarray(x)
    xp, yp = xp.astype(x.dtype, copy=False), yp.astype(x.dtype, copy=False)
    i = np.searchsorted(xp, x, side="right") - 1                            # x's shape, ints
    i = np.minimum(np.maximum(i, 0), len(xp) - 2)          # the outer segments continue outwards
    x_lo, x_hi, y_lo, y_hi = xp[i], xp[i + 1], yp[i], yp[i + 1]
    w = (x - x_lo) / (x_hi - x_lo)
    return (1 - w) * y_lo + w * y_hi


class NoiseScheduleVP:
    """alpha_t, sigma_t and lambda_t of a VP diffusion for continuous t in [0, T].

    schedule:
      'discrete': N discrete steps with `betas` (N,) (or `alphas_cumprod` (N,)), step n at
          t = n / N with log alpha_{n/N} = 1/2 log prod_{i<=n} (1 - beta_i); log alpha is linear
          in t between the knots (and continued past the ends by the outer segments). T = 1.
      'linear': beta(t) = beta_0 + t (beta_1 - beta_0) with the given betas times 1000 (DDPM's
          1e-4 .. 0.02 over 1000 steps, in continuous time: 0.1 .. 20; U-ViT's pixel VP-SDE), so
          log alpha_t = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2. T = 1.
      'cosine': alpha_t = cos((t + s) / (1 + s) pi / 2) / cos(s / (1 + s) pi / 2), s = 0.008
          (improved DDPM). T = 0.9946, as the paper sets it (alpha -> 0 at t = 1).
    Every method takes times t of any shape (a float, or an array) and returns that shape in t's
    dtype. `betas` keeps its own dtype (float32 betas, as the paper passes them, give a float32
    table; a list gives float64).
    """

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
            self.t_discrete = np.linspace(1.0 / self.total_N, 1.0, self.total_N)  # (N,) n / N
            self.log_alpha_discrete = log_alphas
        self.cosine_s = 0.008
        self.cosine_beta_max = 999.0
        self.cosine_t_max = (math.atan(self.cosine_beta_max * (1.0 + self.cosine_s) / math.pi)
                             * 2.0 * (1.0 + self.cosine_s) / math.pi - self.cosine_s)
        self.cosine_log_alpha_0 = math.log(math.cos(self.cosine_s / (1.0 + self.cosine_s)
                                                    * math.pi / 2.0))
        # the cosine schedule's alpha reaches 0 at t = 1; the paper stops a little before
        self.T = 0.9946 if schedule == "cosine" else 1.0

    def marginal_log_mean_coeff(self, t):
        """log alpha_t, shaped like t."""
        t = _as_time(t)
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        if self.schedule == "discrete":
            return interpolate_fn(t, self.t_discrete, self.log_alpha_discrete)
        s = self.cosine_s                                                       # "cosine"
        return np.log(np.cos((t + s) / (1.0 + s) * math.pi / 2.0)) - self.cosine_log_alpha_0

    def marginal_alpha(self, t):
        """alpha_t = exp(log alpha_t), shaped like t."""
        return np.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        """sigma_t = sqrt(1 - alpha_t^2), shaped like t."""
        return np.sqrt(-np.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        """lambda_t = log alpha_t - log sigma_t (half the log signal-to-noise ratio)."""
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * np.log(-np.expm1(2.0 * log_mean_coeff))
        return log_mean_coeff - log_std

    def inverse_lambda(self, lamb):
        """The time t whose lambda_t is `lamb` (any shape), shaped like lamb.

        From alpha^2 = sigmoid(2 lambda): log alpha = -1/2 log(1 + e^{-2 lambda}), then each
        schedule's log alpha is inverted: a quadratic for 'linear', the interpolation with the
        axes swapped for 'discrete' (log alpha falls as t grows), arccos for 'cosine'.
        """
        lamb = _as_time(lamb)
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lamb)
        if self.schedule == "linear":
            # (b1 - b0) t^2 + 2 b0 t + 4 log alpha = 0, solved as 2c / (sqrt(b0^2 + ...) + b0)
            tmp = 2.0 * (self.beta_1 - self.beta_0) * np.logaddexp(-2.0 * lamb, 0.0)
            delta = self.beta_0 ** 2 + tmp
            return tmp / (np.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        if self.schedule == "discrete":
            return interpolate_fn(log_alpha, self.log_alpha_discrete[::-1], self.t_discrete[::-1])
        s = self.cosine_s                                                       # "cosine"
        return (np.arccos(np.exp(log_alpha + self.cosine_log_alpha_0)) * 2.0 * (1.0 + s)
                / math.pi - s)


def _discrete_log_alphas(betas, alphas_cumprod):
    """log alpha at the N discrete steps, (N,): 1/2 cumsum(log(1 - beta)), or 1/2 log(abar)."""
    if betas is None and alphas_cumprod is None:
        raise ValueError("NoiseScheduleVP('discrete'): expected betas or alphas_cumprod, got "
                         "neither")
    name = "betas" if betas is not None else "alphas_cumprod"
    table = _as_float_table(f"NoiseScheduleVP: {name}", betas if betas is not None
                            else alphas_cumprod)
    if not np.all((table > 0) & (table < 1)):
        raise ValueError(f"NoiseScheduleVP: expected {name} strictly between 0 and 1, got values "
                         f"in [{table.min()}, {table.max()}]")
    if betas is not None:
        return 0.5 * np.cumsum(np.log1p(-table))      # log1p: 1 - beta loses beta's low digits
    if np.any(np.diff(table) >= 0):
        raise ValueError("NoiseScheduleVP: expected alphas_cumprod strictly decreasing")
    return 0.5 * np.log(table)


def _as_float_table(name, values):
    """values (a list, a NumPy array or a CPU tensor) as a 1-D floating array with >= 2 entries."""
    table = np.asarray(values)
    if not np.issubdtype(table.dtype, np.floating):
        table = table.astype(np.float64)
    if table.ndim != 1 or len(table) < 2:
        raise ValueError(f"{name}: expected a 1-D table of at least 2 values, got shape "
                         f"{table.shape}")
    return table


def _as_time(t):
    """t (a float or an array) as a floating array; floats and integer arrays become float64."""
    t = np.asarray(t)
    return t if t.dtype.kind == "f" else t.astype(np.float64)


# --------------------------------------------------------------------------------------------------
# The model, seen from continuous time
# --------------------------------------------------------------------------------------------------
def model_wrapper(model, noise_schedule=None, is_cond_classifier=False, classifier_fn=None,
                  classifier_scale=1.0, time_input_type="1", total_N=1000, model_kwargs=None,
                  is_deis=False):
    """Turn `model(x, t_input, **model_kwargs) -> eps` into `model_fn(x, t_continuous) -> eps`.

    (U-ViT's scripts do not use this: they write `model_fn(x, t) = nnet(x, t * N)` themselves.)
    time_input_type: how the model's time label comes from t in [eps, T]:
      '0': t itself (continuous-time models);
      '1': 1000 (t - 1/N) clipped at 0 (Type-1 discrete labels, DPM-Solver's appendix);
      '2': 1000 (N - 1) / N t (Type-2). (The paper's code writes 1000 where N is meant.)
    Classifier guidance (Dhariwal & Nichol 2021): eps - sigma_t s grad_x log p(y | x_t), with
    y = model_kwargs['y'] and s = classifier_scale. NumPy has no autograd, so `classifier_fn` is
    a `uvit_numpy` Module (or anything callable with a `backward(grad_logits) -> grad_x`) that
    records its forward: `classifier_fn(x, t_input) -> logits (B, K)` in training mode.
    `is_deis` evaluates sigma at t / 1000 (for DEIS-style time labels), as the paper's code does.
    Returns model_fn(x (B, ...), t_continuous (B,) or a single time) -> (B, ...).
    """
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
            return 1000.0 * np.maximum(t_continuous - 1.0 / total_N, 0.0)
        return (total_N - 1) / total_N * 1000.0 * t_continuous                  # "2"

    def model_fn(x, t_continuous):
        t_continuous = _as_time(t_continuous).astype(x.dtype)
        if t_continuous.size == 1:                      # one time for the whole batch
            t_continuous = np.full((x.shape[0],), t_continuous.reshape(()), dtype=x.dtype)
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
    """grad_x sum_b log softmax(classifier_fn(x, t_input))[b, y_b], shaped like x.

    The gradient of sum_b log p_b[y_b] with respect to the logits is onehot(y) - softmax(logits);
    the classifier's own backward carries it to x.
    """
    logits = classifier_fn(x, t_input)                                    # (B, K)
    y = np.asarray(y).reshape(-1)                                         # (B,)
    grad_logits = -softmax(logits, axis=-1)                               # (B, K)
    grad_logits[np.arange(len(y)), y] += 1.0
    return classifier_fn.backward(grad_logits)


# --------------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------------
class DPM_Solver:
    """DPM-Solver (noise prediction) or DPM-Solver++ (`predict_x0=True`, data prediction).

    model_fn(x (B, ...), t (B,)) -> eps (B, ...): the noise predictor in continuous time (see
    `model_wrapper`). noise_schedule: a `NoiseScheduleVP`. thresholding: clip each data
    prediction to its 99.5th percentile of |x0| (at least 1) and rescale it to [-max_val,
    max_val] (Imagen's dynamic thresholding; data prediction only).

    Naming, kept from the paper's code: `noise_s`, `noise_s1`, ... are the solver's model outputs
    at s, s1, ..., i.e. eps with `predict_x0=False` but the data prediction x0 with
    `predict_x0=True`; the update docstrings write them eps_* and x0_* respectively.
    """

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
        """eps(x, t), or with predict_x0 the data prediction x0 = (x - sigma_t eps) / alpha_t
        (thresholded if asked). x: (B, ...), t: (B,). Returns (B, ...)."""
        noise = self.model(x, t)
        if not self.predict_x0:
            return noise
        ns = self.noise_schedule
        x0 = (x - _expand(ns.marginal_std(t), x) * noise) / _expand(ns.marginal_alpha(t), x)
        return self.threshold(x0) if self.thresholding else x0

    def threshold(self, x0):
        """Dynamic thresholding of x0 (B, ...): q = the 0.995 quantile of |x0| per sample, at
        least 1; x0 clipped to [-q, q], then divided by q / max_val."""
        q = np.quantile(np.abs(x0).reshape(x0.shape[0], -1), 0.995, axis=1)   # (B,) linear rule
        q = _expand(np.maximum(q, 1.0), x0)                                   # (B, 1, ..., 1)
        return np.clip(x0, -q, q) / (q / self.max_val)

    def denoise_fn(self, x, s, noise_s=None):
        """The estimate of x0 at time s (B,): the data prediction itself (predict_x0), else
        (x - sigma_s eps) / alpha_s. (The paper's code applies the second formula in both cases,
        which is wrong with predict_x0.)"""
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:
            return noise_s
        ns = self.noise_schedule
        return (x - _expand(ns.marginal_std(s), x) * noise_s) / _expand(ns.marginal_alpha(s), x)

    def _marginals(self, t):
        """(alpha_t, sigma_t, lambda_t) at times t (B,), each (B,)."""
        ns = self.noise_schedule
        return ns.marginal_alpha(t), ns.marginal_std(t), ns.marginal_lambda(t)

    # --- time grids ---------------------------------------------------------------------------
    def get_time_steps(self, skip_type, t_T, t_0, N, dtype=np.float64):
        """N + 1 times from t_T down to t_0, (N + 1,) in `dtype`.

        'time_uniform': uniform in t (DDIM, DDPM; U-ViT's choice);
        'logSNR': uniform in lambda, mapped back by `inverse_lambda` (DPM-Solver's advice);
        'time_quadratic': uniform in sqrt(t) (DDIM on small images), snapped as the paper's code
            snaps it (`quadratic_time_steps`); 't2': uniform in sqrt(t), exactly.
        """
        if skip_type == "logSNR":
            lambda_T, lambda_0 = self.noise_schedule.marginal_lambda(
                np.array([t_T, t_0], dtype=dtype))
            return self.noise_schedule.inverse_lambda(
                np.linspace(lambda_T, lambda_0, N + 1, dtype=dtype))
        if skip_type == "t2":
            return np.linspace(t_T ** 0.5, t_0 ** 0.5, N + 1, dtype=dtype) ** 2
        if skip_type == "time_uniform":
            return np.linspace(t_T, t_0, N + 1, dtype=dtype)
        if skip_type == "time_quadratic":
            return np.array(quadratic_time_steps(t_T, t_0, N), dtype=dtype)
        raise ValueError(f"get_time_steps: expected skip_type in {SKIP_TYPES}, got {skip_type!r}")

    def get_time_steps_for_dpm_solver_fast(self, skip_type, t_T, t_0, steps, order,
                                           dtype=np.float64):
        """The orders of DPM-Solver-fast (`fast_orders`) and its K + 1 times (`get_time_steps`
        with K = steps // 3 + 1 for order 3, steps // 2 for order 2, as the paper computes K:
        for order 2 and odd steps that is one interval fewer than there are orders).
        `sample(method='fast')` uses only the orders: see the module docstring."""
        orders = fast_orders(steps, order)
        K = steps // 3 + 1 if order == 3 else steps // 2
        return orders, self.get_time_steps(skip_type, t_T, t_0, K, dtype)

    # --- singlestep updates (one step from s to t, order - 1 extra evaluations) ---------------
    def dpm_solver_first_update(self, x, s, t, noise_s=None, return_noise=False):
        """DPM-Solver-1 from s to t: DDIM. x: (B, ...) at time s; s, t: (B,). Returns x_t, and
        with `return_noise` also {'noise_s': the model output at s}. With h = lambda_t - lambda_s:
            data:   x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0_s
            noise:  x_t = (alpha_t / alpha_s) x - sigma_t (e^{h} - 1) eps_s
        """
        alpha_s, sigma_s, lambda_s = self._marginals(s)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h = lambda_t - lambda_s                                               # (B,)
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:   # x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0_s
            x_t = (_expand(sigma_t / sigma_s, x) * x
                   - _expand(alpha_t * np.expm1(-h), x) * noise_s)
        else:                 # x_t = (alpha_t / alpha_s) x - sigma_t (e^{h} - 1) eps_s
            x_t = (_expand(alpha_t / alpha_s, x) * x
                   - _expand(sigma_t * np.expm1(h), x) * noise_s)
        return (x_t, {"noise_s": noise_s}) if return_noise else x_t

    def dpm_solver_second_update(self, x, s, t, r1=0.5, noise_s=None, return_noise=False,
                                 solver_type="dpm_solver"):
        """DPM-Solver-2 from s to t, via s1 with lambda_s1 = lambda_s + r1 h (2022a Alg. 4;
        DPM-Solver++(2S), 2022b Alg. 1). x: (B, ...); s, t: (B,). With D1 the difference of the
        model outputs at s1 and s:
            data:   u   = (sigma_s1 / sigma_s) x - alpha_s1 (e^{-r1 h} - 1) x0_s
                    x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0_s
                          - alpha_t / (2 r1) (e^{-h} - 1) D1                     ('dpm_solver')
                          + alpha_t / r1 ((e^{-h} - 1) / h + 1) D1                ('taylor')
            noise:  u   = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
                    x_t = (alpha_t / alpha_s) x - sigma_t (e^{h} - 1) eps_s
                          - sigma_t / (2 r1) (e^{h} - 1) D1                      ('dpm_solver')
                          - sigma_t / r1 ((e^{h} - 1) / h - 1) D1                 ('taylor')
        Returns x_t, and with `return_noise` also {'noise_s', 'noise_s1'}.
        """
        _check_solver_type(solver_type)
        r1 = 0.5 if r1 is None else r1
        alpha_s, sigma_s, lambda_s = self._marginals(s)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h = lambda_t - lambda_s                                               # (B,)
        s1 = self.noise_schedule.inverse_lambda(lambda_s + r1 * h)            # (B,)
        alpha_s1, sigma_s1, _ = self._marginals(s1)
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:
            # u = (sigma_s1 / sigma_s) x - alpha_s1 (e^{-r1 h} - 1) x0_s: first order to s1
            x_s1 = (_expand(sigma_s1 / sigma_s, x) * x
                    - _expand(alpha_s1 * np.expm1(-r1 * h), x) * noise_s)
            noise_s1 = self.model_fn(x_s1, s1)
            D1 = noise_s1 - noise_s                                           # x0_s1 - x0_s
            phi_1 = np.expm1(-h)                                              # e^{-h} - 1
            # first-order part: (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0_s
            x_t = _expand(sigma_t / sigma_s, x) * x - _expand(alpha_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":   # - alpha_t / (2 r1) (e^{-h} - 1) D1
                x_t = x_t - _expand(0.5 / r1 * alpha_t * phi_1, x) * D1
            else:                             # + alpha_t / r1 ((e^{-h} - 1) / h + 1) D1
                x_t = x_t + _expand(1.0 / r1 * alpha_t * (phi_1 / h + 1.0), x) * D1
        else:
            # u = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s: first order to s1
            x_s1 = (_expand(alpha_s1 / alpha_s, x) * x
                    - _expand(sigma_s1 * np.expm1(r1 * h), x) * noise_s)
            noise_s1 = self.model_fn(x_s1, s1)
            D1 = noise_s1 - noise_s                                           # eps_s1 - eps_s
            phi_1 = np.expm1(h)                                               # e^{h} - 1
            # first-order part: (alpha_t / alpha_s) x - sigma_t (e^{h} - 1) eps_s
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
        """DPM-Solver-3 from s to t via s1, s2 at lambda_s + r1 h, lambda_s + r2 h (2022a Alg. 5,
        and its data-prediction twin). x: (B, ...); s, t: (B,). Model outputs already known at
        s, s1 or s2 may be passed (the adaptive solver reuses them). With
        D1_k = (model output at s_k) - (model output at s), the phi functions of -h (data) or h
        (noise): phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2 (data), and
        phi_1 = e^{h} - 1, phi_2 = phi_1 / h - 1, phi_3 = phi_2 / h - 1/2 (noise):
            data:   u2  = (sigma_s2 / sigma_s) x - alpha_s2 (e^{-r2 h} - 1) x0_s
                          + alpha_s2 r2 / r1 ((e^{-r2 h} - 1) / (r2 h) + 1) D1_1
                    x_t = (sigma_t / sigma_s) x - alpha_t phi_1 x0_s + alpha_t / r2 phi_2 D1_2
            noise:  u2  = (alpha_s2 / alpha_s) x - sigma_s2 (e^{r2 h} - 1) eps_s
                          - sigma_s2 r2 / r1 ((e^{r2 h} - 1) / (r2 h) - 1) D1_1
                    x_t = (alpha_t / alpha_s) x - sigma_t phi_1 eps_s - sigma_t / r2 phi_2 D1_2
        (u1 is the first-order step to s1.) 'taylor' instead fits the first and second
        lambda-derivatives through the three outputs (`_taylor_derivatives`: D1 ~ h m',
        D2 ~ h^2 m'') and ends with + alpha_t (phi_2 D1 - phi_3 D2) (data) or
        - sigma_t (phi_2 D1 + phi_3 D2) (noise).
        Returns x_t, and with `return_noise` also {'noise_s', 'noise_s1', 'noise_s2'}.
        """
        _check_solver_type(solver_type)
        r1 = 1.0 / 3.0 if r1 is None else r1
        r2 = 2.0 / 3.0 if r2 is None else r2
        ns = self.noise_schedule
        alpha_s, sigma_s, lambda_s = self._marginals(s)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h = lambda_t - lambda_s                                               # (B,)
        s1 = ns.inverse_lambda(lambda_s + r1 * h)                             # (B,)
        s2 = ns.inverse_lambda(lambda_s + r2 * h)                             # (B,)
        alpha_s1, sigma_s1, _ = self._marginals(s1)
        alpha_s2, sigma_s2, _ = self._marginals(s2)
        # sign = -1 for data prediction (exponents in -h), +1 for noise prediction (in +h)
        sign = -1.0 if self.predict_x0 else 1.0
        phi_11 = np.expm1(sign * r1 * h)
        phi_12 = np.expm1(sign * r2 * h)
        phi_1 = np.expm1(sign * h)
        phi_22 = np.expm1(sign * r2 * h) / (r2 * h) - sign
        phi_2 = phi_1 / h - sign
        phi_3 = phi_2 / h - 0.5
        if noise_s is None:
            noise_s = self.model_fn(x, s)
        if self.predict_x0:
            if noise_s1 is None:      # u1 = (sigma_s1 / sigma_s) x - alpha_s1 (e^{-r1 h} - 1) x0_s
                x_s1 = (_expand(sigma_s1 / sigma_s, x) * x
                        - _expand(alpha_s1 * phi_11, x) * noise_s)
                noise_s1 = self.model_fn(x_s1, s1)
            if noise_s2 is None:      # u2: second order to s2, through D1_1 = x0_s1 - x0_s
                x_s2 = (_expand(sigma_s2 / sigma_s, x) * x
                        - _expand(alpha_s2 * phi_12, x) * noise_s
                        + _expand(r2 / r1 * alpha_s2 * phi_22, x) * (noise_s1 - noise_s))
                noise_s2 = self.model_fn(x_s2, s2)
            # first-order part: (sigma_t / sigma_s) x - alpha_t phi_1 x0_s
            x_t = _expand(sigma_t / sigma_s, x) * x - _expand(alpha_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":   # + alpha_t / r2 phi_2 (x0_s2 - x0_s)
                x_t = x_t + _expand(1.0 / r2 * alpha_t * phi_2, x) * (noise_s2 - noise_s)
            else:
                D1, D2 = _taylor_derivatives(noise_s, noise_s1, noise_s2, r1, r2)
                x_t = x_t + _expand(alpha_t * phi_2, x) * D1 - _expand(alpha_t * phi_3, x) * D2
        else:
            if noise_s1 is None:      # u1 = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
                x_s1 = (_expand(alpha_s1 / alpha_s, x) * x
                        - _expand(sigma_s1 * phi_11, x) * noise_s)
                noise_s1 = self.model_fn(x_s1, s1)
            if noise_s2 is None:      # u2: second order to s2, through D1_1 = eps_s1 - eps_s
                x_s2 = (_expand(alpha_s2 / alpha_s, x) * x
                        - _expand(sigma_s2 * phi_12, x) * noise_s
                        - _expand(r2 / r1 * sigma_s2 * phi_22, x) * (noise_s1 - noise_s))
                noise_s2 = self.model_fn(x_s2, s2)
            # first-order part: (alpha_t / alpha_s) x - sigma_t phi_1 eps_s
            x_t = _expand(alpha_t / alpha_s, x) * x - _expand(sigma_t * phi_1, x) * noise_s
            if solver_type == "dpm_solver":   # - sigma_t / r2 phi_2 (eps_s2 - eps_s)
                x_t = x_t - _expand(1.0 / r2 * sigma_t * phi_2, x) * (noise_s2 - noise_s)
            else:
                D1, D2 = _taylor_derivatives(noise_s, noise_s1, noise_s2, r1, r2)
                x_t = x_t - _expand(sigma_t * phi_2, x) * D1 - _expand(sigma_t * phi_3, x) * D2
        if return_noise:
            return x_t, {"noise_s": noise_s, "noise_s1": noise_s1, "noise_s2": noise_s2}
        return x_t

    def dpm_solver_update(self, x, s, t, order, return_noise=False, solver_type="dpm_solver",
                          r1=None, r2=None):
        """One singlestep update of the given order (1, 2 or 3) from s to t (B,)."""
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_noise=return_noise)
        if order == 2:
            return self.dpm_solver_second_update(x, s, t, r1=r1, return_noise=return_noise,
                                                 solver_type=solver_type)
        if order == 3:
            return self.dpm_solver_third_update(x, s, t, r1=r1, r2=r2, return_noise=return_noise,
                                                solver_type=solver_type)
        raise ValueError(f"dpm_solver_update: expected order 1, 2 or 3, got {order}")

    # --- multistep updates (reuse the previous model outputs) --------------------------------
    def dpm_multistep_second_update(self, x, noise_prev_list, t_prev_list, t,
                                    solver_type="dpm_solver"):
        """DPM-Solver++(2M) (2022b Alg. 2) and its noise twin, from t_prev_0 to t.

        x: (B, ...) at t_prev_0. noise_prev_list: [m_1, m_0], the model outputs at
        t_prev_list = [t_prev_1, t_prev_0] (oldest first), each (B,). With h_0 = lambda_prev_0 -
        lambda_prev_1, h = lambda_t - lambda_prev_0, r0 = h_0 / h and D1_0 = (m_0 - m_1) / r0:
            data:   x_t = (sigma_t / sigma_0) x - alpha_t (e^{-h} - 1) x0_0
                          - 1/2 alpha_t (e^{-h} - 1) D1_0                         ('dpm_solver')
                          + alpha_t ((e^{-h} - 1) / h + 1) D1_0                   ('taylor')
            noise:  x_t = (alpha_t / alpha_0) x - sigma_t (e^{h} - 1) eps_0
                          - 1/2 sigma_t (e^{h} - 1) D1_0                          ('dpm_solver')
                          - sigma_t ((e^{h} - 1) / h - 1) D1_0                    ('taylor')
        """
        _check_solver_type(solver_type)
        noise_prev_1, noise_prev_0 = noise_prev_list
        t_prev_1, t_prev_0 = t_prev_list
        ns = self.noise_schedule
        alpha_0, sigma_0, lambda_prev_0 = self._marginals(t_prev_0)
        alpha_t, sigma_t, lambda_t = self._marginals(t)
        h_0 = lambda_prev_0 - ns.marginal_lambda(t_prev_1)
        h = lambda_t - lambda_prev_0
        r0 = h_0 / h
        D1_0 = _expand(1.0 / r0, x) * (noise_prev_0 - noise_prev_1)        # ~ h m' (backward)
        if self.predict_x0:
            phi_1 = np.expm1(-h)                                              # e^{-h} - 1
            # (sigma_t / sigma_0) x - alpha_t (e^{-h} - 1) x0_0
            x_t = _expand(sigma_t / sigma_0, x) * x - _expand(alpha_t * phi_1, x) * noise_prev_0
            if solver_type == "dpm_solver":   # - 1/2 alpha_t (e^{-h} - 1) D1_0
                return x_t - _expand(0.5 * alpha_t * phi_1, x) * D1_0
            return x_t + _expand(alpha_t * (phi_1 / h + 1.0), x) * D1_0    # + alpha_t phi_2 D1_0
        phi_1 = np.expm1(h)                                                   # e^{h} - 1
        # (alpha_t / alpha_0) x - sigma_t (e^{h} - 1) eps_0
        x_t = _expand(alpha_t / alpha_0, x) * x - _expand(sigma_t * phi_1, x) * noise_prev_0
        if solver_type == "dpm_solver":       # - 1/2 sigma_t (e^{h} - 1) D1_0
            return x_t - _expand(0.5 * sigma_t * phi_1, x) * D1_0
        return x_t - _expand(sigma_t * (phi_1 / h - 1.0), x) * D1_0        # - sigma_t phi_2 D1_0

    def dpm_multistep_third_update(self, x, noise_prev_list, t_prev_list, t,
                                   solver_type="dpm_solver"):
        """DPM-Solver++(3M) and its noise twin, from t_prev_0 to t, as the paper's code writes it
        (either solver_type: both use the same derivative estimates). Note D2 ~ h^2 m'' / 2 here,
        while phi_3 weighs h^2 m'' in the Taylor expansion: this makes 3M a second-order method
        (see the module docstring).

        noise_prev_list: [m_2, m_1, m_0] at t_prev_list = [t_prev_2, t_prev_1, t_prev_0]. With
        r0 = h_0 / h, r1 = h_1 / h (the two previous lambda steps over this one),
        D1_0 = (m_0 - m_1) / r0, D1_1 = (m_1 - m_2) / r1,
        D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and D2 = (D1_0 - D1_1) / (r0 + r1):
            data:   x_t = (sigma_t / sigma_0) x - alpha_t phi_1 x0_0 + alpha_t phi_2 D1
                          - alpha_t phi_3 D2
            noise:  x_t = (alpha_t / alpha_0) x - sigma_t phi_1 eps_0 - sigma_t phi_2 D1
                          - sigma_t phi_3 D2
        with the phi functions of `dpm_solver_third_update`.
        """
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
        D1_0 = _expand(1.0 / r0, x) * (noise_prev_0 - noise_prev_1)        # newest difference
        D1_1 = _expand(1.0 / r1, x) * (noise_prev_1 - noise_prev_2)        # the one before
        D1 = D1_0 + _expand(r0 / (r0 + r1), x) * (D1_0 - D1_1)             # ~ h m' at t_prev_0
        D2 = _expand(1.0 / (r0 + r1), x) * (D1_0 - D1_1)                   # ~ h^2 m'' / 2 (!)
        sign = -1.0 if self.predict_x0 else 1.0
        phi_1 = np.expm1(sign * h)
        phi_2 = phi_1 / h - sign
        phi_3 = phi_2 / h - 0.5
        if self.predict_x0:
            return (_expand(sigma_t / sigma_0, x) * x - _expand(alpha_t * phi_1, x) * noise_prev_0
                    + _expand(alpha_t * phi_2, x) * D1 - _expand(alpha_t * phi_3, x) * D2)
        return (_expand(alpha_t / alpha_0, x) * x - _expand(sigma_t * phi_1, x) * noise_prev_0
                - _expand(sigma_t * phi_2, x) * D1 - _expand(sigma_t * phi_3, x) * D2)

    def dpm_multistep_update(self, x, noise_prev_list, t_prev_list, t, order,
                             solver_type="taylor"):
        """One multistep update of the given order, from t_prev_list[-1] to t, using the last
        `order` model outputs (order 1 is the first-order update with the newest one)."""
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
        """DPM-Solver-12 (order 2) or -23 (order 3) with adaptive steps in lambda (2022a,
        Alg. 3, after Jolicoeur-Martineau et al. 2021).

        Each trial step of size h (in lambda) runs the lower order and the higher order from the
        same point (sharing model outputs). The error estimate
            E = max over the batch of RMS((x_higher - x_lower) / delta),
            delta = max(atol, rtol max(|x_lower|, |x_prev|))   (elementwise; x_prev: the last
                    accepted lower-order solution)
        accepts the step if E <= 1 (keeping x_higher), and either way the next h is
        min(theta h E^(-1/order), lambda_0 - lambda_s). Stops when |s - t_0| <= t_err (mean over
        the batch). x: (B, ...) at t_T. Returns the sample at t_0.
        """
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
        s = np.full((B,), t_T, dtype=x.dtype)
        lambda_s = ns.marginal_lambda(s)
        lambda_0 = ns.marginal_lambda(np.full((B,), t_0, dtype=x.dtype))
        h = np.full((B,), h_init, dtype=x.dtype)
        x_prev = x
        while np.abs(s - t_0).mean() > t_err:
            t = ns.inverse_lambda(lambda_s + h)
            x_lower, outputs = lower_update(x, s, t)
            x_higher = higher_update(x, s, t, **outputs)
            delta = np.maximum(atol, rtol * np.maximum(np.abs(x_lower), np.abs(x_prev)))
            ratio = ((x_higher - x_lower) / delta).reshape(B, -1)             # (B, rest)
            E = np.sqrt(np.mean(ratio ** 2, axis=-1)).max()                  # worst sample's RMS
            if not np.isfinite(E):
                raise FloatingPointError("dpm_solver_adaptive: the error estimate is not finite "
                                         "(did the model return inf or nan?)")
            if E <= 1.0:                                                      # accept the step
                x, s, x_prev = x_higher, t, x_lower
                lambda_s = ns.marginal_lambda(s)
            with np.errstate(divide="ignore"):                               # E = 0: no limit
                growth = np.asarray(E, dtype=x.dtype) ** (-1.0 / order)
            h = np.minimum(theta * h * growth, lambda_0 - lambda_s)
        return x

    # --- the sampling loops -------------------------------------------------------------------
    def sample(self, x, steps=10, eps=1e-4, T=None, order=3, skip_type="time_uniform",
               denoise=False, method="fast", solver_type="dpm_solver", atol=0.0078, rtol=0.05):
        """Solve the diffusion ODE from x at time T (default: the schedule's T) to time `eps`.

        x: (B, ...) floating, the starting noise. method:
          'fast': `steps` model evaluations: the orders of `fast_orders(steps, order)` (order 2
              or 3) on a `skip_type` grid of `steps` intervals, an order-k step spanning k of
              them (see the module docstring). U-ViT's choice, with order 3, 'time_uniform'.
          'singlestep': steps // order updates of order `order` (1, 2 or 3) on a grid of
              steps // order intervals, r1, r2 = 1/2 or 1/3, 2/3 between.
          'multistep': `steps` updates on a grid of `steps` intervals, each of order `order`
              using the previous model outputs (lower orders while there are too few).
          'adaptive': `dpm_solver_adaptive` with tolerances atol, rtol (order 2 or 3); `steps`
              and `skip_type` are not used.
        denoise: finish with the x0 estimate at eps (`denoise_fn`). Returns (B, ...) in x's dtype.
        """
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
            x = self.denoise_fn(x, np.full((x.shape[0],), t_0, dtype=x.dtype))
        return x

    def _sample_fast(self, x, steps, t_T, t_0, order, skip_type, solver_type):
        """The paper's 'fast' loop: orders from `fast_orders`, grid of `steps` intervals."""
        B = x.shape[0]
        timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, x.dtype)    # (steps + 1,)
        lambdas = self.noise_schedule.marginal_lambda(timesteps)                # (steps + 1,)
        i = 0
        for k in fast_orders(steps, order):
            s = np.full((B,), timesteps[i], dtype=x.dtype)
            t = np.full((B,), timesteps[i + k], dtype=x.dtype)
            h = lambdas[i + k] - lambdas[i]
            r1 = None if k <= 1 else (lambdas[i + 1] - lambdas[i]) / h   # grid points in between
            r2 = None if k <= 2 else (lambdas[i + 2] - lambdas[i]) / h
            x = self.dpm_solver_update(x, s, t, k, solver_type=solver_type, r1=r1, r2=r2)
            i += k
        return x

    def _sample_singlestep(self, x, steps, t_T, t_0, order, skip_type, solver_type):
        """steps // order updates of one order on a grid of as many intervals."""
        B = x.shape[0]
        n_steps = steps // order
        timesteps = self.get_time_steps(skip_type, t_T, t_0, n_steps, x.dtype)  # (n_steps + 1,)
        for i in range(n_steps):
            s = np.full((B,), timesteps[i], dtype=x.dtype)
            t = np.full((B,), timesteps[i + 1], dtype=x.dtype)
            x = self.dpm_solver_update(x, s, t, order, solver_type=solver_type)
        return x

    def _sample_multistep(self, x, steps, t_T, t_0, order, skip_type, solver_type):
        """`steps` multistep updates; the first order - 1 use orders 1, 2 (a short history)."""
        B = x.shape[0]
        timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, x.dtype)    # (steps + 1,)
        t = np.full((B,), timesteps[0], dtype=x.dtype)
        noise_prev_list, t_prev_list = [self.model_fn(x, t)], [t]               # oldest first
        for step in range(1, steps + 1):
            t = np.full((B,), timesteps[step], dtype=x.dtype)
            x = self.dpm_multistep_update(x, noise_prev_list, t_prev_list, t, min(step, order),
                                          solver_type=solver_type)
            t_prev_list = (t_prev_list + [t])[-order:]
            if step < steps:                          # the last output would never be used
                noise_prev_list = (noise_prev_list + [self.model_fn(x, t)])[-order:]
        return x


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def fast_orders(steps, order):
    """The orders of DPM-Solver-fast for `steps` model evaluations (they sum to `steps`).

    order 3: K = steps // 3 + 1 steps: [3] * (K - 2) + [2, 1] if steps % 3 == 0,
             [3] * (K - 1) + [1] if steps % 3 == 1, [3] * (K - 1) + [2] if steps % 3 == 2;
    order 2: [2] * (steps // 2), and a final [1] if steps is odd. (50 steps, order 3:
             sixteen 3s and a 2.)
    """
    if order == 3:
        K = steps // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[steps % 3]
        return [3] * (K - len(tail)) + tail
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    raise ValueError(f"fast_orders: DPM-Solver-fast needs order 2 or 3, got {order}")


def quadratic_time_steps(t_T, t_0, N, grid_size=QUADRATIC_GRID_SIZE):
    """The paper's 'time_quadratic' times: N + 1 floats from t_T down to t_0.

    Targets u_j uniform in sqrt(t) from sqrt(t_0) to sqrt(t_T); the paper's code takes, on the
    grid t_0 + k dt (k < grid_size, dt = (t_T - t_0) / (grid_size - 1)), the first point whose
    square root reaches u_j, then replaces the last by t_T. That point is k = ceil((u_j^2 - t_0) /
    dt), computed here without building the 10^7-point grid.
    """
    dt = (t_T - t_0) / (grid_size - 1)
    lo, hi = math.sqrt(t_0), math.sqrt(t_T)
    times = []
    for j in range(N):                                  # increasing, t_0 first
        u = lo + (hi - lo) * j / N
        k = 0 if j == 0 else max(0, math.ceil((u * u - t_0) / dt))
        times.append(t_0 + k * dt)
    return [t_T] + times[::-1]


def _taylor_derivatives(m_s, m_s1, m_s2, r1, r2):
    """The model output's lambda-derivatives through three points, scaled by h: D1 ~ h m' and
    D2 ~ h^2 m'', from m at lambda_s, lambda_s + r1 h and lambda_s + r2 h (Taylor:
    (m_sk - m_s) / r_k = h m' + r_k h^2 m'' / 2, solved for both):
        D1 = (r2 D1_1 - r1 D1_2) / (r2 - r1),  D2 = 2 (D1_2 - D1_1) / (r2 - r1),
    with D1_k = (m_sk - m_s) / r_k. m_*: (B, ...); r1, r2 floats. Returns (D1, D2)."""
    D1_1 = (1.0 / r1) * (m_s1 - m_s)
    D1_2 = (1.0 / r2) * (m_s2 - m_s)
    D1 = (r2 * D1_1 - r1 * D1_2) / (r2 - r1)
    D2 = 2.0 * (D1_2 - D1_1) / (r2 - r1)
    return D1, D2


def _expand(c, x):
    """A per-sample coefficient (B,) (or a scalar) as (B, 1, ..., 1) in x's dtype, to scale x."""
    c = np.asarray(c, dtype=x.dtype)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _check_solver_type(solver_type):
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"DPM_Solver: expected solver_type in {SOLVER_TYPES}, "
                         f"got {solver_type!r}")


def _check_sample_arguments(x, steps, t_T, t_0, order, skip_type, method, solver_type, atol,
                            rtol):
    """Every argument of `DPM_Solver.sample`, checked before any model evaluation."""
    check_floating("DPM_Solver.sample: x", x)
    if len(x.shape) < 1 or x.shape[0] < 1:
        raise ValueError(f"DPM_Solver.sample: expected x of shape (B, ...) with B >= 1, got "
                         f"{tuple(x.shape)}")
    if method not in METHODS:
        raise ValueError(f"DPM_Solver.sample: expected method in {METHODS}, got {method!r}")
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"DPM_Solver.sample: expected skip_type in {SKIP_TYPES}, "
                         f"got {skip_type!r}")
    _check_solver_type(solver_type)
    if not 0 < t_0 < t_T:
        raise ValueError(f"DPM_Solver.sample: expected 0 < eps < T, got eps={t_0}, T={t_T}")
    allowed = {"fast": (2, 3), "adaptive": (2, 3)}.get(method, (1, 2, 3))
    if order not in allowed:
        raise ValueError(f"DPM_Solver.sample: method {method!r} takes order in {allowed}, "
                         f"got {order!r}")
    if method == "adaptive":
        if not (atol > 0 and rtol >= 0):
            raise ValueError(f"DPM_Solver.sample: expected atol > 0 and rtol >= 0, got "
                             f"atol={atol}, rtol={rtol}")
        return
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
        raise TypeError(f"DPM_Solver.sample: expected an int number of steps, got {steps!r}")
    least = 1 if method == "fast" else order
    if steps < least:
        raise ValueError(f"DPM_Solver.sample: method {method!r} with order {order} needs "
                         f"steps >= {least}, got {steps}")
