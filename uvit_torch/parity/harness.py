"""The parity harness: build a torch module, copy its weights into the NumPy twin, compare outputs.

Tests and `python -m uvit_torch.parity` share these helpers. Errors are *relative to the size of
the output*: max|ours - theirs| / max|theirs|. The project's tolerances are `TOLERANCE[dtype]`.
"""

from dataclasses import dataclass

import numpy as np
import torch

TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
TORCH_DTYPE = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}


def to_numpy(x):
    """A torch tensor (or nested tuple of them) as NumPy arrays; arrays pass through."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(v) for v in x)
    return x


def to_torch(x):
    """A NumPy array as a torch tensor (sharing memory); other values pass through."""
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def numpy_state_dict(module_or_state_dict):
    """A torch module's (or state dict's) tensors as `{key: np.ndarray}`, for the NumPy twin."""
    sd = module_or_state_dict
    if isinstance(sd, torch.nn.Module):
        sd = sd.state_dict()
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


@torch.no_grad()
def randomize_(module, seed=0, scale=0.2):
    """Perturb every parameter whose initial value is constant (norm weights 1, biases and GRN's
    gamma/beta 0) by `scale * N(0, 1)`, so that no term of a forward pass is trivially 1 or 0.
    Random-initialised weights are left as they are. Returns the module."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.numel() == 1 or bool(torch.all(p == p.flatten()[0])):
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def make_pair(torch_cls, numpy_cls, *args, dtype=np.float64, seed=0, **kwargs):
    """Build `torch_cls(*args, **kwargs)` with random weights (eval mode) and the NumPy twin
    `numpy_cls(*args, **kwargs)` holding the same weights. Returns (numpy_module, torch_module)."""
    dtype = np.dtype(dtype)
    torch.manual_seed(seed)
    theirs = torch_cls(*args, dtype=TORCH_DTYPE[dtype], **kwargs).eval()
    randomize_(theirs, seed)
    ours = numpy_cls(*args, dtype=dtype, **kwargs).eval()
    ours.load_state_dict(numpy_state_dict(theirs))
    return ours, theirs


@dataclass
class Comparison:
    """The result of `compare`: errors, where the worst one is, and both values there."""
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    worst_index: tuple
    ours_value: float
    theirs_value: float

    def passed(self, tol):
        return bool(np.isfinite(self.max_rel) and self.max_rel <= tol)

    def report(self):
        return (f"{self.name}: shape {self.shape}, max abs error {self.max_abs:.3e}, "
                f"max rel error {self.max_rel:.3e} at {self.worst_index} "
                f"(ours {self.ours_value!r}, theirs {self.theirs_value!r})")


def compare(name, ours, theirs):
    """Compare two arrays or tensors of the same shape. Relative error = max abs error divided by
    the largest magnitude in `theirs` (the size of the output)."""
    a = np.asarray(to_numpy(ours), dtype=np.float64)
    b = np.asarray(to_numpy(theirs), dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shapes differ, ours {a.shape} vs theirs {b.shape}")
    if a.size == 0:
        return Comparison(name, a.shape, 0.0, 0.0, (), float("nan"), float("nan"))
    diff = np.abs(a - b)
    diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN anywhere is a failure, not a pass
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    max_abs = float(diff[worst])
    scale = float(np.max(np.abs(b))) if np.all(np.isfinite(b)) else np.inf
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    return Comparison(name, a.shape, max_abs, max_rel, tuple(int(i) for i in worst),
                      float(a[worst]), float(b[worst]))


def assert_close(name, ours, theirs, tol):
    """`compare`, then raise AssertionError with the full report if the relative error > tol."""
    result = compare(name, ours, theirs)
    if not result.passed(tol):
        raise AssertionError(f"{result.report()} exceeds tolerance {tol:.0e}")
    return result
