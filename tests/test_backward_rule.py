"""The one backward rule of the NumPy reference, checked so that it cannot silently erode.

`module.Module` states it: a module computes only by calling its children and pure functions, its
`backward` calls its children's `backward` in reverse, and it adds gradients only into its own
parameters (`accumulate_grads`). Two checks hold every block of both models to it:

* **dynamically**, on every block class and whole model (every option that changes the tree): a
  forward in training mode, then one backward with a random upstream gradient, while every
  module's `forward`, `backward` and `accumulate_grads` are watched. Each module's backward must
  run exactly once per forward call and be called by its parent's backward (a `ModuleList` is only
  a container, so the caller of its items is its owner); every tape must end empty; every module
  that holds parameters must have been called (a block that computed with a child's weights
  instead would leave that child uncalled); and every gradient must be added by the backward of
  the module that holds the parameter;
* **statically**, on the source of the package: no module method reads a child's parameter
  (`self.child.weight`), and nothing outside `module.py` touches a module's private gradient or
  tape state (the optimizers' in-place gradient clipping excepted).
"""

import re
from pathlib import Path

import numpy as np
import pytest

import uvit_numpy as N
from uvit_numpy import uvit, uvit2d
from uvit_numpy import clip as NC
from uvit_numpy import vae as NV
from uvit_numpy import vq_model as NQ
from uvit_numpy.module import Module, ModuleList, Sequential
from uvit_torch.parity import clip as PC

PACKAGE = Path(N.__file__).parent
RNG = np.random.default_rng(0)


def _f(*shape):
    return RNG.standard_normal(shape)


def _uvit2d_inputs(cfg, B=2, side=4):
    ids = RNG.integers(0, cfg["vocab_size"], (B, side, side))
    M = cfg["micro_cond_embed_dim"] // cfg["micro_cond_encode_dim"]
    return (ids, _f(B, 3, cfg["encoder_hidden_size"]), _f(B, cfg["cond_embed_dim"]),
            RNG.uniform(0, 512, (B, M)))


TINY2D = uvit2d.resolve_config("tiny")
SMALL_UVIT = dict(img_size=8, patch_size=2, in_chans=2, embed_dim=16, depth=3, num_heads=2)

# (name, build the module in float64, the forward's inputs)
CASES = [
    ("Linear", lambda: N.Linear(5, 3, dtype=np.float64), lambda: (_f(2, 4, 5),)),
    ("GEGLU", lambda: N.GEGLU(5, 3, dtype=np.float64), lambda: (_f(2, 4, 5),)),
    ("Attention self", lambda: N.Attention(8, heads=2, dim_head=3, dtype=np.float64),
     lambda: (_f(2, 5, 8),)),
    ("Attention cross", lambda: N.Attention(8, 6, heads=2, dim_head=3, dtype=np.float64),
     lambda: (_f(2, 5, 8), _f(2, 4, 6))),
    ("QKVAttention", lambda: N.QKVAttention(8, 2, dtype=np.float64), lambda: (_f(2, 5, 8),)),
    ("TimestepEmbedding", lambda: N.TimestepEmbedding(6, 8, dtype=np.float64),
     lambda: (_f(3, 6),)),
    ("ChannelsLastConv2d 3x3 stride 2",
     lambda: N.layers.ChannelsLastConv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64),
     lambda: (_f(2, 5, 6, 3),)),
    ("U-ViT Block with skip", lambda: uvit.Block(16, 2, skip=True, dtype=np.float64),
     lambda: (_f(2, 5, 16), _f(2, 5, 16))),
    ("UViT class-conditional", lambda: N.UViT(**SMALL_UVIT, num_classes=5, dtype=np.float64),
     lambda: (_f(2, 2, 8, 8), np.array([3, 700]), np.array([1, 4]))),
    ("UViT mlp_time_embed, no conv, no skip",
     lambda: N.UViT(**SMALL_UVIT, mlp_time_embed=True, conv=False, skip=False,
                    dtype=np.float64),
     lambda: (_f(2, 2, 8, 8), np.array([3, 700]))),
    ("UViTText", lambda: N.UViTText(**SMALL_UVIT, clip_dim=6, num_clip_token=3,
                                    dtype=np.float64),
     lambda: (_f(2, 2, 8, 8), np.array([3, 700]), _f(2, 3, 6))),
    ("AdaLayerNormContinuous", lambda: uvit2d.AdaLayerNormContinuous(
        8, 6, norm_type="rms_norm", dtype=np.float64), lambda: (_f(2, 5, 8), _f(2, 6))),
    ("ConvNextBlock", lambda: uvit2d.ConvNextBlock(8, 1e-6, True, True, 0.0, 6, dtype=np.float64),
     lambda: (_f(2, 3, 4, 8), _f(2, 6))),
    ("SkipFFTransformerBlock with kv_mapper", lambda: uvit2d.SkipFFTransformerBlock(
        8, 2, 4, 6, True, cross_attention_dim=8, dtype=np.float64),
     lambda: (_f(2, 5, 8), _f(2, 3, 6))),
    ("BasicTransformerBlock ada", lambda: uvit2d.BasicTransformerBlock(
        8, 2, 4, cross_attention_dim=8, norm_type="ada_norm_continuous",
        ada_norm_continous_conditioning_embedding_dim=6, ada_norm_bias=True, ff_inner_dim=12,
        dtype=np.float64), lambda: (_f(2, 5, 8), _f(2, 3, 8), _f(2, 6))),
    ("Downsample2D 2x2", lambda: uvit2d.Downsample2D(
        4, use_conv=True, padding=0, kernel_size=2, norm_type="rms_norm", eps=1e-6,
        elementwise_affine=True, name="Conv2d_0", dtype=np.float64), lambda: (_f(2, 5, 4, 4),)),
    ("Downsample2D pool", lambda: uvit2d.Downsample2D(4, dtype=np.float64),
     lambda: (_f(2, 5, 4, 4),)),
    ("Upsample2D transpose", lambda: uvit2d.Upsample2D(
        4, use_conv_transpose=True, kernel_size=2, padding=0, interpolate=False,
        dtype=np.float64), lambda: (_f(2, 3, 2, 4),)),
    ("Upsample2D interpolate + conv", lambda: uvit2d.Upsample2D(4, use_conv=True,
                                                                  dtype=np.float64),
     lambda: (_f(2, 3, 2, 4),)),
    ("UVit2DModel tiny (down/up, kv_mapper)",
     lambda: uvit2d.UVit2DModel.from_config("tiny", dtype=np.float64, rng=1),
     lambda: _uvit2d_inputs(TINY2D)),
    ("UVit2DModel tiny, bias, no down/up",
     lambda: uvit2d.UVit2DModel.from_config("tiny", use_bias=True, downsample=False,
                                            upsample=False, block_out_channels=64,
                                            dtype=np.float64, rng=2),
     lambda: _uvit2d_inputs(TINY2D)),
    # the systems around the transformers: the VQ-GAN's (and the autoencoder's) blocks, CLIP
    ("vae ResnetBlock2D with a 1x1 shortcut", lambda: NV.ResnetBlock2D(
        in_channels=4, out_channels=6, temb_channels=None, groups=2, output_scale_factor=1.5,
        dtype=np.float64, rng=0), lambda: (_f(2, 4, 3, 5),)),
    ("vae Attention", lambda: NV.Attention(
        4, heads=2, dim_head=2, norm_num_groups=2, eps=1e-6, bias=True,
        residual_connection=True, rescale_output_factor=2.0, dtype=np.float64, rng=0),
     lambda: (_f(2, 4, 3, 2),)),
    ("vae Encoder", lambda: NV.Encoder(3, 2, ("DownEncoderBlock2D",) * 2, (4, 8), 1, 2,
                                       dtype=np.float64, rng=0), lambda: (_f(1, 3, 5, 4),)),
    ("vae Decoder", lambda: NV.Decoder(2, 3, ("UpDecoderBlock2D",) * 2, (4, 8), 1, 2,
                                       dtype=np.float64, rng=0), lambda: (_f(1, 2, 2, 3),)),
    ("VQModel tiny", lambda: NQ.VQModel(**NQ.resolve_config("tiny"), dtype=np.float64),
     lambda: (RNG.uniform(-1, 1, (2, 3, 8, 6)),)),
    ("CLIPTextModelWithProjection tiny, every output",
     lambda: PC.AllOutputs(NC.CLIPTextModelWithProjection(PC.tiny_config(), dtype=np.float64,
                                                         rng=2)),
     lambda: (PC.text_ids(PC.tiny_config(), RNG, 2, 8),)),
]


def _caller_of(path, modules):
    """The module whose backward must call the backward of the module at dotted `path`: its
    parent, or for an item of a plain `ModuleList` (a container that is never called) the
    list's owner."""
    parent = path.rpartition(".")[0]
    while parent and type(modules[parent]) is ModuleList:
        parent = parent.rpartition(".")[0]
    return modules[parent]


class Watch:
    """Wraps every module's backward and accumulate_grads, recording who called whom."""

    def __init__(self, model):
        self.modules = dict(model.named_modules())
        self.names = {id(m): name for name, m in self.modules.items()}
        self.stack, self.calls, self.forwards, self.problems = [], {}, {}, []
        for name, module in self.modules.items():
            self._wrap(name, module)

    def _wrap(self, name, module):
        forward, backward, accumulate = module.forward, module.backward, module.accumulate_grads

        def watched_forward(*args, **kwargs):
            self.forwards[name] = self.forwards.get(name, 0) + 1
            return forward(*args, **kwargs)

        def watched_backward(grad_out, *more, **named):     # more: CLIP's, VQModel's extras
            if name:                                       # the root is called by the test
                expected = _caller_of(name, self.modules)
                caller = self.stack[-1] if self.stack else None
                if caller is not expected:
                    self.problems.append(f"{name or 'model'}.backward called from "
                                         f"{self.names.get(id(caller), caller)!r}, expected "
                                         f"{self.names[id(expected)]!r}")
            self.calls[name] = self.calls.get(name, 0) + 1
            self.stack.append(module)
            try:
                return backward(grad_out, *more, **named)
            finally:
                self.stack.pop()

        def watched_accumulate(**grads):
            if not self.stack or self.stack[-1] is not module:
                top = self.names.get(id(self.stack[-1])) if self.stack else None
                self.problems.append(f"gradients {sorted(grads)} of {name!r} added while "
                                     f"{top!r}.backward ran")
            return accumulate(**grads)

        object.__setattr__(module, "forward", watched_forward)
        object.__setattr__(module, "backward", watched_backward)
        object.__setattr__(module, "accumulate_grads", watched_accumulate)


def _first_array(out):
    """The output a backward starts from: the first of a tuple, a VQModel's decoded sample."""
    out = getattr(out, "sample", out)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_backward_goes_through_the_children(case):
    _, build, inputs = case
    model = build().train()
    watch = Watch(model)
    out = _first_array(model(*inputs()))
    assert any(m._tape for m in watch.modules.values()), "nothing recorded in training mode"
    model.backward(RNG.standard_normal(out.shape))
    assert not watch.problems, "\n".join(watch.problems)
    left = {name: len(m._tape) for name, m in watch.modules.items() if m._tape}
    assert not left, f"records no backward took back: {left}"
    for name in watch.modules:                            # one backward per forward call
        forwards, backwards = watch.forwards.get(name, 0), watch.calls.get(name, 0)
        assert forwards == backwards, \
            f"{name or 'model'}: {forwards} forward calls, {backwards} backward calls"
    unused = [name for name, m in watch.modules.items()
              if m._parameters and not watch.forwards.get(name)]
    assert not unused, f"modules holding parameters whose forward never ran: {unused}"


CHILD_PARAMETER = re.compile(r"self\.\w+(?:\[[^\]]+\])*\.(?:weight|bias|gamma|beta|pos_embed)\b")
PRIVATE_STATE = re.compile(r"\._(?:grads|tape|parameters|accumulate)\b")


def _package_sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "module.py")


@pytest.mark.parametrize("path", _package_sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reads_a_childs_parameters_or_private_state(path):
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#")[0]
        if CHILD_PARAMETER.search(code):
            problems.append(f"{path.name}:{number}: reads a child's parameter: {line.strip()}")
        if PRIVATE_STATE.search(code) and not (path.name == "optim.py" and "_grads" in code):
            problems.append(f"{path.name}:{number}: private Module state: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_sequential_is_a_module_that_calls_its_items():
    """The one container whose items are called by the container itself (the rule's base case)."""
    seq = Sequential(N.Linear(3, 4, dtype=np.float64), N.SiLU(dtype=np.float64),
                     N.Linear(4, 2, dtype=np.float64), dtype=np.float64)
    watch = Watch(seq)
    out = seq(_f(5, 3))
    seq.backward(RNG.standard_normal(out.shape))
    assert not watch.problems and watch.calls == {"": 1, "0": 1, "1": 1, "2": 1}


def test_accumulate_grads_names_only_own_parameters():
    layer = N.Linear(3, 2, dtype=np.float64)
    with pytest.raises(KeyError, match=r"no parameter 'gamma'.*\['bias', 'weight'\]"):
        layer.accumulate_grads(gamma=np.zeros(2))


def test_the_checks_catch_a_block_that_breaks_the_rule():
    """A block that adds a gradient into its child's weight, as the old code did, is reported."""
    class Bad(Module):
        def __init__(self):
            super().__init__(np.float64)
            self.lin = N.Linear(3, 3, dtype=np.float64)

        def forward(self, x):
            return self._record(x @ self.lin.weight.T, x)

        def backward(self, grad_out):
            x = self._recall(grad_out)
            self.lin.accumulate_grads(weight=grad_out.reshape(-1, 3).T @ x.reshape(-1, 3))
            return grad_out @ self.lin.weight

    bad = Bad()
    watch = Watch(bad)
    out = bad(_f(2, 3))
    bad.backward(np.ones(out.shape))
    assert any("added while ''.backward ran" in p for p in watch.problems), watch.problems
    source = "        return self._record(x @ self.lin.weight.T, x)"
    assert CHILD_PARAMETER.search(source)
