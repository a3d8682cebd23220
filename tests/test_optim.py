"""NumPy optimizers against torch.optim, and whole training trajectories against torch.

* 100 steps of AdamW and of SGD (momentum, Nesterov, weight decay) with real gradients of a small
  network, with gradient clipping and an EMA: every parameter, every step, <= 1e-13 relative.
* 30 AdamW and 30 SGD steps of a tiny U-ViT on the noise-prediction loss and of a tiny
  UVit2DModel on the masked cross-entropy, from the same weights and batches: NumPy float64
  parameters equal torch's to <= 1e-10 relative after every step.
"""

import copy

import numpy as np
import pytest
import torch

import uvit_numpy as N
from uvit_numpy import losses as NL
from uvit_numpy import optim
from uvit_torch.parity import trajectory
from uvit_torch.parity.harness import make_pair
from uvit_torch.train import ema_update


class _Mlp(N.Module):
    """Linear -> GELU -> LayerNorm -> Linear, small enough for 100 steps in a second."""

    def __init__(self, dtype=np.float64, rng=0):
        super().__init__(dtype)
        self.fc1 = N.Linear(6, 16, dtype=dtype, rng=rng)
        self.act = N.GELU(dtype=dtype)
        self.norm = N.LayerNorm(16, dtype=dtype)
        self.fc2 = N.Linear(16, 3, dtype=dtype, rng=rng)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))

    def backward(self, dy):
        return self.fc1.backward(self.act.backward(self.norm.backward(self.fc2.backward(dy))))


def _torch_mlp(ours):
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
                              torch.nn.Linear(16, 3)).double()
    names = {"0": "fc1", "2": "norm", "3": "fc2"}
    net.load_state_dict({k: torch.from_numpy(ours.state_dict()[f"{names[k.split('.')[0]]}."
                                                                f"{k.split('.')[1]}"].copy())
                         for k in net.state_dict()})
    return net, names


def _max_rel(ours, net, names):
    sd = ours.state_dict()
    return max(float(np.max(np.abs(sd[f"{names[k.split('.')[0]]}.{k.split('.')[1]}"] - v.numpy()))
                     / np.max(np.abs(v.numpy()))) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", ["adamw", "sgd momentum", "sgd nesterov", "sgd plain"])
def test_100_optimizer_steps_match_torch(name):
    ours = _Mlp()
    net, names = _torch_mlp(ours)
    if name == "adamw":
        kw = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
        opt, topt = optim.AdamW(ours, **kw), torch.optim.AdamW(net.parameters(), **kw)
    else:
        kw = dict(lr=0.05, weight_decay=1e-3,
                  momentum={"sgd momentum": 0.9, "sgd nesterov": 0.8, "sgd plain": 0.0}[name],
                  nesterov=name == "sgd nesterov")
        opt, topt = optim.SGD(ours, **kw), torch.optim.SGD(net.parameters(), **kw)
    ema = optim.EMA(ours)
    tema = copy.deepcopy(net)
    rng = np.random.default_rng(0)
    for step in range(1, 101):
        x, target = rng.standard_normal((8, 6)), rng.standard_normal((8, 3))
        opt.zero_grad()
        loss, cache = NL.mse_loss(ours(x), target, return_cache=True)
        ours.backward(NL.mse_loss_backward(1.0, cache))
        norm = optim.clip_grad_norm(ours, 0.3)
        opt.step()
        ema.update(0.9)
        topt.zero_grad()
        tloss = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(target))
        tloss.backward()
        tnorm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.3))
        topt.step()
        ema_update(tema, net, 0.9)
        assert abs(norm - tnorm) <= 1e-13 * tnorm, f"step {step}: clip norm {norm} vs {tnorm}"
        assert _max_rel(ours, net, names) <= 1e-13, f"{name}: parameters differ at step {step}"
        shadow = {k: v for k, v in ema.state_dict().items()}
        for k, v in tema.state_dict().items():
            mine = shadow[f"{names[k.split('.')[0]]}.{k.split('.')[1]}"]
            assert np.max(np.abs(mine - v.numpy())) <= 1e-13 * np.max(np.abs(v.numpy()))


def test_clip_grad_norm_scales_only_above_the_threshold():
    model = _Mlp()
    model(np.ones((2, 6)))
    model.backward(np.ones((2, 3)))
    before = {k: v.copy() for k, v in model.grads().items()}
    total = optim.clip_grad_norm(model, 1e9)
    assert all(np.array_equal(before[k], v) for k, v in model.grads().items())
    optim.clip_grad_norm(model, total / 4)
    after = np.sqrt(sum(np.sum(v ** 2) for v in model.grads().values()))
    assert after == pytest.approx(total / 4, rel=1e-6)


def test_optimizer_state_round_trips():
    """A run resumed from state_dict() continues exactly as the uninterrupted one."""
    def run(steps, resume_at=None):
        model = _Mlp()
        opt = optim.AdamW(model, lr=1e-2)
        rng = np.random.default_rng(1)
        for step in range(steps):
            if step == resume_at:
                saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
                model = _Mlp(rng=5)
                model.load_state_dict(saved[0])
                opt = optim.AdamW(model, lr=1e-2)
                opt.load_state_dict(saved[1])
            x = rng.standard_normal((4, 6))
            opt.zero_grad()
            model(x)
            model.backward(np.ones((4, 3)))
            opt.step()
        return model.state_dict()
    straight, resumed = run(6), run(6, resume_at=3)
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)


def test_linear_warmup():
    assert [optim.linear_warmup(s, 1.0, 4) for s in (1, 2, 4, 5)] == [0.25, 0.5, 1.0, 1.0]
    assert optim.linear_warmup(1, 0.1, 0) == 0.1


@pytest.mark.parametrize("task", ["uvit", "uvit2d"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_training_trajectory_matches_torch(task, optimizer):
    diffs, losses = trajectory.run(task, optimizer, steps=30)
    worst = max(diffs)
    assert worst <= 1e-10, (f"{task}/{optimizer}: parameters differ by {worst:.2e} "
                            f"(per step: {[f'{d:.1e}' for d in diffs]})")
    assert all(abs(a - b) <= 1e-10 * abs(b) for a, b in losses)
    assert losses[-1][1] < losses[0][1], "the loss should fall over 30 steps"


def test_sgd_trajectory_catches_a_gradient_scaled_by_two(monkeypatch):
    """The reason for the SGD runs: doubling every NumPy gradient must show."""
    real = NL.mse_loss_backward
    monkeypatch.setattr(NL, "mse_loss_backward", lambda d, c: 2 * real(d, c))
    diffs, _ = trajectory.run("uvit", "sgd", steps=5, max_norm=1e9)
    assert max(diffs) > 1e-3


def test_make_pair_models_are_the_same_network():
    ours, theirs = make_pair(trajectory.TU.UViT, N.UViT, **trajectory.UVIT_TINY)
    assert set(ours.state_dict()) == set(theirs.state_dict())
