"""UVit2DModel beyond parity: configs, bad input (clear errors before any work, both packages),
state-dict errors, diffusers folders, the reading helpers, and MaskGIT decoding (NumPy vs torch,
and against diffusers' AmusedScheduler)."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.special import erf

import uvit_numpy.functional as NF
import uvit_numpy.maskgit as NM
import uvit_numpy.uvit2d as N
import uvit_torch.maskgit as TM
import uvit_torch.uvit2d as T
from uvit_numpy.fast import erf_float32
from uvit_torch.parity.uvit2d import micro_conds, model_inputs
from uvit_torch.parity.harness import make_pair, numpy_state_dict, to_torch

TINY = N.resolve_config("tiny")


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def test_named_configs():
    assert set(N.CONFIGS) >= {"amused-256", "amused-512", "tiny"}
    assert T.CONFIGS is N.CONFIGS
    amused = N.resolve_config("amused-256")
    assert (amused["hidden_size"], amused["num_hidden_layers"], amused["block_out_channels"],
            amused["codebook_size"], amused["vocab_size"]) == (1024, 22, 768, 8192, 8256)
    amused_512 = N.resolve_config("amused-512")
    assert amused_512["downsample"] and amused_512["upsample"]
    assert N.UVit2DModel.from_config("tiny").config == TINY
    assert T.UVit2DModel.from_config("tiny", use_bias=True).config == {**TINY, "use_bias": True}


def test_config_keys():
    """diffusers' private keys are accepted; an unknown key is an error that names it."""
    cfg = N.resolve_config({**TINY, "_class_name": "UVit2DModel", "_diffusers_version": "0.42"})
    assert cfg == TINY
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_layers'\]"):
        N.resolve_config({**TINY, "num_layers": 3})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['foo'\]"):
        T.UVit2DModel.from_config("tiny", foo=1)
    with pytest.raises(ValueError, match=r"expected one of \['amused-256', 'amused-512', 'tiny'\]"):
        N.resolve_config("amused-1024")


def test_new_model_trains_and_numpy_init_follows_the_seed():
    a = N.UVit2DModel.from_config("tiny", rng=1)
    b = N.UVit2DModel.from_config("tiny", rng=1)
    assert a.training and T.UVit2DModel.from_config("tiny").training
    assert all(np.array_equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    bound = 1 / math.sqrt(TINY["hidden_size"])              # torch's default Linear init
    w = a.transformer_layers[0].attn1.to_q.weight
    assert w.dtype == np.float32 and 0.9 * bound < np.abs(w).max() <= bound


def test_half_precision_runs_close_to_float32():
    """float16 models (norms reduced in float32 where diffusers does it) stay within 1e-2 of the
    float32 logits, in both packages, and return float16."""
    torch.manual_seed(0)
    ref_model = T.UVit2DModel.from_config("tiny").eval()
    inputs = model_inputs(TINY, np.random.default_rng(0), 2, np.float32, (4, 6), 7)
    with torch.no_grad():
        ref = ref_model(*[to_torch(x) for x in inputs]).numpy()
        half = T.UVit2DModel.from_config("tiny", dtype=torch.float16).eval()
        half.load_state_dict(ref_model.state_dict())
        out_t = half(*[to_torch(x) for x in inputs])
    ours = N.UVit2DModel.from_config("tiny", dtype=np.float16).eval()
    ours.load_state_dict(numpy_state_dict(ref_model))
    out_np = ours(*inputs)
    assert out_t.dtype == torch.float16 and out_np.dtype == np.float16
    scale = np.abs(ref).max()
    assert np.abs(out_t.float().numpy() - ref).max() / scale < 1e-2
    assert np.abs(out_np.astype(np.float32) - ref).max() / scale < 1e-2


# --------------------------------------------------------------------------------------------------
# Bad input: both packages, before any work
# --------------------------------------------------------------------------------------------------
class Spy:
    """Replaces the first module of the forward pass and records whether it ran."""
    called = False

    def __call__(self, *args):
        Spy.called = True
        raise AssertionError("the forward pass started before the inputs were checked")


def _good(dtype=np.float32):
    return list(model_inputs(TINY, np.random.default_rng(0), 2, dtype, (4, 6), 5))


def _bad(index, value):
    args = _good()
    args[index] = value
    return args


BAD = [
    ("ids out of range", _bad(0, np.full((2, 4, 6), TINY["vocab_size"])), ValueError,
     r"input_ids: expected values in \[0, 40\), got values in \[40, 40\]"),
    ("negative ids", _bad(0, np.full((2, 4, 6), -1)), ValueError,
     r"expected values in \[0, 40\), got values in \[-1, -1\]"),
    ("float ids", _bad(0, np.zeros((2, 4, 6), np.float32)), TypeError,
     r"input_ids: expected an integer array, got dtype float32"),
    ("ids rank", _bad(0, np.zeros((2, 24), np.int64)), ValueError,
     r"input_ids: expected a 3-d array \(B, H, W\) of token ids, got shape \(2, 24\)"),
    ("odd grid with downsample", _bad(0, np.zeros((2, 5, 6), np.int64)), ValueError,
     r"downsample=True the token grid needs even sides, got H x W = 5 x 6"),
    ("text width", _bad(1, np.zeros((2, 5, 23), np.float32)), ValueError,
     r"encoder_hidden_states: expected width \(encoder_hidden_size\) 24 on axis -1, got 23"),
    ("text batch", _bad(1, np.zeros((3, 5, 24), np.float32)), ValueError,
     r"encoder_hidden_states: expected batch size 2, got 3"),
    ("int text", _bad(1, np.zeros((2, 5, 24), np.int64)), TypeError,
     r"encoder_hidden_states: expected a floating-point array, got dtype int64"),
    ("pooled width", _bad(2, np.zeros((2, 25), np.float32)), ValueError,
     r"pooled_text_emb: expected width \(cond_embed_dim\) 24 on axis -1, got 25"),
    ("pooled batch", _bad(2, np.zeros((1, 24), np.float32)), ValueError,
     r"pooled_text_emb: expected batch size 2, got 1"),
    ("micro_conds count", _bad(3, np.zeros((2, 4), np.float32)), ValueError,
     r"micro_conds: expected B x M = 2 x 5 = 10 values .* got 8"),
    ("micro_conds batch", _bad(3, np.zeros((1, 10), np.float32)), ValueError,
     r"micro_conds: expected batch size 2, got 1"),
    ("micro_conds dtype", _bad(3, np.zeros((2, 5), bool)), TypeError,
     r"micro_conds: expected a numeric array, got bool"),
]


@pytest.mark.parametrize("package", ["numpy", "torch"])
@pytest.mark.parametrize("args, exc, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_any_work(package, args, exc, pattern):
    Spy.called = False
    if package == "numpy":
        model = N.UVit2DModel.from_config("tiny")
        model.encoder_proj = Spy()
        call = lambda: model(*args)
    else:
        model = T.UVit2DModel.from_config("tiny")
        object.__setattr__(model, "encoder_proj", Spy())
        model._modules.pop("encoder_proj")
        call = lambda: model(*[to_torch(a) for a in args])
    with pytest.raises(exc, match=pattern):
        call()
    assert not Spy.called


def test_micro_cond_dims_that_cannot_be_filled():
    model = N.UVit2DModel.from_config("tiny", micro_cond_embed_dim=42)
    with pytest.raises(ValueError, match="micro_cond_embed_dim 42 is not a multiple of "
                                         "micro_cond_encode_dim 8"):
        model(*_good())


def test_odd_grid_is_fine_without_downsampling():
    model = N.UVit2DModel.from_config("tiny", downsample=False, upsample=False)
    args = _good()
    args[0] = np.zeros((2, 5, 7), np.int64)
    assert model(*args).shape == (2, 32, 5, 7)


def _broken_state_dict(sd):
    sd = dict(sd)
    sd.pop("mlm_layer.conv2.weight")
    sd.pop("embed.layer_norm.weight")
    sd["extra.weight"] = sd["encoder_proj.weight"]
    sd["encoder_proj.weight"] = sd["encoder_proj.weight"][:, :5]
    return sd


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_state_dict_problems_are_listed_together(package):
    if package == "numpy":
        model = N.UVit2DModel.from_config("tiny")
        sd = _broken_state_dict(model.state_dict())
    else:
        model = T.UVit2DModel.from_config("tiny")
        sd = _broken_state_dict(model.state_dict())
    with pytest.raises(ValueError) as err:
        model.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys (2): ['embed.layer_norm.weight', 'mlm_layer.conv2.weight']" in msg
    assert "unexpected keys (1): ['extra.weight']" in msg
    assert "encoder_proj.weight: expected (64, 24), got (64, 5)" in msg


def test_module_trees_are_twins():
    """Same submodule names (parameterless ones included) and classes in both packages."""
    ours = N.UVit2DModel.from_config("tiny", use_bias=True)
    port = T.UVit2DModel.from_config("tiny", use_bias=True)
    ours_tree = {name: type(m).__name__ for name, m in ours.named_modules()}
    port_tree = {name: type(m).__name__ for name, m in port.named_modules()}
    assert ours_tree == port_tree


def test_parity_weights_exercise_the_zero_initialised_parameters():
    """GlobalResponseNorm's gamma/beta start at 0 (GRN = identity); parity cases perturb them."""
    from uvit_torch.parity.uvit2d import cases
    case = next(c for c in cases("tiny") if c.name == "UVit2DModel tiny")
    ours, _, _ = case.build(np.dtype(np.float64), 1)
    grn = ours.down_block.res_blocks[0].channelwise_norm
    assert np.abs(grn.gamma).min() > 0 and np.abs(grn.beta).min() > 0
    assert not np.allclose(ours.transformer_layers[0].norm1.norm.weight, 1.0)
    fresh = N.UVit2DModel.from_config("tiny").down_block.res_blocks[0].channelwise_norm
    assert not fresh.gamma.any() and not fresh.beta.any()


def test_state_dict_moves_between_packages_unchanged():
    port = T.UVit2DModel.from_config("tiny", use_bias=True)
    ours = N.UVit2DModel.from_config("tiny", use_bias=True)
    ours.load_state_dict(numpy_state_dict(port))
    back = T.UVit2DModel.from_config("tiny", use_bias=True)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in port.state_dict().items())


# --------------------------------------------------------------------------------------------------
# diffusers folders
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("package", [N, T], ids=["numpy", "torch"])
def test_folder_errors(tmp_path, package):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        package.UVit2DModel.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json in .* nor in its 'transformer'"):
        package.UVit2DModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "_class_name": "UVit2DModel"}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no weights in .*diffusion_pytorch_model"
                                                r"\.safetensors.*only PyTorch \.bin"):
        package.UVit2DModel.from_pretrained(tmp_path)
    N.UVit2DModel.from_config("tiny").save_pretrained(tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**cfg, "num_layers": 2}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_layers'\]"):
        package.UVit2DModel.from_pretrained(tmp_path / "ok")


def test_numpy_from_pretrained_never_imports_torch(tmp_path):
    model = N.UVit2DModel.from_config("tiny", rng=2).eval()
    model.save_pretrained(tmp_path / "transformer")
    args = _good()
    expected = model(*args)
    np.savez(tmp_path / "io.npz", *args, expected)
    code = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from uvit_numpy.uvit2d import UVit2DModel
        io = np.load({str(tmp_path / "io.npz")!r})
        args = [io[f"arr_{{i}}"] for i in range(4)]
        out = UVit2DModel.from_pretrained({str(tmp_path)!r})(*args)
        assert np.array_equal(out, io["arr_4"]), "different logits"
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------------
# The reading helpers, against independent computations
# --------------------------------------------------------------------------------------------------
def test_float32_gelu_and_erf_are_accurate():
    """A&S 7.1.26 erf: |error| <= 1.5e-7. The float32 GELU built on it is within 1.5e-7 x
    max(|x|, 1) of the exact GELU of the same float32 input (torch's own float32 GELU: 3.5e-7)."""
    x = np.linspace(-9, 9, 200_001)
    assert np.abs(erf_float32(x) - erf(x)).max() <= 1.5e-7
    x32 = x.astype(np.float32)
    exact = 0.5 * x32.astype(np.float64) * (1 + erf(x32.astype(np.float64) / math.sqrt(2)))
    g32 = NF.gelu(x32)
    assert g32.dtype == np.float32
    assert (np.abs(g32 - exact) <= 1.5e-7 * np.maximum(np.abs(x32), 1)).all()
    exact64 = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    np.testing.assert_allclose(NF.gelu(x), exact64, rtol=0, atol=1e-15)  # float64: scipy


def test_conv_helpers_match_the_general_convolutions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 6))                    # (B, H, W, C), odd sides
    w3, b = rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6)
    ref = NF.conv2d(x.transpose(0, 3, 1, 2), w3, b, padding=1, groups=6).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(NF.depthwise_conv3x3(x, w3, b), ref, rtol=0, atol=1e-13)
    w2 = rng.standard_normal((4, 6, 2, 2))
    for xs in (x, np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))):  # odd sides: the last row unread
        ref = NF.conv2d(xs.transpose(0, 3, 1, 2), w2, stride=2).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(NF.downsample_2x2(xs, w2), ref, rtol=0, atol=1e-13)
    wt = rng.standard_normal((6, 4, 2, 2))
    ref = NF.conv_transpose2d(x.transpose(0, 3, 1, 2), wt, b[:4], stride=2).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(NF.upsample_2x2(x, wt, b[:4]), ref, rtol=0, atol=1e-13)


def test_micro_conditioning_layout():
    """Per sample: [phi(m_0) ... phi(m_M-1)], phi = [cos(m f), sin(m f)], f_k = 1e4^(-k/half)."""
    mc = micro_conds(2, 5)
    emb = NF.micro_conditioning(mc, 2, 8, np.float64)
    assert emb.shape == (2, 40) and emb.dtype == np.float64
    f = 10000.0 ** (-np.arange(4) / 4)
    for b in range(2):
        for m in range(5):
            piece = emb[b, 8 * m:8 * (m + 1)]
            np.testing.assert_allclose(piece, np.r_[np.cos(mc[b, m] * f), np.sin(mc[b, m] * f)],
                                       rtol=0, atol=1e-12)
    assert NF.micro_conditioning(mc, 2, 8, np.float32).dtype == np.float32


def test_adaptive_modulation_and_the_adaptive_norm():
    rng = np.random.default_rng(1)
    x, cond = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 6))
    scale, shift = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    y = NF.adaptive_modulation(x, scale, shift)
    for b in range(2):
        np.testing.assert_allclose(y[b], x[b] * (1 + scale[b]) + shift[b], atol=1e-14)
    # AdaLayerNormContinuous: (scale, shift) = linear(silu(cond)), scale first, on norm(x)
    norm = N.AdaLayerNormContinuous(5, 6, eps=1e-6, norm_type="rms_norm", dtype=np.float64, rng=2)
    tokens = x.reshape(2, 12, 5)
    m = (cond / (1 + np.exp(-cond))) @ norm.linear.weight.T + norm.linear.bias
    xhat = tokens / np.sqrt((tokens ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(norm(tokens, cond), xhat * (1 + m[:, None, :5]) + m[:, None, 5:],
                               atol=1e-13)


# --------------------------------------------------------------------------------------------------
# MaskGIT decoding
# --------------------------------------------------------------------------------------------------
def _step_inputs(seed, B=2, K=32, H=4, W=6, masked=0.7, mask_id=39):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((B, K, H, W))
    tokens = rng.integers(0, K, size=(B, H, W))
    tokens[rng.random((B, H, W)) < masked] = mask_id
    noise = (rng.random((B, H * W)), rng.random((B, H * W)))
    return logits, tokens, noise


@pytest.mark.parametrize("step", [0, 2, 4, 5])
def test_decoding_step_numpy_vs_torch(step):
    logits, tokens, noise = _step_inputs(step)
    ours = NM.masked_decoding_step(logits, tokens, step, 6, 39, temperature=1.5, noise=noise)
    theirs = TM.masked_decoding_step(torch.from_numpy(logits), torch.from_numpy(tokens), step, 6,
                                    39, temperature=1.5,
                                    noise=tuple(torch.from_numpy(u) for u in noise))
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b.numpy())


@pytest.mark.parametrize("step, num_steps", [(0, 5), (1, 5), (3, 5), (4, 5), (2, 7)])
def test_decoding_step_matches_diffusers_amused_scheduler(monkeypatch, step, num_steps):
    """diffusers' AmusedScheduler.step, with its two random draws replaced by the same uniforms
    (inverse-CDF sampling for torch.multinomial, Gumbel noise from the given uniforms)."""
    import diffusers.schedulers.scheduling_amused as amused
    logits, tokens, (u_sample, u_gumbel) = _step_inputs(10 + step)
    K = logits.shape[1]

    def multinomial(probs, num_samples, generator=None):
        cdf = torch.cumsum(probs, -1)
        u = torch.from_numpy(u_sample).reshape(-1, 1) * cdf[:, -1:]
        return (cdf < u).sum(-1, keepdim=True).clamp(max=K - 1)

    monkeypatch.setattr(torch, "multinomial", multinomial)
    monkeypatch.setattr(amused, "gumbel_noise",
                        lambda t, generator=None: torch.from_numpy(NM.gumbel_noise(u_gumbel)))
    scheduler = amused.AmusedScheduler(mask_token_id=39)
    scheduler.set_timesteps(num_steps, temperature=(2.0, 0.5))
    timestep = scheduler.timesteps[step]
    expected = scheduler.step(torch.from_numpy(logits), timestep, torch.from_numpy(tokens))
    temperature = float(scheduler.temperatures[step])
    ours = NM.masked_decoding_step(logits, tokens, step, num_steps, 39, temperature=temperature,
                                  noise=(u_sample, u_gumbel))
    assert np.array_equal(ours[0], expected.prev_sample.numpy())
    assert np.array_equal(ours[1], expected.pred_original_sample.numpy())


def test_decoding_step_keeps_the_schedule():
    logits, tokens, _ = _step_inputs(3, masked=1.1)           # everything masked
    L = tokens[0].size
    for step in range(5):
        nxt, pred = NM.masked_decoding_step(logits, tokens, step, 6, 39, rng=step)
        assert (pred != 39).all()
        n_masked = (nxt == 39).reshape(2, -1).sum(1)
        assert (n_masked == max(1, NM.masked_count(L, step, 6))).all()
    final, _ = NM.masked_decoding_step(logits, tokens, 5, 6, 39, rng=0)
    assert (final != 39).all()


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_generate_numpy_vs_torch(guidance):
    """The tiny decode loop in both packages, with the same weights and noise, gives the same
    tokens; every step unmasks more, the last leaves no mask."""
    ours, theirs = make_pair(T.UVit2DModel, N.UVit2DModel, dtype=np.float64, **TINY)
    rng = np.random.default_rng(4)
    ehs, pooled = rng.standard_normal((2, 5, 24)), rng.standard_normal((2, 24))
    neg_ehs, neg_pooled = rng.standard_normal((2, 5, 24)), rng.standard_normal((2, 24))
    mc = micro_conds(2, 5)
    noise = [(rng.random((2, 16)), rng.random((2, 16))) for _ in range(4)]
    kw = dict(num_steps=4, guidance_scale=guidance)
    out, hist = NM.generate(ours, ehs, pooled, mc, 4, 4, negative_encoder_hidden_states=neg_ehs,
                           negative_pooled_text_emb=neg_pooled, noise=noise,
                           return_history=True, **kw)
    tt = to_torch
    out_t, hist_t = TM.generate(theirs, tt(ehs), tt(pooled), tt(mc), 4, 4,
                               negative_encoder_hidden_states=tt(neg_ehs),
                               negative_pooled_text_emb=tt(neg_pooled),
                               noise=[tuple(map(tt, n)) for n in noise], return_history=True, **kw)
    assert np.array_equal(out, out_t.numpy())
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(hist, hist_t))
    masked = [int((h == 39).sum()) for h in hist]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0 and masked[0] > 0
    assert out.shape == (2, 4, 4) and out.max() < TINY["codebook_size"]


def test_generate_runs_on_float32_from_a_seed():
    model = N.UVit2DModel.from_config("tiny", rng=0).eval()
    rng = np.random.default_rng(0)
    args = (rng.standard_normal((1, 3, 24)).astype(np.float32),
            rng.standard_normal((1, 24)).astype(np.float32), micro_conds(1, 5, np.float32))
    a = NM.generate(model, *args, 4, 6, num_steps=3, rng=7)
    b = NM.generate(model, *args, 4, 6, num_steps=3, rng=7)
    assert np.array_equal(a, b) and (a != 39).all()
    assert not np.array_equal(a, NM.generate(model, *args, 4, 6, num_steps=3, rng=8))


# --------------------------------------------------------------------------------------------------
# The command-line tools
# --------------------------------------------------------------------------------------------------
def test_parity_report_options(capsys):
    """`--against-diffusers` compares the torch port with diffusers; `--config` sizes the blocks."""
    from uvit_torch import parity
    pytest.importorskip("diffusers")
    assert parity.main(["--against-diffusers", "--only", "ConvMlmLayer"]) == 0
    out = capsys.readouterr().out
    assert "ConvMlmLayer" in out and "diffs ms" in out and "0 failed" in out
    assert parity.main(["--config", "amused-256", "--only", "ConvMlmLayer", "--dtype",
                        "float32"]) == 0
    out = capsys.readouterr().out
    assert "1x8192x4x6" in out and "0 failed" in out


def test_bench_runs_on_the_tiny_config(capsys):
    """The benchmark's machinery (shared weights, interleaved timing, memory) on the tiny config;
    its figures for amused-256 come from `python -m uvit_torch.bench`, not from a test."""
    from uvit_torch.parity import bench
    res = bench.run("tiny", repeats=2, grid=8, text_len=5, pause=0.0,
                    with_diffusers=True)
    out = capsys.readouterr().out
    assert "NumPy / torch port" in out and "tracemalloc" in out
    assert res["numpy_over_torch"] > 0 and res["numpy_peak_over_weights"] > 1.0
    ours, port, _ = bench.build_models("tiny", with_diffusers=False)
    w_np = ours.transformer_layers[0].ff.net[2].weight
    w_t = port.transformer_layers[0].ff.net[2].weight
    assert np.shares_memory(w_np, w_t.detach().numpy())      # one copy of the weights
