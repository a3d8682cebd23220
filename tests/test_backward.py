"""The hand-written backward passes.

* Every case of `python -m uvit_torch.parity --grads`: the NumPy backward against torch autograd
  (float64 <= 1e-10, float32 <= 1e-4, relative to each gradient's size).
* Every functional backward, and two whole models, against central differences along random
  directions in float64 (<= 1e-6), independent of torch.
* The Module contract: gradients accumulate like torch's `.grad`, a module called twice is
  differentiated in reverse order, eval mode records nothing, and misuse is a clear error.
"""

import numpy as np
import pytest

import uvit_numpy as N
from tests.parity_params import case_params
from uvit_numpy import functional as F
from uvit_numpy.gradcheck import directional_error, module_directional_error
from uvit_torch.parity import grads

GRAD_CASES = grads.grad_cases()


@pytest.mark.parametrize("case, dtype, batch", case_params(GRAD_CASES))
def test_backward_matches_autograd(case, dtype, batch):
    row = grads.run_grad_case(case, dtype, batch)
    tol = grads.GRAD_TOLERANCE[np.dtype(dtype)]
    assert row.passed, f"{row.detail} exceeds {tol:.0e}"


def test_a_case_must_say_truly_whether_it_is_a_module():
    """The gradient report takes a forward case when the case says its NumPy side is a Module
    (`Case.module`, read without building it); a case that says so wrongly is an error, not a
    backward left unchecked."""
    from dataclasses import replace

    from uvit_torch import parity
    linear = next(c for c in grads.grad_cases() if c.name == "Linear(33, 17)")
    with pytest.raises(TypeError, match="module=False, but its NumPy side is a Module"):
        parity.run_case(replace(linear, module=False), "float64", 1)
    softmax = next(c for c in parity.all_cases() if c.name == "softmax large logits")
    with pytest.raises(TypeError, match="module=True, but its NumPy side is a function"):
        grads.run_grad_case(replace(softmax, module=True), "float64", 1)


def test_the_gradient_report_covers_every_piece():
    """Functions, layers, both models' blocks and whole models with their options are all in."""
    names = " | ".join(c.name for c in GRAD_CASES)
    for piece in ["linear", "embedding, repeated ids", "layer_norm", "rms_norm without weight",
                  "global_response_norm", "softmax", "attention self", "attention cross",
                  "gelu exact", "gelu tanh", "geglu", "silu", "conv2d 3x3 stride 2",
                  "depthwise_conv3x3", "downsample_2x2", "upsample_2x2", "conv_transpose2d",
                  "adaptive_modulation", "attention_weights", "conv1x1 (channel-last)",
                  "conv1x1_to_channels_first", "conv2d_channels_last",
                  "conv_transpose2d_channels_last", "concat / split", "patchify",
                  "unpatchify", "cross_entropy", "mse_loss", "QKVAttention",
                  "U-ViT Block(48, skip)",
                  "UViT small, 10 classes", "UViT small, skip=False", "UViT small, conv=False",
                  "mlp_time_embed", "qkv_bias", "UViTText", "ConvNextBlock",
                  "SkipFFTransformerBlock no kv_mapper", "BasicTransformerBlock", "UVitBlock down",
                  "UVitBlock up", "UVit2DModel tiny use_bias", "no elementwise affine",
                  "no down/up", "quick_gelu", "attention causal", "CLIPAttention causal",
                  "CLIPEncoderLayer causal", "CLIPTextEmbeddings", "CLIPTextModel tiny",
                  "CLIPTextModelWithProjection tiny"]:
        assert piece in names, f"no gradient case for {piece!r}"


def test_gradient_report_command(capsys):
    from uvit_torch import parity
    assert parity.main(["--grads", "--only", "layer_norm"]) == 0
    out = capsys.readouterr().out
    assert "layer_norm" in out and "0 failed" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_gradient_report_fails_a_wrong_backward(monkeypatch, capsys):
    """A LayerNorm backward that drops the xhat * mean(g xhat) term must be reported as FAIL."""
    def wrong(dy, cache):
        xhat, rstd, weight, has_bias = cache
        g = dy * weight
        dx = rstd * (g - g.mean(-1, keepdims=True))
        return dx, (dy * xhat).reshape(-1, dy.shape[-1]).sum(0), dy.reshape(-1, dy.shape[-1]).sum(0)
    monkeypatch.setattr(F, "layer_norm_backward", wrong)
    monkeypatch.setattr(grads, "grad_cases", lambda: [c for c in grads.function_cases()
                                                      if c.name == "layer_norm"])
    from uvit_torch import parity
    assert parity.main(["--grads", "--dtype", "float64"]) == 1
    assert "FAIL" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Central differences (float64, no torch involved)
# --------------------------------------------------------------------------------------------------
FUNCTION_CASES = grads.function_cases()


@pytest.mark.parametrize("case", FUNCTION_CASES, ids=[c.name for c in FUNCTION_CASES])
def test_functional_backward_matches_central_differences(case):
    fn, _, inputs = case.build(np.dtype(np.float64), 2)
    wrt = case.grad_inputs
    if wrt is None:
        wrt = [i for i, x in enumerate(inputs) if np.issubdtype(np.asarray(x).dtype, np.floating)]
    out = fn(*inputs)
    rng = np.random.default_rng(7)
    dy = rng.standard_normal(np.shape(out))
    analytic = fn.backward(dy)

    def forward(*xs):
        return fn.forward_fn(*xs)[0]
    err = directional_error(forward, inputs, analytic, dy, rng, wrt=list(wrt))
    assert err <= 1e-6, f"{case.name}: central differences disagree by {err:.2e}"


def _perturbed(model, seed=3, scale=0.3):
    """Move every parameter away from its init (norm weights 1, biases and GRN 0)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p += scale * rng.standard_normal(p.shape)
    return model


def test_uvit_backward_matches_central_differences():
    model = _perturbed(N.UViT(img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=2,
                              num_heads=2, num_classes=4, mlp_time_embed=True, dtype=np.float64))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8, 8))
    inputs = (x, np.array([3, 700]), np.array([1, 3]))
    dy = rng.standard_normal(x.shape)
    err, where = module_directional_error(model, inputs, dy, rng, wrt=(0,))
    assert err <= 1e-6, f"U-ViT: central differences disagree by {err:.2e} in {where}"


def test_uvit2d_backward_matches_central_differences():
    cfg = N.uvit2d.resolve_config("tiny", hidden_size=16, block_out_channels=8, in_channels=8,
                                  intermediate_size=24, num_attention_heads=2, use_bias=True)
    model = _perturbed(N.UVit2DModel(**cfg, dtype=np.float64, rng=1))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg["vocab_size"], (2, 4, 4))
    ehs = rng.standard_normal((2, 3, cfg["encoder_hidden_size"]))
    pooled = rng.standard_normal((2, cfg["cond_embed_dim"]))
    inputs = (ids, ehs, pooled, np.tile([256.0, 256.0, 0.0, 0.0, 6.0], (2, 1)))
    dy = rng.standard_normal((2, cfg["codebook_size"], 4, 4))
    err, where = module_directional_error(model, inputs, dy, rng, wrt=(1, 2), directions=1)
    assert err <= 1e-6, f"UVit2DModel: central differences disagree by {err:.2e} in {where}"


# --------------------------------------------------------------------------------------------------
# The Module contract
# --------------------------------------------------------------------------------------------------
def _tiny_uvit():
    return N.UViT(img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=2, num_heads=2,
                  num_classes=3, dtype=np.float64, rng=0)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 1, 8, 8)), np.array([10, 500]), np.array([0, 2])


def test_grads_have_the_keys_and_shapes_of_the_state_dict():
    model = _tiny_uvit()
    x, t, y = _inputs()
    model.backward(np.ones_like(model(x, t, y)))
    g, sd = model.grads(), model.state_dict()
    assert list(g) == list(sd)
    assert all(g[k].shape == sd[k].shape and g[k].dtype == sd[k].dtype for k in sd)


def test_gradients_accumulate_until_zero_grad():
    model = _tiny_uvit()
    x, t, y = _inputs()
    dy = np.random.default_rng(1).standard_normal(x.shape)
    model(x, t, y)
    model.backward(dy)
    once = {k: v.copy() for k, v in model.grads().items()}
    model(x, t, y)
    model.backward(dy)
    for k, v in model.grads().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-12, atol=1e-15)
    model.zero_grad()
    assert all(not np.any(v) for v in model.grads().values())


def test_a_module_called_twice_gets_both_contributions_in_reverse_order():
    lin = N.Linear(4, 3, dtype=np.float64, rng=0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4)), rng.standard_normal((5, 4))
    da, db = rng.standard_normal((2, 3)), rng.standard_normal((5, 3))
    lin(a)
    lin(b)
    dxb = lin.backward(db)                                  # the later call first
    dxa = lin.backward(da)
    np.testing.assert_allclose(dxa, da @ lin.weight, rtol=1e-12)
    np.testing.assert_allclose(dxb, db @ lin.weight, rtol=1e-12)
    np.testing.assert_allclose(lin.grads()["weight"], da.T @ a + db.T @ b, rtol=1e-12)


def test_eval_mode_records_nothing_and_backward_says_why():
    model = _tiny_uvit().eval()
    x, t, y = _inputs()
    out = model(x, t, y)
    assert all(not m._tape for _, m in model.named_modules())
    with pytest.raises(RuntimeError, match="no recorded forward.*train"):
        model.backward(out)


def test_backward_twice_after_one_forward_is_an_error():
    model = _tiny_uvit()
    x, t, y = _inputs()
    out = model(x, t, y)
    model.backward(out)
    with pytest.raises(RuntimeError, match="no recorded forward"):
        model.backward(out)


def test_grad_out_of_the_wrong_shape_is_an_error_before_any_work():
    model = _tiny_uvit()
    x, t, y = _inputs()
    model(x, t, y)
    with pytest.raises(ValueError, match=r"expected grad_out shaped like .*\(2, 1, 8, 8\).*"
                                         r"\(2, 1, 8, 7\)"):
        model.backward(np.zeros((2, 1, 8, 7)))
    model.backward(np.zeros((2, 1, 8, 8)))                  # the record is still there


def test_embedding_backward_accumulates_repeated_ids():
    """`dW[ids] += dy` would keep one contribution per row; np.add.at keeps all."""
    emb = N.Embedding(3, 2, dtype=np.float64)
    ids = np.array([[1, 1, 1, 2]])
    emb(ids)
    emb.backward(np.ones((1, 4, 2)))
    np.testing.assert_array_equal(emb.grads()["weight"], [[0, 0], [3, 3], [1, 1]])


def test_dropout_backward_reuses_the_forward_mask():
    drop = N.Dropout(0.5, dtype=np.float64, rng=0)
    x = np.ones((4, 50))
    out = drop(x)
    dx = drop.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, out)                  # kept: 1 / (1 - p), dropped: 0
    assert 0 < np.mean(out == 0) < 1


def test_zero_grad_forgets_forwards_never_differentiated():
    model = _tiny_uvit()
    x, t, y = _inputs()
    model(x, t, y)
    model.zero_grad()
    assert all(not m._tape for _, m in model.named_modules())


def test_training_step_benchmark_runs(capsys):
    """`python -m uvit_torch.bench --train`'s machinery at a tiny batch (its figures come from the
    command, not from a test)."""
    from uvit_torch.parity import bench
    results = bench.run_train(repeats=1, batch=2, pause=0.0)
    out = capsys.readouterr().out
    assert "machine:" in out and out.count("NumPy / torch") == 2
    for r in results.values():
        assert r["numpy"] > 0 and r["torch"] > 0 and r["peak"] > 0


def test_fast_float32_gelu_and_its_gradient_against_the_plain_formulas():
    """fast.py is the package's one speed trick; functional's plain formulas are its oracle."""
    from uvit_numpy import fast
    rng = np.random.default_rng(0)
    x = (4 * rng.standard_normal((257, 33))).astype(np.float32)
    x[0, :6] = [0.0, -0.0, 1e-9, -1e-9, 40.0, -40.0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    assert np.max(np.abs(fast.gelu_float32(x) - F.gelu(x64))) <= 1e-6
    grad = fast.gelu_grad_float32(x, dy)
    assert grad.dtype == np.float32
    assert np.max(np.abs(grad - F.gelu_backward(dy64, x64))) <= 1e-6 * np.max(np.abs(dy64))
