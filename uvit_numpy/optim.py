"""Optimizers, gradient clipping, an EMA of the weights and the warm-up schedule, in NumPy.

They work on a `Module`: `step()` reads `model.grads()` and updates the arrays of
`model.state_dict()` in place, `zero_grad()` clears the model's gradients. The arithmetic follows
`torch.optim` operation by operation (its single-tensor path, the default on the CPU), so a NumPy
run retraces a torch run to float rounding (about 1e-16 per step: torch fuses some multiply-adds,
NumPy cannot, so the two are close but never bitwise equal).

    opt = AdamW(model, lr=1e-3, weight_decay=0.01)
    loss = ...; model.backward(dloss)
    clip_grad_norm(model, 1.0)
    opt.step(); opt.zero_grad()

`state_dict()` / `load_state_dict()` keep the moments and step counts by parameter name, so a run
can resume; the torch trainer writes the same names.
"""

import math

import numpy as np


def linear_warmup(step, lr, warmup_steps):
    """The learning rate of optimizer step `step` (1, 2, ...): lr * min(1, step / warmup_steps),
    a linear warm-up then constant (the U-ViT paper's schedule); `warmup_steps` <= 0: always lr."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, step / warmup_steps)


class _Optimizer:
    """What SGD and AdamW share: the model, the learning rate, per-parameter state by name."""

    def __init__(self, model, lr):
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: expected lr >= 0, got {lr}")
        self.model, self.lr = model, lr
        self.state = {}                                   # parameter name -> its state dict

    def zero_grad(self):
        self.model.zero_grad()

    def _params_and_grads(self):
        """(name, parameter, gradient) once per parameter array (a module registered under two
        names, as diffusers' `Downsample2D(name="conv")` does, is stepped once)."""
        grads = self.model.grads()
        seen = set()
        for name, p in self.model.state_dict().items():
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield name, p, grads[name].astype(p.dtype, copy=False)

    def state_dict(self):
        """{"lr": lr, "state": {name: {key: array or number}}} (copies)."""
        return {"lr": self.lr, "state": {n: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                             for k, v in s.items()}
                                         for n, s in self.state.items()}}

    def load_state_dict(self, state_dict):
        """Restore what `state_dict()` returned; every name must be a parameter of the model."""
        params = self.model.state_dict()
        unknown = sorted(set(state_dict["state"]) - set(params))
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: no parameters named "
                             f"{unknown} in the model")
        self.lr = state_dict["lr"]
        self.state = {n: {k: (np.array(v, dtype=params[n].dtype) if isinstance(v, np.ndarray)
                              else v) for k, v in s.items()}
                      for n, s in state_dict["state"].items()}


class SGD(_Optimizer):
    """Stochastic gradient descent with torch's momentum and (coupled) weight decay.

    Per parameter: g = grad + weight_decay p; with momentum mu, the buffer starts as b = g (no
    dampening on the first step) and is then b = mu b + (1 - dampening) g; the step uses
    g + mu b (Nesterov) or b; p -= lr g.
    """

    def __init__(self, model, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(model, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def step(self):
        for name, p, g in self._params_and_grads():
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                state = self.state.setdefault(name, {})
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.copy()
                else:
                    buf = state["momentum_buffer"]
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g
                buf = state["momentum_buffer"]
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), in torch's order of operations.

    Per parameter, at its step t (counted from 1):
        p <- p (1 - lr weight_decay)                      (decay first, with this step's lr)
        m <- m + (1 - beta1) (g - m)                      (torch's lerp)
        v <- beta2 v + (1 - beta2) g^2
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    eps is added after the square root and after the bias correction, as torch does.
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(model, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: expected betas in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def step(self):
        beta1, beta2 = self.betas
        lr = self.lr
        for name, p, g in self._params_and_grads():
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = {"step": 0, "exp_avg": np.zeros_like(p),
                                            "exp_avg_sq": np.zeros_like(p)}
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            m += (1.0 - beta1) * (g - m)
            v *= beta2
            v += (1.0 - beta2) * g * g
            step_size = lr / (1.0 - beta1 ** t)
            denom = np.sqrt(v) / math.sqrt(1.0 - beta2 ** t) + self.eps
            p -= step_size * (m / denom)


def clip_grad_norm(model, max_norm):
    """Scale every gradient of `model` by min(1, max_norm / (total + 1e-6)), in place, where total
    is the 2-norm of all gradients together (torch's `clip_grad_norm_`). Returns the total before
    clipping, as a float."""
    grads = [g for _, module in model.named_modules() for g in module._grads.values()]
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    coef = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g *= coef                                         # always, as torch does (no branch)
    return total


class EMA:
    """An exponential moving average of a model's weights: e <- decay e + (1 - decay) p.

    The average starts as a copy of the weights. `update(decay)` after each optimizer step;
    `state_dict()` is the averaged weights, to load into a copy of the model for sampling.
    """

    def __init__(self, model):
        self.model = model
        self.shadow = {k: v.copy() for k, v in model.state_dict().items()}

    def update(self, decay):
        for name, p in self.model.state_dict().items():
            e = self.shadow[name]
            e *= decay
            e += (1.0 - decay) * p

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state_dict):
        missing = sorted(set(self.shadow) - set(state_dict))
        if missing:
            raise ValueError(f"EMA.load_state_dict: missing {missing}")
        self.shadow = {k: np.array(state_dict[k], dtype=self.shadow[k].dtype) for k in self.shadow}
