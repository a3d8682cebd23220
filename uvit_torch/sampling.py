"""Classifier-free guided sampling from a class-conditional U-ViT: the twin of
`uvit_numpy.sampling`, on tensors, with the same arguments and the same noise.

The starting noise and each step's noise are drawn from `np.random.default_rng(seed)` in the same
order as on the NumPy side and handed to the scheduler as `variance_noise`, so a seed gives the
same samples in both packages (up to float rounding).
"""

import numpy as np
import torch

from uvit_numpy.sampling import (check_sampling_labels, guided_epsilon,  # noqa: F401
                                 needs_noise, step_kwargs)


@torch.no_grad()
def sample(model, labels, scheduler, num_inference_steps=20, guidance_scale=2.0, seed=0, eta=0.0,
           return_trajectory=False, callback=None):
    """Generate one image per label; see `uvit_numpy.sampling.sample`. labels: (N,) int tensor or
    array. Returns x0 (N, C, H, W) on the model's device and dtype (and the trajectory).
    callback: called as `callback(i, x)` after step i."""
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor)
                             else labels)
    check_sampling_labels("sample", labels, model.num_classes)
    param = next(model.parameters())
    dev, dt = param.device, param.dtype

    def tensor(a):
        return torch.from_numpy(a).to(device=dev, dtype=dt)

    rng = np.random.default_rng(seed)
    N, C, S = len(labels), model.in_chans, model.img_size
    x = tensor(rng.standard_normal((N, C, S, S)))                  # x_T ~ N(0, I)
    labels = labels.to(dev, torch.int64)
    guided = guidance_scale != 1.0
    null = torch.full((N,), model.num_classes - 1, dtype=torch.int64, device=dev)
    y = torch.cat([labels, null]) if guided else labels
    was_training = model.training
    model.eval()
    scheduler.set_timesteps(num_inference_steps)
    trajectory = []
    try:
        for i, t in enumerate(scheduler.timesteps):
            x_in = torch.cat([x, x]) if guided else x
            eps = model(x_in, torch.full((len(x_in),), int(t), dtype=torch.int64, device=dev), y)
            if guided:
                eps = guided_epsilon(eps[:N], eps[N:], guidance_scale)
            noise = (tensor(rng.standard_normal(tuple(x.shape)))
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


__all__ = ["sample", "guided_epsilon"]
