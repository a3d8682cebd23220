"""Parity cases for CLIP's text encoder (`uvit_numpy.clip`, `uvit_torch.clip`; see `parity.py`).

* `cases()`: the NumPy reference vs the torch twin (weights copied torch -> NumPy): every block,
  then the models on a tiny config in four variants (both activations, both pooling rules, with
  and without the projection), and CLIP ViT-L/14's text tower (slow: `--all`).
* `diffusers_cases()`: the torch twin vs transformers' own classes, with transformers' weights
  loaded into the twin. `python -m uvit_torch.parity --against-diffusers` runs them beside the
  diffusers cases (the flag's name; the upstream here is transformers). float64 and float32:
  transformers' SDPA path has no float32 island.

A model case compares every output at once: `AllOutputs` joins text_embeds, pooler_output,
last_hidden_state and every hidden state, each flattened per row, into one (B, total) array; its
NumPy twin is a Module whose backward splits the upstream gradient back into the pieces and hands
each to the model's backward, so `--grads` checks the gradients of all the outputs together.

Inputs are ids as a tokenizer makes them: start token, words, end-of-text token, then padding
(the pad id; the last row padded with the end-of-text token, as transformers' CLIPTokenizer pads),
rows of different lengths. With the explicit `eos_token_id` each row also holds a word id larger
than it, so the legacy argmax rule would pool elsewhere: a wrong rule fails.
"""

import math
import zlib

import numpy as np
import torch
from torch import nn

import uvit_numpy.clip as N
from uvit_numpy import functional as NF
from uvit_numpy.module import Module

from .. import clip as T
from .case import Case
from .harness import TORCH_DTYPE, make_pair, randomize_, to_torch

# (name, config overrides, with projection) of the tiny model cases: quick_gelu with the explicit
# eos_token_id 50, and gelu with the legacy eos_token_id 2, each with and without the projection
LEGACY = {"hidden_act": "gelu", "eos_token_id": 2, "bos_token_id": 0}
VARIANTS = [
    ("CLIPTextModel tiny quick_gelu, eos 50", {}, False),
    ("CLIPTextModel tiny gelu, legacy eos 2", LEGACY, False),
    ("CLIPTextModelWithProjection tiny eos 50", {}, True),
    ("CLIPTextModelWithProjection tiny legacy 2", LEGACY, True),
]


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"clip/{name}/{batch}".encode()))


def tiny_config(**overrides):
    """The "tiny" config with `overrides`, as a `CLIPTextConfig`."""
    return N.CLIPTextConfig(**{**N.CONFIGS["tiny"], **overrides})


def special_ids(config):
    """(start, end-of-text, pad) ids as the data uses them. With the legacy rule
    (`eos_token_id == 2`) the end-of-text token is the vocabulary's last id, as openai's 49407."""
    V = config.vocab_size
    if config.eos_token_id == 2:
        return V - 2, V - 1, config.pad_token_id
    return config.bos_token_id, config.eos_token_id, config.pad_token_id


def text_ids(config, rng, batch, length=None):
    """(batch, length) ids: start, 1..length-2 words, end-of-text, padding (see the docstring)."""
    S = length or min(12, config.max_position_embeddings)
    bos, eos, pad = special_ids(config)
    words = np.array([i for i in range(3, config.vocab_size) if i not in (bos, eos, pad)])
    rows = []
    for b in range(batch):
        n = int(rng.integers(1, S - 1)) if b else S - 2   # the first row fills every position
        row = list(rng.choice(words, size=n))
        if config.eos_token_id != 2:
            row[int(rng.integers(0, n))] = config.vocab_size - 1  # a word id above eos
        filler = eos if b == batch - 1 and batch > 1 else pad
        rows.append([bos] + row + [eos] + [filler] * (S - 2 - n))
    return np.array(rows, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Every output at once
# --------------------------------------------------------------------------------------------------
def output_pieces(out):
    """The outputs of a model call in a fixed order: text_embeds (if any), pooler_output,
    last_hidden_state, then every hidden state."""
    head = [out.text_embeds] if getattr(out, "text_embeds", None) is not None else []
    return head + [out.pooler_output, out.last_hidden_state, *out.hidden_states]


class AllOutputs(Module):
    """A NumPy model's every output, flattened per row and joined: ids (B, S) -> (B, total).
    Test scaffolding for the parity and gradient reports."""

    def __init__(self, model):
        super().__init__(model.dtype)
        self.model = model

    def forward(self, input_ids):
        pieces = output_pieces(self.model(input_ids, output_hidden_states=True))
        B = input_ids.shape[0]
        joined = np.concatenate([p.reshape(B, -1) for p in pieces], axis=1)  # (B, total)
        return self._record(joined, [p.shape for p in pieces])

    def backward(self, grad_out):
        shapes = self._recall(grad_out)
        parts = NF.concat_backward(grad_out, [math.prod(s[1:]) for s in shapes], axis=1)
        grads = [p.reshape(s) for p, s in zip(parts, shapes)]  # (B, n) -> each output's shape
        if isinstance(self.model, N.CLIPTextModelWithProjection):
            d_embeds, d_pooled, d_last, *d_hidden = grads
            return self.model.backward(d_last, grad_text_embeds=d_embeds,
                                       grad_pooler_output=d_pooled, grad_hidden_states=d_hidden)
        d_pooled, d_last, *d_hidden = grads
        return self.model.backward(d_last, grad_pooler_output=d_pooled,
                                   grad_hidden_states=d_hidden)


class TorchAllOutputs(nn.Module):
    """The torch twin of `AllOutputs` (for our torch models and for transformers'); for
    transformers' `CLIPTextModelWithProjection`, whose output has no pooler_output, it is taken
    from its `text_model` in a second call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids, output_hidden_states=True)
        if getattr(out, "pooler_output", None) is None:
            out.pooler_output = self.model.text_model(input_ids).pooler_output
        pieces = output_pieces(out)
        return torch.cat([p.reshape(input_ids.shape[0], -1) for p in pieces], dim=1)


# --------------------------------------------------------------------------------------------------
# NumPy vs the torch twin
# --------------------------------------------------------------------------------------------------
def set_causal(*modules):
    """Make every CLIPAttention inside these modules causal (the text model asks for it)."""
    for module in modules:
        for _, m in module.named_modules():
            if isinstance(m, (N.CLIPAttention, T.CLIPAttention)):
                m.is_causal = True


def _block_case(name, torch_cls, numpy_cls, config, inputs, causal=False):
    def build(dtype, batch):
        ours, theirs = make_pair(torch_cls, numpy_cls, config, dtype=dtype)
        if causal:
            set_causal(ours, theirs)
        return ours, theirs, inputs(_rng(name, batch), batch, dtype)
    return Case(name, build)


def _hidden(config, S=9):
    return lambda rng, b, dt: (rng.standard_normal((b, S, config.hidden_size)).astype(dt),)


def block_cases():
    c, g = tiny_config(), tiny_config(hidden_act="gelu")

    def ids(rng, b, dt):
        return (text_ids(c, rng, b),)

    def ids_and_positions(rng, b, dt):
        positions = np.stack([rng.permutation(c.max_position_embeddings)[:12] for _ in range(b)])
        return text_ids(c, rng, b), positions

    return [
        _block_case("CLIPTextEmbeddings", T.CLIPTextEmbeddings, N.CLIPTextEmbeddings, c, ids),
        _block_case("CLIPTextEmbeddings position_ids (B, S)", T.CLIPTextEmbeddings,
                    N.CLIPTextEmbeddings, c, ids_and_positions),
        _block_case("CLIPAttention causal", T.CLIPAttention, N.CLIPAttention, c, _hidden(c),
                    causal=True),
        _block_case("CLIPAttention not causal", T.CLIPAttention, N.CLIPAttention, c, _hidden(c)),
        _block_case("CLIPMLP quick_gelu", T.CLIPMLP, N.CLIPMLP, c, _hidden(c)),
        _block_case("CLIPMLP gelu", T.CLIPMLP, N.CLIPMLP, g, _hidden(g)),
        _block_case("CLIPEncoderLayer causal", T.CLIPEncoderLayer, N.CLIPEncoderLayer, c,
                    _hidden(c), causal=True),
    ]


def _model_case(name, overrides, projection):
    config = tiny_config(**overrides)
    torch_cls = T.CLIPTextModelWithProjection if projection else T.CLIPTextModel
    numpy_cls = N.CLIPTextModelWithProjection if projection else N.CLIPTextModel

    def build(dtype, batch):
        ours, theirs = make_pair(torch_cls, numpy_cls, config, dtype=dtype)
        return (AllOutputs(ours), TorchAllOutputs(theirs),
                (text_ids(config, _rng(name, batch), batch),))
    return Case(name, build)


def shared_pair(config, dtype=np.float32, seed=0, projection=True):
    """(numpy_model, torch_model) of a config, the torch twin built on the meta device and given
    the NumPy arrays as its parameters (one copy of the weights), constant ones perturbed."""
    numpy_cls = N.CLIPTextModelWithProjection if projection else N.CLIPTextModel
    torch_cls = T.CLIPTextModelWithProjection if projection else T.CLIPTextModel
    ours = numpy_cls(config, dtype=dtype, rng=seed).eval()
    with torch.device("meta"):
        theirs = torch_cls(config, dtype=TORCH_DTYPE[np.dtype(dtype)])
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()},
                           assign=True)
    randomize_(theirs.eval(), seed)
    for p in theirs.parameters():
        p.requires_grad_(False)
    return ours, theirs


def _large_case():
    name = "CLIPTextModelWithProjection clip-vit-large-patch14 (random weights)"

    def build(dtype, batch):
        config = N.CLIPTextConfig.from_any("clip-vit-large-patch14")
        ours, theirs = shared_pair(config, dtype)
        return (AllOutputs(ours), TorchAllOutputs(theirs),
                (text_ids(config, _rng(name, batch), batch, 77),))
    return Case(name, build, batches=(2,), dtypes=("float32",), slow=True)


def cases():
    """NumPy reference vs torch twin: the blocks, the tiny models, CLIP ViT-L/14 (slow)."""
    return block_cases() + [_model_case(*v) for v in VARIANTS] + [_large_case()]


# --------------------------------------------------------------------------------------------------
# The torch twin vs transformers
# --------------------------------------------------------------------------------------------------
def transformers_config(config):
    """transformers' `CLIPTextConfig` with our config's fields, attention through SDPA (the
    default of transformers' models; a bare block would otherwise take the eager path, which
    ignores `is_causal`)."""
    from transformers import CLIPTextConfig
    fields = {k: getattr(config, k) for k in N.CONFIG_DEFAULTS}
    return CLIPTextConfig(**fields, attn_implementation="sdpa")


def _torch_caller(module):
    def call(*xs):
        with torch.no_grad():
            return module(*[to_torch(x) for x in xs])
    return call


def _transformers_block_case(name, cls_name, torch_cls, config, inputs, call, causal=False):
    def build(dtype, batch):
        import transformers.models.clip.modeling_clip as H
        tdt = TORCH_DTYPE[np.dtype(dtype)]
        torch.manual_seed(0)
        theirs = getattr(H, cls_name)(transformers_config(config)).to(tdt).eval()
        randomize_(theirs)
        ours = torch_cls(config, dtype=tdt).eval()
        ours.load_state_dict(theirs.state_dict())
        if causal:                                        # transformers: is_causal at the call
            set_causal(ours)
        return _torch_caller(ours), lambda *xs: call(theirs, *xs), inputs(_rng(name, batch),
                                                                            batch, dtype)
    return Case(f"{name} vs transformers", build)


def _transformers_model_case(name, overrides, projection):
    config = tiny_config(**overrides)

    def build(dtype, batch):
        import transformers
        tdt = TORCH_DTYPE[np.dtype(dtype)]
        hf_cls = (transformers.CLIPTextModelWithProjection if projection
                  else transformers.CLIPTextModel)
        torch_cls = T.CLIPTextModelWithProjection if projection else T.CLIPTextModel
        torch.manual_seed(0)
        theirs = hf_cls(transformers_config(config)).to(tdt).eval()
        randomize_(theirs)
        ours = torch_cls(config, dtype=tdt).eval()
        ours.load_state_dict(theirs.state_dict())
        return (_torch_caller(TorchAllOutputs(ours)), TorchAllOutputs(theirs),
                (text_ids(config, _rng(name, batch), batch),))
    return Case(f"{name} vs transformers", build)


def diffusers_cases():
    """The torch twin vs transformers' classes (empty when transformers is not installed)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return []
    c, g = tiny_config(), tiny_config(hidden_act="gelu")

    def ids(rng, b, dt):
        return (text_ids(c, rng, b),)

    return [
        _transformers_block_case("CLIPTextEmbeddings", "CLIPTextEmbeddings", T.CLIPTextEmbeddings,
                                 c, ids, lambda m, x: m(input_ids=x)),
        _transformers_block_case("CLIPAttention causal", "CLIPAttention", T.CLIPAttention, c,
                                 _hidden(c), lambda m, x: m(x, is_causal=True)[0], causal=True),
        _transformers_block_case("CLIPMLP quick_gelu", "CLIPMLP", T.CLIPMLP, c, _hidden(c),
                                 lambda m, x: m(x)),
        _transformers_block_case("CLIPMLP gelu", "CLIPMLP", T.CLIPMLP, g, _hidden(g),
                                 lambda m, x: m(x)),
        _transformers_block_case("CLIPEncoderLayer causal", "CLIPEncoderLayer",
                                 T.CLIPEncoderLayer, c, _hidden(c),
                                 lambda m, x: m(x, None, is_causal=True), causal=True),
    ] + [_transformers_model_case(*v) for v in VARIANTS]
