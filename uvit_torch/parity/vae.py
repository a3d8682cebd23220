"""Parity cases for the autoencoders' blocks, aMUSEd's VQ-GAN (`VQModel`) and the paper's KL
autoencoder (`FrozenAutoencoderKL`), in the three families of the reports:

* `cases()`: the NumPy reference vs the torch port (weights copied torch -> NumPy);
* `diffusers_cases(dtypes)`: the torch port vs diffusers' own classes with diffusers' weights
  (`python -m uvit_torch.parity --against-diffusers`; float32 there, both dtypes in the tests:
  unlike aMUSEd's transformer these blocks have no float32 islands in diffusers);
* `function_cases()` and the module cases of `cases()` join `--grads` (NumPy backward vs torch
  autograd). The quantiser's functions are stop-gradient constructions (straight-through,
  sg[.] in the loss): their "gradients" are definitions, not derivatives, so they are listed in
  `STOP_GRADIENT` and left out of the central-difference checks.

Weights: torch's default init with every constant-initialised parameter (GroupNorm weights 1 and
biases 0) perturbed by 0.2 N(0, 1); the codebook, initialised in U(-1/K, 1/K) (far smaller than any
latent, so every vector would pick nearly the same code), is redrawn at the latents' scale so that
the codes picked differ from position to position and a wrong distance shows up in the indices.
"""

import zlib

import numpy as np
import torch
import torch.nn.functional as TF

import uvit_numpy.autoencoder as NA
import uvit_numpy.functional as NF
import uvit_numpy.layers as NL
import uvit_numpy.vae as NV
import uvit_numpy.vq_model as NQ
from uvit_numpy.module import Module as NumpyModule

from .. import autoencoder as TA
from .. import layers as TL
from .. import vae as TV
from .. import vq_model as TQ
from .case import Case
from .harness import TORCH_DTYPE, make_pair, numpy_state_dict, randomize_, to_torch
from .uvit2d import Block, _torch_caller, diffusers_pair


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"vae/{name}/{batch}".encode()))


def _normal(*shape, scale=1.0):
    return lambda rng, b, dt: ((scale * rng.standard_normal((b, *shape))).astype(dt),)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
def blocks():
    """The blocks of both autoencoders at tiny sizes (channels divisible by their groups)."""
    def call(m, x):
        return m(x)

    def resnet_call(m, x):
        return m(x, None)                                 # diffusers' temb is positional

    mid_attention = dict(heads=1, dim_head=8, norm_num_groups=4, eps=1e-6, bias=True,
                         residual_connection=True, upcast_softmax=True,
                         _from_deprecated_attn_block=True)
    return [
        Block("GroupNorm 4 groups (B, 8, 5, 6)", TL.GroupNorm, NL.GroupNorm, (4, 8), {},
              _normal(8, 5, 6, scale=2.0)),
        Block("GroupNorm 1 group eps 1e-6 on tokens (B, 6, 7)", TL.GroupNorm, NL.GroupNorm,
              (1, 6), dict(eps=1e-6), _normal(6, 7, scale=3.0)),
        Block("ResnetBlock2D 8 -> 8", TV.ResnetBlock2D, NV.ResnetBlock2D, (),
              dict(in_channels=8, out_channels=8, temb_channels=None, groups=4),
              _normal(8, 5, 6), "resnet:ResnetBlock2D", resnet_call),
        Block("ResnetBlock2D 8 -> 12 conv_shortcut, groups_out 3, scale 2", TV.ResnetBlock2D,
              NV.ResnetBlock2D, (), dict(in_channels=8, out_channels=12, temb_channels=None,
                                         groups=4, groups_out=3, output_scale_factor=2.0),
              _normal(8, 4, 7), "resnet:ResnetBlock2D", resnet_call),
        Block("Downsample2D VAE 3x3 pad (0, 1, 0, 1) odd 7x9", TV.Downsample2D, NV.Downsample2D,
              (8,), dict(use_conv=True, padding=0, name="op"), _normal(8, 7, 9),
              "downsampling:Downsample2D", call),
        Block("Downsample2D conv 3x3 pad 1, name conv", TV.Downsample2D, NV.Downsample2D, (8,),
              dict(use_conv=True, out_channels=6), _normal(8, 6, 5), "downsampling:Downsample2D",
              call),
        Block("Downsample2D avg pool odd 5x7", TV.Downsample2D, NV.Downsample2D, (8,), {},
              _normal(8, 5, 7), "downsampling:Downsample2D", call),
        Block("Upsample2D VAE nearest x2 + conv 3x3", TV.Upsample2D, NV.Upsample2D, (8,),
              dict(use_conv=True, out_channels=6), _normal(8, 3, 5), "upsampling:Upsample2D",
              call),
        Block("Upsample2D nearest x2 only, ln_norm", TV.Upsample2D, NV.Upsample2D, (8,),
              dict(norm_type="ln_norm", eps=1e-6, elementwise_affine=True), _normal(8, 2, 3),
              "upsampling:Upsample2D", call),
        Block("Attention VAE mid block (GroupNorm, residual)", TV.Attention, NV.Attention, (8,),
              mid_attention, _normal(8, 3, 4), "attention_processor:Attention", call),
        Block("Attention 2 heads, rescale 2, no norm", TV.Attention, NV.Attention, (8,),
              dict(heads=2, dim_head=4, bias=True, residual_connection=True,
                   rescale_output_factor=2.0), _normal(8, 4, 3),
              "attention_processor:Attention", call),
        Block("UNetMidBlock2D with attention", TV.UNetMidBlock2D, NV.UNetMidBlock2D, (8, None),
              dict(resnet_groups=4, attention_head_dim=8, resnet_act_fn="silu"), _normal(8, 3, 5),
              "unets.unet_2d_blocks:UNetMidBlock2D", call),
        Block("UNetMidBlock2D no attention, 2 layers", TV.UNetMidBlock2D, NV.UNetMidBlock2D,
              (8, None), dict(resnet_groups=4, add_attention=False, num_layers=2),
              _normal(8, 4, 4), "unets.unet_2d_blocks:UNetMidBlock2D", call),
        Block("DownEncoderBlock2D 8 -> 16, pad 0", TV.DownEncoderBlock2D, NV.DownEncoderBlock2D,
              (8, 16), dict(num_layers=2, resnet_groups=4, downsample_padding=0),
              _normal(8, 6, 7), "unets.unet_2d_blocks:DownEncoderBlock2D", call),
        Block("UpDecoderBlock2D 16 -> 8", TV.UpDecoderBlock2D, NV.UpDecoderBlock2D, (16, 8),
              dict(num_layers=3, resnet_groups=4), _normal(16, 3, 2),
              "unets.unet_2d_blocks:UpDecoderBlock2D", call),
        Block("Encoder 2 levels, double_z", TV.Encoder, NV.Encoder, (),
              dict(in_channels=3, out_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                   block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
              _normal(3, 8, 6), "autoencoders.vae:Encoder", call),
        Block("Decoder 2 levels, no mid attention", TV.Decoder, NV.Decoder, (),
              dict(in_channels=4, out_channels=3, up_block_types=("UpDecoderBlock2D",) * 2,
                   block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                   mid_block_add_attention=False), _normal(4, 3, 2), "autoencoders.vae:Decoder",
              call),
    ]


def _block_case(block):
    def build(dtype, batch):
        ours, theirs = make_pair(block.torch_cls, block.numpy_cls, *block.args, dtype=dtype,
                                 **block.kwargs)
        return ours, theirs, block.inputs(_rng(block.name, batch), batch, dtype)
    return Case(block.name, build)


# --------------------------------------------------------------------------------------------------
# The quantiser and the VQ-GAN
# --------------------------------------------------------------------------------------------------
class NumpyOutputAndLoss(NumpyModule):
    """A NumPy quantiser or VQModel seen by the gradient report as one flat output: its (output,
    loss) pair as [output.ravel(), loss]. backward splits the upstream gradient back into the
    model's two (`grad_out`, `grad_loss`)."""

    def __init__(self, model, pick):
        super().__init__(model.dtype)
        self.model, self._pick = model, pick

    def forward(self, x):
        out, loss = self._pick(self.model(x))
        return self._record(np.concatenate([out.ravel(), np.reshape(loss, 1)]), out.shape)

    def backward(self, grad_out):
        shape = self._recall(grad_out)
        return self.model.backward(grad_out[:-1].reshape(shape), grad_out[-1])


class TorchOutputAndLoss(torch.nn.Module):
    """The torch twin of `NumpyOutputAndLoss`: [output.flatten(), loss]."""

    def __init__(self, model, pick):
        super().__init__()
        self.model, self._pick = model, pick

    def forward(self, x):
        out, loss = self._pick(self.model(x))
        return torch.cat([out.flatten(), loss.reshape(1)])


def _quantizer_outputs(result):
    return result[0], result[1]                           # (z_q, loss, (None, None, indices))


def _model_outputs(result):
    return result.sample, result.commit_loss


@torch.no_grad()
def spread_codebook_(quantizer, latents, seed=0):
    """Redraw a torch quantiser's codebook as N(mean, std^2) of `latents` (B, C, h, w), so that
    codes sit among the vectors they quantise. Returns the quantiser."""
    gen = torch.Generator().manual_seed(seed)
    w = quantizer.embedding.weight
    w.copy_(latents.mean() + latents.std() * torch.randn(w.shape, generator=gen, dtype=w.dtype))
    return quantizer


def vq_pair(dtype, config="tiny", seed=0, probe=None, torch_cls=None, **overrides):
    """(NumPy VQModel, torch model) with the same perturbed weights, the codebook spread over the
    latents of `probe` (NumPy images). `torch_cls` defaults to our port (diffusers' VQModel for the
    diffusers comparison)."""
    cfg = NQ.resolve_config(config, **overrides)
    tdt = TORCH_DTYPE[np.dtype(dtype)]
    torch.manual_seed(seed)
    if torch_cls is None:
        theirs = TQ.VQModel(**cfg, dtype=tdt)
    else:
        theirs = torch_cls(**{k: list(v) if isinstance(v, tuple) else v
                              for k, v in cfg.items()}).to(tdt)
    randomize_(theirs.eval(), seed)
    if probe is not None:
        with torch.no_grad():
            latents = theirs.encode(to_torch(probe.astype(dtype))).latents
        spread_codebook_(theirs.quantize, latents, seed)
    ours = NQ.VQModel(**cfg, dtype=dtype).eval()
    ours.load_state_dict(numpy_state_dict(theirs))
    return ours, theirs


def _images(rng, batch, dtype, size, channels=3):
    return (rng.uniform(-1.0, 1.0, (batch, channels, *size))).astype(dtype)


# (name, config overrides, image size, batches): the tiny VQ-GANs the tests and reports cover
VQ_VARIANTS = [
    ("tiny", {}, (8, 10), (1, 3)),                      # mid attention, lookup_from_codebook
    ("tiny no mid attn, 3 levels, 13x11", dict(
        block_out_channels=(8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, mid_block_add_attention=False,
        layers_per_block=2, num_vq_embeddings=12), (13, 11), (2,)),
    ("tiny vq_embed_dim 6, lookup off", dict(vq_embed_dim=6, lookup_from_codebook=False,
                                             num_vq_embeddings=24), (6, 8), (2,)),
]


def _vq_case(name, overrides, size, batches, what, torch_cls=None,
             dtypes=("float64", "float32")):
    """One VQ-GAN output as a case. what: "sample" (forward), "latents" (encode), "indices"
    (of quantize(encode(x))), "decode ids" (force_not_quantize with lookup_from_codebook), or
    "grads" (the forward's sample and loss as one array, for the gradient report)."""
    def build(dtype, batch):
        rng = _rng(name + what, batch)
        x = _images(rng, batch, dtype, size)
        ours, theirs = vq_pair(dtype, probe=x, torch_cls=torch_cls, **overrides)
        ours_fn, theirs_fn = _vq_callables(ours, theirs, what, torch_cls is not None)
        return ours_fn, theirs_fn, (x,)
    suffix = " vs diffusers" if torch_cls is not None else ""
    return Case(f"VQModel {what}: {name}{suffix}", build, batches=batches, dtypes=dtypes,
                module=what == "grads")


def _vq_callables(ours, theirs, what, against_diffusers):
    """(ours, theirs) callables of one image batch for one output of the VQ-GAN."""
    if against_diffusers:                       # our torch port on NumPy inputs vs diffusers
        port = TQ.VQModel(**ours.config, dtype=theirs.dtype).eval()
        port.load_state_dict(theirs.state_dict())
        ours = port

    def shape_of(m, x):
        h = m.encode(x).latents
        return (h.shape[0], h.shape[2], h.shape[3], h.shape[1])

    def side(m):
        if what == "sample":
            return lambda x: m(x).sample
        if what == "latents":
            return lambda x: m.encode(x).latents
        if what == "indices":
            return lambda x: m.quantize(m.encode(x).latents)[2][2]
        if what == "decode ids":
            def decode(x):
                h = m.encode(x).latents
                ids = m.quantize(h)[2][2].reshape(h.shape[0], h.shape[2], h.shape[3])
                return m.decode(ids, force_not_quantize=True, shape=shape_of(m, x)).sample
            return decode
        raise ValueError(what)
    if what == "grads":
        return (NumpyOutputAndLoss(ours, _model_outputs),
                TorchOutputAndLoss(theirs, _model_outputs))
    ours_fn = side(ours)
    if isinstance(ours, torch.nn.Module):
        ours_fn = _torch_caller(ours_fn)                  # NumPy inputs -> tensors, no grad
    return ours_fn, side(theirs)


def _quantizer_case(name, n_e, width, grid, what):
    """The quantiser alone: its output z_q, its loss, its indices, or (grads) z_q and loss."""
    def build(dtype, batch):
        ours, theirs = make_pair(TQ.VectorQuantizer, NQ.VectorQuantizer, n_e, width, 0.25,
                                 dtype=dtype)
        spread = _rng(name, 0).standard_normal((n_e, width))
        with torch.no_grad():
            theirs.embedding.weight.copy_(torch.from_numpy(spread))
        ours.load_state_dict(numpy_state_dict(theirs))
        z = _rng(name + what, batch).standard_normal((batch, width, *grid)).astype(dtype)
        if what == "grads":
            return (NumpyOutputAndLoss(ours, _quantizer_outputs),
                    TorchOutputAndLoss(theirs, _quantizer_outputs), (z,))
        pick = {"z_q": 0, "loss": 1}.get(what)
        if pick is not None:
            return (lambda x: ours(x)[pick]), (lambda x: theirs(x)[pick]), (z,)
        return (lambda x: ours(x)[2][2]), (lambda x: theirs(x)[2][2]), (z,)
    return Case(f"VectorQuantizer {what}: {name}", build, module=what == "grads")


# (name, codes, width, grid): torch's cdist takes its direct route up to 25 rows and codes
QUANTIZERS = [("12 codes, direct cdist", 12, 4, (2, 3)),
              ("40 codes, matrix cdist", 40, 5, (3, 4))]


def _lookup(overrides):
    return NQ.resolve_config("tiny", **overrides)["lookup_from_codebook"]


def _outputs(name, overrides):
    """The outputs compared for a variant: the encoder's latents on the first only (the others
    differ in what follows it), the lookup route where the config has it."""
    whats = ("sample", "latents", "indices") if name == "tiny" else ("sample", "indices")
    return whats + (("decode ids",) if _lookup(overrides) else ())


def vq_cases():
    """The quantiser and the tiny VQ-GANs: NumPy vs the torch port (forward)."""
    out = [_quantizer_case(*q, what) for q in QUANTIZERS for what in ("z_q", "loss", "indices")]
    for name, overrides, size, batches in VQ_VARIANTS:
        out += [_vq_case(name, overrides, size, batches, what) for what in _outputs(name,
                                                                                  overrides)]
    return out


def vq_grad_cases():
    """The quantiser and the tiny VQ-GANs for --grads: output and loss, one array."""
    return ([_quantizer_case(*q, "grads") for q in QUANTIZERS]
            + [_vq_case(name, overrides, size, batches, "grads")
               for name, overrides, size, batches in VQ_VARIANTS])


# --------------------------------------------------------------------------------------------------
# The paper's KL autoencoder
# --------------------------------------------------------------------------------------------------
def kl_ddconfig(**overrides):
    """The paper's ddconfig with overrides (channels stay multiples of its 32 GroupNorm groups)."""
    return {**NA.PAPER_DDCONFIG, "resolution": 16, **overrides}


# (name, ddconfig overrides, embed_dim, image size, batches)
KL_VARIANTS = [
    ("ch 32 x [1, 2]", dict(ch=32, ch_mult=[1, 2], num_res_blocks=1), 4, (16, 12), (1, 3)),
    ("ch 32 x [1, 1, 2], 2 resnets, no mid attn, 13x11",
     dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=2, attn_type="none"), 4, (13, 11), (2,)),
    ("embed_dim 3, z 4 (the paper's only)", dict(ch=32, ch_mult=[1, 2], num_res_blocks=1), 3,
     (8, 8), (2,)),
]
KL_SCALE = 0.23010                                    # mscoco_uvit_small's: not the default


def kl_pair(dtype, overrides, embed_dim, seed=0):
    """(NumPy, torch) FrozenAutoencoderKL with the same perturbed weights, moved through the
    paper's key layout (torch's state_dict -> NumPy's load_state_dict)."""
    tdt = TORCH_DTYPE[np.dtype(dtype)]
    torch.manual_seed(seed)
    theirs = TA.FrozenAutoencoderKL(kl_ddconfig(**overrides), embed_dim, KL_SCALE, dtype=tdt)
    randomize_(theirs, seed)
    ours = NA.FrozenAutoencoderKL(kl_ddconfig(**overrides), embed_dim, KL_SCALE, dtype=dtype)
    ours.load_state_dict(numpy_state_dict(theirs.state_dict()))
    return ours, theirs


def _kl_inputs(rng, batch, dtype, size, embed_dim, levels, what):
    """The NumPy inputs of one output: images (and noise) or latents."""
    h, w = size
    for _ in range(levels - 1):                       # the encoder's (0, 1, 0, 1)-padded halvings
        h, w = h // 2, w // 2
    if what == "decode":
        return ((rng.standard_normal((batch, embed_dim, h, w)) * KL_SCALE).astype(dtype),)
    x = rng.uniform(-1.0, 1.0, (batch, 3, *size)).astype(dtype)
    if what == "encode (given noise)":
        return x, rng.standard_normal((batch, embed_dim, h, w)).astype(dtype)
    return (x,)


def _kl_case(name, overrides, embed_dim, size, batches, what, against_diffusers=False,
             dtypes=("float64", "float32")):
    """One output of the KL autoencoder: "encode_moments", "decode" or "encode (given noise)"."""
    levels = len(kl_ddconfig(**overrides)["ch_mult"])

    def build(dtype, batch):
        inputs = _kl_inputs(_rng(name + what, batch), batch, dtype, size, embed_dim, levels,
                            what)
        if against_diffusers:
            port, theirs = diffusers_kl_pair(dtype, overrides)
            return _torch_caller(_kl_side(port, what)), _diffusers_kl_side(theirs, what), inputs
        ours, theirs = kl_pair(dtype, overrides, embed_dim)
        return _kl_side(ours, what), _kl_side(theirs, what), inputs
    suffix = " vs diffusers" if against_diffusers else ""
    return Case(f"FrozenAutoencoderKL {what}: {name}{suffix}", build, batches=batches,
                dtypes=dtypes, module=False)


def _kl_side(model, what):
    if what == "encode_moments":
        return model.encode_moments
    if what == "decode":
        return model.decode
    return lambda x, noise: model.encode(x, noise=noise)


def diffusers_kl_pair(dtype, overrides, seed=0):
    """(our torch FrozenAutoencoderKL, diffusers' AutoencoderKL): diffusers' perturbed weights
    loaded into ours through `load_diffusers_state_dict`."""
    from diffusers import AutoencoderKL
    cfg = kl_ddconfig(**overrides)
    tdt = TORCH_DTYPE[np.dtype(dtype)]
    levels = len(cfg["ch_mult"])
    torch.manual_seed(seed)
    theirs = AutoencoderKL(block_out_channels=[cfg["ch"] * m for m in cfg["ch_mult"]],
                           down_block_types=["DownEncoderBlock2D"] * levels,
                           up_block_types=["UpDecoderBlock2D"] * levels,
                           layers_per_block=cfg["num_res_blocks"],
                           latent_channels=cfg["z_channels"],
                           mid_block_add_attention=cfg.get("attn_type") != "none").to(tdt)
    randomize_(theirs.eval(), seed)
    ours = TA.FrozenAutoencoderKL(cfg, cfg["z_channels"], KL_SCALE, dtype=tdt)
    ours.load_diffusers_state_dict(theirs.state_dict())
    return ours, theirs


def _diffusers_kl_side(theirs, what):
    """diffusers' AutoencoderKL computing the paper's three functions with its own pieces."""
    if what == "encode_moments":
        return lambda x: theirs.encode(x).latent_dist.parameters
    if what == "decode":
        return lambda z: theirs.decode((1.0 / KL_SCALE) * z).sample

    def encode(x, noise):                             # DiagonalGaussianDistribution.sample
        dist = theirs.encode(x).latent_dist
        return KL_SCALE * (dist.mean + dist.std * noise)
    return encode


KL_OUTPUTS = ("encode_moments", "decode", "encode (given noise)")


def kl_cases():
    return [_kl_case(*v, what) for v in KL_VARIANTS for what in KL_OUTPUTS]


def diffusers_kl_cases(dtypes):
    """The variants diffusers' AutoencoderKL can express (embed_dim = z_channels)."""
    return [_kl_case(name, overrides, e, size, batches, what, True, dtypes)
            for name, overrides, e, size, batches in KL_VARIANTS if e == 4
            for what in KL_OUTPUTS]


# --------------------------------------------------------------------------------------------------
# The functions of functional.py these models added, for --grads
# --------------------------------------------------------------------------------------------------
# Stop-gradient constructions: the backward is the estimator's definition, not the derivative.
STOP_GRADIENT = ("straight_through", "vq_loss legacy", "vq_loss legacy=False")


def _vq_loss_case(legacy):
    from .case import Function
    name = "vq_loss legacy" if legacy else "vq_loss legacy=False"

    def build(dtype, batch):
        rng = _rng(name, batch)
        z, z_q = (rng.standard_normal((batch, 3, 4, 5)).astype(dtype) for _ in range(2))
        ours = Function(lambda a, b: NF.vq_loss(a, b, 0.25, legacy, return_cache=True),
                        NF.vq_loss_backward)

        def theirs(a, b):
            codebook, commit = torch.mean((b.detach() - a) ** 2), torch.mean((b - a.detach()) ** 2)
            return (codebook + 0.25 * commit) if legacy else (0.25 * codebook + commit)
        return _Scalar(ours), theirs, (z, z_q)
    return Case(name, build, module=False)


class _Scalar:
    """A Function whose 0-d output the report's dy (shaped like it) multiplies: backward passes
    the number on."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *xs):
        return self.fn(*xs)

    def backward(self, dy):
        return self.fn.backward(np.asarray(dy).reshape(()))


def function_cases():
    """GroupNorm, padding, nearest and average pooling, the straight-through estimator and the
    quantiser's loss against torch (their central-difference checks are in the tests)."""
    from .case import function_case
    nograd = dict(return_cache=True)
    return [
        function_case("group_norm 3 groups", lambda x, w, b: NF.group_norm(x, 3, w, b, **nograd),
                      NF.group_norm_backward, lambda x, w, b: TF.group_norm(x, 3, w, b, 1e-5),
                      [(6, 4, 5), (None, 6), (None, 6)], scale=2.0),
        function_case("group_norm on (B, C, L), no affine",
                      lambda x: NF.group_norm(x, 2, eps=1e-6, **nograd),
                      lambda dy, c: NF.group_norm_backward(dy, c)[0],
                      lambda x: TF.group_norm(x, 2, None, None, 1e-6), [(4, 7)], scale=3.0),
        function_case("pad2d (0, 1, 0, 1)", lambda x: (NF.pad2d(x, (0, 1, 0, 1)), None),
                      lambda dy, c: NF.pad2d_backward(dy, (0, 1, 0, 1)),
                      lambda x: TF.pad(x, (0, 1, 0, 1)), [(3, 4, 5)]),
        function_case("upsample_nearest2d x2", lambda x: (NF.upsample_nearest2d(x), None),
                      lambda dy, c: NF.upsample_nearest2d_backward(dy),
                      lambda x: TF.interpolate(x, scale_factor=2.0, mode="nearest"),
                      [(3, 4, 5)]),
        function_case("avg_pool2d 2x2 odd 5x7",
                      lambda x: (NF.avg_pool2d(x, 2), x.shape),
                      lambda dy, shape: NF.avg_pool2d_backward(dy, shape, 2),
                      lambda x: TF.avg_pool2d(x, 2, 2), [(3, 5, 7)]),
        function_case("straight_through", lambda z, q: (NF.straight_through(z, q), None),
                      lambda dy, c: NF.straight_through_backward(dy)[:1],
                      lambda z, q: z + (q - z).detach(), [(3, 4, 5), (3, 4, 5)], wrt=(0,)),
        _vq_loss_case(True),
        _vq_loss_case(False),
    ]


# --------------------------------------------------------------------------------------------------
# The report's entry points
# --------------------------------------------------------------------------------------------------
def cases():
    """NumPy reference vs torch port: every block, the quantiser, the tiny VQ-GANs and the tiny
    KL autoencoders."""
    return [_block_case(b) for b in blocks()] + vq_cases() + kl_cases()


def _diffusers_block_case(block, dtypes):
    def build(dtype, batch):
        ours, theirs = diffusers_pair(block, dtype)
        return (_torch_caller(ours), lambda *xs: block.call(theirs, *xs),
                block.inputs(_rng(block.name, batch), batch, dtype))
    return Case(f"{block.name} vs diffusers", build, dtypes=dtypes)


def _diffusers_quantizer_case(name, n_e, width, grid, what, dtypes):
    from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVectorQuantizer

    def build(dtype, batch):
        tdt = TORCH_DTYPE[np.dtype(dtype)]
        theirs = DiffusersVectorQuantizer(n_e, width, beta=0.25).to(tdt)
        with torch.no_grad():
            theirs.embedding.weight.copy_(torch.from_numpy(_rng(name, 0).standard_normal(
                (n_e, width))))
        ours = TQ.VectorQuantizer(n_e, width, 0.25, dtype=tdt)
        ours.load_state_dict(theirs.state_dict())
        pick = {"z_q": 0, "loss": 1}.get(what)
        z = _rng(name + what, batch).standard_normal((batch, width, *grid)).astype(dtype)
        if pick is not None:
            return _torch_caller(lambda x: ours(x)[pick]), (lambda x: theirs(x)[pick]), (z,)
        return (_torch_caller(lambda x: ours(x)[2][2]), (lambda x: theirs(x)[2][2]), (z,))
    return Case(f"VectorQuantizer {what}: {name} vs diffusers", build, dtypes=dtypes)


def diffusers_cases(dtypes=("float32",)):
    """Torch port vs diffusers: every block with a diffusers class, the quantiser, the tiny
    VQ-GANs and KL autoencoders."""
    from diffusers import VQModel as DiffusersVQModel
    out = [_diffusers_block_case(b, dtypes) for b in blocks() if b.diffusers]
    out += [_diffusers_quantizer_case(*q, what, dtypes) for q in QUANTIZERS
            for what in ("z_q", "loss", "indices")]
    for name, overrides, size, batches in VQ_VARIANTS:
        out += [_vq_case(name, overrides, size, batches, w, torch_cls=DiffusersVQModel,
                         dtypes=dtypes) for w in _outputs(name, overrides)]
    return out + diffusers_kl_cases(dtypes)


# --------------------------------------------------------------------------------------------------
# A published config on random weights, one copy of the weights for two models
# --------------------------------------------------------------------------------------------------
def shared_vq_pair(config, dtype, seed=0):
    """(NumPy VQModel, diffusers' VQModel) of a named config holding the *same memory* as weights:
    the NumPy model is initialised (float32 draws), diffusers' is built on the meta device and
    takes the arrays as its parameters, then GroupNorm's constants are perturbed in place (both
    see it). Spread the codebook with `spread_codebook_(theirs.quantize, latents)` once latents
    exist. aMUSEd's VQ-GAN is 146M parameters: one copy is 0.6 GB in float32, 1.2 GB in float64."""
    from diffusers import VQModel as DiffusersVQModel
    ours = NQ.VQModel.from_config(config, dtype=dtype, rng=seed).eval()
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in ours.config.items()}
    with torch.device("meta"):
        theirs = DiffusersVQModel(**cfg)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()},
                           assign=True)
    randomize_(theirs.eval(), seed)
    for p in theirs.parameters():
        p.requires_grad_(False)
    return ours, theirs


def shared_kl_pair(dtype, seed=0):
    """(NumPy FrozenAutoencoderKL, diffusers' AutoencoderKL) of the paper's autoencoder
    (PAPER_DDCONFIG, embed_dim 4; 83,653,863 parameters) on random weights, sharing one copy of
    them as `shared_vq_pair` does; GroupNorm's constants perturbed in place."""
    from diffusers import AutoencoderKL
    ours = NA.FrozenAutoencoderKL(NA.PAPER_DDCONFIG, NA.PAPER_EMBED_DIM, dtype=dtype, rng=seed)
    with torch.device("meta"):
        theirs = AutoencoderKL(block_out_channels=[128, 256, 512, 512],
                               down_block_types=["DownEncoderBlock2D"] * 4,
                               up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                               latent_channels=4, norm_num_groups=32, sample_size=256)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in
                            ours.diffusers_state_dict().items()}, assign=True)
    randomize_(theirs.eval(), seed)
    for p in theirs.parameters():
        p.requires_grad_(False)
    return ours, theirs
