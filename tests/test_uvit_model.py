"""U-ViT against the facts of the paper's code (/work/shared/specs/uvit.md), each computed here
independently of the model: keys, sizes, token order, the sinusoid, patch layout, long-skip pairing,
the block's formula, options and defaults. Every check runs on both packages."""

import inspect
import math

import numpy as np
import pytest
import torch

import uvit_numpy as N
import uvit_torch as T
from uvit_numpy import uvit as NU
from uvit_torch import uvit as TU
from uvit_torch.parity.uvit import SMALL, TEXT, model_inputs, uvit_pair
from uvit_torch.parity.harness import to_numpy

# The exact parameter counts of the paper's code, from the spec.
PAPER_PARAMS = {
    "cifar10_uvit_small": 44_255_328,
    "celeba64_uvit_small": 44_292_228,
    "imagenet64_uvit_mid": 130_940_292,
    "imagenet64_uvit_large": 286_827_652,
    "imagenet256_uvit_large": 286_763_172,
    "imagenet256_uvit_huge": 500_832_016,
    "imagenet512_uvit_large": 286_861_524,
    "imagenet512_uvit_huge": 500_942_656,
    "mscoco_uvit_small": 44_692_644,
    "mscoco_uvit_small_deep": 58_345_636,
}
# The paper's table of sizes: (millions of parameters, layers = depth + 1, width, heads).
PAPER_TABLE = {
    "cifar10_uvit_small": (44, 13, 512, 8),
    "mscoco_uvit_small_deep": (58, 17, 512, 8),
    "imagenet64_uvit_mid": (131, 17, 768, 12),
    "imagenet64_uvit_large": (287, 21, 1024, 16),
    "imagenet256_uvit_huge": (501, 29, 1152, 16),
}

OPTIONS = {
    "uncond": SMALL,
    "classes": dict(SMALL, num_classes=10),
    "no skip": dict(SMALL, skip=False),
    "no conv": dict(SMALL, conv=False),
    "time mlp, qkv bias": dict(SMALL, mlp_time_embed=True, qkv_bias=True),
    "P=4 C=4 depth 5": dict(SMALL, img_size=16, patch_size=4, in_chans=4, depth=5),
    "text": TEXT,
    "text no skip/conv, time mlp": dict(TEXT, skip=False, conv=False, mlp_time_embed=True),
}


def classes_for(kwargs):
    return (TU.UViTText, NU.UViTText) if "clip_dim" in kwargs else (TU.UViT, NU.UViT)


def pair(kwargs, dtype=np.float64):
    return uvit_pair(*classes_for(kwargs), (), kwargs, dtype)


def both(ours, theirs, fn):
    """fn(model, to_backend) for each package; results as NumPy arrays."""
    return [to_numpy(fn(ours, lambda a: a)),
            to_numpy(fn(theirs, lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray)
                        else a))]


def paper_keys(depth, num_classes=-1, mlp_time_embed=False, conv=True, skip=True,
               qkv_bias=False, text=False):
    """The state-dict keys of the paper's code, spelled out from the spec."""
    keys = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
            "norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    if mlp_time_embed:
        keys |= {"time_embed.0.weight", "time_embed.0.bias", "time_embed.2.weight",
                 "time_embed.2.bias"}
    if text:
        keys |= {"context_embed.weight", "context_embed.bias"}
    elif num_classes > 0:
        keys.add("label_emb.weight")
    if conv:
        keys |= {"final_layer.weight", "final_layer.bias"}
    blocks = ([f"in_blocks.{i}" for i in range(depth // 2)] + ["mid_block"]
              + [f"out_blocks.{i}" for i in range(depth // 2)])
    for b in blocks:
        keys |= {f"{b}.{n}.{p}" for n in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")}
        keys.add(f"{b}.attn.qkv.weight")
        if qkv_bias:
            keys.add(f"{b}.attn.qkv.bias")
        if skip and b.startswith("out_blocks"):
            keys |= {f"{b}.skip_linear.weight", f"{b}.skip_linear.bias"}
    return keys


# --------------------------------------------------------------------------------------------------
# Keys, sizes and configs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", list(OPTIONS))
def test_state_dict_keys_are_the_papers_and_match_between_packages(option):
    kwargs = OPTIONS[option]
    ours, theirs = pair(kwargs)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == tuple(theirs_sd[k].shape) for k in ours_sd)
    expected = paper_keys(kwargs["depth"], kwargs.get("num_classes", -1),
                          kwargs.get("mlp_time_embed", False), kwargs.get("conv", True),
                          kwargs.get("skip", True), kwargs.get("qkv_bias", False),
                          "clip_dim" in kwargs)
    assert set(ours_sd) == expected, (sorted(set(ours_sd) - expected),
                                      sorted(expected - set(ours_sd)))
    D, C, P = kwargs["embed_dim"], kwargs["in_chans"], kwargs["patch_size"]
    extras = (1 + kwargs["num_clip_token"] if "clip_dim" in kwargs
              else 2 if kwargs.get("num_classes", -1) > 0 else 1)
    L = (kwargs["img_size"] // P) ** 2
    assert ours_sd["pos_embed"].shape == (1, extras + L, D)
    assert ours_sd["patch_embed.proj.weight"].shape == (D, C, P, P)
    assert ours_sd["decoder_pred.weight"].shape == (P * P * C, D)
    assert ours_sd["in_blocks.0.attn.qkv.weight"].shape == (3 * D, D)
    assert ours_sd["in_blocks.0.mlp.fc1.weight"].shape == (4 * D, D)
    if kwargs.get("skip", True):
        assert ours_sd["out_blocks.0.skip_linear.weight"].shape == (D, 2 * D)


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_named_config_has_the_papers_exact_parameter_count(name):
    """Counted from our torch classes built on the meta device (no weights allocated)."""
    assert TU.count_parameters(name) == PAPER_PARAMS[name]
    with torch.device("meta"):
        model = T.UViT.from_config(name)
    assert isinstance(model, T.UViTText) == name.startswith("mscoco")
    assert len(model.in_blocks) + 1 + len(model.out_blocks) == model.depth + 1
    assert hasattr(model.final_layer, "weight") == (name not in ("imagenet256_uvit_huge",
                                                                 "imagenet512_uvit_huge"))


def test_numpy_and_torch_count_the_same_for_scaled_down_configs():
    """Each named config with a narrow width: NumPy and torch agree parameter for parameter, and
    the counts follow the closed form of the spec."""
    for name in NU.CONFIGS:
        small = {"embed_dim": 16, "num_heads": 2, "depth": 4}
        ours = N.UViT.from_config(name, **small)
        with torch.device("meta"):
            theirs = T.UViT.from_config(name, **small)
        assert type(ours).__name__ == type(theirs).__name__
        count = sum(p.numel() for p in theirs.parameters())
        assert ours.num_parameters() == count
        cfg = NU.config(name, **small)
        D, C, P, S = 16, cfg["in_chans"], cfg["patch_size"], cfg["img_size"]
        block = 2 * 2 * D + 3 * D * D + D * D + D + 4 * D * D + 4 * D + 4 * D * D + D
        extras = 1 + (cfg.get("num_clip_token", 0) or (1 if cfg.get("num_classes", -1) > 0
                                                       else 0))
        closed = (D * C * P * P + D + extras * D + (S // P) ** 2 * D + 5 * block
                  + 2 * (2 * D * D + D) + 2 * D + D * P * P * C + P * P * C
                  + (C * C * 9 + C if cfg.get("conv", True) else 0))
        if "clip_dim" in cfg:
            closed += cfg["clip_dim"] * D + D
        elif cfg.get("num_classes", -1) > 0:
            closed += cfg["num_classes"] * D
        assert count == closed, name


def test_sizes_table_reproduces_the_papers_table():
    rows = {row["name"]: row for row in TU.sizes_table()}
    assert set(rows) == set(PAPER_PARAMS)
    for name, (millions, layers, width, heads) in PAPER_TABLE.items():
        row = rows[name]
        assert (round(row["params"] / 1e6), row["layers"], row["embed_dim"], row["num_heads"]) \
            == (millions, layers, width, heads), name
    assert all(rows[n]["params"] == PAPER_PARAMS[n] for n in PAPER_PARAMS)


def test_from_config_rejects_unknown_names_and_applies_overrides():
    with pytest.raises(ValueError, match=r"unknown U-ViT config 'cifar11'.*cifar10_uvit_small"):
        N.UViT.from_config("cifar11")
    with pytest.raises(ValueError, match=r"unknown U-ViT config"):
        T.UViT.from_config("cifar11")
    model = N.UViT.from_config("mscoco_uvit_small", embed_dim=16, num_heads=2, depth=2,
                               clip_dim=8, num_clip_token=3, dtype=np.float64)
    assert isinstance(model, N.UViTText) and model.dtype == np.float64
    assert model.pos_embed.shape == (1, 1 + 3 + 256, 16)


@pytest.mark.parametrize("cls", [NU.UViT, TU.UViT, NU.UViTText, TU.UViTText])
def test_constructor_defaults_are_the_papers(cls):
    params = inspect.signature(cls).parameters
    expected = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                    num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                    mlp_time_embed=False, use_checkpoint=False, conv=True, skip=True)
    expected.update({"clip_dim": 768, "num_clip_token": 77} if "Text" in cls.__name__
                    else {"num_classes": -1})
    got = {k: params[k].default for k in expected}
    assert got == expected
    # after the paper's arguments: UViT's ablation options (defaults: the paper's model), dtype
    ablations = list(NU.ABLATION_DEFAULTS) if "Text" not in cls.__name__ else []
    assert {k: params[k].default for k in ablations} == {
        k: NU.ABLATION_DEFAULTS[k] for k in ablations}
    assert [p for p in params if p not in expected] == ablations + ["dtype"] + (
        ["rng"] if cls.__module__.startswith("uvit_numpy") else [])


# --------------------------------------------------------------------------------------------------
# The forward pass, fact by fact
# --------------------------------------------------------------------------------------------------
def sinusoid(t, D):
    """[cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / (D/2)), in float64."""
    k = np.arange(D // 2)
    args = t[:, None].astype(np.float64) * np.exp(-math.log(10000) * k / (D // 2))[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def patch_tokens(x, weight, bias):
    """Patch (h, w) -> token h * (W/P) + w, by an explicit loop: W (D, C, P, P) . patch + b."""
    B, C, H, W = x.shape
    D, _, P, _ = weight.shape
    out = np.zeros((B, (H // P) * (W // P), D))
    for h in range(H // P):
        for w in range(W // P):
            patch = x[:, :, h * P:(h + 1) * P, w * P:(w + 1) * P]
            out[:, h * (W // P) + w] = np.einsum("bcij,dcij->bd", patch, weight) + bias
    return out


@pytest.mark.parametrize("option", ["classes", "uncond", "text"])
def test_token_order_time_sinusoid_and_patch_order(option):
    kwargs = OPTIONS[option]
    ours, theirs = pair(kwargs)
    rng = np.random.default_rng(1)
    inputs = model_inputs(ours, rng, 3, np.float64)
    x, t = inputs[0], inputs[1]
    sd = ours.state_dict()
    D = kwargs["embed_dim"]
    for tokens in both(ours, theirs, lambda m, tb: m.embed(*[tb(a) for a in inputs])):
        tokens = tokens - sd["pos_embed"]
        if option == "classes":
            np.testing.assert_allclose(tokens[:, 0], sd["label_emb.weight"][inputs[2]], 0, 1e-12)
            time, rest = tokens[:, 1], tokens[:, 2:]
        elif option == "text":
            time = tokens[:, 0]
            text = inputs[2] @ sd["context_embed.weight"].T + sd["context_embed.bias"]
            np.testing.assert_allclose(tokens[:, 1:1 + TEXT["num_clip_token"]], text,
                                       rtol=1e-12, atol=1e-12)
            rest = tokens[:, 1 + TEXT["num_clip_token"]:]
        else:
            time, rest = tokens[:, 0], tokens[:, 1:]
        np.testing.assert_allclose(time, sinusoid(t, D), rtol=0, atol=1e-12)
        expected = patch_tokens(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"])
        np.testing.assert_allclose(rest, expected, rtol=1e-12, atol=1e-12)


def test_time_mlp_is_linear_silu_linear():
    ours, theirs = pair(dict(SMALL, mlp_time_embed=True))
    sd = ours.state_dict()
    t = np.array([0.0, 17.5, 999.0])
    s = sinusoid(t, SMALL["embed_dim"])
    h = s @ sd["time_embed.0.weight"].T + sd["time_embed.0.bias"]
    expected = (h / (1 + np.exp(-h))) @ sd["time_embed.2.weight"].T + sd["time_embed.2.bias"]
    for token in both(ours, theirs, lambda m, tb: m.time_token(tb(t))):
        np.testing.assert_allclose(token[:, 0], expected, rtol=1e-12, atol=1e-12)


def test_float32_sinusoid_is_the_correctly_rounded_float64_one():
    """The deliberate difference from the paper's code: our float32 time token is the float64
    sinusoid rounded once; the paper's float32 arithmetic differs from it by float32 rounding of
    the argument t f_k only (a few 1e-5 at t ~ 1000)."""
    t = np.array([0.0, 1.5, 250.25, 999.0], np.float32)
    D = 64
    exact = sinusoid(t.astype(np.float64), D).astype(np.float32)
    ours = N.UViT(**dict(SMALL, embed_dim=D), dtype=np.float32).time_token(t)[:, 0]
    theirs = T.UViT(**dict(SMALL, embed_dim=D)).time_token(torch.from_numpy(t))[:, 0]
    np.testing.assert_array_equal(ours, exact)
    np.testing.assert_array_equal(theirs.detach().numpy(), exact)
    k = torch.arange(D // 2, dtype=torch.float32)
    args = torch.from_numpy(t)[:, None] * torch.exp(-math.log(10000) * k / (D // 2))[None]
    paper = torch.cat([torch.cos(args), torch.sin(args)], dim=1).numpy()
    assert 0 < np.abs(paper - exact).max() < 2e-4


def test_decode_drops_the_extras_and_places_patches_row_major():
    kwargs = dict(SMALL, num_classes=5, conv=False, patch_size=4, img_size=8, in_chans=2)
    ours, theirs = pair(kwargs)
    sd = ours.state_dict()
    rng = np.random.default_rng(2)
    tokens = rng.standard_normal((2, 2 + 4, kwargs["embed_dim"]))
    mu = tokens.mean(-1, keepdims=True)
    var = ((tokens - mu) ** 2).mean(-1, keepdims=True)
    normed = (tokens - mu) / np.sqrt(var + 1e-5) * sd["norm.weight"] + sd["norm.bias"]
    pred = normed @ sd["decoder_pred.weight"].T + sd["decoder_pred.bias"]   # (2, 6, P*P*C)
    expected = np.zeros((2, 2, 8, 8))
    P, C = 4, 2
    for h in range(2):
        for w in range(2):
            for p1 in range(P):
                for p2 in range(P):
                    for c in range(C):
                        expected[:, c, h * P + p1, w * P + p2] = \
                            pred[:, 2 + h * 2 + w, (p1 * P + p2) * C + c]
    for image in both(ours, theirs, lambda m, tb: m.decode(tb(tokens))):
        np.testing.assert_allclose(image, expected, rtol=1e-12, atol=1e-12)


def test_final_conv_is_3x3_padding_1_on_the_image():
    ours, theirs = pair(SMALL)
    sd = ours.state_dict()
    no_conv = NU.UViT(**dict(SMALL, conv=False), dtype=np.float64)
    no_conv.load_state_dict({k: v for k, v in sd.items() if not k.startswith("final_layer")})
    inputs = model_inputs(ours, np.random.default_rng(3), 2, np.float64)
    img = no_conv(*inputs)                                          # before the conv
    pad = np.pad(img, ((0, 0), (0, 0), (1, 1), (1, 1)))
    W, b = sd["final_layer.weight"], sd["final_layer.bias"]
    expected = np.zeros_like(img)
    for i in range(3):
        for j in range(3):
            expected += np.einsum("bchw,oc->bohw", pad[:, :, i:i + 8, j:j + 8], W[:, :, i, j])
    expected += b[None, :, None, None]
    for out in both(ours, theirs, lambda m, tb: m(*[tb(a) for a in inputs])):
        np.testing.assert_allclose(out, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("option", ["uncond", "P=4 C=4 depth 5", "text"])
def test_long_skips_pair_first_in_with_last_out(option):
    """Run the blocks by hand: out_blocks[i] takes in_blocks[-1 - i]'s output. The forward pass
    and its returned activations must match; pairing them the other way round must not."""
    ours, theirs = pair(OPTIONS[option])
    inputs = model_inputs(ours, np.random.default_rng(4), 2, np.float64)

    def by_hand(m, tb, reverse=True):
        x = m.embed(*[tb(a) for a in inputs])
        outs = []
        for blk in m.in_blocks:
            x = blk(x)
            outs.append(x)
        x = m.mid_block(x)
        for i, blk in enumerate(m.out_blocks):
            x = blk(x, outs[len(outs) - 1 - i] if reverse else outs[i])
        return m.decode(x)

    for m, tb in ((ours, lambda a: a), (theirs, torch.from_numpy)):
        with torch.no_grad():
            out, acts = m(*[tb(a) for a in inputs], return_activations=True)
            hand = to_numpy(by_hand(m, tb))
            wrong = to_numpy(by_hand(m, tb, reverse=False))
        np.testing.assert_allclose(to_numpy(out), hand, rtol=1e-13, atol=1e-13)
        assert np.abs(wrong - hand).max() > 1e-3
        assert len(acts["in_blocks"]) == len(acts["out_blocks"]) == len(m.in_blocks)
        np.testing.assert_array_equal(to_numpy(acts["embed"]),
                                      to_numpy(m.embed(*[tb(a) for a in inputs])))
        np.testing.assert_array_equal(to_numpy(m.decode(acts["out_blocks"][-1])), to_numpy(out))


def test_long_skip_concatenates_x_first_then_skip():
    """Zero skip_linear's second half and the skip stops mattering; zero the first and x does."""
    D = 16
    ours, theirs = uvit_pair(TU.Block, NU.Block, (D, 2), {"skip": True}, np.float64)
    rng = np.random.default_rng(5)
    x1, x2, s1, s2 = rng.standard_normal((4, 2, 5, D))
    for half, (a, b) in ((slice(D, None), ((x1, s1), (x1, s2))),
                         (slice(None, D), ((x1, s1), (x2, s1)))):
        m_ours = NU.Block(D, 2, skip=True, dtype=np.float64)
        sd = ours.state_dict()
        sd = {k: v.copy() for k, v in sd.items()}
        sd["skip_linear.weight"][:, half] = 0.0
        m_ours.load_state_dict(sd)
        m_theirs = TU.Block(D, 2, skip=True, dtype=torch.float64)
        m_theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        for m, tb in ((m_ours, lambda v: v), (m_theirs, torch.from_numpy)):
            with torch.no_grad():
                np.testing.assert_allclose(to_numpy(m(tb(a[0]), tb(a[1]))),
                                           to_numpy(m(tb(b[0]), tb(b[1]))), rtol=0, atol=1e-13)
    # unmodified, both inputs matter
    assert np.abs(ours(x1, s1) - ours(x1, s2)).max() > 1e-3
    assert np.abs(ours(x1, s1) - ours(x2, s1)).max() > 1e-3
    parts = NU.long_skip_parts(x1, s1, ours.skip_linear)
    np.testing.assert_allclose(parts[0] + parts[1] + ours.skip_linear.bias,
                               NU.long_skip(x1, s1, ours.skip_linear), rtol=1e-13, atol=1e-13)


def reference_block(x, sd, heads, skip=None, prefix=""):
    """The spec's block, written out with per-head loops: [skip_linear], x + attn(LN1 x),
    x + mlp(LN2 x); qkv split as (3, nh, hd) on the feature axis; exact GELU."""
    from scipy.special import erf

    def p(name):
        return sd[prefix + name]

    def ln(v, name):
        mu = v.mean(-1, keepdims=True)
        return ((v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
                * p(name + ".weight") + p(name + ".bias"))

    if skip is not None:
        x = np.concatenate([x, skip], -1) @ p("skip_linear.weight").T + p("skip_linear.bias")
    B, L, D = x.shape
    hd = D // heads
    qkv = ln(x, "norm1") @ p("attn.qkv.weight").T
    if prefix + "attn.qkv.bias" in sd:
        qkv = qkv + p("attn.qkv.bias")
    out = np.zeros((B, L, D))
    for r in range(heads):
        q = qkv[..., r * hd:(r + 1) * hd]
        k = qkv[..., D + r * hd:D + (r + 1) * hd]
        v = qkv[..., 2 * D + r * hd:2 * D + (r + 1) * hd]
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        w = np.exp(s - s.max(-1, keepdims=True))
        out[..., r * hd:(r + 1) * hd] = (w / w.sum(-1, keepdims=True)) @ v
    x = x + out @ p("attn.proj.weight").T + p("attn.proj.bias")
    h = ln(x, "norm2") @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    return x + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")


@pytest.mark.parametrize("skip, qkv_bias", [(False, False), (True, True)])
def test_block_is_the_specs_pre_norm_block(skip, qkv_bias):
    D, heads = 24, 3
    ours, theirs = uvit_pair(TU.Block, NU.Block, (D, heads),
                             {"skip": skip, "qkv_bias": qkv_bias}, np.float64)
    rng = np.random.default_rng(6)
    x, s = rng.standard_normal((2, 2, 7, D))
    expected = reference_block(x, ours.state_dict(), heads, s if skip else None)
    args = (x, s) if skip else (x,)
    for out in both(ours, theirs, lambda m, tb: m(*[tb(a) for a in args])):
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_whole_model_matches_the_spec_written_out():
    """An end-to-end reference built only from the spec's facts and the state dict."""
    kwargs = dict(SMALL, num_classes=6, mlp_time_embed=False)
    ours, theirs = pair(kwargs)
    sd = ours.state_dict()
    rng = np.random.default_rng(7)
    x, t, y = model_inputs(ours, rng, 2, np.float64)
    tokens = np.concatenate([sd["label_emb.weight"][y][:, None], sinusoid(t, 32)[:, None],
                             patch_tokens(x, sd["patch_embed.proj.weight"],
                                          sd["patch_embed.proj.bias"])], 1) + sd["pos_embed"]
    skips = []
    for i in range(2):
        tokens = reference_block(tokens, sd, 4, prefix=f"in_blocks.{i}.")
        skips.append(tokens)
    tokens = reference_block(tokens, sd, 4, prefix="mid_block.")
    for i in range(2):
        tokens = reference_block(tokens, sd, 4, skips.pop(), prefix=f"out_blocks.{i}.")
    expected_tokens = tokens
    for out_tokens in both(ours, theirs, lambda m, tb: m.run_blocks(m.embed(tb(x), tb(t),
                                                                             tb(y)))):
        np.testing.assert_allclose(out_tokens, expected_tokens, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------------------------------
# Options, init, training-time behaviour
# --------------------------------------------------------------------------------------------------
def test_skip_false_blocks_take_no_skip_and_change_the_output():
    with_skip, _ = pair(SMALL)
    no_skip = NU.UViT(**dict(SMALL, skip=False), dtype=np.float64)
    no_skip.load_state_dict({k: v for k, v in with_skip.state_dict().items()
                             if "skip_linear" not in k})
    assert all(blk.skip_linear is None for blk in no_skip.out_blocks)
    inputs = model_inputs(with_skip, np.random.default_rng(8), 2, np.float64)
    assert np.abs(with_skip(*inputs) - no_skip(*inputs)).max() > 1e-3


def test_odd_depth_gives_depth_over_2_blocks_each_side():
    for depth in (1, 4, 5):
        for m in (NU.UViT(**dict(SMALL, depth=depth)), TU.UViT(**dict(SMALL, depth=depth))):
            assert (len(m.in_blocks), len(m.out_blocks)) == (depth // 2, depth // 2)


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_paper_initialisation(package):
    kwargs = dict(SMALL, embed_dim=64, num_classes=3, mlp_time_embed=True)
    if package == "numpy":
        sd = NU.UViT(**kwargs, rng=0).state_dict()
    else:
        torch.manual_seed(0)
        sd = {k: v.detach().numpy() for k, v in TU.UViT(**kwargs).state_dict().items()}
    linear_w = np.concatenate([v.ravel() for k, v in sd.items()
                               if k.endswith("weight") and v.ndim == 2 and "label_emb" not in k])
    assert abs(linear_w.std() - 0.02) < 0.002 and np.abs(linear_w).max() < 2
    assert abs(sd["pos_embed"].std() - 0.02) < 0.004
    for k, v in sd.items():
        if k.endswith("bias") and not k.startswith(("patch_embed", "final_layer")):
            assert not v.any(), k
        if ("norm" in k) and k.endswith("weight"):
            assert (v == 1).all(), k
    assert abs(sd["label_emb.weight"].std() - 1.0) < 0.2        # nn.Embedding's N(0, 1)


def test_torch_gradient_checkpointing_changes_nothing():
    torch.manual_seed(0)
    plain = TU.UViT(**SMALL, dtype=torch.float64).train()
    ckpt = TU.UViT(**SMALL, use_checkpoint=True, dtype=torch.float64).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([3.0, 500.0], dtype=torch.float64)
    grads = []
    for m in (plain, ckpt):
        m.zero_grad()
        out = m(x, t)
        (out ** 2).sum().backward()
        grads.append((out.detach(), m.in_blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-13)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-13)
    assert grads[0][1].abs().max() > 0


def test_numpy_model_converts_and_computes_in_its_dtype():
    model = NU.UViT(**SMALL, dtype=np.float64)
    x = np.zeros((1, 3, 8, 8), np.float32)
    assert model(x, np.array([5])).dtype == np.float64
    assert model.astype(np.float32)(x, np.array([5.0])).dtype == np.float32
