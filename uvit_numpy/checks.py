"""Input checks shared by both packages.

Every public forward pass checks its inputs *before* any arithmetic and raises a `ValueError` (wrong
shape, rank or range) or a `TypeError` (wrong dtype) whose message names what was expected and what
arrived. The helpers below work on NumPy arrays and on torch tensors alike (they only read `.shape`
and `.dtype`), so that `uvit_torch` can share them without `uvit_numpy` ever importing torch.
`check_numpy` is the NumPy models' own: it names a torch tensor given to them (told by its type's
module, again without importing torch), as `uvit_torch.functional.check_tensor` names an array.
"""

import numpy as np


def dtype_name(x):
    """'float32', 'int64', ... for a NumPy array or a torch tensor."""
    return str(x.dtype).replace("torch.", "")


def is_floating(x):
    """True for a floating-point array or tensor."""
    torch_flag = getattr(x.dtype, "is_floating_point", None)  # torch.dtype has this attribute
    if torch_flag is not None:
        return bool(torch_flag)
    return np.issubdtype(x.dtype, np.floating)


def is_integer(x):
    """True for an integer (not bool) array or tensor."""
    name = dtype_name(x)
    return name.startswith(("int", "uint"))


def is_torch(x):
    """True for a torch tensor (or any object of torch's), told by its type's module, so that
    `uvit_numpy` can recognise one without importing torch."""
    return type(x).__module__.split(".")[0] == "torch"


def check_numpy(name, x, optional=False):
    """TypeError if `x` is a torch tensor: the NumPy models compute on NumPy arrays (the twin of
    `uvit_torch.functional.check_tensor`). Anything else is left to the checks that follow."""
    if x is None and optional:
        return
    if is_torch(x):
        kind = type(x).__name__
        kind = "torch.Tensor" if kind == "Tensor" else f"{type(x).__module__}.{kind}"
        raise TypeError(f"{name}: expected a NumPy array, got a {kind} (convert it with "
                        f".numpy(), or use uvit_torch's model for tensors)")


def check_numpy_model(name, model):
    """TypeError if `model` is a torch module: NumPy's sampling loops run NumPy models."""
    if is_torch(model) or type(model).__module__.startswith("uvit_torch"):
        raise TypeError(f"{name}: model: expected a uvit_numpy model, got a torch module "
                        f"{type(model).__module__}.{type(model).__name__} (use uvit_torch's "
                        f"{name} for torch models)")


def check_floating(name, x):
    """Raise TypeError unless `x` holds floating-point numbers."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected a floating-point array, got {type(x).__name__}")
    if not is_floating(x):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {dtype_name(x)}")


def check_integer(name, x):
    """Raise TypeError unless `x` holds integers (token ids, labels)."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected an integer array, got {type(x).__name__}")
    if not is_integer(x):
        raise TypeError(f"{name}: expected an integer array, got dtype {dtype_name(x)}")


def check_rank(name, x, ranks, layout=None):
    """Raise ValueError unless `x.ndim` is one of `ranks` (an int or a tuple of ints)."""
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if len(x.shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        hint = f" {layout}" if layout else ""
        raise ValueError(
            f"{name}: expected a {want}-d array{hint}, got shape {tuple(x.shape)}")


def check_dim(name, x, axis, expected, what="size"):
    """Raise ValueError unless `x.shape[axis] == expected`."""
    got = x.shape[axis]
    if got != expected:
        raise ValueError(
            f"{name}: expected {what} {expected} on axis {axis}, got {got} "
            f"(shape {tuple(x.shape)})")


def check_range(name, ids, low, high):
    """Raise ValueError unless every value lies in [low, high). `ids` must be non-empty."""
    if ids.shape and 0 in tuple(ids.shape):
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < low or hi >= high:
        raise ValueError(f"{name}: expected values in [{low}, {high}), got values in [{lo}, {hi}]")


def check_batch(name, x, batch):
    """Raise ValueError unless the leading axis of `x` is `batch`."""
    if x.shape[0] != batch:
        raise ValueError(f"{name}: expected batch size {batch}, got {x.shape[0]} "
                         f"(shape {tuple(x.shape)})")


def check_state_dict(owner, expected, given, strict=True):
    """Compare a state dict with the expected one; raise one ValueError listing every problem.

    expected, given: `{key: array or tensor}` (only `.shape` is read). Missing and unexpected keys
    are errors only if `strict`; a mis-shaped tensor always is. Returns (missing, unexpected).
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(given[k].shape)}"
                 for k in expected
                 if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped tensors ({len(misshaped)}): {misshaped}")
    if problems:
        raise ValueError(f"{owner}.load_state_dict: " + "; ".join(problems))
    return missing, unexpected
