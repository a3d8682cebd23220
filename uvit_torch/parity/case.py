"""What a parity case is, shared by the report (`uvit_torch.parity`), its case modules (`core`,
`uvit`, `uvit2d`, `schedulers`, `clip`, `vae`, ...) and the gradient report (`grads`).

A `Case` builds, for a dtype and a batch size, the two sides to compare and their inputs. A
`Function` wraps a NumPy forward and its backward so that a gradient case can treat a pure function
like a module; `function_case` makes the case of one such pair against a torch function.
"""

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    name: str
    build: Callable          # (dtype, batch) -> (ours, theirs, inputs)
    batches: tuple = (1, 3)
    dtypes: tuple = ("float64", "float32")
    slow: bool = False       # left out of the default report unless --all
    grad_inputs: tuple = None  # --grads: the inputs that take a gradient (None: every float one)
    module: bool = True      # the NumPy side is a Module, so --grads checks its backward too;
                             # False for functions (`run_case`, `run_grad_case` check it; only
                             # the NumPy-vs-torch cases --grads draws from need it right)


class Function:
    """A NumPy function with its backward, called like a module: `forward(*xs)` returns
    `(out, cache)`, `backward(dy, cache)` the gradients of the inputs listed in `wrt`."""

    def __init__(self, forward, backward):
        self.forward_fn, self.backward_fn = forward, backward
        self._cache = None

    def __call__(self, *xs):
        out, self._cache = self.forward_fn(*xs)
        return out

    def backward(self, dy):
        grads = self.backward_fn(dy, self._cache)
        return grads if isinstance(grads, tuple) else (grads,)


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"grads/{name}/{batch}".encode()))


def function_case(name, forward, backward, torch_fn, shapes, scale=1.0, wrt=None, extra=()):
    """Random inputs of shapes (batch, *s) (a shape starting with None has no batch axis: a
    weight), times `scale`; `extra` are fixed non-differentiable inputs appended after them."""
    def build(dtype, batch):
        rng = _rng(name, batch)
        xs = []
        for s in shapes:
            full = tuple(s[1:]) if s and s[0] is None else (batch, *s)
            xs.append((scale * rng.standard_normal(full)).astype(dtype))
        return Function(forward, backward), torch_fn, (*xs, *extra)
    return Case(name, build, grad_inputs=wrt, module=False)
