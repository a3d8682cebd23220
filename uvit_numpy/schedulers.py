"""Noise schedules and samplers of discrete-time diffusion, under diffusers' names and interface.

The forward process noises clean data x0 in T = `num_train_timesteps` steps:

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,  eps ~ N(0, I),  abar_t = prod_{s<=t} (1 - beta_s)

and the network learns eps from (x_t, t) with a per-pixel mean-squared error (`epsilon_mse`).
Three samplers run it backwards, each with diffusers' constructor arguments and defaults, its
`set_timesteps(n)`, `.timesteps` and `step(model_output, timestep, sample, ...)`:

* `DDPMScheduler`: ancestral sampling with the posterior variance (stochastic);
* `DDIMScheduler`: the DDIM update, deterministic at eta = 0, DDPM-like at eta = 1;
* `DPMSolverMultistepScheduler`: DPM-Solver++ (data prediction), orders 1 and 2.

**Conventions, and how the U-ViT paper's map onto them.** Time is the integer t in 0..T-1 and
abar_t = `alphas_cumprod[t]`; the network is fed t itself. The paper's pixel models (CIFAR-10,
CelebA, ImageNet-64) use a continuous VP-SDE instead: beta(s) = 0.1 + 19.9 s on s in [0, 1], so
abar(s) = exp(-0.1 s - 9.95 s^2), and feed the network 999 s, a float in [0, 999); its latent
"discrete" models use diffusers' `scaled_linear` betas (0.00085 -> 0.012) but number the steps
n = t + 1 in 1..1000 and feed n. Classifier-free guidance in the paper is
eps = eps_c + s (eps_c - eps_u); diffusers' guidance_scale is w = 1 + s (the paper's s = 0.4 is
w = 1.4), and w = 1 (s = 0) is plain conditional sampling. See `sampling.guided_epsilon`.

**Precision.** By default (`table_dtype="float64"`) everything here is computed in float64
(betas, abar, every coefficient as a Python float) and applied to the sample in its own dtype.
diffusers keeps betas and abar in float32 and computes every coefficient from them in float32
(and DPM-Solver casts the sample to float32 inside `step`). From the same float32 input one step
of ours and one of diffusers' then differ by ~2e-7 relative (median; at most 1.5e-6 for
t >= 100 in a 1000-step DDPM run), but by up to ~1e-4 in the last steps (measured with the
parity cases' Gaussian "network": 8e-5 at t = 2 of a 1000-step DDPM run on the linear schedule,
6e-5 at t = 7 on the cosine one). There abar is within 2e-3 of 1, and diffusers' 1 - abar,
rounded in float32 near 1, is off by up to 1.7e-4 relative (1.5e-4 at t = 1; up to 5e-4 on the
cosine schedule). That float32 table, not this code, sets the floor of the comparison. Whole
loops stay within 1e-5 of diffusers' (the parity cases), but diffusers' own test suite
hard-codes its float32 results: its noisy DDPM loop (two steps, from t = 1) ends 0.020 away from
the sum it expects with float64 tables, past its 1e-2 tolerance.

`table_dtype="float32"` computes as diffusers does instead: the betas and abar are diffusers'
bit for bit (`linspace_float32`, `cumulative_product`), and every coefficient is rounded to float32
in diffusers' order of operations (`_Float32Ops`; the sample still keeps its dtype). diffusers'
scheduler tests then hold to their own tolerances (tests/test_scheduler_float32_tables.py), and a
step agrees with diffusers' within 4e-7 relative at every t. The difference left is torch's float32
sqrt, which is not correctly rounded (torch 2.13 on the CPU: one ulp off for about one input in
five); ours is IEEE's.

**Zero terminal SNR** (`rescale_betas_zero_snr=True`; Lin et al. 2023, "Common Diffusion Noise
Schedules and Sample Steps are Flawed"). The usual schedules end above zero: the linear one at
abar_{T-1} = 4.0e-5, so sqrt(abar) = 0.6% of the image is still in x_{T-1}. Training never sees
pure noise, yet sampling starts from it: the model learns to read the image's mean brightness
off that leftover signal, and from pure noise, which has none, it makes every sample of medium
brightness. `rescale_zero_terminal_snr` shifts sqrt(abar) so that it ends at 0
and scales it so that it starts where it did. At abar = 0 the input is the noise itself:
epsilon prediction learns eps = x_T, which says nothing about x0, and
x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) divides by zero. diffusers' DDPM and DDIM, and ours,
return inf there, or nan where x = eps (the exact eps of any data gives 0/0; clip_sample maps
+-inf to +-1 but keeps nan). Hence the paper's recipe, which diffusers leaves to the user:
v-prediction (x0 = -v at abar = 0) and `timestep_spacing="trailing"`, so that sampling starts at
t = T-1 ("leading" starts at 980 for 50 steps and never uses the zero-SNR step). DPM-Solver
cannot take abar = 0 at all (its sigma = sqrt((1 - abar) / abar) would be infinite): there
diffusers, and we, set abar_{T-1} = 2^-24 (float16's smallest subnormal), sigma = 4096. It bears
on the project's finding that epsilon prediction fails at high noise: at SNR 0 it cannot work.

**Dynamic thresholding** (`thresholding=True`; Saharia et al. 2022, Imagen), on all three: per
sample, s = the `dynamic_thresholding_ratio` quantile of |x0| (clamped to
[1, `sample_max_value`]), and x0 is clipped to [-s, s] and divided by s (`dynamic_threshold`).
It replaces clip_sample when both are set, as in diffusers, and DPM-Solver applies it to its data
prediction D. It keeps x0 in range under strong guidance in pixel space; diffusers' docs say it
does not suit latent models.

**The registry.** Each class says what the code that drives it needs to know: its `name` (the
command line's `--scheduler`), whether its `step` takes DDIM's `eta` (`takes_eta`), whether it has
diffusers' `clip_sample` option (`clips_sample`), and `draws_noise(timestep, eta)`, whether a step
adds fresh noise (so that a sampler knows when one draw is due). `SCHEDULERS` maps the names to
the classes; a new sampler is one class here, added to that list. The torch twin
(`uvit_torch.schedulers`) makes its classes from this registry: the schedule and every coefficient
are this file's; it only swaps the array operations (clamp, dynamic thresholding's quantile,
random normal draws, timesteps as a tensor).
"""

import math
from dataclasses import dataclass

import numpy as np

from .checks import check_floating
from .losses import mse_loss

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TABLE_DTYPES = ("float64", "float32")


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------
def betas_for_alpha_bar(num_train_timesteps, max_beta=0.999):
    """The cosine schedule of Nichol & Dhariwal (diffusers' `squaredcos_cap_v2`), float64 (T,).

    abar(u) = cos^2((u + 0.008) / 1.008 * pi / 2) on u in [0, 1], and
    beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta): the cap keeps the last betas < 1.
    """
    def abar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_train_timesteps
    return np.array([min(1.0 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)])


def linspace_float32(start, end, steps):
    """`steps` evenly spaced float32 values from start to end, as torch.linspace(..., float32)
    makes them (diffusers' float32 betas), float32 (steps,).

    With step = (end - start) / (steps - 1) rounded to float32, the first half is
    start + step i and the second half end - step (steps - 1 - i), each rounded to float32 once:
    torch's CPU kernel writes `start + step * i`, which the compiler fuses into one multiply-add
    on CPUs that have it (x86-64 with AVX2 or AVX-512, as torch's wheels use). Here step i is
    exact in float64 and so is the sum (unless end / start > 2^30), so rounding the float64 sum
    to float32 rounds it once too. (np.linspace(...).astype(np.float32) differs from torch in
    one value out of three at T = 1000, by one float32 ulp.)
    """
    start, end = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start])
    step = (end - start) / np.float32(steps - 1)                    # float32, as torch's
    i = np.arange(steps)
    first = np.float64(start) + np.float64(step) * i                # exact in float64
    second = np.float64(end) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, first, second).astype(np.float32)


def make_betas(beta_schedule="linear", num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
               trained_betas=None, table_dtype="float64"):
    """The betas (T,) of a named schedule, as diffusers defines them, in `table_dtype`.

    "linear": linspace(beta_start, beta_end, T) (DDPM's 1e-4 -> 0.02);
    "scaled_linear": linspace(sqrt(beta_start), sqrt(beta_end), T)**2 (Stable Diffusion's latents);
    "squaredcos_cap_v2": `betas_for_alpha_bar` (beta_start and beta_end are not used).
    `trained_betas`, if given, is used as it is. table_dtype "float64" computes in float64;
    "float32" gives diffusers' float32 betas bit for bit (torch's float32 linspace,
    `linspace_float32`, and float64 cosine or trained betas rounded to float32).
    """
    if table_dtype not in TABLE_DTYPES:
        raise ValueError(f"make_betas: expected table_dtype in {TABLE_DTYPES}, "
                         f"got {table_dtype!r}")
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(f"make_betas: expected trained_betas of shape "
                             f"({num_train_timesteps},), got {betas.shape}")
        return betas.astype(table_dtype)
    T = num_train_timesteps
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"make_betas: expected beta_schedule in {BETA_SCHEDULES}, "
                         f"got {beta_schedule!r}")
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(T).astype(table_dtype)
    if table_dtype == "float32":
        linspace = linspace_float32                                 # diffusers' float32 tables
    else:
        def linspace(a, b, n):
            return np.linspace(a, b, n, dtype=np.float64)
    if beta_schedule == "linear":
        return linspace(beta_start, beta_end, T)
    return linspace(beta_start ** 0.5, beta_end ** 0.5, T) ** 2        # "scaled_linear"


def cumulative_product(alphas):
    """abar_t = prod_{s<=t} alpha_s, (T,) in alphas' dtype.

    float64: np.cumprod. float32: the running product is kept in float64 and each abar_t rounded
    to float32 once, as torch.cumprod does on the CPU (it accumulates float32 in double): a float32
    running product would differ from diffusers' table in 853 of the 1000 entries of the linear
    schedule.
    """
    if alphas.dtype == np.float32:
        return np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    return np.cumprod(alphas)


def rescale_zero_terminal_snr(betas):
    """Betas rescaled to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", Algorithm 1), as diffusers' `rescale_zero_terminal_snr`.

    betas: (T,) float64 or float32; returns (T,) in the same dtype. With r_t = sqrt(abar_t):
        r'_t = (r_t - r_{T-1}) r_0 / (r_0 - r_{T-1})
    so that r'_{T-1} = 0 (x_{T-1} is pure noise, SNR 0) and r'_0 = r_0; then back to betas,
    beta'_t = 1 - abar'_t / abar'_{t-1} (the last beta' is 1).
    """
    r = np.sqrt(cumulative_product(1.0 - betas))                     # sqrt(abar), (T,)
    r0, rT = r[0], r[-1]
    r = (r - rT) * (r0 / (r0 - rT))                                  # shift, then scale
    abar = r * r
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])        # undo the cumprod, (T,)
    return 1.0 - alphas


def spaced_timesteps(timestep_spacing, num_train_timesteps, num_inference_steps, steps_offset=0):
    """The n timesteps a sampler visits, largest first (int64 (n,)), as diffusers chooses them.

    "leading": k * (T // n) + steps_offset for k = n-1 .. 0 (starts below T-1: 980 for n = 50);
    "trailing": round(arange(T, 0, -T / n)) - 1 (starts at T-1: 999, 979, ... for n = 50);
    "linspace": round(linspace(0, T-1, n)) reversed (999 ... 0).
    """
    T, n = num_train_timesteps, num_inference_steps
    if timestep_spacing == "leading":
        return (np.arange(n) * (T // n))[::-1].astype(np.int64) + steps_offset
    if timestep_spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    raise ValueError(f"expected timestep_spacing in {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    """The forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, one t per sample.

    original_samples, noise: (B, ...) floating, the same shape. timesteps: (B,) ints in [0, T).
    alphas_cumprod: (T,) float64. Returns (B, ...) in the samples' dtype.
    """
    check_floating("add_noise: original_samples", original_samples)
    if tuple(noise.shape) != tuple(original_samples.shape):
        raise ValueError(f"add_noise: expected noise shaped like the samples "
                         f"{tuple(original_samples.shape)}, got {tuple(noise.shape)}")
    t = np.asarray(timesteps)
    if t.shape != (original_samples.shape[0],):
        raise ValueError(f"add_noise: expected ({original_samples.shape[0]},) timesteps, one per "
                         f"sample, got shape {t.shape}")
    if t.min() < 0 or t.max() >= len(alphas_cumprod):
        raise ValueError(f"add_noise: expected timesteps in [0, {len(alphas_cumprod)}), got values "
                         f"in [{t.min()}, {t.max()}]")
    abar = alphas_cumprod[t].astype(original_samples.dtype)             # (B,)
    abar = abar.reshape((-1,) + (1,) * (original_samples.ndim - 1))     # (B, 1, ..., 1)
    return np.sqrt(abar) * original_samples + np.sqrt(1.0 - abar) * noise


def velocity(original_samples, noise, timesteps, alphas_cumprod):
    """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022),
    diffusers' `get_velocity`: at low noise v ~ eps, at high noise v ~ -x0."""
    abar = alphas_cumprod[np.asarray(timesteps)].astype(original_samples.dtype)
    abar = abar.reshape((-1,) + (1,) * (original_samples.ndim - 1))
    return np.sqrt(abar) * noise - np.sqrt(1.0 - abar) * original_samples


def training_target(original_samples, noise, timesteps, alphas_cumprod,
                    prediction_type="epsilon", velocity_fn=None):
    """What the network learns to output: the noise (epsilon), or v (`velocity`; the torch twin
    passes its tensor version as `velocity_fn`)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return (velocity_fn or velocity)(original_samples, noise, timesteps, alphas_cumprod)
    raise ValueError(f"training_target: expected prediction_type 'epsilon' or 'v_prediction', "
                     f"got {prediction_type!r}")


def epsilon_mse(model_output, noise):
    """The epsilon-prediction loss: mean over every element of (model_output - noise)^2.

    This is the U-ViT paper's `LSimple` (squared error averaged over the non-batch axes, then over
    the batch), i.e. `torch.nn.functional.mse_loss`; no per-timestep weighting.
    """
    return mse_loss(model_output, noise)


def quantile_rows(x, q):
    """The q-quantile of each row of x (B, N) float, (B,) in x's dtype: linear interpolation
    between order statistics, as torch.quantile (and np.quantile's default method) define it.

    With the rank r = q (N - 1) (computed in x's dtype, as torch does) and the sorted row v,
    the quantile is v[floor r] + (r - floor r) (v[ceil r] - v[floor r]), interpolated from the
    nearer end (torch.lerp's rule: weight >= 1/2 starts from v[ceil r]). For float32 rows the
    float64 arithmetic below is exact, so each value is rounded once, as torch's fused
    multiply-add rounds it; float64 rows may end one ulp from torch's.
    """
    N = x.shape[1]
    v = np.sort(x, axis=1)                                          # (B, N), each row ascending
    rank = x.dtype.type(q) * x.dtype.type(N - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    w = np.float64(rank - lo)                                       # exact: 0 <= w < 1
    below, above = v[:, lo].astype(np.float64), v[:, hi].astype(np.float64)
    gap = (v[:, hi] - v[:, lo]).astype(np.float64)                  # rounded in x's dtype
    out = below + w * gap if w < 0.5 else above + (w - 1.0) * gap
    return out.astype(x.dtype)


def dynamic_threshold(x0, dynamic_thresholding_ratio=0.995, sample_max_value=1.0):
    """Imagen's dynamic thresholding (Saharia et al. 2022), as diffusers' `_threshold_sample`.

    x0: (B, C, ...) float, an x0 estimate. For each sample, s = the `dynamic_thresholding_ratio`
    quantile of |x0| over all its values, clamped to [1, sample_max_value] (min(max(s, 1), max):
    sample_max_value wins if it is below 1); x0 is clipped to [-s, s] and divided by s. With
    s = 1 this is plain clipping to [-1, 1]; above it, saturated pixels are pulled inwards
    instead of flattened. Returns (B, C, ...) in x0's dtype.
    """
    check_floating("dynamic_threshold: x0", x0)
    if x0.ndim < 2:
        raise ValueError(f"dynamic_threshold: expected a (B, C, ...) array, got shape {x0.shape}")
    B = x0.shape[0]
    flat = x0.reshape(B, -1)                                        # (B, C, ...) -> (B, C*...)
    s = quantile_rows(np.abs(flat), dynamic_thresholding_ratio)     # (B,)
    s = np.minimum(np.maximum(s, 1), sample_max_value)[:, None]     # (B, 1), torch.clamp's order
    out = np.minimum(np.maximum(flat, -s), s) / s                   # clip to [-s, s], then / s
    return out.reshape(x0.shape)                                    # (B, C*...) -> (B, C, ...)


class _Float64Ops:
    """Scalar arithmetic with the float64 tables (the default): Python floats and `math`."""
    scalar = float
    sqrt, log, exp, expm1 = math.sqrt, math.log, math.exp, math.expm1

    @staticmethod
    def square(x):
        return x ** 2


class _Float32Ops:
    """Scalar arithmetic with the float32 tables, as diffusers' 0-d float32 tensors do it: every
    +, -, *, / rounded to float32 (NumPy float32 scalars), sqrt, log and exp correctly rounded
    to float32, squares as x * x (torch's x**2), and e^x - 1 written exp(x) - 1 as diffusers
    writes it (not expm1: float32 cancellation included)."""
    scalar = np.float32
    sqrt = np.sqrt                                                  # IEEE sqrt, correctly rounded

    @staticmethod
    def log(x):
        return np.float32(math.log(x))

    @staticmethod
    def exp(x):
        return np.float32(math.exp(x))

    @staticmethod
    def expm1(x):
        return np.float32(math.exp(x)) - np.float32(1.0)

    @staticmethod
    def square(x):
        return x * x


# --------------------------------------------------------------------------------------------------
# The samplers
# --------------------------------------------------------------------------------------------------
@dataclass
class SchedulerOutput:
    """What `step` returns: the sample one step less noisy, and the x0 estimate if it has one."""
    prev_sample: object
    pred_original_sample: object = None


class SchedulerConfig(dict):
    """The constructor arguments, readable as `scheduler.config.name` (as diffusers' FrozenDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _DiscreteScheduler:
    """What the three samplers share: the schedule tables, the timesteps, `add_noise`, the x0
    estimate, and the array operations (NumPy here; the torch twin overrides the `_` hooks).

    Scalars (abar_t and the coefficients made from it) are computed in the tables' precision,
    `self._ops` (`_Float64Ops` or `_Float32Ops`), and meet the sample as Python floats (exact
    for float32 values too), so the sample keeps its own dtype.
    """

    order = 1
    init_noise_sigma = 1.0
    name = None                     # the registry's name (`SCHEDULERS`), set by each sampler
    takes_eta = False               # does `step` take DDIM's eta?
    clips_sample = False            # has diffusers' clip_sample option (x0 clipped to a range)?

    @staticmethod
    def draws_noise(timestep, eta=0.0):
        """True if `step` at this timestep adds fresh noise (one draw, or `variance_noise`)."""
        return False

    def __init__(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                 prediction_type, timestep_spacing, steps_offset, *, thresholding,
                 dynamic_thresholding_ratio, sample_max_value, rescale_betas_zero_snr,
                 table_dtype, **config):
        name = type(self).__name__
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{name}: expected prediction_type in {PREDICTION_TYPES}, "
                             f"got {prediction_type!r}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"{name}: expected timestep_spacing in {TIMESTEP_SPACINGS}, "
                             f"got {timestep_spacing!r}")
        if table_dtype not in TABLE_DTYPES:
            raise ValueError(f"{name}: expected table_dtype in {TABLE_DTYPES}, "
                             f"got {table_dtype!r}")
        if not 0.0 <= dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"{name}: expected dynamic_thresholding_ratio in [0, 1] (a "
                             f"quantile), got {dynamic_thresholding_ratio}")
        if not sample_max_value > 0:
            raise ValueError(f"{name}: expected sample_max_value > 0, got {sample_max_value}")
        self.config = SchedulerConfig(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas,
            prediction_type=prediction_type, timestep_spacing=timestep_spacing,
            steps_offset=steps_offset, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value, rescale_betas_zero_snr=rescale_betas_zero_snr,
            table_dtype=table_dtype, **config)
        self._ops = _Float32Ops if table_dtype == "float32" else _Float64Ops
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                trained_betas, table_dtype)          # (T,) in table_dtype
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)       # abar_{T-1} = 0
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = cumulative_product(self.alphas)        # abar_t, (T,)
        self.num_inference_steps = None
        self.timesteps = self._as_timesteps(np.arange(num_train_timesteps)[::-1].copy())

    def __len__(self):
        return self.config.num_train_timesteps

    # --- array hooks (the torch twin overrides these five) ---------------------------------------
    def _as_timesteps(self, timesteps):
        return timesteps                                            # int64 (n,)

    def _clip(self, x, low, high):
        return np.clip(x, low, high)

    def _threshold(self, x0, dynamic_thresholding_ratio, sample_max_value):
        return dynamic_threshold(x0, dynamic_thresholding_ratio, sample_max_value)

    def _randn_like(self, x, generator):
        """N(0, 1) noise shaped like x, in x's dtype, from `generator` (a Generator or a seed)."""
        rng = generator if isinstance(generator, np.random.Generator) \
            else np.random.default_rng(generator)
        return rng.standard_normal(x.shape).astype(x.dtype)

    def _check_noise(self, noise, x):
        if tuple(noise.shape) != tuple(x.shape):
            raise ValueError(f"{type(self).__name__}.step: expected variance_noise shaped like "
                             f"the sample {tuple(x.shape)}, got {tuple(noise.shape)}")
        return noise

    # --- shared pieces ------------------------------------------------------------------------
    def add_noise(self, original_samples, noise, timesteps):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (see the module function `add_noise`)."""
        return add_noise(original_samples, noise, timesteps, self.alphas_cumprod)

    def scale_model_input(self, sample, timestep=None):
        """The network sees x_t unscaled with these samplers (diffusers' interface asks for it)."""
        return sample

    def _set_spaced_timesteps(self, num_inference_steps):
        T = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"{type(self).__name__}.set_timesteps: expected 1 <= "
                             f"num_inference_steps <= num_train_timesteps = {T}, "
                             f"got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        ts = spaced_timesteps(self.config.timestep_spacing, T, num_inference_steps,
                              self.config.steps_offset)
        if ts.min() < 0 or ts.max() >= T:
            raise ValueError(f"{type(self).__name__}.set_timesteps: steps_offset "
                             f"{self.config.steps_offset} moves the timesteps to [{ts.min()}, "
                             f"{ts.max()}], outside [0, {T})")
        self._timesteps = ts                                         # NumPy copy, for lookups
        self.timesteps = self._as_timesteps(ts.copy())

    def _check_step(self, model_output, timestep, sample):
        name = type(self).__name__
        if self.num_inference_steps is None:
            raise ValueError(f"{name}.step: call set_timesteps(n) before step")
        check_floating(f"{name}.step: sample", sample)
        check_floating(f"{name}.step: model_output", model_output)
        if tuple(model_output.shape) != tuple(sample.shape):
            raise ValueError(f"{name}.step: expected model_output shaped like the sample "
                             f"{tuple(sample.shape)}, got {tuple(model_output.shape)}")
        t = int(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"{name}.step: expected a timestep in [0, "
                             f"{self.config.num_train_timesteps}), got {t}")
        return t

    def _abar(self, t):
        """abar_t as a scalar of the tables' precision (1 for t < 0: before the first step)."""
        return self._ops.scalar(self.alphas_cumprod[t] if t >= 0 else 1.0)

    def _predict_x0(self, model_output, t, sample):
        """x0 and eps estimates from the network output at time t (as floats times arrays).

        At abar_t = 0 (zero terminal SNR, t = T-1) epsilon prediction divides by a = 0: the
        network's eps says nothing about x0 there (x_t is the noise itself), so x0 comes out
        inf, or nan where x = eps, as in diffusers; v-prediction gives x0 = -v.
        """
        f, abar = self._ops, self._abar(t)
        a, s = float(f.sqrt(abar)), float(f.sqrt(1.0 - abar))       # signal and noise scales
        kind = self.config.prediction_type
        if kind == "epsilon":                                        # x0 = (x - s eps) / a
            return (sample - s * model_output) / a, model_output
        if kind == "sample":
            return model_output, (sample - a * model_output) / s
        # "v_prediction": v = a eps - s x0, so x0 = a x - s v and eps = a v + s x
        return a * sample - s * model_output, a * model_output + s * sample

    def _clip_or_threshold(self, x0):
        """Dynamic thresholding if `thresholding`, else clipping to +-clip_sample_range if
        `clip_sample` (diffusers' order: thresholding wins when both are set)."""
        c = self.config
        if c.thresholding:
            return self._threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.clip_sample:
            return self._clip(x0, -c.clip_sample_range, c.clip_sample_range)
        return x0


class DDPMScheduler(_DiscreteScheduler):
    """Ancestral DDPM sampling (Ho et al. 2020, eq. 7), as diffusers' `DDPMScheduler`.

    From x_t, with abar' = abar at the previous visited timestep (1 past the end) and
    beta' = 1 - abar_t / abar':
        x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)    (clipped if clip_sample, or
                                                             thresholded if thresholding)
        mean = sqrt(abar') beta' / (1 - abar_t) x0 + sqrt(1 - beta') (1 - abar') / (1 - abar_t) x_t
        x_prev = mean + sqrt(var) z  (only for t > 0),
    var = (1 - abar') / (1 - abar_t) beta' ("fixed_small", floored at 1e-20) or beta'
    ("fixed_large"). With n < T steps the chain is strided but uses the same formulas. Defaults as
    diffusers': note **clip_sample=True**; the U-ViT paper never clips. `thresholding`,
    `rescale_betas_zero_snr` and `table_dtype` are described in the module's docstring.
    """

    name, clips_sample = "ddpm", True

    @staticmethod
    def draws_noise(timestep, eta=0.0):
        """Every step but the last (t = 0) adds noise."""
        return int(timestep) > 0

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", trained_betas=None, variance_type="fixed_small",
                 clip_sample=True, prediction_type="epsilon", thresholding=False,
                 dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0,
                 timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False,
                 table_dtype="float64"):
        if variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"DDPMScheduler: expected variance_type 'fixed_small' or "
                             f"'fixed_large', got {variance_type!r}")
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                         prediction_type, timestep_spacing, steps_offset,
                         thresholding=thresholding,
                         dynamic_thresholding_ratio=dynamic_thresholding_ratio,
                         sample_max_value=sample_max_value,
                         rescale_betas_zero_snr=rescale_betas_zero_snr, table_dtype=table_dtype,
                         variance_type=variance_type, clip_sample=clip_sample,
                         clip_sample_range=clip_sample_range)
        self._timesteps = None                                      # all T steps until set

    def set_timesteps(self, num_inference_steps):
        """Visit `num_inference_steps` timesteps (`timestep_spacing`), largest first."""
        self._set_spaced_timesteps(num_inference_steps)

    def previous_timestep(self, timestep):
        """The next timestep in `.timesteps` (-1 after the last); t - 1 before set_timesteps."""
        t = int(timestep)
        if self._timesteps is None:
            return t - 1
        where = np.flatnonzero(self._timesteps == t)
        if len(where) == 0:
            raise ValueError(f"DDPMScheduler: timestep {t} is not one of the timesteps set by "
                             f"set_timesteps ({self._timesteps[:3].tolist()} ...)")
        i = int(where[0])
        return -1 if i == len(self._timesteps) - 1 else int(self._timesteps[i + 1])

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None,
             return_dict=True):
        """One step from x_t to x_prev. `variance_noise` (shaped like the sample) replaces the
        draw from `generator`, so a stochastic run can be replayed exactly; no noise is added at
        t = 0, and none is drawn. Returns a `SchedulerOutput` (or a tuple)."""
        if self._timesteps is None:
            self.num_inference_steps = self.config.num_train_timesteps
        t = self._check_step(model_output, timestep, sample)
        prev_t = self.previous_timestep(t)
        f = self._ops                                                # the tables' arithmetic
        abar_t, abar_prev = self._abar(t), self._abar(prev_t)
        alpha_t = abar_t / abar_prev                                # alpha' of this (strided) step
        beta_t = 1.0 - alpha_t
        x0 = self._clip_or_threshold(self._predict_x0(model_output, t, sample)[0])
        coef_x0 = f.sqrt(abar_prev) * beta_t / (1.0 - abar_t)
        # sqrt(1 - beta') is sqrt(alpha'), bit for bit when alpha' >= 1/2; float32 writes the
        # latter, as diffusers does
        root_alpha = f.sqrt(alpha_t) if f is _Float32Ops else f.sqrt(1.0 - beta_t)
        coef_xt = root_alpha * (1.0 - abar_prev) / (1.0 - abar_t)
        prev = float(coef_x0) * x0 + float(coef_xt) * sample
        if t > 0:
            z = self._randn_like(sample, generator) if variance_noise is None \
                else self._check_noise(variance_noise, sample)
            if self.config.variance_type == "fixed_small":
                var = max((1.0 - abar_prev) / (1.0 - abar_t) * beta_t, f.scalar(1e-20))
            else:                                                    # "fixed_large"
                var = beta_t
            prev = prev + float(f.sqrt(var)) * z
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)


class DDIMScheduler(_DiscreteScheduler):
    """DDIM (Song et al. 2021, eq. 12), as diffusers' `DDIMScheduler`.

    From x_t to the timestep **t - T // n** (diffusers' rule, whatever the spacing), with
    abar' its abar (or `final_alpha_cumprod` below 0: 1 if set_alpha_to_one, else abar_0):
        x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (clipped if clip_sample, or
                                                            thresholded if thresholding)
        sigma = eta sqrt((1 - abar') / (1 - abar_t) (1 - abar_t / abar'))
        x_prev = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z.
    eta = 0 is deterministic; eta = 1 has DDPM's variance. Defaults as diffusers'
    (clip_sample=True). `thresholding`, `rescale_betas_zero_snr` and `table_dtype` are described
    in the module's docstring.
    """

    name, takes_eta, clips_sample = "ddim", True, True

    @staticmethod
    def draws_noise(timestep, eta=0.0):
        """A step adds noise when eta > 0."""
        return eta > 0

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", trained_betas=None, clip_sample=True,
                 set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
                 thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
                 sample_max_value=1.0, timestep_spacing="leading", rescale_betas_zero_snr=False,
                 table_dtype="float64"):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                         prediction_type, timestep_spacing, steps_offset,
                         thresholding=thresholding,
                         dynamic_thresholding_ratio=dynamic_thresholding_ratio,
                         sample_max_value=sample_max_value,
                         rescale_betas_zero_snr=rescale_betas_zero_snr, table_dtype=table_dtype,
                         clip_sample=clip_sample, set_alpha_to_one=set_alpha_to_one,
                         clip_sample_range=clip_sample_range)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])

    def set_timesteps(self, num_inference_steps):
        """Visit `num_inference_steps` timesteps (`timestep_spacing`), largest first."""
        self._set_spaced_timesteps(num_inference_steps)

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False,
             generator=None, variance_noise=None, return_dict=True):
        """One DDIM step. With eta > 0, noise comes from `variance_noise` (shaped like the sample)
        or is drawn from `generator`. Returns a `SchedulerOutput` (or a tuple)."""
        t = self._check_step(model_output, timestep, sample)
        if variance_noise is not None and generator is not None:
            raise ValueError("DDIMScheduler.step: pass generator or variance_noise, not both")
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        f = self._ops                                                # the tables' arithmetic
        abar_t = self._abar(t)
        abar_prev = self._abar(prev_t) if prev_t >= 0 else f.scalar(self.final_alpha_cumprod)
        x0, eps = self._predict_x0(model_output, t, sample)
        x0 = self._clip_or_threshold(x0)
        if use_clipped_model_output:                                 # eps consistent with x0
            eps = (sample - float(f.sqrt(abar_t)) * x0) / float(f.sqrt(1.0 - abar_t))
        variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
        sigma = eta * f.sqrt(variance)
        prev = (float(f.sqrt(abar_prev)) * x0
                + float(f.sqrt(1.0 - abar_prev - f.square(sigma))) * eps)
        if eta > 0:
            z = self._randn_like(sample, generator) if variance_noise is None \
                else self._check_noise(variance_noise, sample)
            prev = prev + float(sigma) * z
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)


class DPMSolverMultistepScheduler(_DiscreteScheduler):
    """DPM-Solver++ multistep (Lu et al. 2022), orders 1 and 2, as diffusers' scheduler of this
    name with `algorithm_type="dpmsolver++"`.

    It works in the half-log-SNR lambda = log(alpha) - log(sigma), alpha = sqrt(abar),
    sigma = sqrt(1 - abar), on the data prediction D = (x - sigma eps) / alpha. From s to t with
    h = lambda_t - lambda_s:
        order 1:  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D_s       (= DDIM, eta 0)
        order 2 (midpoint): with r = h_prev / h and D1 = (D_s - D_prev) / r,
                  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) (D_s + D1 / 2)
        order 2 (heun):  ... - alpha_t (e^-h - 1) D_s + alpha_t ((e^-h - 1) / h + 1) D1
    The first step has no history and is order 1, and so is the last when lower_order_final (and
    n < 15), euler_at_final, or final_sigmas_type="zero": the step to sigma = 0 returns exactly D.
    Timesteps: n of n+1 spaced points (the last, 0, dropped); default spacing "linspace"
    (999, 949, ..., 50 for n = 20). Stateful: `set_timesteps` resets the history, so call it before
    every run and call `step` once per network evaluation, in order. `thresholding` applies to D;
    with `rescale_betas_zero_snr` the last abar is 2^-24, not 0 (see the module's docstring).
    """

    name = "dpmsolver++"

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", trained_betas=None, solver_order=2,
                 prediction_type="epsilon", algorithm_type="dpmsolver++", solver_type="midpoint",
                 lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                 timestep_spacing="linspace", steps_offset=0, thresholding=False,
                 dynamic_thresholding_ratio=0.995, sample_max_value=1.0,
                 rescale_betas_zero_snr=False, table_dtype="float64"):
        if solver_order not in (1, 2):
            raise ValueError(f"DPMSolverMultistepScheduler: expected solver_order 1 or 2, "
                             f"got {solver_order}")
        if algorithm_type != "dpmsolver++":
            raise ValueError(f"DPMSolverMultistepScheduler: only algorithm_type='dpmsolver++' is "
                             f"implemented, got {algorithm_type!r}")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"DPMSolverMultistepScheduler: expected solver_type 'midpoint' or "
                             f"'heun', got {solver_type!r}")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"DPMSolverMultistepScheduler: expected final_sigmas_type 'zero' or "
                             f"'sigma_min', got {final_sigmas_type!r}")
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                         prediction_type, timestep_spacing, steps_offset,
                         thresholding=thresholding,
                         dynamic_thresholding_ratio=dynamic_thresholding_ratio,
                         sample_max_value=sample_max_value,
                         rescale_betas_zero_snr=rescale_betas_zero_snr, table_dtype=table_dtype,
                         solver_order=solver_order, algorithm_type=algorithm_type,
                         solver_type=solver_type, lower_order_final=lower_order_final,
                         euler_at_final=euler_at_final, final_sigmas_type=final_sigmas_type,
                         clip_sample=False)
        if rescale_betas_zero_snr:
            # sigma = sqrt((1 - abar) / abar) must stay finite: diffusers' float16 subnormal
            self.alphas_cumprod[-1] = 2.0 ** -24
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index = None

    def set_timesteps(self, num_inference_steps):
        """n timesteps from n + 1 spaced points without the last; resets the solver's history.

        "linspace": round(linspace(0, T-1, n+1)) reversed, last dropped; "leading":
        k * (T // (n+1)) + steps_offset for k = n .. 1; "trailing": round(arange(T, 0, -T/n)) - 1.
        """
        T, n = self.config.num_train_timesteps, num_inference_steps
        if not 1 <= n <= T:
            raise ValueError(f"DPMSolverMultistepScheduler.set_timesteps: expected 1 <= "
                             f"num_inference_steps <= {T}, got {n}")
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1].astype(np.int64)
            ts = ts + self.config.steps_offset
        else:                                                        # "trailing"
            ts = np.arange(T, 0, -T / n).round().astype(np.int64) - 1
        if ts.min() < 0 or ts.max() >= T:
            raise ValueError(f"DPMSolverMultistepScheduler.set_timesteps: steps_offset "
                             f"{self.config.steps_offset} moves the timesteps to [{ts.min()}, "
                             f"{ts.max()}], outside [0, {T})")
        abar = self.alphas_cumprod
        sigma_ve = np.sqrt((1.0 - abar) / abar)                      # diffusers' "sigma", (T,)
        last = sigma_ve[0] if self.config.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigma_ve[ts], [last]]).astype(abar.dtype)   # (n + 1,)
        self._timesteps = ts
        self.timesteps = self._as_timesteps(ts.copy())
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None

    @property
    def step_index(self):
        return self._step_index

    def _alpha_sigma(self, i):
        """(alpha, sigma) = (1 / sqrt(sigma_ve^2 + 1), sigma_ve alpha) at grid point i, scalars
        of the tables' precision."""
        f = self._ops
        s = f.scalar(self.sigmas[i])
        alpha = 1.0 / f.sqrt(s * s + 1.0)
        return alpha, s * alpha

    def _lambda(self, i):
        alpha, sigma = self._alpha_sigma(i)
        return self._ops.log(alpha) - self._ops.log(sigma)

    def convert_model_output(self, model_output, sample):
        """The data prediction D = (x - sigma eps) / alpha at the current grid point (thresholded
        if `thresholding`)."""
        alpha, sigma = (float(v) for v in self._alpha_sigma(self._step_index))
        kind = self.config.prediction_type
        if kind == "epsilon":
            D = (sample - sigma * model_output) / alpha
        elif kind == "sample":
            D = model_output
        else:                                                        # "v_prediction"
            D = alpha * sample - sigma * model_output
        if self.config.thresholding:
            D = self._threshold(D, self.config.dynamic_thresholding_ratio,
                                self.config.sample_max_value)
        return D

    def _first_order(self, D0, sample):
        i = self._step_index
        alpha_t, sigma_t = self._alpha_sigma(i + 1)
        if sigma_t == 0.0:                                           # lambda_t = +inf: x_t = D0
            return 0.0 * sample + D0
        alpha_s, sigma_s = self._alpha_sigma(i)
        h = self._lambda(i + 1) - self._lambda(i)
        phi = alpha_t * self._ops.expm1(-h)                         # alpha_t (e^-h - 1)
        return float(sigma_t / sigma_s) * sample - float(phi) * D0

    def _second_order(self, D0, D_prev, sample):
        i, f = self._step_index, self._ops
        alpha_t, sigma_t = self._alpha_sigma(i + 1)
        _, sigma_s0 = self._alpha_sigma(i)
        lam_t, lam_s0, lam_s1 = self._lambda(i + 1), self._lambda(i), self._lambda(i - 1)
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        D1 = float(1.0 / (h_0 / h)) * (D0 - D_prev)
        phi = alpha_t * f.expm1(-h)                                 # alpha_t (e^-h - 1)
        ratio = float(sigma_t / sigma_s0)
        if self.config.solver_type == "midpoint":
            return ratio * sample - float(phi) * D0 - float(0.5 * phi) * D1
        return ratio * sample - float(phi) * D0 + float(alpha_t * (f.expm1(-h) / h + 1)) * D1

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None,
             return_dict=True):
        """One solver step. The order: 1 without history, at the last step as described above,
        else `solver_order`. Returns a `SchedulerOutput` (or a tuple)."""
        t = self._check_step(model_output, timestep, sample)
        if self._step_index is None:
            where = np.flatnonzero(self._timesteps == t)
            self._step_index = int(where[0]) if len(where) else len(self._timesteps) - 1
        i, n = self._step_index, len(self._timesteps)
        if i >= n:
            raise ValueError(f"DPMSolverMultistepScheduler.step: all {n} steps are done; call "
                             f"set_timesteps again for a new run")
        c = self.config
        lower_final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15)
                                      or c.final_sigmas_type == "zero")
        D0 = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [D0]           # history, newest last
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            prev = self._first_order(D0, sample)
        else:
            prev = self._second_order(D0, self.model_outputs[-2], sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index += 1
        return SchedulerOutput(prev, D0) if return_dict else (prev,)


SCHEDULERS = {cls.name: cls for cls in (DDPMScheduler, DDIMScheduler,
                                         DPMSolverMultistepScheduler)}
"""The samplers by name (`--scheduler`): a new one is a class above, added to this tuple."""
