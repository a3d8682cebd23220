"""Parity cases for the samplers: whole sampling loops, NumPy vs torch and torch vs diffusers.

Each case runs a scheduler's full loop from the same starting noise, with the same "network" and
the same per-step noise on both sides. The network is the exact noise predictor of Gaussian data
N(0.3, 0.5^2 I), eps(x, t) = sqrt(1 - a) (x - sqrt(a) 0.3) / (0.25 a + 1 - a) with a = abar_t
(float64, from our schedule, on both sides), so trajectories stay unit-sized and every difference
comes from the schedulers themselves. Stochastic steps (DDPM, DDIM with eta > 0) get their noise
from a seeded NumPy generator: ours through `variance_noise`, diffusers' DDPM (which has no such
argument) through its `randn_tensor`, patched for the loop.

The cases cover the three beta schedules, the three timestep spacings, `steps_offset`, DDPM's two
variances, DDIM with eta 0, 1/2 and 1, DPM-Solver++ orders 1 and 2, midpoint and heun, with and
without `lower_order_final`, v-prediction in all three, dynamic thresholding and zero terminal SNR
(v-prediction from t = T-1 with "trailing" spacing, as Lin et al. recommend, and epsilon with
"leading" spacing, which never reaches T-1) in all three, and `table_dtype="float32"`.

Against diffusers the error floor is diffusers' own float32 schedule tables and coefficients:
~1e-7 to 5e-6 relative with our float64 tables, well under 1e-5, except on the cosine schedule
from t = 999 (abar = 2.4e-9: DPM-Solver's x0 estimate divides by sqrt(abar) = 5e-5, which blows
diffusers' float32 rounding up to ~1e-4), which the tests check at that measured bound instead
(tests/test_schedulers.py). With `table_dtype="float32"` the tables are diffusers' bit for bit
and the coefficients are rounded as diffusers rounds them: every loop, that one included, agrees
to ~3e-7 (torch's float32 sqrt, not correctly rounded, is the one difference left).
"""

import zlib
from unittest import mock

import numpy as np
import torch

from uvit_numpy import schedulers as NS

from .. import schedulers as TS
from .case import Case

MU, SIGMA = 0.3, 0.5

# (name, scheduler, constructor arguments, steps, eta)
LOOPS = [
    ("DDPM linear leading 50", "ddpm", dict(clip_sample=False), 50, None),
    ("DDPM scaled_linear trailing 20, fixed_large, clip", "ddpm",
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
          variance_type="fixed_large", timestep_spacing="trailing"), 20, None),
    ("DDPM cosine linspace 25", "ddpm",
     dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", clip_sample=False),
     25, None),
    ("DDIM linear leading 50, eta 0", "ddim", dict(clip_sample=False), 50, 0.0),
    ("DDIM linear trailing 30, eta 1", "ddim",
     dict(clip_sample=False, timestep_spacing="trailing"), 30, 1.0),
    ("DDIM scaled_linear offset 1, alpha_one False", "ddim",
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
          set_alpha_to_one=False), 50, 0.0),
    ("DDIM cosine linspace 25, eta 0.5", "ddim",
     dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", clip_sample=False),
     25, 0.5),
    ("DPM++ 2M linear linspace 20 (defaults)", "dpmsolver++", dict(), 20, None),
    ("DPM++ order 1 linear 10", "dpmsolver++", dict(solver_order=1), 10, None),
    ("DPM++ 2M leading offset 1, no lower_order_final, sigma_min", "dpmsolver++",
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
          timestep_spacing="leading", steps_offset=1, lower_order_final=False,
          final_sigmas_type="sigma_min"), 10, None),
    ("DPM++ 2M heun trailing 12, no lower_order_final", "dpmsolver++",
     dict(solver_type="heun", timestep_spacing="trailing", lower_order_final=False), 12, None),
    ("DPM++ 2M cosine leading 15", "dpmsolver++",
     dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="leading"), 15, None),
    ("DPM++ 2M cosine linspace 15 (from t=999)", "dpmsolver++",
     dict(beta_schedule="squaredcos_cap_v2"), 15, None),
    # v-prediction (the shipped digits model's); the "network" then returns v for the same data
    ("DDPM v-prediction leading 50, clip", "ddpm", dict(prediction_type="v_prediction"), 50,
     None),
    ("DDIM v-prediction leading 50, clip", "ddim", dict(prediction_type="v_prediction"), 50, 0.0),
    ("DPM++ 2M v-prediction linspace 20", "dpmsolver++", dict(prediction_type="v_prediction"), 20,
     None),
    # dynamic thresholding (Imagen): s between 1 and sample_max_value at the low-noise steps
    ("DDPM thresholding 0.995, max 1.5, leading 50", "ddpm",
     dict(thresholding=True, sample_max_value=1.5), 50, None),
    ("DDIM thresholding 0.98, max 1.1, trailing 30, eta 1", "ddim",
     dict(thresholding=True, dynamic_thresholding_ratio=0.98, sample_max_value=1.1,
          timestep_spacing="trailing"), 30, 1.0),
    ("DPM++ 2M thresholding 0.995, max 1.5", "dpmsolver++",
     dict(thresholding=True, sample_max_value=1.5), 20, None),
    # zero terminal SNR (Lin et al. 2023)
    ("DDPM zero SNR v-prediction trailing 25", "ddpm",
     dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", clip_sample=False,
          timestep_spacing="trailing"), 25, None),
    ("DDIM zero SNR v-prediction trailing 20", "ddim",
     dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", clip_sample=False,
          timestep_spacing="trailing"), 20, 0.0),
    ("DDIM zero SNR scaled_linear leading 50, epsilon", "ddim",
     dict(rescale_betas_zero_snr=True, beta_schedule="scaled_linear", beta_start=0.00085,
          beta_end=0.012, clip_sample=False), 50, 0.0),
    ("DPM++ 2M zero SNR v-prediction trailing 20", "dpmsolver++",
     dict(rescale_betas_zero_snr=True, prediction_type="v_prediction",
          timestep_spacing="trailing"), 20, None),
    # diffusers' float32 tables and coefficients
    ("DDPM float32 tables cosine linspace 25", "ddpm",
     dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", clip_sample=False,
          table_dtype="float32"), 25, None),
    ("DDIM float32 tables linear trailing 30, eta 1", "ddim",
     dict(clip_sample=False, timestep_spacing="trailing", table_dtype="float32"), 30, 1.0),
    ("DPM++ 2M float32 tables cosine linspace 15 (from t=999)", "dpmsolver++",
     dict(beta_schedule="squaredcos_cap_v2", table_dtype="float32"), 15, None),
    ("DPM++ 2M float32 tables heun zero SNR v-prediction trailing 12", "dpmsolver++",
     dict(solver_type="heun", rescale_betas_zero_snr=True, prediction_type="v_prediction",
          timestep_spacing="trailing", table_dtype="float32"), 12, None),
    ("DDPM float32 tables thresholding, zero SNR v-prediction trailing 20", "ddpm",
     dict(thresholding=True, sample_max_value=1.5, rescale_betas_zero_snr=True,
          prediction_type="v_prediction", timestep_spacing="trailing", table_dtype="float32"),
     20, None),
]
DIFFUSERS_FLOOR_EXCEPTIONS = {"DPM++ 2M cosine linspace 15 (from t=999)": 2e-4}


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"schedulers/{name}/{batch}".encode()))


def gaussian_eps(x, t, alphas_cumprod):
    """The exact noise prediction for data N(MU, SIGMA^2 I) at timestep t (works on arrays and
    tensors: a Python float times either)."""
    a = float(alphas_cumprod[int(t)])
    return (1.0 - a) ** 0.5 * (x - a ** 0.5 * MU) / (a * SIGMA ** 2 + 1.0 - a)


def gaussian_output(x, t, alphas_cumprod, prediction_type):
    """The exact network output for that data: eps, or v = sqrt(a) eps - sqrt(1 - a) x0_hat.
    At zero SNR (a = 0) x says nothing about x0: eps = x and x0_hat = MU, so v = -MU."""
    eps = gaussian_eps(x, t, alphas_cumprod)
    if prediction_type == "epsilon":
        return eps
    a = float(alphas_cumprod[int(t)])
    if a == 0.0:
        return 0.0 * eps - MU
    x0 = (x - (1.0 - a) ** 0.5 * eps) / a ** 0.5
    return a ** 0.5 * eps - (1.0 - a) ** 0.5 * x0


def run_loop(scheduler, x, steps, eta, noises, lib):
    """A full sampling loop. lib: "numpy" (x an array), "torch" (ours, x a tensor) or
    "diffusers" (x a tensor). noises: one array per step, used where a step adds noise. What a
    step takes is read from our registry's class of the same name (diffusers' has no such
    attributes)."""
    config = scheduler.config
    betas = NS.make_betas(**{k: config[k] for k in
                             ("beta_schedule", "num_train_timesteps", "beta_start", "beta_end")})
    if config.get("rescale_betas_zero_snr"):
        betas = NS.rescale_zero_terminal_snr(betas)
    abar = np.cumprod(1.0 - betas)                                    # float64, for the "network"
    ours = next(c for c in NS.SCHEDULERS.values() if c.__name__ == type(scheduler).__name__)
    scheduler.set_timesteps(steps)
    kind = scheduler.config["prediction_type"]
    for i, t in enumerate(scheduler.timesteps):
        eps = gaussian_output(x, t, abar, kind)
        kw = {"eta": eta} if ours.takes_eta else {}
        z = noises[i] if lib == "numpy" else torch.from_numpy(noises[i]).to(x.dtype)
        noisy = ours.draws_noise(t, eta)
        if noisy and lib == "diffusers" and ours.name == "ddpm":
            import diffusers.schedulers.scheduling_ddpm as ddpm   # its step has no such argument
            with mock.patch.object(ddpm, "randn_tensor", lambda *a, _z=z, **k: _z):
                x = scheduler.step(eps, t, x).prev_sample
            continue
        if noisy:
            kw["variance_noise"] = z
        x = scheduler.step(eps, t, x, **kw).prev_sample
    return x


def _inputs(name, batch, dtype, steps):
    rng = _rng(name, batch)
    x = rng.standard_normal((batch, 1, 8, 8)).astype(dtype)
    return x, [rng.standard_normal(x.shape).astype(dtype) for _ in range(steps)]


def _numpy_vs_torch(name, kind, kw, steps, eta):
    def build(dtype, batch):
        x, noises = _inputs(name, batch, dtype, steps)
        return (lambda x0: run_loop(NS.SCHEDULERS[kind](**kw), x0, steps, eta, noises, "numpy"),
                lambda x0: run_loop(TS.SCHEDULERS[kind](**kw), x0, steps, eta, noises, "torch"),
                (x,))
    return Case(f"{name}", build, batches=(4,))


def _torch_vs_diffusers(name, kind, kw, steps, eta, dtypes):
    import diffusers
    cls = getattr(diffusers, NS.SCHEDULERS[kind].__name__)   # diffusers' class of that name
    their_kw = {k: v for k, v in kw.items() if k != "table_dtype"}   # always float32 there

    def build(dtype, batch):
        x, noises = _inputs(name, batch, dtype, steps)

        def ours(x0):
            return run_loop(TS.SCHEDULERS[kind](**kw), torch.from_numpy(x0), steps, eta, noises,
                            "torch")

        def theirs(x0):
            return run_loop(cls(**their_kw), x0, steps, eta, noises, "diffusers")  # x0: a tensor
        return ours, theirs, (x,)
    return Case(f"{name} vs diffusers", build, batches=(4,), dtypes=dtypes)


def cases():
    """NumPy samplers vs the torch twins: every loop, float64 and float32."""
    return [_numpy_vs_torch(*loop) for loop in LOOPS]


def diffusers_cases(dtypes=("float32",)):
    """The torch samplers vs stock diffusers (float32), each loop within the 1e-5 floor."""
    return [_torch_vs_diffusers(*loop, dtypes=dtypes) for loop in LOOPS
            if loop[0] not in DIFFUSERS_FLOOR_EXCEPTIONS]
