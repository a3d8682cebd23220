"""Exercises on diffusion: the cosine beta schedule, the forward (noising) process, one DDIM step
and the classifier-free guided noise prediction.

Data live in [-1, 1] (as `uvit_numpy.data` scales the digits); timesteps are integers in [0, T)
that index the schedule's tables. The references are the package's own: `schedulers.make_betas`
("squaredcos_cap_v2"), `schedulers.add_noise`, `schedulers.DDIMScheduler` and
`sampling.guided_epsilon`.

Notebook: book/exercises/07_diffusion.ipynb.
"""

import math

import numpy as np

from .. import sampling, schedulers
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "07_diffusion.ipynb"


def _abar_table(beta_schedule, T):
    """alphas_cumprod (T,) of a named schedule, as the schedulers build it."""
    return np.cumprod(1.0 - schedulers.make_betas(beta_schedule, T))


# --------------------------------------------------------------------------------------------------
# cosine_betas
# --------------------------------------------------------------------------------------------------
def cosine_betas(num_train_timesteps, max_beta=0.999):
    """The cosine schedule (Nichol & Dhariwal; diffusers' "squaredcos_cap_v2"). Returns (T,).

    abar(u) = cos^2((u + 0.008) / 1.008 * pi / 2) on u in [0, 1];
    beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i = 0 .. T-1.
    """
    # make_betas("squaredcos_cap_v2", T) is this with max_beta = 0.999
    return schedulers.betas_for_alpha_bar(num_train_timesteps, max_beta=max_beta)


def _cosine_with(offset=0.008, power=2, cap=True, cumulative=False):
    def wrong(num_train_timesteps, max_beta=0.999):
        T = num_train_timesteps
        u = np.arange(T + 1) / T                                      # (T+1,) in [0, 1]
        abar = np.cos((u + offset) / (1 + offset) * math.pi / 2) ** power
        betas = 1.0 - abar[1:] / abar[:-1] if not cumulative else 1.0 - abar[1:]
        return np.minimum(betas, max_beta) if cap else betas
    return wrong


def _cosine_cases():
    return [
        Case("T = 10", (10,)),
        Case("T = 1000, as the models train", (1000,)),
        Case("T = 7, max_beta = 0.5: the cap bites earlier", (7,), {"max_beta": 0.5}),
        Case("T = 1: one step", (1,)),
    ]


register(Exercise(
    name="cosine_betas",
    summary="the cosine beta schedule (squaredcos_cap_v2): betas from abar ratios, capped",
    notebook=NOTEBOOK,
    reference=cosine_betas,
    make_cases=_cosine_cases,
    mistakes=(
        Mistake("offset_missing",
                "abar(u) = cos^2((u + s) / (1 + s) * pi / 2) with s = 0.008: the small offset "
                "keeps the first betas from being vanishingly small.",
                _cosine_with(offset=0.0)),
        Mistake("cosine_not_squared",
                "abar is the cosine squared: cos((u + 0.008) / 1.008 * pi / 2) ** 2.",
                _cosine_with(power=1)),
        Mistake("betas_not_capped",
                "cap every beta at max_beta (min(..., max_beta)): at the end abar goes to 0 and "
                "the last ratio would give beta = 1, a step that destroys everything.",
                _cosine_with(cap=False)),
        Mistake("abar_not_ratio",
                "beta_i = 1 - abar((i + 1) / T) / abar(i / T) is one step's noise, the ratio of "
                "consecutive abar values, not 1 - abar itself (that is the total noise so far).",
                _cosine_with(cumulative=True)),
    ),
))


# --------------------------------------------------------------------------------------------------
# add_noise
# --------------------------------------------------------------------------------------------------
def add_noise(x0, noise, timesteps, alphas_cumprod):
    """The forward process q(x_t | x0), one timestep per sample.

    x0, noise: (B, C, H, W), x0 in [-1, 1]; timesteps: (B,) ints in [0, T); alphas_cumprod: (T,).
    Returns x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, shaped like x0.
    """
    return schedulers.add_noise(x0, noise, timesteps, alphas_cumprod)


def _add_noise_with(signal="sqrt", noise_scale="sqrt", data=None, last_axis=False):
    def wrong(x0, noise, timesteps, alphas_cumprod):
        abar = alphas_cumprod[timesteps]                              # (B,)
        if not last_axis:
            abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))           # (B, 1, 1, 1)
        if data == "to_01":
            x0 = (x0 + 1.0) / 2.0                                     # [-1, 1] -> [0, 1]
        elif data == "to_pm1":
            x0 = 2.0 * x0 - 1.0                                       # rescaled a second time
        a = np.sqrt(abar) if signal == "sqrt" else abar
        s = np.sqrt(1.0 - abar) if noise_scale == "sqrt" else 1.0 - abar
        return a * x0 + s * noise
    return wrong


def _add_noise_cases():
    rng = rng_for("add_noise")
    linear, cosine = _abar_table("linear", 1000), _abar_table("squaredcos_cap_v2", 1000)

    def case(label, shape, timesteps, abar):
        x0 = rng.uniform(-1.0, 1.0, shape)
        return Case(label, (x0, rng.standard_normal(shape), np.array(timesteps), abar))
    return [
        case("three images, early, middle, late t (B=3, C=1, H=4, W=5), linear", (3, 1, 4, 5),
             [10, 500, 990], linear),
        case("W == B: abar must broadcast over the batch axis (B=2, C=2, H=3, W=2)",
             (2, 2, 3, 2), [100, 900], cosine),
        case("batch 1, t = 0 (B=1, C=3, H=2, W=2), cosine", (1, 3, 2, 2), [0], cosine),
        case("the last timestep (B=2, C=1, H=2, W=3), linear", (2, 1, 2, 3), [999, 250], linear),
    ]


register(Exercise(
    name="add_noise",
    summary="the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, one t per sample",
    notebook=NOTEBOOK,
    reference=add_noise,
    make_cases=_add_noise_cases,
    mistakes=(
        Mistake("abar_without_sqrt",
                "the signal is scaled by sqrt(abar_t), not abar_t: the variances add up, "
                "abar_t + (1 - abar_t) = 1, so the scales are their square roots.",
                _add_noise_with(signal="abar")),
        Mistake("noise_scale_without_sqrt",
                "the noise is scaled by sqrt(1 - abar_t), not 1 - abar_t.",
                _add_noise_with(noise_scale="one_minus_abar")),
        Mistake("data_rescaled_to_01",
                "x0 is already in [-1, 1], the range the model is trained on (the schedule "
                "assumes data of unit scale centred on 0): do not map it to [0, 1].",
                _add_noise_with(data="to_01")),
        Mistake("data_rescaled_twice",
                "x0 is already in [-1, 1]: 2 x0 - 1 maps [0, 1] to [-1, 1] and must not be "
                "applied again.",
                _add_noise_with(data="to_pm1")),
        Mistake("abar_on_last_axis",
                "abar_t has one value per sample, (B,): reshape it to (B, 1, 1, 1) so it "
                "broadcasts over C, H, W; as (B,) it lines up with the last axis (W) instead.",
                _add_noise_with(last_axis=True)),
    ),
))


# --------------------------------------------------------------------------------------------------
# ddim_step
# --------------------------------------------------------------------------------------------------
def ddim_step(model_output, timestep, sample, alphas_cumprod, num_inference_steps):
    """One deterministic DDIM step (eta = 0) with an epsilon-predicting model.

    model_output (eps), sample (x_t): (B, C, H, W); timestep t: an int in [0, T);
    alphas_cumprod: (T,). The previous timestep is t - T // num_inference_steps, and its abar is
    1 when that is below 0. With x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (not clipped):
    returns x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps, shaped like the sample.
    """
    T = len(alphas_cumprod)
    sched = schedulers.DDIMScheduler(num_train_timesteps=T, clip_sample=False,
                                     set_alpha_to_one=True)
    sched.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)  # the table given
    sched.set_timesteps(num_inference_steps)
    return sched.step(model_output, timestep, sample, eta=0.0).prev_sample


def _ddim_with(prev="spaced", final="one", x0_scale="sqrt", clip=False, eps_scale="sqrt"):
    def wrong(model_output, timestep, sample, alphas_cumprod, num_inference_steps):
        T = len(alphas_cumprod)
        t = int(timestep)
        prev_t = t - T // num_inference_steps if prev == "spaced" else t - 1
        if prev_t >= 0:
            abar_prev = alphas_cumprod[prev_t]
        else:
            abar_prev = 1.0 if final == "one" else alphas_cumprod[0]
        abar = alphas_cumprod[t]
        a = math.sqrt(abar) if x0_scale == "sqrt" else abar
        x0 = (sample - math.sqrt(1.0 - abar) * model_output) / a
        if clip:
            x0 = np.clip(x0, -1.0, 1.0)
        s_prev = math.sqrt(1.0 - abar_prev) if eps_scale == "sqrt" else 1.0 - abar_prev
        return math.sqrt(abar_prev) * x0 + s_prev * model_output
    return wrong


def _ddim_cases():
    rng = rng_for("ddim_step")
    linear, cosine = _abar_table("linear", 1000), _abar_table("squaredcos_cap_v2", 1000)

    def case(label, shape, t, abar, n):
        return Case(label, (rng.standard_normal(shape), t, rng.standard_normal(shape), abar, n))
    return [
        case("the first of 50 steps, t = 980 (B=2, C=1, H=3, W=3), linear", (2, 1, 3, 3), 980,
             linear, 50),
        case("a middle step, t = 500 of 20 steps (B=1, C=2, H=2, W=3), cosine", (1, 2, 2, 3),
             500, cosine, 20),
        case("the last step, t = 0: abar_prev = 1 (B=2, C=1, H=2, W=2), linear", (2, 1, 2, 2),
             0, linear, 50),
        case("t = 90 of 10 steps (B=3, C=1, H=2, W=2), cosine", (3, 1, 2, 2), 90, cosine, 10),
    ]


register(Exercise(
    name="ddim_step",
    summary="one deterministic DDIM step (eta = 0) from an epsilon prediction, to t - T // n",
    notebook=NOTEBOOK,
    reference=ddim_step,
    make_cases=_ddim_cases,
    mistakes=(
        Mistake("previous_timestep_minus_one",
                "with n inference steps DDIM jumps T // n training steps at once: the previous "
                "timestep is t - T // num_inference_steps, not t - 1.",
                _ddim_with(prev="one")),
        Mistake("final_abar_not_one",
                "below timestep 0 there is no noise left: use abar_prev = 1 (diffusers' "
                "set_alpha_to_one), so the last step returns the x0 estimate itself.",
                _ddim_with(final="abar0")),
        Mistake("x0_without_sqrt",
                "x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): divide by the square root "
                "of abar_t.",
                _ddim_with(x0_scale="abar")),
        Mistake("eps_scale_without_sqrt",
                "the noise part of x_prev is sqrt(1 - abar_prev) eps.",
                _ddim_with(eps_scale="one_minus_abar")),
        Mistake("x0_clipped",
                "this step does not clip the x0 estimate (clip_sample=False): keep x0 as "
                "computed, even outside [-1, 1].",
                _ddim_with(clip=True)),
    ),
))


# --------------------------------------------------------------------------------------------------
# guided_epsilon
# --------------------------------------------------------------------------------------------------
def guided_epsilon(eps_cond, eps_uncond, guidance_scale):
    """Classifier-free guidance. eps_cond, eps_uncond: the same shape; guidance_scale w >= 0.

    Returns eps_c + (w - 1)(eps_c - eps_u): w = 1 is plain conditional sampling, w = 2 the U-ViT
    paper's scale s = 1 in (1 + s) eps_c - s eps_u (diffusers' convention, s = w - 1).
    """
    return sampling.guided_epsilon(eps_cond, eps_uncond, guidance_scale)


def _guidance_cases():
    rng = rng_for("guided_epsilon")

    def case(label, shape, w):
        return Case(label, (rng.standard_normal(shape), rng.standard_normal(shape), w))
    return [
        case("w = 2, the paper's s = 1 (B=2, C=1, H=3, W=3)", (2, 1, 3, 3), 2.0),
        case("w = 1: plain conditional (B=1, C=2, H=2, W=2)", (1, 2, 2, 2), 1.0),
        case("w = 7.5 (B=2, C=1, H=2, W=3)", (2, 1, 2, 3), 7.5),
        case("w = 0: unconditional (B=3, C=1, H=2, W=2)", (3, 1, 2, 2), 0.0),
    ]


register(Exercise(
    name="guided_epsilon",
    summary="classifier-free guidance: eps_c + (w - 1)(eps_c - eps_u), w = 1 plain conditional",
    notebook=NOTEBOOK,
    reference=guided_epsilon,
    make_cases=_guidance_cases,
    mistakes=(
        Mistake("scale_off_by_one",
                "guidance_scale is diffusers' w = 1 + s: the paper's (1 + s) eps_c - s eps_u "
                "is eps_c + (w - 1)(eps_c - eps_u). Yours is (1 + w) eps_c - w eps_u, which "
                "guides even at w = 1.",
                lambda c, u, w: (1.0 + w) * c - w * u),
        Mistake("difference_reversed",
                "guidance pushes away from the unconditional prediction: add (w - 1) times "
                "(eps_c - eps_u), not (eps_u - eps_c).",
                lambda c, u, w: c + (w - 1.0) * (u - c)),
        Mistake("cond_uncond_swapped",
                "start from the conditional prediction eps_c and move away from eps_u; you "
                "swapped the two.",
                lambda c, u, w: u + (w - 1.0) * (u - c)),
        Mistake("uncond_ignored",
                "guidance needs both predictions: w eps_c alone only rescales the noise.",
                lambda c, u, w: w * c),
    ),
))
