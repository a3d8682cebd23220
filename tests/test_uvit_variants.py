"""The U-ViT paper's ablation variants (Sec. 3.1, Fig. 2) as options of `UViT`, in both packages.

Each variant is checked against its formula written out here from the state dict (torch's own
functions as the oracle where a convolution is involved), the defaults against the paper's model,
and the options against model folders. NumPy against torch, forward and backward, is the parity
report's `ablation_cases` (run by test_uvit_parity.py and test_backward.py); central differences
in float64 are here.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from uvit_numpy import functional as F
from uvit_numpy import uvit as NU
from uvit_numpy.gradcheck import module_directional_error
from uvit_torch import uvit as TU
from uvit_torch.parity import grads
from uvit_torch.parity.harness import to_numpy
from uvit_torch.parity.uvit import SMALL, model_inputs, uvit_pair

VARIANTS = {
    "skip add": dict(skip_mode="add"),
    "skip project_skip": dict(skip_mode="project_skip"),
    "skip project_sum": dict(skip_mode="project_sum"),
    "adaln": dict(time_mode="adaln"),
    "conv before": dict(conv_position="before"),
    "conv stem": dict(patch_embed_type="conv"),
    "sincos2d": dict(pos_embed_type="sincos2d"),
}
BASE = dict(SMALL, num_classes=5)


def pair(kwargs, dtype=np.float64):
    return uvit_pair(TU.UViT, NU.UViT, (), kwargs, dtype)


def both(ours, theirs, fn):
    """fn(model, to_backend) for each package; results as NumPy arrays."""
    with torch.no_grad():
        return [to_numpy(fn(ours, lambda a: a)),
                to_numpy(fn(theirs, lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray)
                            else a))]


def layer_norm(v, weight=None, bias=None):
    mu = v.mean(-1, keepdims=True)
    out = (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    return out if weight is None else out * weight + bias


# --------------------------------------------------------------------------------------------------
# The defaults are the paper's model
# --------------------------------------------------------------------------------------------------
def test_the_defaults_are_the_papers_model_in_both_packages():
    """Passing the defaults explicitly changes no key, no initial weight and no output."""
    plain = NU.UViT(**BASE, dtype=np.float64, rng=3)
    explicit = NU.UViT(**BASE, **NU.ABLATION_DEFAULTS, dtype=np.float64, rng=3)
    assert list(plain.state_dict()) == list(explicit.state_dict())
    for k, v in plain.state_dict().items():
        np.testing.assert_array_equal(v, explicit.state_dict()[k], err_msg=k)
    inputs = model_inputs(plain, np.random.default_rng(0), 2, np.float64)
    np.testing.assert_array_equal(plain.eval()(*inputs), explicit.eval()(*inputs))
    assert {k: plain.config[k] for k in NU.ABLATION_DEFAULTS} == NU.ABLATION_DEFAULTS
    theirs = TU.UViT(**BASE)
    assert list(theirs.state_dict()) == list(plain.state_dict())
    assert {k: theirs.config[k] for k in NU.ABLATION_DEFAULTS} == NU.ABLATION_DEFAULTS


def test_a_folder_written_before_the_options_loads_with_the_defaults(tmp_path):
    """config.json without the option keys (the shipped uvit-digits' is one) gives the paper's
    model in both packages, computing what the model that wrote it computes."""
    from uvit_numpy import pretrained
    with open(f"{pretrained.path('uvit-digits')}/config.json", encoding="utf-8") as f:
        assert not set(NU.ABLATION_DEFAULTS) & set(json.load(f))
    ours, _ = pair(BASE)
    ours.save_pretrained(tmp_path)
    with open(tmp_path / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    assert {k: config[k] for k in NU.ABLATION_DEFAULTS} == NU.ABLATION_DEFAULTS
    for k in NU.ABLATION_DEFAULTS:
        del config[k]
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f)
    inputs = model_inputs(ours, np.random.default_rng(1), 2, np.float64)
    expected = ours(*inputs)
    loaded = (NU.UViT.from_pretrained(tmp_path, dtype=np.float64),
              TU.UViT.from_pretrained(tmp_path))
    for m in loaded:
        assert {k: m.config[k] for k in NU.ABLATION_DEFAULTS} == NU.ABLATION_DEFAULTS
    for out in both(*loaded, lambda m, tb: m(*[tb(a) for a in inputs])):
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_a_variant_travels_through_a_model_folder(tmp_path):
    """The options are written to config.json and rebuild the same model in either package."""
    kwargs = dict(BASE, **{k: v for opts in VARIANTS.values() for k, v in opts.items()
                           if k != "skip_mode"}, skip_mode="project_sum")
    ours, _ = pair(kwargs)
    ours.save_pretrained(tmp_path)
    inputs = model_inputs(ours, np.random.default_rng(2), 2, np.float64)
    back = NU.UViT.from_pretrained(tmp_path, dtype=np.float64)
    port = TU.UViT.from_pretrained(tmp_path)
    assert back.config == ours.config == port.config
    np.testing.assert_array_equal(back(*inputs), ours(*inputs))
    with torch.no_grad():
        theirs = to_numpy(port(*[torch.from_numpy(a) for a in inputs]))
    np.testing.assert_allclose(theirs, ours(*inputs), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Each variant is what the paper describes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", NU.SKIP_MODES)
def test_long_skip_modes_follow_their_formulas(mode):
    """h_m = x, h_s = skip: Linear(Concat(h_m, h_s)), h_m + h_s, h_m + Linear(h_s),
    Linear(h_m + h_s)."""
    D = 12
    ours, theirs = uvit_pair(TU.Block, NU.Block, (D, 2), {"skip": True, "skip_mode": mode},
                             np.float64)
    rng = np.random.default_rng(3)
    x, s = rng.standard_normal((2, 2, 5, D))
    sd = ours.state_dict()
    W, b = sd.get("skip_linear.weight"), sd.get("skip_linear.bias")
    expected = {"concat": lambda: np.concatenate([x, s], -1) @ W.T + b,
                "add": lambda: x + s,
                "project_skip": lambda: x + s @ W.T + b,
                "project_sum": lambda: (x + s) @ W.T + b}[mode]()
    assert W is None if mode == "add" else W.shape == ((D, 2 * D) if mode == "concat" else (D, D))
    for joined in both(ours, theirs, lambda m, tb: TU.long_skip(tb(x), tb(s), m.skip_linear, mode)
                       if isinstance(m, torch.nn.Module)
                       else NU.long_skip(x, s, m.skip_linear, mode)):
        np.testing.assert_allclose(joined, expected, rtol=0, atol=1e-13)
    assert np.abs(ours(x, s) - ours(x, 2 * s)).max() > 1e-3       # the skip is used


def test_skip_add_has_the_parameters_of_no_skip_and_a_different_output():
    add, _ = pair(dict(BASE, skip_mode="add"))
    none = NU.UViT(**dict(BASE, skip=False), dtype=np.float64)
    assert list(add.state_dict()) == list(none.state_dict())
    none.load_state_dict(add.state_dict())
    inputs = model_inputs(add, np.random.default_rng(4), 2, np.float64)
    assert np.abs(add(*inputs) - none(*inputs)).max() > 1e-3


def test_adaln_is_one_plus_scale_times_layer_norm_plus_shift():
    """AdaLN(h, y) = y_s LayerNorm(h) + y_b, [y_s - 1, y_b] = W emb + c; no affine of its own."""
    D = 16
    ours, theirs = uvit_pair(TU.AdaLN, NU.AdaLN, (D,), {}, np.float64)
    sd = ours.state_dict()
    assert set(sd) == {"linear.weight", "linear.bias"}
    rng = np.random.default_rng(5)
    x, emb = rng.standard_normal((3, 7, D)), rng.standard_normal((3, D))
    m = emb @ sd["linear.weight"].T + sd["linear.bias"]              # (3, 2D), scale first
    expected = (1 + m[:, None, :D]) * layer_norm(x) + m[:, None, D:]
    for out in both(ours, theirs, lambda mod, tb: mod(tb(x), tb(emb))):
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-13)


def test_adaln_model_has_no_time_token_and_gives_every_norm_the_time():
    kwargs = dict(BASE, time_mode="adaln")
    ours, theirs = pair(kwargs)
    L = (BASE["img_size"] // BASE["patch_size"]) ** 2
    assert ours.extras == theirs.extras == 1                          # the label token only
    assert ours.pos_embed.shape == (1, 1 + L, BASE["embed_dim"])
    keys = set(ours.state_dict())
    blocks = [f"in_blocks.{i}" for i in range(2)] + ["mid_block"] + [
        f"out_blocks.{i}" for i in range(2)]
    for blk in blocks:
        for norm in ("norm1", "norm2"):
            assert f"{blk}.{norm}.linear.weight" in keys and f"{blk}.{norm}.weight" not in keys
    assert "norm.weight" in keys                                      # the final norm is plain
    x, t, y = model_inputs(ours, np.random.default_rng(6), 2, np.float64)
    t2 = t + 100.0
    for tokens, tokens2 in zip(both(ours, theirs, lambda m, tb: m.embed(tb(x), tb(t), tb(y))),
                               both(ours, theirs, lambda m, tb: m.embed(tb(x), tb(t2), tb(y)))):
        np.testing.assert_array_equal(tokens, tokens2)               # no time among the tokens
    assert np.abs(ours(x, t, y) - ours(x, t2, y)).max() > 1e-3       # the blocks see it
    np.testing.assert_array_equal(ours.time_embedding(t), ours.time_token(t)[:, 0])


def test_adaln_takes_the_papers_init_and_starts_near_a_layer_norm():
    """A fresh AdaLN's linear is trunc N(0, 0.02^2) with a zero bias (the paper's init of every
    Linear), so y_s = 1 + O(0.02) and y_b = O(0.02) at the start of training."""
    for sd in (NU.UViT(**dict(BASE, embed_dim=64, time_mode="adaln"), rng=0).state_dict(),
               {k: v.detach().numpy() for k, v in
                TU.UViT(**dict(BASE, embed_dim=64, time_mode="adaln")).state_dict().items()}):
        w = np.concatenate([v.ravel() for k, v in sd.items() if k.endswith("norm1.linear.weight")])
        assert abs(w.std() - 0.02) < 0.002
        assert not any(v.any() for k, v in sd.items() if k.endswith("linear.bias"))


def test_conv_before_is_a_3x3_conv_on_the_token_grid_before_decoder_pred():
    kwargs = dict(BASE, conv_position="before", patch_size=4, img_size=8, in_chans=2)
    ours, theirs = pair(kwargs)
    sd = ours.state_dict()
    D, P, C = kwargs["embed_dim"], 4, 2
    assert sd["token_conv.weight"].shape == (D, D, 3, 3)
    assert not any(k.startswith("final_layer") for k in sd)
    tokens = np.random.default_rng(7).standard_normal((2, 2 + 4, D))  # label, time, 2x2 patches
    normed = layer_norm(tokens, sd["norm.weight"], sd["norm.bias"])[:, 2:]   # (2, 4, D)
    grid = torch.from_numpy(normed.reshape(2, 2, 2, D).transpose(0, 3, 1, 2).copy())
    conv = TF.conv2d(grid, torch.from_numpy(sd["token_conv.weight"]),
                     torch.from_numpy(sd["token_conv.bias"]), padding=1).numpy()  # (2, D, 2, 2)
    pred = conv.transpose(0, 2, 3, 1).reshape(2, 4, D) @ sd["decoder_pred.weight"].T \
        + sd["decoder_pred.bias"]                                     # (2, 4, P*P*C)
    expected = np.zeros((2, C, 8, 8))
    for h in range(2):
        for w in range(2):
            patch = pred[:, h * 2 + w].reshape(2, P, P, C)            # (p1, p2, C) layout
            expected[:, :, h * P:(h + 1) * P, w * P:(w + 1) * P] = patch.transpose(0, 3, 1, 2)
    for image in both(ours, theirs, lambda m, tb: m.decode(tb(tokens))):
        np.testing.assert_allclose(image, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("P, widths", [(2, [3, 32]), (4, [3, 16, 32]), (8, [3, 8, 16, 32])])
def test_conv_stem_is_stride_2_convs_with_relu_then_a_1x1_conv(P, widths):
    ours, theirs = uvit_pair(TU.ConvPatchEmbed, NU.ConvPatchEmbed, (P, 3, 32), {}, np.float64)
    sd = ours.state_dict()
    convs = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("stem.")})
    assert [sd[f"{c}.weight"].shape for c in convs] == [
        (o, i, 3, 3) for i, o in zip(widths[:-1], widths[1:])]
    assert sd["proj.weight"].shape == (32, 32, 1, 1)
    x = np.random.default_rng(8).standard_normal((2, 3, 16, 8))
    h = torch.from_numpy(x)
    for c in convs:
        h = torch.relu(TF.conv2d(h, torch.from_numpy(sd[f"{c}.weight"]),
                                 torch.from_numpy(sd[f"{c}.bias"]), stride=2, padding=1))
    h = TF.conv2d(h, torch.from_numpy(sd["proj.weight"]), torch.from_numpy(sd["proj.bias"]))
    expected = h.flatten(2).transpose(1, 2).numpy()                    # row-major tokens
    assert expected.shape == (2, (16 // P) * (8 // P), 32)
    for tokens in both(ours, theirs, lambda m, tb: m(tb(x))):
        np.testing.assert_allclose(tokens, expected, rtol=0, atol=1e-12)


def test_sincos2d_positions_are_the_row_and_column_sinusoids():
    D, g = 16, 3
    table = F.sincos_2d_position_embedding(g, g, D, extras=2)
    assert table.shape == (1, 2 + g * g, D) and not table[0, :2].any()
    for i in range(g):
        for j in range(g):
            row = table[0, 2 + i * g + j]
            for k in range(D // 4):
                w = 10000.0 ** (-k / (D // 4))
                np.testing.assert_allclose(
                    [row[k], row[D // 4 + k], row[D // 2 + k], row[3 * D // 4 + k]],
                    [math.sin(i * w), math.cos(i * w), math.sin(j * w), math.cos(j * w)],
                    rtol=0, atol=1e-15)
    kwargs = dict(BASE, pos_embed_type="sincos2d")
    ours, theirs = pair(kwargs)
    assert "pos_embed" not in ours.state_dict() and "pos_embed" not in theirs.state_dict()
    learned = NU.UViT(**BASE, dtype=np.float64)
    learned.load_state_dict({**ours.state_dict(), "pos_embed": F.sincos_2d_position_embedding(
        4, 4, BASE["embed_dim"], extras=2)})
    inputs = model_inputs(ours, np.random.default_rng(9), 2, np.float64)
    for out in both(ours, theirs, lambda m, tb: m(*[tb(a) for a in inputs])):
        np.testing.assert_allclose(out, learned.eval()(*inputs), rtol=0, atol=1e-12)


def test_parameter_counts_follow_each_change():
    """Counted in both packages, against the base model plus or minus what each variant changes."""
    D, C, P, depth = BASE["embed_dim"], BASE["in_chans"], BASE["patch_size"], BASE["depth"]
    L, n_out, n_blocks = (BASE["img_size"] // P) ** 2, depth // 2, depth // 2 * 2 + 1
    base = NU.UViT(**BASE).num_parameters()
    expected = {
        "skip add": base - n_out * (2 * D * D + D),
        "skip project_skip": base - n_out * D * D,
        "skip project_sum": base - n_out * D * D,
        "adaln": base - D + n_blocks * 2 * (D * 2 * D + 2 * D - 2 * D),
        "conv before": base - (C * C * 9 + C) + (D * D * 9 + D),
        "conv stem": base - (D * C * P * P + D) + (C * D * 9 + D) + (D * D + D),
        "sincos2d": base - (2 + L) * D,
    }
    for name, options in VARIANTS.items():
        ours = NU.UViT(**BASE, **options).num_parameters()
        theirs = TU.count_parameters(TU.UViT(**BASE, **options))
        assert ours == theirs == expected[name], name


@pytest.mark.parametrize("package", [NU, TU])
def test_bad_options_are_named(package):
    for bad, match in [(dict(skip_mode="sum"), r"skip_mode in \('concat', 'add'"),
                       (dict(time_mode="film"), r"time_mode in \('token', 'adaln'\)"),
                       (dict(conv_position="middle"), r"conv_position in \('after', 'before'\)"),
                       (dict(patch_embed_type="mlp"), r"patch_embed_type in"),
                       (dict(pos_embed_type="rope"), r"pos_embed_type in"),
                       (dict(patch_embed_type="conv", patch_size=7, img_size=28),
                        r"power of 2, got 7"),
                       (dict(pos_embed_type="sincos2d", embed_dim=30, num_heads=3),
                        r"multiple of 4 .* got 30")]:
        with pytest.raises(ValueError, match=match):
            package.UViT(**dict(BASE, **bad))


def test_blocks_refuse_a_time_embedding_they_cannot_use():
    D = 8
    x, e = np.zeros((1, 3, D)), np.zeros((1, D))
    with pytest.raises(ValueError, match=r"takes the time as a token .* got one of shape"):
        NU.Block(D, 2)(x, emb=e)
    with pytest.raises(ValueError, match=r"AdaLNBlock: expected the time embedding emb"):
        NU.AdaLNBlock(D, 2)(x)
    with pytest.raises(ValueError, match=r"has a long skip \(skip_mode='add'\) and expects"):
        TU.Block(D, 2, skip=True, skip_mode="add")(torch.zeros(1, 3, D))


# --------------------------------------------------------------------------------------------------
# Backward passes: the --grads report covers the variants; central differences in float64
# --------------------------------------------------------------------------------------------------
def test_the_gradient_report_covers_the_variants():
    from uvit_torch.parity import uvit as parity_uvit
    variants = parity_uvit.ablation_cases()      # --grads takes its U-ViT cases from cases()
    assert {c.name for c in variants} <= {c.name for c in parity_uvit.cases()}
    cases = grads.function_cases() + grads.module_grad_cases(variants)
    names = " | ".join(c.name for c in cases)
    for piece in ["relu", "tokens_to_grid", "grid_to_tokens", "Block(48, skip add)",
                  "skip project_skip", "skip project_sum", "U-ViT AdaLN(48)", "AdaLNBlock",
                  "ConvPatchEmbed", "skip_mode=add", "time_mode=adaln", "adaln, time MLP",
                  "conv_position=before", "patch_embed_type=conv", "pos_embed_type=sincos2d",
                  "every variant at once"]:
        assert piece in names, f"no gradient case for {piece!r}"


def _perturbed(model, seed=3, scale=0.3):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p += scale * rng.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("options", [
    dict(skip_mode="add", time_mode="adaln", mlp_time_embed=True, pos_embed_type="sincos2d"),
    dict(skip_mode="project_sum", conv_position="before", patch_embed_type="conv"),
    dict(skip_mode="project_skip"),
], ids=["add+adaln+mlp+sincos", "sum+before+stem", "project_skip"])
def test_variant_backward_matches_central_differences(options):
    model = _perturbed(NU.UViT(img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=2,
                               num_heads=2, num_classes=4, **options, dtype=np.float64, rng=0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8, 8))
    dy = rng.standard_normal(x.shape)
    err, where = module_directional_error(model, (x, np.array([3, 700]), np.array([1, 3])), dy,
                                          rng, wrt=(0,))
    assert err <= 1e-6, f"{options}: central differences disagree by {err:.2e} in {where}"


def test_torch_gradient_checkpointing_with_adaln_changes_nothing():
    kwargs = dict(SMALL, time_mode="adaln", mlp_time_embed=True)
    torch.manual_seed(0)
    plain = TU.UViT(**kwargs, dtype=torch.float64).train()
    ckpt = TU.UViT(**kwargs, use_checkpoint=True, dtype=torch.float64).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([3.0, 500.0], dtype=torch.float64)
    got = []
    for m in (plain, ckpt):
        (m(x, t) ** 2).sum().backward()
        got.append(m.time_embed[0].weight.grad.clone())
    torch.testing.assert_close(got[0], got[1], rtol=1e-12, atol=1e-14)
    assert got[0].abs().max() > 0
