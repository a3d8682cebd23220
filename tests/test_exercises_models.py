"""The exercises teach exactly the models the package implements.

The references behind the model-level exercises are written from the core functions on plain
arrays and dicts. Here the same parameter dicts are loaded (strictly: every key, every shape) into
the package's own modules, and the two must agree to 1e-12 relative in float64 on every case the
checker uses; the decoding step must agree exactly.
"""

import numpy as np
import pytest

from uvit_numpy import layers, maskgit, uvit, uvit2d
from uvit_numpy.exercises import EXERCISES

TOL = 1e-12


def _rel(ours, ref):
    assert ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _cases(name):
    ex = EXERCISES[name]
    return ex, ex.make_cases()


def _loaded(module, params):
    module.load_state_dict(params, strict=True)
    return module.eval()


def test_uvit2d_conv_embed_is_the_package_module():
    ex, cases = _cases("uvit2d_conv_embed")
    for case in cases:
        ids, params = case.args
        V, C_in = params["embeddings.weight"].shape
        C_b = params["conv.weight"].shape[0]
        module = _loaded(uvit2d.UVit2DConvEmbed(C_in, C_b, V, elementwise_affine=True, eps=1e-6,
                                                bias=True, dtype=np.float64), params)
        assert _rel(module(ids), ex.reference(*case.args)) <= TOL, case.label


def test_ada_rms_norm_is_adalayernormcontinuous_with_rms_norm():
    ex, cases = _cases("ada_rms_norm")
    for case in cases:
        x, c, params = case.args
        D, Dc = x.shape[-1], c.shape[-1]
        module = _loaded(uvit2d.AdaLayerNormContinuous(D, Dc, elementwise_affine=True, eps=1e-6,
                                                       bias=True, norm_type="rms_norm",
                                                       dtype=np.float64), params)
        assert _rel(module(x, c), ex.reference(*case.args)) <= TOL, case.label


def test_convnext_block_is_the_package_block():
    ex, cases = _cases("convnext_block")
    for case in cases:
        x, c, params = case.args
        module = _loaded(uvit2d.ConvNextBlock(x.shape[-1], layer_norm_eps=1e-6,
                                              ln_elementwise_affine=True, use_bias=True,
                                              hidden_dropout=0.0, hidden_size=c.shape[-1],
                                              dtype=np.float64), params)
        assert _rel(module(x, c), ex.reference(*case.args)) <= TOL, case.label


def test_masked_decoding_step_is_the_package_step():
    ex, cases = _cases("masked_decoding_step")
    for case in cases:
        logits, tokens, step, num_steps, mask_id, temperature, u_sample, u_gumbel = case.args
        ours = ex.reference(*case.args)
        theirs = maskgit.masked_decoding_step(logits, tokens, step, num_steps, mask_id,
                                             temperature=temperature,
                                             noise=(u_sample, u_gumbel))
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and np.array_equal(a, b), case.label


def test_the_decoding_cases_exercise_every_branch():
    """At least one case keeps some positions masked, one fills every mask (the last step), and
    every non-final case really re-masks something."""
    ex, cases = _cases("masked_decoding_step")
    saw_last = saw_remask = False
    for case in cases:
        nxt, pred = ex.reference(*case.args)
        mask_id = case.args[4]
        if case.args[2] == case.args[3] - 1:
            saw_last = True
            assert not (nxt == mask_id).any()
        else:
            assert (nxt == mask_id).any() and not (pred == mask_id).any()
            saw_remask = True
    assert saw_last and saw_remask


@pytest.mark.parametrize("with_skip", [True, False])
def test_uvit_block_is_the_package_block(with_skip):
    ex, cases = _cases("uvit_block")
    used = 0
    for case in cases:
        x, params, num_heads = case.args
        skip = case.kwargs.get("skip")
        if (skip is not None) != with_skip:
            continue
        module = _loaded(uvit.Block(x.shape[-1], num_heads, skip=with_skip, dtype=np.float64),
                         params)
        assert _rel(module(x, skip), ex.reference(*case.args, **case.kwargs)) <= TOL, case.label
        used += 1
    assert used


def test_multi_head_attention_is_diffusers_attention():
    ex, cases = _cases("multi_head_attention")
    for case in cases:
        x, params, heads = case.args
        context = case.kwargs.get("context")
        inner, C = params["to_q.weight"].shape
        Cc = params["to_k.weight"].shape[1]
        module = _loaded(layers.Attention(C, cross_attention_dim=Cc, heads=heads,
                                          dim_head=inner // heads, bias=False, out_bias=True,
                                          dtype=np.float64), params)
        assert _rel(module(x, context), ex.reference(*case.args, **case.kwargs)) <= TOL
