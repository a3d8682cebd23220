"""Checking a backward pass without any other implementation: central differences in float64.

For a function y = f(x1, x2, ...) and an upstream gradient dy, the scalar L = sum(f(...) * dy)
has dL/dx_i = the backward's i-th gradient. Along a random unit direction u,

    (L(x_i + h u) - L(x_i - h u)) / 2h  =  <dL/dx_i, u> + O(h^2)

costs two forward passes whatever the size of x_i, so every input and every parameter tensor gets
a few directions of its own (one direction through everything at once would let a small tensor,
a bias, hide among the big ones). In float64 with h = 1e-5 the two agree to ~1e-8 on a whole
model (measured: 8e-9 to 6e-8 on a tiny U-ViT; ~1e-10 on single ops); in float32
rounding limits the agreement to ~1e-3 at best, so these checks run in float64 only.

    rel = directional_error(f, inputs, grads, dy, rng)        # worst over inputs and directions

A derivative that is exactly zero (below 1e-4 of the largest one in the check) is compared
against that largest one instead of against itself: its differences are pure rounding noise.
"""

import numpy as np


def _unit(rng, shape):
    u = rng.standard_normal(shape)
    return u / np.linalg.norm(u)


def rel_error(a, b, floor=0.0):
    """|a - b| / max(|a|, |b|, floor), 0 when all are 0: the relative error of two numbers.

    `floor` keeps an exactly-zero derivative (to_k's bias: softmax ignores a shift of every key)
    from turning the rounding noise of the differences into a relative error of 1.
    """
    scale = max(abs(a), abs(b), floor)
    return 0.0 if scale == 0 else abs(a - b) / scale


ZERO_FLOOR = 1e-4     # derivatives below this fraction of the largest one are measured against it


def _worst(pairs):
    """The worst rel_error of (numeric, analytic, label) triples, with the zero floor."""
    if not pairs:
        return 0.0, None
    floor = ZERO_FLOOR * max(abs(a) for _, a, _ in pairs)
    errors = [(rel_error(n, a, floor), label) for n, a, label in pairs]
    return max(errors, key=lambda e: e[0])


def directional_error(f, inputs, grads, dy, rng, wrt=None, h=1e-5, directions=3):
    """The worst relative error between central differences of sum(f(*inputs) * dy) along random
    unit directions and the analytic <grad, u>.

    f: a function of the inputs returning an array shaped like dy. inputs: a list of arrays
    (float64 for the ones differentiated). grads: the analytic gradients, one per index of `wrt`
    (default: every floating input). Inputs are perturbed in copies; the originals are untouched.
    """
    return _worst(_input_pairs(f, inputs, grads, dy, rng, wrt, h, directions))[0]


def _input_pairs(f, inputs, grads, dy, rng, wrt, h, directions):
    """(numeric, analytic, label) along random directions in each input of `wrt`."""
    inputs = list(inputs)
    if wrt is None:
        wrt = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray)
               and np.issubdtype(x.dtype, np.floating)]
    pairs = []
    for i, g in zip(wrt, grads):
        if inputs[i].dtype != np.float64:
            raise TypeError(f"directional_error: input {i} is {inputs[i].dtype}; central "
                            f"differences are only meaningful in float64")
        for _ in range(directions):
            u = _unit(rng, inputs[i].shape)
            values = []
            for sign in (1.0, -1.0):
                moved = list(inputs)
                moved[i] = inputs[i] + sign * h * u
                values.append(float(np.sum(f(*moved) * dy)))
            numeric = (values[0] - values[1]) / (2 * h)
            pairs.append((numeric, float(np.sum(g * u)), f"input {i}"))
    return pairs


def module_directional_error(module, inputs, dy, rng, wrt=(), h=1e-5, directions=3):
    """`directional_error` for a Module: its analytic gradients (a forward and backward in
    training mode) against central differences of its eval-mode forward, along random directions
    in every parameter tensor and in the inputs listed in `wrt`. Returns (worst error, name of the
    tensor where it was). The parameters are restored afterwards."""
    module.train()
    module.zero_grad()
    module(*inputs)
    grads_in = module.backward(dy)
    grads_in = grads_in if isinstance(grads_in, tuple) else (grads_in,)
    params = module.grads()
    module.eval()
    try:
        pairs = _input_pairs(lambda *xs: module(*xs), inputs, grads_in[:len(wrt)], dy, rng,
                             list(wrt), h, directions) if wrt else []
        state = module.state_dict()
        for name, p in state.items():
            original = p.copy()
            for _ in range(directions):
                u = _unit(rng, p.shape)
                values = []
                for sign in (1.0, -1.0):
                    p[...] = original + sign * h * u
                    values.append(float(np.sum(module(*inputs) * dy)))
                p[...] = original
                pairs.append(((values[0] - values[1]) / (2 * h), float(np.sum(params[name] * u)),
                              name))
    finally:
        module.train()
    return _worst(pairs)
