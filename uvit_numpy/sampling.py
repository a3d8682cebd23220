"""Classifier-free guided sampling from a class-conditional U-ViT, with any of the three samplers.

The model is trained with its labels replaced by the null class (the last row of `label_emb`,
index `num_classes - 1`) some of the time, so it predicts both eps_c = eps(x_t, t, y) and
eps_u = eps(x_t, t, null). The U-ViT paper combines them as

    eps = eps_c + s (eps_c - eps_u) = (1 + s) eps_c - s eps_u,

and diffusers (and the arguments here) write the scale as w = 1 + s: `guidance_scale=1` is plain
conditional sampling (one forward per step), `guidance_scale=2` is the paper's s = 1. Both halves
run in one batched forward, as the paper's code does: [x; x] with labels [y; null].

All randomness (the starting noise and each step's noise) is drawn from one
`np.random.default_rng(seed)`, in the same order in both packages, so `uvit_torch.sampling.sample`
with the same seed replays exactly the run of this one.
"""

import numpy as np

from .checks import check_integer, check_numpy, check_numpy_model, check_range, check_rank


def guided_epsilon(eps_cond, eps_uncond, guidance_scale):
    """The paper's guided prediction eps_c + s (eps_c - eps_u) with s = guidance_scale - 1."""
    s = guidance_scale - 1.0
    return eps_cond + s * (eps_cond - eps_uncond)


def check_sampling_labels(name, labels, num_classes):
    """labels: (N,) ints naming real classes, 0 .. num_classes - 2 (the last class is the null)."""
    if num_classes <= 1:
        raise ValueError(f"{name}: expected a class-conditional model with a null class "
                         f"(num_classes >= 2), got num_classes={num_classes}")
    check_integer(f"{name}: labels", labels)
    check_rank(f"{name}: labels", labels, 1, "(N,)")
    check_range(f"{name}: labels", labels, 0, num_classes - 1)


def step_kwargs(scheduler, eta):
    """The extra arguments of `scheduler.step`: eta for a sampler that takes it (DDIM)."""
    return {"eta": eta} if scheduler.takes_eta else {}


def needs_noise(scheduler, t, eta):
    """True if this scheduler's step at timestep t adds noise (so one draw is due): the
    scheduler's own `draws_noise`."""
    return scheduler.draws_noise(t, eta)


def sample(model, labels, scheduler, num_inference_steps=20, guidance_scale=2.0, seed=0, eta=0.0,
           return_trajectory=False, callback=None):
    """Generate one image per label with a class-conditional `UViT` and a scheduler.

    labels: (N,) ints in [0, num_classes - 1) (the null class is added for guidance).
    scheduler: a `DDPMScheduler`, `DDIMScheduler` or `DPMSolverMultistepScheduler` (its
    `set_timesteps(num_inference_steps)` is called here). eta: DDIM's noise weight.
    Returns x0 (N, C, H, W) in the model's dtype (roughly [-1, 1] for data trained there), and with
    `return_trajectory` also the list of the samples after each step. The model runs in eval mode
    (nothing is recorded for a backward pass) and is put back into its previous mode.
    callback: called as `callback(i, x)` after step i (0-based) with the sample so far (a progress
    bar's update, a preview).
    """
    check_numpy_model("sample", model)
    check_numpy("sample: labels", labels)
    labels = np.asarray(labels)
    check_sampling_labels("sample", labels, model.num_classes)
    rng = np.random.default_rng(seed)
    N, C, S = len(labels), model.in_chans, model.img_size
    x = rng.standard_normal((N, C, S, S)).astype(model.dtype)     # x_T ~ N(0, I)
    null = np.full(N, model.num_classes - 1, dtype=np.int64)
    guided = guidance_scale != 1.0
    y = np.concatenate([labels, null]) if guided else labels      # (2N,) or (N,)
    was_training = model.training
    model.eval()
    scheduler.set_timesteps(num_inference_steps)
    trajectory = []
    try:
        for i, t in enumerate(scheduler.timesteps):
            x_in = np.concatenate([x, x]) if guided else x           # (2N, C, H, W) or (N, ...)
            eps = model(x_in, np.full(len(x_in), int(t), dtype=np.int64), y)
            if guided:
                eps = guided_epsilon(eps[:N], eps[N:], guidance_scale)
            noise = (rng.standard_normal(x.shape).astype(x.dtype)
                     if needs_noise(scheduler, t, eta) else None)
            x = scheduler.step(eps, t, x, variance_noise=noise,
                               **step_kwargs(scheduler, eta)).prev_sample
            if return_trajectory:
                trajectory.append(x)
            if callback is not None:
                callback(i, x)
    finally:
        model.train(was_training)
    return (x, trajectory) if return_trajectory else x
