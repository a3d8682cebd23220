"""A minimal `Module`: named parameters, child modules and state dicts, for reading.

This is not a framework. It keeps what a reader needs to move weights between implementations:

* every `np.ndarray` attribute of a module is a **parameter** (names starting with `_` excepted);
* every `Module` attribute is a **child**, and its parameters appear as `child.name`;
* `ModuleList` and `Sequential` hold children under the names "0", "1", ... as `torch.nn` does;
* `state_dict()` returns `{dotted.name: array}` and `load_state_dict()` loads one back, reporting
  every missing, unexpected and mis-shaped key in one error.

**Backward passes.** In training mode (`train()`, the default, as in torch) a forward call records
what its backward needs on the module's tape; `backward(grad_out)` takes the most recent record
back (so a module called twice is differentiated in reverse order, each call once), adds every
parameter's gradient into `grads()` (a dict with the keys and shapes of `state_dict()`; gradients
accumulate over calls, as torch's `.grad`) and returns the gradient of the forward's floating
inputs. `zero_grad()` clears the gradients and any record a backward never took. In eval mode
nothing is recorded, and backward is an error.

**One rule for every module.** A module computes only by calling its children (layers, blocks)
and the pure functions of `functional` (each with its `*_backward`); its `backward` calls its
children's `backward` in the reverse order of its forward calls. Only a module's *own*
parameters (the arrays it holds itself, e.g. a Linear's weight or U-ViT's `pos_embed`) get their
gradients from its own backward, through `accumulate_grads(name=gradient)`; no module reads a
child's weights or adds gradients into a child. A tensor used twice (a residual, a long skip,
self-attention's q, k and v) gets the sum of its gradients, said on one commented line.

Every module is built in one dtype (`dtype=np.float32` by default; float64 for exact parity runs)
and computes in it. Random initialisation draws from an explicit `np.random.Generator` (`rng=`), so
one seed reproduces a whole model.
"""

import numpy as np

from .checks import check_state_dict

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def as_rng(rng):
    """An `np.random.Generator` from a Generator, an int seed or None (seed 0)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


class Float32Draws(np.random.Generator):
    """A Generator that draws initial weights in float32 (the layers ask for float64 draws and
    round them): ~7x faster, so aMUSEd-256's 600M parameters initialise in about a second. It
    shares the bit generator, hence the seed, of the Generator it is built from. The large models
    (UVit2DModel, CLIP's text encoder) build with it (`float32_draws`)."""

    def uniform(self, low=0.0, high=1.0, size=None):
        r = self.random(size, dtype=np.float32)
        r *= high - low                                   # Python floats keep float32
        r += low
        return r

    def standard_normal(self, size=None, dtype=np.float32, out=None):
        return super().standard_normal(size, dtype=np.float32)


class NoDraws(np.random.Generator):
    """A Generator whose weight draws are zeros: for models whose weights are loaded right after
    they are built (`from_pretrained`)."""

    def __init__(self):
        super().__init__(np.random.PCG64(0))

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.zeros(size, np.float32)

    def standard_normal(self, size=None, dtype=np.float32, out=None):
        return np.zeros(size, np.float32)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.zeros(size, np.float32)     # U-ViT's trunc_normal init draws with `normal`


class Float64Draws(np.random.Generator):
    """A Generator whose uniform draws are scaled in place (no temporaries): with `Float32Draws`
    for float32, it builds aMUSEd's 146M-parameter VQ-GAN in float64 in about half the time of
    float32 draws cast up. It shares the bit generator (the seed) it is built from."""

    def uniform(self, low=0.0, high=1.0, size=None):
        r = self.random(size)
        r *= high - low
        r += low
        return r


def float32_draws(rng):
    """`rng` (a Generator, a seed or None) as a `Float32Draws` on the same bit generator; a
    `Float32Draws` or `NoDraws` passes through."""
    if isinstance(rng, (Float32Draws, NoDraws)):
        return rng
    return Float32Draws(as_rng(rng).bit_generator)


def dtype_draws(rng, dtype):
    """`rng` as a Generator that draws in the model's dtype: `Float32Draws` unless `dtype` is
    float64 (`Float64Draws`); a fast-draws Generator or `NoDraws` passes through."""
    if isinstance(rng, (Float32Draws, Float64Draws, NoDraws)):
        return rng
    bits = as_rng(rng).bit_generator
    return Float64Draws(bits) if np.dtype(dtype) == np.float64 else Float32Draws(bits)


def as_dtype(dtype):
    """Validate a floating dtype and return it as `np.dtype`."""
    dt = np.dtype(dtype)
    if dt not in [np.dtype(d) for d in FLOAT_DTYPES]:
        raise TypeError(f"dtype: expected float16, float32 or float64, got {dt}")
    return dt


def uniform_init(rng, shape, fan_in, dtype):
    """torch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype, copy=False)


class Module:
    """Base class: parameters are array attributes, children are Module attributes."""

    def __init__(self, dtype=np.float32):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "dtype", as_dtype(dtype))
        object.__setattr__(self, "_tape", [])             # caches of forwards awaiting backward
        object.__setattr__(self, "_grads", {})            # parameter name -> accumulated gradient

    # --- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__ before setting {name}")
        if not name.startswith("_"):
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            if isinstance(value, np.ndarray):
                self._parameters[name] = value
            elif isinstance(value, Module):
                self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    # --- backward -----------------------------------------------------------------------------
    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def _record(self, out, cache):
        """Keep `cache` for the backward of this call (training mode only); returns `out`."""
        if self.training:
            self._tape.append((tuple(out.shape), cache))
        return out

    def _recall(self, grad_out):
        """The cache of the most recent unanswered forward, after checking grad_out against it."""
        name = type(self).__name__
        if not self._tape:
            raise RuntimeError(f"{name}.backward: no recorded forward to differentiate: run the "
                               f"forward in training mode (model.train(); nothing is recorded in "
                               f"eval mode) and call backward once per forward call")
        shape, cache = self._tape[-1]
        if not hasattr(grad_out, "shape") or tuple(grad_out.shape) != shape:
            got = tuple(grad_out.shape) if hasattr(grad_out, "shape") else type(grad_out).__name__
            raise ValueError(f"{name}.backward: expected grad_out shaped like the forward's "
                             f"output {shape}, got {got}")
        self._tape.pop()
        return cache

    def accumulate_grads(self, **grads):
        """Add gradients into this module's own parameters, by name:
        `self.accumulate_grads(weight=dw, bias=db)`. A None gradient (an absent parameter, such as
        a bias=False layer's bias) is skipped. Called by a module's own `backward` only."""
        for name, grad in grads.items():
            if grad is None:
                continue
            if name not in self._parameters:
                raise KeyError(f"{type(self).__name__}.accumulate_grads: no parameter {name!r} "
                               f"(own parameters: {sorted(self._parameters)})")
            grad = np.asarray(grad, dtype=self.dtype).reshape(self._parameters[name].shape)
            old = self._grads.get(name)
            self._grads[name] = grad.copy() if old is None else old + grad

    def grads(self):
        """`{dotted.name: gradient}` with exactly the keys and shapes of `state_dict()`; a
        parameter no backward has reached yet has a zero gradient."""
        out = {}
        for mod_name, module in self.named_modules():
            for name, value in module._parameters.items():
                key = f"{mod_name}.{name}" if mod_name else name
                g = module._grads.get(name)
                out[key] = np.zeros_like(value) if g is None else g
        return out

    def zero_grad(self):
        """Clear every gradient, and every forward record a backward never took. Returns self."""
        for _, module in self.named_modules():
            module._grads.clear()
            module._tape.clear()
        return self

    # --- traversal ----------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """Yield (dotted name, module) for this module and every descendant."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self):
        """Yield (dotted name, array) in registration order, as torch's `state_dict` orders them."""
        for mod_name, module in self.named_modules():
            for name, value in module._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        """Total number of scalars in all parameters."""
        return int(sum(p.size for p in self.parameters()))

    def state_dict(self):
        """`{dotted.name: np.ndarray}` (the arrays themselves, not copies)."""
        return dict(self.named_parameters())

    # --- loading ------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from `state_dict` into this module, cast to each parameter's dtype.

        Values may be NumPy arrays or anything `np.asarray` understands (CPU torch tensors too).
        Mis-shaped tensors are always an error; with `strict=True` so are missing and unexpected
        keys. All problems are collected and reported in one `ValueError` before any
        parameter is changed. Returns `(missing, unexpected)` key lists.
        """
        own = self.state_dict()
        given = {k: np.asarray(v) for k, v in state_dict.items()}
        missing, unexpected = check_state_dict(type(self).__name__, own, given, strict)
        modules = dict(self.named_modules())
        for key in own:
            if key not in given:
                continue
            mod_name, _, name = key.rpartition(".")
            module = modules[mod_name]
            target = module._parameters[name]
            setattr(module, name, np.array(given[key], dtype=target.dtype, copy=True))
        return missing, unexpected

    # --- modes and dtype ----------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode here and in every descendant (only Dropout cares). Returns self."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Convert every parameter to `dtype` in place and compute in it from now on. Returns self.
        """
        dt = as_dtype(dtype)
        for _, module in self.named_modules():
            object.__setattr__(module, "dtype", dt)
            for name, value in list(module._parameters.items()):
                setattr(module, name, value.astype(dt))
        return self.zero_grad()

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(child_lines))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules whose parameters are named "0.weight", "1.weight", ..."""

    def __init__(self, modules=(), dtype=np.float32):
        super().__init__(dtype=dtype)
        for module in modules:
            self.append(module)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: expected a Module, got {type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied in order: `Sequential(a, b, c)(x) == c(b(a(x)))`."""

    def __init__(self, *modules, dtype=np.float32):
        super().__init__(modules, dtype=dtype)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x

    def backward(self, grad_out):
        """The children's backwards in the reverse order of the forward."""
        for module in reversed(list(self)):
            grad_out = module.backward(grad_out)
        return grad_out
