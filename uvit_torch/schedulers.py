"""The samplers of `uvit_numpy.schedulers` on torch tensors: same classes, arguments and formulas.

Each class subclasses its NumPy twin: the schedule tables (float64, or diffusers' float32 with
`table_dtype="float32"`) and every coefficient are computed there, once; this file swaps the array
operations, so that `.timesteps` is an int64 tensor, `step` takes and returns tensors, clamping is
`torch.clamp`, dynamic thresholding uses `torch.quantile` (as diffusers does), and noise is drawn
with `torch.randn(..., generator=torch.Generator)` in the sample's dtype and device. A sample in
float32 stays float32: the coefficients are Python floats.
"""

import numpy as np
import torch

from uvit_numpy import schedulers as _np
from uvit_numpy.schedulers import (BETA_SCHEDULES, PREDICTION_TYPES,  # noqa: F401
                                   TABLE_DTYPES, TIMESTEP_SPACINGS, SchedulerOutput,
                                   betas_for_alpha_bar, make_betas, rescale_zero_terminal_snr,
                                   spaced_timesteps)

from .losses import mse_loss

__all__ = ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "SchedulerOutput",
           "add_noise", "dynamic_threshold", "epsilon_mse", "make_betas",
           "rescale_zero_terminal_snr", "spaced_timesteps", "SCHEDULERS"]


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for tensors; alphas_cumprod (T,) float64."""
    if tuple(noise.shape) != tuple(original_samples.shape):
        raise ValueError(f"add_noise: expected noise shaped like the samples "
                         f"{tuple(original_samples.shape)}, got {tuple(noise.shape)}")
    t = torch.as_tensor(timesteps, device=original_samples.device).long()
    if t.shape != (original_samples.shape[0],):
        raise ValueError(f"add_noise: expected ({original_samples.shape[0]},) timesteps, one per "
                         f"sample, got shape {tuple(t.shape)}")
    if int(t.min()) < 0 or int(t.max()) >= len(alphas_cumprod):
        raise ValueError(f"add_noise: expected timesteps in [0, {len(alphas_cumprod)}), got values "
                         f"in [{int(t.min())}, {int(t.max())}]")
    table = torch.as_tensor(np.asarray(alphas_cumprod), device=original_samples.device)
    abar = table[t].to(original_samples.dtype)                        # (B,)
    abar = abar.reshape((-1,) + (1,) * (original_samples.ndim - 1))   # (B, 1, ..., 1)
    return abar.sqrt() * original_samples + (1.0 - abar).sqrt() * noise


def velocity(original_samples, noise, timesteps, alphas_cumprod):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 for tensors (see `uvit_numpy.schedulers`)."""
    table = torch.as_tensor(np.asarray(alphas_cumprod), device=original_samples.device)
    abar = table[torch.as_tensor(timesteps).long()].to(original_samples.dtype)
    abar = abar.reshape((-1,) + (1,) * (original_samples.ndim - 1))
    return abar.sqrt() * noise - (1.0 - abar).sqrt() * original_samples


def training_target(original_samples, noise, timesteps, alphas_cumprod,
                    prediction_type="epsilon"):
    """What the network learns to output: the noise (epsilon), or v (`velocity`), for tensors."""
    return _np.training_target(original_samples, noise, timesteps, alphas_cumprod,
                               prediction_type, velocity_fn=velocity)


def epsilon_mse(model_output, noise):
    """The epsilon-prediction loss, `F.mse_loss(model_output, noise)` (mean over every element)."""
    return mse_loss(model_output, noise)


def dynamic_threshold(x0, dynamic_thresholding_ratio=0.995, sample_max_value=1.0):
    """Imagen's dynamic thresholding for tensors (see `uvit_numpy.schedulers.dynamic_threshold`):
    per sample, s = quantile of |x0| clamped to [1, sample_max_value]; x0 clipped to [-s, s] / s.
    x0: (B, C, ...) float tensor; returns the same shape and dtype."""
    if x0.ndim < 2:
        raise ValueError(f"dynamic_threshold: expected a (B, C, ...) tensor, got shape "
                         f"{tuple(x0.shape)}")
    flat = x0.reshape(x0.shape[0], -1)                              # (B, C, ...) -> (B, C*...)
    s = torch.quantile(flat.abs(), dynamic_thresholding_ratio, dim=1)
    s = s.clamp(min=1, max=sample_max_value)[:, None]               # (B, 1)
    return (flat.clamp(-s, s) / s).reshape(x0.shape)


class _TorchOps:
    """The array hooks of `uvit_numpy.schedulers._DiscreteScheduler`, for tensors."""

    def _as_timesteps(self, timesteps):
        return torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.int64))

    def _clip(self, x, low, high):
        return x.clamp(low, high)

    def _threshold(self, x0, dynamic_thresholding_ratio, sample_max_value):
        return dynamic_threshold(x0, dynamic_thresholding_ratio, sample_max_value)

    def _randn_like(self, x, generator):
        """N(0, 1) like x (its dtype and device) from a torch.Generator (or the global one)."""
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def _check_noise(self, noise, x):
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"{type(self).__name__}.step: expected variance_noise as a "
                            f"torch.Tensor, got {type(noise).__name__}")
        return super()._check_noise(noise.to(x.dtype), x)

    def add_noise(self, original_samples, noise, timesteps):
        return add_noise(original_samples, noise, timesteps, self.alphas_cumprod)


def _twin(cls):
    """The torch class of a NumPy sampler: the same class with the tensor hooks in front."""
    return type(cls.__name__, (_TorchOps, cls), {"__doc__": cls.__doc__,
                                                 "__module__": __name__})


SCHEDULERS = {name: _twin(cls) for name, cls in _np.SCHEDULERS.items()}
"""The torch twins of `uvit_numpy.schedulers.SCHEDULERS`, by the same names."""
DDPMScheduler = SCHEDULERS["ddpm"]
DDIMScheduler = SCHEDULERS["ddim"]
DPMSolverMultistepScheduler = SCHEDULERS["dpmsolver++"]
