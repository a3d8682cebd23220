"""The NumPy `Module`: names, state dicts, loading errors, dtype, modes, seeded initialisation."""

import math

import numpy as np
import pytest
import torch

import uvit_numpy as N
import uvit_torch as T
from uvit_torch.parity.harness import make_pair, numpy_state_dict


def test_state_dict_keys_and_shapes_match_torch():
    ours, theirs = make_pair(T.Attention, N.Attention, 30, cross_attention_dim=17, heads=3,
                             dim_head=10, bias=True)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == tuple(theirs_sd[k].shape) for k in ours_sd)


def test_sequential_and_module_list_name_children_by_index():
    seq = N.Sequential(N.Linear(4, 8), N.SiLU(), N.Linear(8, 4))
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    ref = torch.nn.Sequential(T.Linear(4, 8), T.SiLU(), T.Linear(8, 4))
    seq.load_state_dict(numpy_state_dict(ref))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(seq(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_load_state_dict_reports_every_problem_at_once():
    model = N.Sequential(N.Linear(4, 8), N.LayerNorm(8))
    sd = {k: v.copy() for k, v in model.state_dict().items()}
    del sd["0.bias"]                       # missing
    sd["1.weight"] = np.ones(9)            # mis-shaped
    sd["2.weight"] = np.ones(3)            # unexpected
    with pytest.raises(ValueError) as err:
        model.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys (1): ['0.bias']" in msg
    assert "unexpected keys (1): ['2.weight']" in msg
    assert "1.weight: expected (8,), got (9,)" in msg


def test_failed_load_changes_nothing():
    model = N.Linear(4, 3)
    before = model.weight.copy()
    with pytest.raises(ValueError):
        model.load_state_dict({"weight": np.zeros((3, 4)), "bias": np.zeros(5)})
    np.testing.assert_array_equal(model.weight, before)


def test_non_strict_load_ignores_missing_and_unexpected_but_not_misshaped():
    model = N.Linear(4, 3)
    missing, unexpected = model.load_state_dict({"weight": np.zeros((3, 4)), "extra": 1.0},
                                                strict=False)
    assert missing == ["bias"] and unexpected == ["extra"]
    assert not model.weight.any()
    with pytest.raises(ValueError, match="mis-shaped"):
        model.load_state_dict({"weight": np.zeros((4, 4))}, strict=False)


def test_loading_casts_to_the_module_dtype():
    model = N.Linear(4, 3, dtype=np.float32)
    model.load_state_dict({"weight": np.ones((3, 4)), "bias": np.zeros(3)})  # float64 arrays
    assert model.weight.dtype == np.float32 and model.bias.dtype == np.float32


def test_astype_converts_in_place_and_returns_self():
    model = N.GEGLU(5, 7)
    assert model.astype(np.float64) is model
    assert all(p.dtype == np.float64 for p in model.parameters())
    out = model(np.ones((2, 5), dtype=np.float32))   # input is cast to the module's dtype
    assert out.dtype == np.float64
    with pytest.raises(TypeError, match="expected float16, float32 or float64"):
        model.astype(np.int32)


def test_train_and_eval_reach_every_descendant():
    model = N.Attention(8, heads=2, dim_head=4, dropout=0.5)
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_initialisation_is_reproducible_from_a_seed_and_follows_torch_bounds():
    a, b = N.Linear(16, 8, rng=3), N.Linear(16, 8, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, N.Linear(16, 8, rng=4).weight)
    assert np.abs(a.weight).max() <= 1 / math.sqrt(16)
    assert N.Linear(16, 8).num_parameters() == 16 * 8 + 8


def test_dropout_is_identity_in_eval_and_a_seeded_mask_in_train():
    x = np.ones((200, 50), dtype=np.float32)
    drop = N.Dropout(0.3, rng=0)
    np.testing.assert_array_equal(drop.eval()(x), x)
    y1 = drop.train()(x)
    y2 = N.Dropout(0.3, rng=0).train()(x)
    np.testing.assert_array_equal(y1, y2)
    kept = y1 != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y1[kept], 1 / 0.7, rtol=1e-6)
    assert y1.dtype == np.float32


def test_exact_gelu_is_correct_to_double_precision():
    x = np.linspace(-8, 8, 4001)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(N.functional.gelu(x), exact, rtol=0, atol=4e-16 * 8)
    tanh = N.functional.gelu(x, "tanh")
    assert 1e-5 < np.max(np.abs(tanh - exact)) < 1e-3      # the approximation is visibly different


def test_softmax_survives_huge_logits():
    x = np.array([[1000.0, 1001.0, -1000.0]])
    p = N.functional.softmax(x)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(-1), 1.0)
    np.testing.assert_allclose(p[0, :2], [1 / (1 + math.e), math.e / (1 + math.e)])


def test_patchify_round_trip_and_layout():
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float64).reshape(2, 3, 4, 6)
    tokens = N.functional.patchify(x, 2)                 # (2, 6, 12)
    assert tokens.shape == (2, 6, 12)
    # token 1 is the patch at rows 0-1, columns 2-3; features ordered (p1, p2, C)
    np.testing.assert_array_equal(tokens[0, 1].reshape(2, 2, 3), x[0, :, 0:2, 2:4].transpose(1, 2, 0))
    np.testing.assert_array_equal(N.functional.unpatchify(tokens, 3, (2, 3)), x)
