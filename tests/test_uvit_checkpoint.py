"""`.pth` checkpoints: a state dict saved with `torch.save` loads into both packages (torch via
`torch.load(weights_only=True)`, NumPy via the converter) and gives the same output; key problems
are reported all at once."""

import re

import numpy as np
import pytest
import torch

from uvit_numpy import uvit as NU
from uvit_torch import uvit as TU
from uvit_torch.checkpoint import (load_numpy_state_dict, load_pretrained, load_pth,
                                   to_numpy_state_dict)
from uvit_torch.parity.uvit import SMALL, TEXT, model_inputs, randomize_uvit_
from uvit_torch.parity.harness import TOLERANCE, assert_close

# A scaled-down paper config: the config machinery, at test size.
TINY = {"embed_dim": 32, "num_heads": 4, "depth": 4}


def saved(tmp_path, model, name="nnet.pth"):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("kwargs", [dict(SMALL, num_classes=10), TEXT], ids=["classes", "text"])
def test_pth_round_trip_gives_the_same_output_in_both_packages(tmp_path, kwargs):
    tcls, ncls = (TU.UViTText, NU.UViTText) if "clip_dim" in kwargs else (TU.UViT, NU.UViT)
    torch.manual_seed(0)
    original = randomize_uvit_(tcls(**kwargs, dtype=torch.float64)).eval()
    path = saved(tmp_path, original)

    loaded = tcls(**kwargs, dtype=torch.float64).eval()
    loaded.load_state_dict(load_pth(path))
    ours = ncls(**kwargs, dtype=np.float64)
    ours.load_state_dict(load_numpy_state_dict(path))

    inputs = model_inputs(ours, np.random.default_rng(0), 3, np.float64)
    with torch.no_grad():
        want = original(*[torch.from_numpy(a) for a in inputs])
        got = loaded(*[torch.from_numpy(a) for a in inputs])
    assert torch.equal(want, got)
    assert_close("numpy from .pth", ours(*inputs), want, TOLERANCE[np.dtype(np.float64)])


def test_float32_checkpoint_into_a_float64_numpy_model(tmp_path):
    """A released (float32) checkpoint: loaded into a float64 NumPy model it matches a float64
    torch model holding the same float32 weights to float64 rounding."""
    torch.manual_seed(1)
    original = randomize_uvit_(TU.UViT(**SMALL)).eval()              # float32 weights
    path = saved(tmp_path, original)
    ours = NU.UViT(**SMALL, dtype=np.float64)
    ours.load_state_dict(load_numpy_state_dict(path))
    assert ours.pos_embed.dtype == np.float64
    theirs = TU.UViT(**SMALL, dtype=torch.float64).eval()
    theirs.load_state_dict(load_pth(path))
    inputs = model_inputs(ours, np.random.default_rng(1), 2, np.float64)
    with torch.no_grad():
        want = theirs(*[torch.from_numpy(a) for a in inputs])
    assert_close("float64 from float32 .pth", ours(*inputs), want, 1e-10)


@pytest.mark.parametrize("name, extra", [("cifar10_uvit_small", {}),
                                         ("imagenet256_uvit_huge", {"num_classes": 11}),
                                         ("mscoco_uvit_small", {"clip_dim": 24,
                                                                "num_clip_token": 5})])
def test_load_pretrained_builds_the_named_model_in_both_backends(tmp_path, name, extra):
    torch.manual_seed(2)
    source = randomize_uvit_(TU.from_config(name, **TINY, **extra)).eval()
    path = saved(tmp_path, source)
    theirs = load_pretrained(path, name, **TINY, **extra)
    ours = load_pretrained(path, name, backend="numpy", **TINY, **extra)
    assert type(theirs) is type(source) and type(ours).__name__ == type(source).__name__
    assert not theirs.training and not ours.training
    inputs = model_inputs(ours, np.random.default_rng(2), 1, np.float32)
    with torch.no_grad():
        want = source(*[torch.from_numpy(a) for a in inputs])
        assert torch.equal(theirs(*[torch.from_numpy(a) for a in inputs]), want)
    assert_close(f"{name} numpy", ours(*inputs), want, TOLERANCE[np.dtype(np.float32)])
    with pytest.raises(ValueError, match=r"expected backend 'torch' or 'numpy', got 'jax'"):
        load_pretrained(path, name, backend="jax", **TINY, **extra)


def broken_state_dict(model):
    sd = dict(model.state_dict())
    del sd["mid_block.attn.proj.bias"]                                   # missing
    sd["label_emb.weight"] = torch.zeros(5, 32)                          # unexpected (uncond)
    sd["out_blocks.1.skip_linear.weight"] = torch.zeros(32, 32)          # mis-shaped
    return sd


PROBLEMS = [r"missing keys \(1\): \['mid_block.attn.proj.bias'\]",
            r"unexpected keys \(1\): \['label_emb.weight'\]",
            r"mis-shaped tensors \(1\): \['out_blocks.1.skip_linear.weight: expected \(32, 64\), "
            r"got \(32, 32\)'\]"]


def test_checkpoint_key_problems_are_reported_all_at_once(tmp_path):
    model = TU.UViT(**SMALL)
    path = tmp_path / "broken.pth"
    torch.save(broken_state_dict(model), path)
    errors = []
    with pytest.raises(ValueError) as err:
        TU.UViT(**SMALL).load_state_dict(load_pth(path))
    errors.append(str(err.value))
    with pytest.raises(ValueError) as err:
        NU.UViT(**SMALL).load_state_dict(load_numpy_state_dict(path))
    errors.append(str(err.value))
    with pytest.raises(ValueError) as err:
        load_pretrained(path, "cifar10_uvit_small", backend="numpy", img_size=8, **TINY)
    errors.append(str(err.value))
    for msg in errors:
        assert msg.startswith("UViT.load_state_dict: ")
        for pattern in PROBLEMS:
            assert re.search(pattern, msg), (pattern, msg)


def test_torch_mis_shaped_tensor_is_an_error_even_when_not_strict():
    model = TU.UViT(**SMALL)
    sd = {"pos_embed": torch.zeros(1, 3, 32)}
    with pytest.raises(ValueError, match=r"pos_embed: expected \(1, 17, 32\), got \(1, 3, 32\)"):
        model.load_state_dict(sd, strict=False)
    before = model.pos_embed.detach().clone()
    model.load_state_dict({"pos_embed": torch.ones(1, 17, 32)}, strict=False)
    assert torch.equal(model.pos_embed.detach(), torch.ones(1, 17, 32))
    assert not torch.equal(before, model.pos_embed.detach())


def test_load_pth_rejects_files_that_are_not_plain_state_dicts(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(TypeError, match=r"expected a state dict .* got a list"):
        load_pth(tmp_path / "list.pth")
    torch.save({"nnet": {"pos_embed": torch.zeros(2)}, "step": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match=r"these entries are not tensors: \{'nnet': 'dict', "
                                         r"'step': 'int'\}"):
        load_pth(tmp_path / "wrapped.pth")


def test_to_numpy_state_dict_handles_half_precision():
    sd = {"a": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
          "b": torch.tensor([0.1], dtype=torch.float16), "c": torch.tensor([3], dtype=torch.int64)}
    out = to_numpy_state_dict(sd)
    assert out["a"].dtype == np.float32 and out["a"].tolist() == [1.5, -2.25]
    assert out["b"].dtype == np.float32 and out["c"].dtype == np.int64
    assert to_numpy_state_dict(sd, np.float64)["a"].dtype == np.float64
