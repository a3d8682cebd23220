"""CLIP's text encoder in PyTorch: the twin of `uvit_numpy.clip`.

transformers' class names, config fields and parameter names, with the module tree of the Hub's
checkpoints (`CLIPTextModel.text_model` is a `CLIPTextTransformer`), so

    ours.load_state_dict(transformers_model.state_dict())

works unchanged for `CLIPTextModelWithProjection`, and for `CLIPTextModel` in either layout
(transformers 5 keeps no `text_model.` level in `CLIPTextModel`; `load_state_dict` adds it).
Built from `torch.nn` layers and `F.scaled_dot_product_attention(is_causal=True)`; the config,
the output classes and the pooling rule are shared with the NumPy side.
"""

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from uvit_numpy.checks import check_dim, check_floating, check_integer, check_rank
from uvit_numpy.clip import (CONFIG_DEFAULTS, CONFIGS, HIDDEN_ACTS, BaseModelOutput,
                             BaseModelOutputWithPooling, CLIPTextConfig, CLIPTextModelOutput,
                             add_text_model_prefix, drop_position_ids)

from . import functional as UF
from .layers import Embedding, LayerNorm, Linear

__all__ = [
    "CONFIG_DEFAULTS", "CONFIGS", "HIDDEN_ACTS", "CLIPTextConfig", "eos_positions", "pool_at",
    "BaseModelOutput", "BaseModelOutputWithPooling", "CLIPTextModelOutput",
    "QuickGELUActivation", "CLIPTextEmbeddings", "CLIPAttention", "CLIPMLP", "CLIPEncoderLayer",
    "CLIPEncoder", "CLIPTextTransformer", "CLIPTextModel", "CLIPTextModelWithProjection",
]


def eos_positions(input_ids, eos_token_id):
    """(B, S) -> (B,): the largest id's first position if `eos_token_id == 2` (transformers'
    legacy rule), else the first position holding `eos_token_id` (0 if none)."""
    if eos_token_id == 2:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


def pool_at(x, positions):
    """x (B, S, C) -> (B, C): each row's feature at its position."""
    return x[torch.arange(x.shape[0], device=x.device), positions]


class QuickGELUActivation(nn.Module):
    """transformers' `quick_gelu`: x * sigmoid(1.702 x)."""

    def forward(self, x):
        return UF.quick_gelu(x)


ACT2CLS = {"quick_gelu": QuickGELUActivation, "gelu": nn.GELU}


class CLIPTextEmbeddings(nn.Module):
    """`token_embedding` (V, C) + `position_embedding` (max_position_embeddings, C)."""

    def __init__(self, config, dtype=None):
        super().__init__()
        config = CLIPTextConfig.from_any(config)
        C = config.hidden_size
        self.token_embedding = Embedding(config.vocab_size, C, dtype=dtype)
        self.position_embedding = Embedding(config.max_position_embeddings, C, dtype=dtype)

    def forward(self, input_ids, position_ids=None):
        check_integer("CLIPTextEmbeddings: input_ids", input_ids)
        check_rank("CLIPTextEmbeddings: input_ids", input_ids, 2, "(B, S)")
        B, S = input_ids.shape
        max_positions = self.position_embedding.num_embeddings
        if S > max_positions:
            raise ValueError(f"CLIPTextEmbeddings: expected at most max_position_embeddings = "
                             f"{max_positions} tokens, got {S}")
        if position_ids is None:
            position_ids = torch.arange(S, device=input_ids.device)[None, :]  # (1, S)
        check_integer("CLIPTextEmbeddings: position_ids", position_ids)
        if position_ids.ndim != 2 or position_ids.shape[0] not in (1, B) \
                or position_ids.shape[1] != S:
            raise ValueError(f"CLIPTextEmbeddings: expected position_ids of shape (1, {S}) or "
                             f"({B}, {S}), got {tuple(position_ids.shape)}")
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPAttention(nn.Module):
    """Self-attention with `q_proj`, `k_proj`, `v_proj`, `out_proj` (biases), via SDPA."""

    def __init__(self, config, dtype=None):
        super().__init__()
        config = CLIPTextConfig.from_any(config)
        self.embed_dim = C = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = C // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        self.k_proj = Linear(C, C, dtype=dtype)
        self.v_proj = Linear(C, C, dtype=dtype)
        self.q_proj = Linear(C, C, dtype=dtype)
        self.out_proj = Linear(C, C, dtype=dtype)

    def forward(self, hidden_states, is_causal=None):
        check_floating("CLIPAttention: hidden_states", hidden_states)
        check_rank("CLIPAttention: hidden_states", hidden_states, 3, "(B, S, C)")
        check_dim("CLIPAttention: hidden_states", hidden_states, -1, self.embed_dim, "channels")
        causal = self.is_causal if is_causal is None else bool(is_causal)
        B, S, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, S, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(hidden_states).view(B, S, self.num_heads, -1).transpose(1, 2)
        v = self.v_proj(hidden_states).view(B, S, self.num_heads, -1).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal,
                                             scale=self.scale)          # (B, nh, S, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, S, -1))     # (B, S, C)


class CLIPMLP(nn.Module):
    """`fc1`, `activation_fn` (config.hidden_act), `fc2`."""

    def __init__(self, config, dtype=None):
        super().__init__()
        config = CLIPTextConfig.from_any(config)
        self.activation_fn = ACT2CLS[config.hidden_act]()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size, dtype=dtype)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, dtype=dtype)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN layer: x + self_attn(layer_norm1(x)), then h + mlp(layer_norm2(h))."""

    def __init__(self, config, dtype=None):
        super().__init__()
        config = CLIPTextConfig.from_any(config)
        eps = config.layer_norm_eps
        self.embed_dim = config.hidden_size
        self.self_attn = CLIPAttention(config, dtype=dtype)
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=eps, dtype=dtype)
        self.mlp = CLIPMLP(config, dtype=dtype)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=eps, dtype=dtype)

    def forward(self, hidden_states, is_causal=None):
        h = hidden_states + self.self_attn(self.layer_norm1(hidden_states), is_causal=is_causal)
        return h + self.mlp(self.layer_norm2(h))


class CLIPEncoder(nn.Module):
    """`layers`: num_hidden_layers `CLIPEncoderLayer`s."""

    def __init__(self, config, dtype=None):
        super().__init__()
        config = CLIPTextConfig.from_any(config)
        self.layers = nn.ModuleList([CLIPEncoderLayer(config, dtype=dtype)
                                     for _ in range(config.num_hidden_layers)])

    def forward(self, inputs_embeds, is_causal=None, output_hidden_states=False):
        check_floating("CLIPEncoder: inputs_embeds", inputs_embeds)
        h, states = inputs_embeds, [inputs_embeds]
        for layer in self.layers:
            h = layer(h, is_causal=is_causal)
            states.append(h)
        return BaseModelOutput(last_hidden_state=h,
                               hidden_states=tuple(states) if output_hidden_states else None)


class CLIPTextTransformer(nn.Module):
    """`embeddings`, `encoder` (causal), `final_layer_norm`; pooled at the end-of-text token."""

    def __init__(self, config, dtype=None):
        super().__init__()
        self.config = config = CLIPTextConfig.from_any(config)
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config, dtype=dtype)
        self.encoder = CLIPEncoder(config, dtype=dtype)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps,
                                          dtype=dtype)

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states=None):
        if attention_mask is not None:
            raise ValueError("CLIPTextTransformer: attention_mask is not supported (only None): "
                             "the attention is causal, so padding after the end-of-text token "
                             "changes no feature up to it (diffusers' aMUSEd passes none)")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        check_integer("CLIPTextTransformer: input_ids", input_ids)
        check_rank("CLIPTextTransformer: input_ids", input_ids, 2, "(B, S)")
        hidden = self.embeddings(input_ids, position_ids)
        enc = self.encoder(hidden, is_causal=True, output_hidden_states=output_hidden_states)
        last = self.final_layer_norm(enc.last_hidden_state)
        pooled = pool_at(last, eos_positions(input_ids, self.eos_token_id))
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=enc.hidden_states)


class _Pretrained:
    """`from_pretrained` / `save_pretrained` for transformers folders, shared by both models."""

    @classmethod
    def from_pretrained(cls, path, dtype=None, variant=None, subfolder="text_encoder"):
        """Load a transformers folder (config.json + model.safetensors), or a pipeline folder's
        `subfolder`. Built on the meta device, the model takes the loaded tensors as its
        parameters (no random init); `dtype` defaults to the file's. Returns it in eval mode."""
        from .weights import load_transformers_pretrained
        config, state_dict = load_transformers_pretrained(path, variant, subfolder)
        if dtype is None:                                 # the weights' (not a buffer's)
            dtype = next((v.dtype for v in state_dict.values() if v.is_floating_point()),
                         torch.float32)
        with torch.device("meta"):
            model = cls(CLIPTextConfig.from_any(config), dtype=dtype)
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                               for k, v in state_dict.items()}, assign=True)
        return model.eval()

    def save_pretrained(self, path):
        """Write config.json and model.safetensors (the Hub's `text_model.` keys)."""
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__],
                  "model_type": "clip_text_model"}
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, default=str)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


class CLIPTextModel(_Pretrained, nn.Module):
    """CLIP's text tower: `text_model` (a `CLIPTextTransformer`)."""

    def __init__(self, config, dtype=None):
        super().__init__()
        self.config = CLIPTextConfig.from_any(config)
        self.text_model = CLIPTextTransformer(self.config, dtype=dtype)

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states=None):
        return self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Either layout: the Hub's (`text_model.` keys) or transformers 5's (without); an old
        checkpoint's position buffer is checked and dropped (`drop_position_ids`)."""
        state_dict = add_text_model_prefix(state_dict)
        return super().load_state_dict(
            drop_position_ids(state_dict, self.config.max_position_embeddings), strict, assign)


class CLIPTextModelWithProjection(_Pretrained, nn.Module):
    """`text_model` and `text_projection` Linear(C, P) without bias; adds `text_embeds`."""

    def __init__(self, config, dtype=None):
        super().__init__()
        self.config = CLIPTextConfig.from_any(config)
        if self.config.projection_dim is None:
            raise ValueError("CLIPTextModelWithProjection: the config has no projection_dim")
        self.text_model = CLIPTextTransformer(self.config, dtype=dtype)
        self.text_projection = Linear(self.config.hidden_size, self.config.projection_dim,
                                      bias=False, dtype=dtype)

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states=None):
        out = self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)
        return CLIPTextModelOutput(text_embeds=self.text_projection(out.pooler_output),
                                   last_hidden_state=out.last_hidden_state,
                                   hidden_states=out.hidden_states,
                                   pooler_output=out.pooler_output)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """An old checkpoint's position buffer is checked and dropped (`drop_position_ids`)."""
        return super().load_state_dict(
            drop_position_ids(state_dict, self.config.max_position_embeddings), strict, assign)
