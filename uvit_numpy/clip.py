"""CLIP's text encoder in NumPy: transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`.

aMUSEd turns a prompt into two conditioning signals with the text tower of CLIP ViT-L/14: the
*penultimate* layer's features of every token (`hidden_states[-2]`, (B, 77, 768)) become the
transformer's `encoder_hidden_states`, and the projected feature of the end-of-text token
(`text_embeds`, (B, 768)) its `pooled_text_emb`. The pieces, in the order the forward meets them:

    ids (B, S) --token + position embeddings--> (B, S, C) = hidden_states[0]
      --CLIPEncoderLayer x N (pre-LN, causal self-attention, MLP)--> hidden_states[1..N]
      --final_layer_norm--> last_hidden_state (B, S, C)
      --the row at the end-of-text token--> pooler_output (B, C)
      --text_projection (no bias)--> text_embeds (B, P)          (WithProjection only)

Class names, constructor arguments, config fields and parameter names are transformers', so a
state dict moves between transformers, `uvit_torch.clip` and this module unchanged. The module tree
is the one transformers 4 had and the Hub's checkpoints are written in: `CLIPTextModel` holds a
`CLIPTextTransformer` as `text_model`, so its keys start with `text_model.` (transformers 5 dropped
that level from `CLIPTextModel`, and its `save_pretrained` writes the keys without the prefix;
`load_state_dict` and `from_pretrained` take both layouts).

Numerics, said aloud:
* attention scale hd^-1/2 (a Python float), the causal mask is -inf before the softmax (the masked
  weights are exactly 0); LayerNorm eps from the config (1e-5);
* `hidden_act`: "quick_gelu" (x sigmoid(1.702 x), openai's CLIP) or "gelu" (the exact erf form;
  LAION's CLIP); transformers knows more activations, which are refused here by name;
* the pooled position follows transformers' two rules exactly (`eos_positions`).

Every block has a `backward` (see `module.Module`); the models' backward takes the gradients of
any of their outputs (last_hidden_state, pooler_output, every hidden state, text_embeds).
Initial weights follow torch's defaults (as every layer of this package), not transformers' CLIP
initialisation; pretrained weights are loaded with `from_pretrained` (no torch involved).
"""

import json
import os

import numpy as np

from . import functional as F
from .checks import check_dim, check_integer, check_rank
from .layers import GELU, Embedding, LayerNorm, Linear, to_module_dtype
from .module import Module, ModuleList, NoDraws, as_rng, float32_draws

__all__ = [
    "CONFIG_DEFAULTS", "CONFIGS", "HIDDEN_ACTS", "CLIPTextConfig", "eos_positions",
    "pool_at", "pool_at_backward", "BaseModelOutput", "BaseModelOutputWithPooling",
    "CLIPTextModelOutput", "QuickGELUActivation", "CLIPTextEmbeddings", "CLIPAttention",
    "CLIPMLP", "CLIPEncoderLayer", "CLIPEncoder", "CLIPTextTransformer", "CLIPTextModel",
    "CLIPTextModelWithProjection", "add_text_model_prefix", "drop_position_ids",
]

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
# The fields of transformers' `CLIPTextConfig` and their defaults (transformers 5.24), plus the one
# field of transformers' base config that the text model's forward reads, `output_hidden_states`.
# `attention_dropout` acts only in training; `initializer_range`/`initializer_factor` only in
# transformers' own initialisation: they are kept so that a config makes the round trip.
CONFIG_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
    "initializer_range": 0.02, "initializer_factor": 1.0,
    "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
    "output_hidden_states": False,
}

# The activations implemented here (transformers' ACT2FN names).
HIDDEN_ACTS = ("quick_gelu", "gelu")

# Named configs. "clip-vit-large-patch14": the text tower of CLIP ViT-L/14, the size aMUSEd uses
# (width 768, 12 layers of 12 heads, MLP 3072, 77 positions, projection 768); the token ids are
# transformers' defaults (a Hub folder brings its own). "tiny": for tests and the book.
CONFIGS = {
    "clip-vit-large-patch14": {**CONFIG_DEFAULTS, "hidden_size": 768, "intermediate_size": 3072,
                               "num_attention_heads": 12, "projection_dim": 768},
    "tiny": {**CONFIG_DEFAULTS, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
             "projection_dim": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 16, "bos_token_id": 49, "eos_token_id": 50},
}


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class CLIPTextConfig:
    """transformers' `CLIPTextConfig`: the sizes, activation and special token ids of the tower.

    The same fields and defaults (`CONFIG_DEFAULTS`), read as attributes: `config.hidden_size`.
    Any other key (`architectures`, `transformers_version`, the `dropout` and generation settings
    old Hub configs carry, ...) is kept, unused, in `config.extra`, as transformers keeps it as an
    attribute that the text model never reads. Refused at once, with a ValueError or TypeError
    naming the field: a size that is not a positive int, `hidden_size` not a multiple of
    `num_attention_heads` (transformers refuses it too), a `hidden_act` other than "quick_gelu"
    or "gelu", an `eos_token_id` that is not one int (the pooled output needs one), and a config
    that belongs to another model (a full `CLIPConfig` with a `text_config`, another
    `model_type`).
    """

    def __init__(self, **kwargs):
        if "text_config" in kwargs or kwargs.get("model_type") == "clip":
            raise ValueError("CLIPTextConfig: this is a full CLIPConfig (text and vision towers, "
                             "model_type 'clip'); pass its `text_config` instead")
        model_type = kwargs.get("model_type", "clip_text_model")
        if model_type != "clip_text_model":
            raise ValueError(f"CLIPTextConfig: expected model_type 'clip_text_model', got "
                             f"{model_type!r}")
        fields = {**CONFIG_DEFAULTS, **{k: v for k, v in kwargs.items() if k in CONFIG_DEFAULTS}}
        self._check(fields)
        for name, value in fields.items():
            setattr(self, name, value)
        self.extra = {k: v for k, v in kwargs.items() if k not in CONFIG_DEFAULTS}

    @staticmethod
    def _check(c):
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings")
        for name in sizes + (("projection_dim",) if c["projection_dim"] is not None else ()):
            if not _is_int(c[name]) or c[name] < 1:
                raise ValueError(f"CLIPTextConfig: {name} must be a positive int, got "
                                 f"{c[name]!r}")
        if c["hidden_size"] % c["num_attention_heads"]:
            raise ValueError(f"CLIPTextConfig: hidden_size ({c['hidden_size']}) is not a multiple "
                             f"of num_attention_heads ({c['num_attention_heads']})")
        if c["hidden_act"] not in HIDDEN_ACTS:
            raise ValueError(f"CLIPTextConfig: hidden_act {c['hidden_act']!r} is not implemented "
                             f"here; expected one of {HIDDEN_ACTS}")
        if not _is_number(c["layer_norm_eps"]) or c["layer_norm_eps"] <= 0:
            raise ValueError(f"CLIPTextConfig: layer_norm_eps must be a positive number, got "
                             f"{c['layer_norm_eps']!r}")
        if not _is_number(c["attention_dropout"]) or not 0 <= c["attention_dropout"] < 1:
            raise ValueError(f"CLIPTextConfig: attention_dropout must be in [0, 1), got "
                             f"{c['attention_dropout']!r}")
        if not _is_int(c["eos_token_id"]):
            raise TypeError(f"CLIPTextConfig: eos_token_id must be one int (the pooled output "
                            f"is taken at that token), got {c['eos_token_id']!r}")
        for name in ("pad_token_id", "bos_token_id"):
            if c[name] is not None and not _is_int(c[name]):
                raise TypeError(f"CLIPTextConfig: {name} must be an int or None, got {c[name]!r}")
        if not isinstance(c["output_hidden_states"], bool):
            raise TypeError(f"CLIPTextConfig: output_hidden_states must be a bool, got "
                            f"{c['output_hidden_states']!r}")

    @classmethod
    def from_any(cls, config):
        """A CLIPTextConfig from itself, a dict (a config.json), a name in `CONFIGS`, or any
        object with `to_dict()` (transformers' own `CLIPTextConfig`)."""
        if isinstance(config, cls):
            return config
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config: expected one of {sorted(CONFIGS)}, got {config!r}")
            return cls(**CONFIGS[config])
        if isinstance(config, dict):
            return cls(**config)
        if hasattr(config, "to_dict"):
            return cls(**config.to_dict())
        raise TypeError(f"config: expected a CLIPTextConfig, a dict or a name, got "
                        f"{type(config).__name__}")

    def to_dict(self):
        """The fields and the extra keys, as one dict (a config.json's content)."""
        return {**{k: getattr(self, k) for k in CONFIG_DEFAULTS}, **self.extra}

    def __eq__(self, other):
        """Equal fields: the same model (the extra keys are bookkeeping)."""
        return isinstance(other, CLIPTextConfig) and all(
            getattr(self, k) == getattr(other, k) for k in CONFIG_DEFAULTS)

    def __repr__(self):
        changed = {k: getattr(self, k) for k, v in CONFIG_DEFAULTS.items() if getattr(self, k) != v}
        return f"CLIPTextConfig({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


# --------------------------------------------------------------------------------------------------
# Outputs, as transformers returns them
# --------------------------------------------------------------------------------------------------
class ModelOutput:
    """A transformers-style output: fields as attributes, `out["name"]`, and `out[i]` indexing
    the fields that are not None in their order (transformers' `to_tuple()`)."""

    _fields = ()

    def __init__(self, **values):
        unknown = sorted(set(values) - set(self._fields))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {unknown}")
        for name in self._fields:
            setattr(self, name, values.get(name))

    def keys(self):
        return [name for name in self._fields if getattr(self, name) is not None]

    def to_tuple(self):
        return tuple(getattr(self, name) for name in self.keys())

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __repr__(self):
        parts = []
        for name in self.keys():
            v = getattr(self, name)
            shape = (f"{len(v)} x {tuple(v[0].shape)}" if isinstance(v, tuple)
                     else str(tuple(v.shape)))
            parts.append(f"{name}={shape}")
        return f"{type(self).__name__}({', '.join(parts)})"


class BaseModelOutput(ModelOutput):
    """The encoder's output: `last_hidden_state` (B, S, C) and `hidden_states` (N + 1 of them)."""
    _fields = ("last_hidden_state", "hidden_states")


class BaseModelOutputWithPooling(ModelOutput):
    """`CLIPTextModel`'s output: `last_hidden_state` (B, S, C), `pooler_output` (B, C) and, when
    asked for, `hidden_states`: the embeddings first, then every layer's output (N + 1 arrays of
    (B, S, C); the last one before the final LayerNorm)."""
    _fields = ("last_hidden_state", "pooler_output", "hidden_states")


class CLIPTextModelOutput(ModelOutput):
    """`CLIPTextModelWithProjection`'s output: transformers' fields `text_embeds` (B, P),
    `last_hidden_state`, `hidden_states`, and (here only, last) the `pooler_output` (B, C)."""
    _fields = ("text_embeds", "last_hidden_state", "hidden_states", "pooler_output")


# --------------------------------------------------------------------------------------------------
# Pooling at the end-of-text token
# --------------------------------------------------------------------------------------------------
def eos_positions(input_ids, eos_token_id):
    """The position whose final feature becomes the pooled output, per row: (B, S) -> (B,).

    transformers' two rules, chosen by the config's `eos_token_id`:
    * `eos_token_id == 2` (configs written before transformers' PR #24773, openai's among them):
      the position of the row's largest id, the first one if it repeats. openai's end-of-text
      token, 49407, is the largest id of the vocabulary, so this finds it (and breaks for tokens
      added after it);
    * otherwise: the first position that holds `eos_token_id` (padding may repeat it). A row
      without one gets position 0 (argmax of all-False), as in transformers, which assumes every
      row has one.
    """
    if eos_token_id == 2:
        return np.argmax(input_ids, axis=-1)              # (B, S) -> (B,), first of the largest
    return np.argmax(input_ids == eos_token_id, axis=-1)  # (B, S) bools -> (B,), first True


def pool_at(x, positions):
    """One token's feature per row: out[b] = x[b, positions[b]]. x (B, S, C) -> (B, C)."""
    return x[np.arange(x.shape[0]), positions]


def pool_at_backward(dy, positions, shape):
    """Gradient of `pool_at`: dy (B, C) lands on each row's pooled position of a zero (B, S, C)
    (one position per row, so plain assignment is a sum)."""
    dx = np.zeros(shape, dtype=dy.dtype)
    dx[np.arange(shape[0]), positions] = dy
    return dx


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
class QuickGELUActivation(Module):
    """transformers' `quick_gelu`: x * sigmoid(1.702 x); no parameters."""

    def forward(self, x):
        x = to_module_dtype("QuickGELUActivation: x", x, self.dtype)
        return self._record(F.quick_gelu(x), x)

    def backward(self, grad_out):
        return F.quick_gelu_backward(grad_out, self._recall(grad_out))


# hidden_act -> activation module (transformers' "gelu" is the exact erf GELU, torch's default)
ACT2CLS = {"quick_gelu": QuickGELUActivation, "gelu": GELU}


class CLIPTextEmbeddings(Module):
    """Token plus position embeddings: `token_embedding` (V, C), `position_embedding` (77, C)."""

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        config, rng = CLIPTextConfig.from_any(config), as_rng(rng)
        C = config.hidden_size
        self.token_embedding = Embedding(config.vocab_size, C, dtype=dtype, rng=rng)
        self.position_embedding = Embedding(config.max_position_embeddings, C, dtype=dtype,
                                            rng=rng)

    def forward(self, input_ids, position_ids=None):
        """input_ids: (B, S) ints. position_ids: (1 or B, S) ints, default 0..S-1. -> (B, S, C)."""
        check_integer("CLIPTextEmbeddings: input_ids", input_ids)
        check_rank("CLIPTextEmbeddings: input_ids", input_ids, 2, "(B, S)")
        B, S = input_ids.shape
        max_positions = self.position_embedding.num_embeddings
        if S > max_positions:
            raise ValueError(f"CLIPTextEmbeddings: expected at most max_position_embeddings = "
                             f"{max_positions} tokens, got {S}")
        if position_ids is None:
            position_ids = np.arange(S)[None, :]         # (1, S), shared by every row
        check_integer("CLIPTextEmbeddings: position_ids", position_ids)
        if position_ids.ndim != 2 or position_ids.shape[0] not in (1, B) \
                or position_ids.shape[1] != S:
            raise ValueError(f"CLIPTextEmbeddings: expected position_ids of shape (1, {S}) or "
                             f"({B}, {S}), got {tuple(position_ids.shape)}")
        tokens = self.token_embedding(input_ids)         # (B, S, C)
        positions = self.position_embedding(position_ids)  # (1 or B, S, C)
        return self._record(tokens + positions, positions.shape)  # broadcast over the batch

    def backward(self, grad_out):
        """Accumulates both tables' gradients; ids take none, so this returns None."""
        positions_shape = self._recall(grad_out)
        self.token_embedding.backward(grad_out)
        # the position term was broadcast over the batch: its gradient sums over the batch
        d_positions = grad_out.sum(axis=0, keepdims=True) if positions_shape[0] == 1 \
            else grad_out                                # (B, S, C) -> (1, S, C)
        self.position_embedding.backward(d_positions)


class CLIPAttention(Module):
    """Multi-head self-attention: `q_proj`, `k_proj`, `v_proj`, `out_proj`, Linear(C, C) with bias.

    softmax(q k^T * hd^-1/2) v per head, causal when asked (`is_causal` at the call, else the
    attribute `self.is_causal`, False as in transformers: the text model asks for it).
    """

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        config, rng = CLIPTextConfig.from_any(config), as_rng(rng)
        self.embed_dim = C = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = C // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        # transformers' registration order (k, v, q, out): the same state_dict order
        self.k_proj = Linear(C, C, dtype=dtype, rng=rng)
        self.v_proj = Linear(C, C, dtype=dtype, rng=rng)
        self.q_proj = Linear(C, C, dtype=dtype, rng=rng)
        self.out_proj = Linear(C, C, dtype=dtype, rng=rng)

    def forward(self, hidden_states, is_causal=None):
        """hidden_states: (B, S, C) -> (B, S, C)."""
        x = to_module_dtype("CLIPAttention: hidden_states", hidden_states, self.dtype)
        check_rank("CLIPAttention: hidden_states", x, 3, "(B, S, C)")
        check_dim("CLIPAttention: hidden_states", x, -1, self.embed_dim, "channels")
        if self.training and self.dropout > 0:
            raise NotImplementedError(f"CLIPAttention: attention_dropout={self.dropout} in "
                                      f"training mode is not implemented (call .eval())")
        causal = self.is_causal if is_causal is None else bool(is_causal)
        q = F.split_heads(self.q_proj(x), self.num_heads)  # (B, S, C) -> (B, nh, S, hd)
        k = F.split_heads(self.k_proj(x), self.num_heads)
        v = F.split_heads(self.v_proj(x), self.num_heads)
        out, cache = F.scaled_dot_product_attention(q, k, v, scale=self.scale, is_causal=causal,
                                                    return_cache=True)  # (B, nh, S, hd)
        out = self.out_proj(F.merge_heads(out))           # (B, nh, S, hd) -> (B, S, C)
        return self._record(out, cache)

    def backward(self, grad_out):
        """grad_out: (B, S, C) -> d hidden_states (B, S, C)."""
        cache = self._recall(grad_out)
        d = F.merge_heads_backward(self.out_proj.backward(grad_out), self.num_heads)
        dq, dk, dv = F.scaled_dot_product_attention_backward(d, cache)  # 3 x (B, nh, S, hd)
        dx_v = self.v_proj.backward(F.split_heads_backward(dv))         # (B, S, C) each
        dx_k = self.k_proj.backward(F.split_heads_backward(dk))
        dx_q = self.q_proj.backward(F.split_heads_backward(dq))
        return dx_q + dx_k + dx_v                         # x fed q, k and v: three paths add up


class CLIPMLP(Module):
    """`fc1` Linear(C, intermediate), `activation_fn` (config.hidden_act), `fc2` back to C."""

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        config, rng = CLIPTextConfig.from_any(config), as_rng(rng)
        self.activation_fn = ACT2CLS[config.hidden_act](dtype=dtype)
        self.fc1 = Linear(config.hidden_size, config.intermediate_size, dtype=dtype, rng=rng)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, dtype=dtype, rng=rng)

    def forward(self, hidden_states):
        """hidden_states: (..., C) -> (..., C)."""
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))

    def backward(self, grad_out):
        return self.fc1.backward(self.activation_fn.backward(self.fc2.backward(grad_out)))


class CLIPEncoderLayer(Module):
    """Pre-LN transformer layer: x + self_attn(layer_norm1(x)), then h + mlp(layer_norm2(h))."""

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        config, rng = CLIPTextConfig.from_any(config), as_rng(rng)
        eps = config.layer_norm_eps
        self.embed_dim = config.hidden_size
        self.self_attn = CLIPAttention(config, dtype=dtype, rng=rng)
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=eps, dtype=dtype)
        self.mlp = CLIPMLP(config, dtype=dtype, rng=rng)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=eps, dtype=dtype)

    def forward(self, hidden_states, is_causal=None):
        """hidden_states: (B, S, C) -> (B, S, C)."""
        x = to_module_dtype("CLIPEncoderLayer: hidden_states", hidden_states, self.dtype)
        h = x + self.self_attn(self.layer_norm1(x), is_causal=is_causal)
        out = h + self.mlp(self.layer_norm2(h))
        return self._record(out, None)

    def backward(self, grad_out):
        """grad_out: (B, S, C) -> d hidden_states (B, S, C)."""
        self._recall(grad_out)
        dh = grad_out + self.layer_norm2.backward(self.mlp.backward(grad_out))  # residual + MLP
        return dh + self.layer_norm1.backward(self.self_attn.backward(dh))  # residual + attention


class CLIPEncoder(Module):
    """`layers`: num_hidden_layers `CLIPEncoderLayer`s, applied in order."""

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        config, rng = CLIPTextConfig.from_any(config), as_rng(rng)
        self.layers = ModuleList([CLIPEncoderLayer(config, dtype=dtype, rng=rng)
                                  for _ in range(config.num_hidden_layers)], dtype=dtype)

    def forward(self, inputs_embeds, is_causal=None, output_hidden_states=False):
        """inputs_embeds: (B, S, C). Returns a `BaseModelOutput`: the last layer's output (B, S, C)
        and, if asked, the N + 1 hidden states (the input first)."""
        h = to_module_dtype("CLIPEncoder: inputs_embeds", inputs_embeds, self.dtype)
        states = [h]
        for layer in self.layers:
            h = layer(h, is_causal=is_causal)
            states.append(h)
        self._record(h, len(states))
        return BaseModelOutput(last_hidden_state=h,
                               hidden_states=tuple(states) if output_hidden_states else None)

    def backward(self, grad_out, grad_hidden_states=None):
        """grad_out: d last_hidden_state (B, S, C). grad_hidden_states: None, or one gradient (or
        None) per hidden state. Returns d inputs_embeds (B, S, C).

        hidden_states[i] is the input of layer i and an output of its own, so its gradient is the
        sum of the two: the one from the layers above and the one given for it.
        """
        count = self._recall(grad_out)
        extra = [None] * count if grad_hidden_states is None else list(grad_hidden_states)
        if len(extra) != count:
            raise ValueError(f"CLIPEncoder.backward: expected {count} hidden-state gradients, "
                             f"got {len(extra)}")
        d = grad_out if extra[-1] is None else grad_out + extra[-1]  # the last layer's output
        for i in reversed(range(len(self.layers))):
            d = self.layers[i].backward(d)
            if extra[i] is not None:
                d = d + extra[i]                          # hidden_states[i] is also an output
        return d


class CLIPTextTransformer(Module):
    """`embeddings`, `encoder` (causal), `final_layer_norm`; pooled at the end-of-text token."""

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        config, rng = CLIPTextConfig.from_any(config), as_rng(rng)
        self.config = config
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config, dtype=dtype, rng=rng)
        self.encoder = CLIPEncoder(config, dtype=dtype, rng=rng)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps,
                                          dtype=dtype)

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states=None):
        """input_ids: (B, S) ints, S <= max_position_embeddings. Returns a
        `BaseModelOutputWithPooling` (hidden states if `output_hidden_states`, by default the
        config's)."""
        if attention_mask is not None:
            raise ValueError("CLIPTextTransformer: attention_mask is not supported (only None): "
                             "the attention is causal, so padding after the end-of-text token "
                             "changes no feature up to it (diffusers' aMUSEd passes none)")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        check_integer("CLIPTextTransformer: input_ids", input_ids)
        check_rank("CLIPTextTransformer: input_ids", input_ids, 2, "(B, S)")
        hidden = self.embeddings(input_ids, position_ids)  # (B, S, C)
        enc = self.encoder(hidden, is_causal=True, output_hidden_states=output_hidden_states)
        last = self.final_layer_norm(enc.last_hidden_state)  # (B, S, C)
        positions = eos_positions(input_ids, self.eos_token_id)  # (B,)
        pooled = pool_at(last, positions)                 # (B, S, C) -> (B, C)
        self._record(last, positions)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=enc.hidden_states)

    def backward(self, grad_out, grad_pooler_output=None, grad_hidden_states=None):
        """grad_out: d last_hidden_state (B, S, C) (zeros if only other outputs matter);
        grad_pooler_output: (B, C) or None; grad_hidden_states: N + 1 gradients (or Nones).
        The ids take no gradient: returns None; parameter gradients accumulate in `grads()`."""
        positions = self._recall(grad_out)
        d = grad_out
        if grad_pooler_output is not None:                # the pooled row is part of `last`
            d = d + pool_at_backward(grad_pooler_output, positions, grad_out.shape)
        d = self.final_layer_norm.backward(d)
        d = self.encoder.backward(d, grad_hidden_states)
        return self.embeddings.backward(d)


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------
def add_text_model_prefix(state_dict):
    """transformers 5's `CLIPTextModel` keys (`embeddings.`, `encoder.`, `final_layer_norm.`)
    with the `text_model.` level the Hub's checkpoints (and this module) have; a state dict that
    has any `text_model.` key is returned unchanged."""
    if any(k.startswith("text_model.") for k in state_dict):
        return state_dict
    return {f"text_model.{k}": v for k, v in state_dict.items()}


def _init_draws(rng):
    """The models draw their initial weights in float32 (as `UVit2DModel`: ~7x faster, CLIP
    ViT-L/14's 124M parameters in about a second); a no-draws Generator passes through."""
    return float32_draws(rng)


def drop_position_ids(state_dict, max_position_embeddings):
    """Without `text_model.embeddings.position_ids`, the (1, max_position_embeddings) buffer that
    transformers saved with the weights before version 4.31 (older Hub checkpoints carry it): it
    is checked to hold 0, 1, ..., which the model computes itself, and any other content is a
    ValueError (that checkpoint would count positions differently)."""
    key = "text_model.embeddings.position_ids"
    if key not in state_dict:
        return state_dict
    value = np.asarray(state_dict[key])
    if not np.array_equal(value, np.arange(max_position_embeddings)[None, :]):
        raise ValueError(f"load_state_dict: {key} should hold 0..{max_position_embeddings - 1} "
                         f"(transformers' position buffer), got {value.tolist()}")
    return {k: v for k, v in state_dict.items() if k != key}


class _Pretrained:
    """`from_pretrained` / `save_pretrained` for transformers folders (config.json +
    model.safetensors), shared by both models."""

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, variant=None, subfolder="text_encoder"):
        """Load a transformers folder written by `save_pretrained` (or a diffusers pipeline folder
        holding one in `subfolder`), without torch. Returns the model in eval mode."""
        from .weights import load_transformers_pretrained
        config, state_dict = load_transformers_pretrained(path, variant, subfolder)
        model = cls(CLIPTextConfig.from_any(config), dtype=dtype,
                    rng=NoDraws())  # no draws: every weight is loaded
        model.load_state_dict(state_dict)
        return model.eval()

    def save_pretrained(self, path):
        """Write config.json and model.safetensors (keys with `text_model.`, the Hub's layout)
        that transformers' `from_pretrained` loads."""
        from safetensors.numpy import save_file
        os.makedirs(path, exist_ok=True)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__],
                  "model_type": "clip_text_model"}
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, default=str)
        arrays = {k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}
        save_file(arrays, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


class CLIPTextModel(_Pretrained, Module):
    """CLIP's text tower: `text_model` (a `CLIPTextTransformer`), keys `text_model.*`.

    `model(input_ids, output_hidden_states=True)` returns `last_hidden_state` (B, S, C),
    `pooler_output` (B, C) and `hidden_states` (N + 1 of (B, S, C), the embeddings first).
    """

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.config = CLIPTextConfig.from_any(config)
        self.text_model = CLIPTextTransformer(self.config, dtype=dtype, rng=_init_draws(rng))

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states=None):
        return self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)

    def backward(self, grad_out, grad_pooler_output=None, grad_hidden_states=None):
        """See `CLIPTextTransformer.backward`."""
        return self.text_model.backward(grad_out, grad_pooler_output, grad_hidden_states)

    def load_state_dict(self, state_dict, strict=True):
        """Either layout: the Hub's (`text_model.` keys) or transformers 5's (without); an old
        checkpoint's position buffer is checked and dropped (`drop_position_ids`)."""
        state_dict = add_text_model_prefix(state_dict)
        return super().load_state_dict(
            drop_position_ids(state_dict, self.config.max_position_embeddings), strict)


class CLIPTextModelWithProjection(_Pretrained, Module):
    """CLIP's text tower and its projection: `text_model`, `text_projection` Linear(C, P) without
    bias. The output adds `text_embeds` (B, P), the projected pooled feature (aMUSEd's
    `pooled_text_emb`)."""

    def __init__(self, config, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.config = CLIPTextConfig.from_any(config)
        if self.config.projection_dim is None:
            raise ValueError("CLIPTextModelWithProjection: the config has no projection_dim")
        rng = _init_draws(rng)
        self.text_model = CLIPTextTransformer(self.config, dtype=dtype, rng=rng)
        self.text_projection = Linear(self.config.hidden_size, self.config.projection_dim,
                                      bias=False, dtype=dtype, rng=rng)

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states=None):
        out = self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)
        text_embeds = self.text_projection(out.pooler_output)  # (B, C) -> (B, P)
        return CLIPTextModelOutput(text_embeds=text_embeds,
                                   last_hidden_state=out.last_hidden_state,
                                   hidden_states=out.hidden_states,
                                   pooler_output=out.pooler_output)

    def backward(self, grad_out, grad_text_embeds=None, grad_pooler_output=None,
                 grad_hidden_states=None):
        """grad_out: d last_hidden_state (B, S, C); grad_text_embeds (B, P), grad_pooler_output
        (B, C), grad_hidden_states (N + 1): each optional. Returns None (ids take no gradient)."""
        if grad_text_embeds is None:                      # still consume the projection's record
            grad_text_embeds = np.zeros((grad_out.shape[0], self.config.projection_dim),
                                        self.dtype)
        d_pooled = self.text_projection.backward(grad_text_embeds)  # (B, P) -> (B, C)
        if grad_pooler_output is not None:                # pooler_output is also an output
            d_pooled = d_pooled + grad_pooler_output
        return self.text_model.backward(grad_out, d_pooled, grad_hidden_states)

    def load_state_dict(self, state_dict, strict=True):
        """An old checkpoint's position buffer is checked and dropped (`drop_position_ids`)."""
        return super().load_state_dict(
            drop_position_ids(state_dict, self.config.max_position_embeddings), strict)
