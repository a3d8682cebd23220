"""CLIP's text encoder: `uvit_numpy.clip`, its torch twin `uvit_torch.clip`, and transformers'
own `CLIPTextModel` / `CLIPTextModelWithProjection`, on weights perturbed from their init.

* the parity report's cases: NumPy vs the twin (blocks and four tiny models), the twin vs
  transformers (blocks and models), float64 <= 1e-10 and float32 <= 1e-5;
* NumPy and the twin vs transformers output by output (last_hidden_state, pooler_output, every
  hidden state, text_embeds) on tiny configs: both activations, both pooling rules, padding
  after the end-of-text token (with the pad id, and with the end-of-text token), batch 3;
* CLIP ViT-L/14's text tower once, built with transformers' own initialisation (float32);
* parameter counts and state-dict keys; folders written by transformers' `save_pretrained` (both
  key layouts, and a pipeline's `text_encoder/`) load in both packages, NumPy without torch;
* the config (transformers' fields, unknown keys kept, bad values refused), bad input, the
  causal mask, and the whole model's backward against central differences.
The gradients of every block and model against torch autograd are in `test_backward.py` (the
`--grads` report).
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import uvit_numpy.clip as N
import uvit_torch.clip as T
from tests.parity_params import assert_case_passes, case_params
from uvit_numpy.gradcheck import module_directional_error
from uvit_torch.parity import clip as PC
from uvit_torch.parity.harness import TOLERANCE, TORCH_DTYPE, assert_close, randomize_

NUMPY_CASES = [c for c in PC.cases() if not c.slow]   # the slow CLIP-L case: its own test below
TRANSFORMERS_CASES = PC.diffusers_cases()


@pytest.mark.parametrize("case, dtype, batch", case_params(NUMPY_CASES))
def test_numpy_matches_the_torch_twin(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


@pytest.mark.parametrize("case, dtype, batch", case_params(TRANSFORMERS_CASES))
def test_torch_twin_matches_transformers(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


# --------------------------------------------------------------------------------------------------
# Output by output, against transformers
# --------------------------------------------------------------------------------------------------
def transformers_model(config, projection, dtype, seed=0):
    """transformers' model with its own initialisation, every constant parameter perturbed."""
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    torch.manual_seed(seed)
    model = cls(PC.transformers_config(config)).to(TORCH_DTYPE[np.dtype(dtype)]).eval()
    return randomize_(model, seed)


def three_models(config, projection, dtype):
    """(transformers' model, ours in NumPy, our torch twin), the same weights in all three."""
    hf = transformers_model(config, projection, dtype)
    numpy_cls = N.CLIPTextModelWithProjection if projection else N.CLIPTextModel
    torch_cls = T.CLIPTextModelWithProjection if projection else T.CLIPTextModel
    ours = numpy_cls(config, dtype=dtype).eval()
    ours.load_state_dict({k: v.numpy() for k, v in hf.state_dict().items()})
    twin = torch_cls(config, dtype=TORCH_DTYPE[np.dtype(dtype)]).eval()
    twin.load_state_dict(hf.state_dict())
    return hf, ours, twin


def transformers_outputs(hf, ids):
    """transformers' outputs as a dict, with the pooler_output of a projection model (absent
    from its output) taken from its `text_model`."""
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), output_hidden_states=True)
        pooled = out.pooler_output if "pooler_output" in out else \
            hf.text_model(torch.from_numpy(ids)).pooler_output
    result = {"last_hidden_state": out.last_hidden_state, "pooler_output": pooled,
              "hidden_states": out.hidden_states}
    if "text_embeds" in out:
        result["text_embeds"] = out.text_embeds
    return result


def assert_outputs_match(label, ours, theirs, tol):
    """Every output compared on its own, relative to its own size. Returns the worst error."""
    assert len(ours.hidden_states) == len(theirs["hidden_states"])
    worst = 0.0
    for name in ("last_hidden_state", "pooler_output", "text_embeds"):
        if name in theirs:
            worst = max(worst, assert_close(f"{label} {name}", ours[name], theirs[name],
                                            tol).max_rel)
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs["hidden_states"])):
        worst = max(worst, assert_close(f"{label} hidden_states[{i}]", a, b, tol).max_rel)
    return worst


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, overrides, projection", PC.VARIANTS,
                         ids=[v[0] for v in PC.VARIANTS])
def test_every_output_matches_transformers(name, overrides, projection, dtype):
    config = PC.tiny_config(**overrides)
    hf, ours, twin = three_models(config, projection, dtype)
    ids = PC.text_ids(config, np.random.default_rng(18), 3)
    theirs = transformers_outputs(hf, ids)
    tol = TOLERANCE[np.dtype(dtype)]
    assert_outputs_match(f"numpy {name}", ours(ids, output_hidden_states=True), theirs, tol)
    with torch.no_grad():
        out = twin(torch.from_numpy(ids), output_hidden_states=True)
    assert_outputs_match(f"torch {name}", out, theirs, tol)
    assert len(theirs["hidden_states"]) == config.num_hidden_layers + 1


def test_the_pooling_rules_are_told_apart():
    """The data makes the two rules disagree, so a model using the wrong one fails the tests
    above; a row without the end-of-text token pools position 0, as in transformers."""
    config = PC.tiny_config()
    ids = PC.text_ids(config, np.random.default_rng(18), 3)
    first_eos = N.eos_positions(ids, config.eos_token_id)
    assert np.all(ids[np.arange(3), first_eos] == config.eos_token_id)
    assert np.all(first_eos != N.eos_positions(ids, 2))         # the legacy rule: elsewhere
    assert np.sum(ids[-1] == config.eos_token_id) > 1             # padded with eos: the first
    no_eos = np.array([[config.bos_token_id, 5, 6, 7, 1, 1]])
    hf, ours, _ = three_models(config, False, "float64")
    with torch.no_grad():
        pooled = hf(torch.from_numpy(no_eos)).pooler_output
    assert N.eos_positions(no_eos, config.eos_token_id)[0] == 0
    assert_close("no eos", ours(no_eos).pooler_output, pooled, 1e-10)


@pytest.mark.parametrize("projection", [False, True])
def test_parameter_counts_and_keys_equal_transformers(projection):
    config = PC.tiny_config()
    hf, ours, twin = three_models(config, projection, "float32")
    hf_keys = N.add_text_model_prefix(hf.state_dict())    # transformers 5: no text_model. level
    assert list(ours.state_dict()) == list(twin.state_dict()) == list(hf_keys)
    for key, value in ours.state_dict().items():
        assert tuple(value.shape) == tuple(hf_keys[key].shape), key
    n = sum(p.numel() for p in hf.parameters())
    assert ours.num_parameters() == n == sum(p.numel() for p in twin.parameters())


# --------------------------------------------------------------------------------------------------
# CLIP ViT-L/14's text tower
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_clip_vit_large_text_tower_matches_transformers():
    """The real sizes once (width 768, 12 layers of 12 heads, MLP 3072, vocab 49408, 77 tokens,
    quick_gelu, projection 768; 123,650,304 parameters), float32, batch 2 of 77 tokens, with
    transformers' own initialisation perturbed. The twin shares transformers' tensors."""
    from uvit_numpy.module import NoDraws
    start, cpu = time.perf_counter(), time.process_time()
    config = N.CLIPTextConfig.from_any("clip-vit-large-patch14")
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers,
            config.num_attention_heads, config.intermediate_size, config.max_position_embeddings,
            config.hidden_act, config.projection_dim) == (49408, 768, 12, 12, 3072, 77,
                                                          "quick_gelu", 768)
    hf = transformers_model(config, True, "float32")
    ours = N.CLIPTextModelWithProjection(config, rng=NoDraws()).eval()
    ours.load_state_dict({k: v.numpy() for k, v in hf.state_dict().items()})
    with torch.device("meta"):
        twin = T.CLIPTextModelWithProjection(config, dtype=torch.float32)
    twin.load_state_dict(hf.state_dict(), assign=True)
    twin.eval()
    built = time.perf_counter()
    n = sum(p.numel() for p in hf.parameters())
    assert ours.num_parameters() == n == sum(p.numel() for p in twin.parameters()) == 123650304
    ids = PC.text_ids(config, np.random.default_rng(14), 2, 77)
    theirs = transformers_outputs(hf, ids)
    t = time.perf_counter()
    worst = assert_outputs_match("numpy CLIP-L", ours(ids, output_hidden_states=True), theirs,
                                 1e-5)
    t_numpy = time.perf_counter() - t
    with torch.no_grad():
        out = twin(torch.from_numpy(ids), output_hidden_states=True)
    worst_twin = assert_outputs_match("torch CLIP-L", out, theirs, 1e-5)
    print(f"CLIP-L/14 text tower: worst rel error numpy {worst:.2e}, torch {worst_twin:.2e}; "
          f"build {built - start:.1f} s, numpy forward {t_numpy:.1f} s, "
          f"total {time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s CPU)")


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------
def _rewrite_keys(folder, rename, add=None):
    """Rename the keys of a folder's model.safetensors, and add the arrays of `add`."""
    from safetensors.numpy import load_file, save_file
    path = os.path.join(folder, "model.safetensors")
    arrays = {rename(k): v for k, v in load_file(path).items()}
    arrays.update({k: np.ascontiguousarray(v) for k, v in (add or {}).items()})
    save_file(arrays, path, metadata={"format": "pt"})


@pytest.mark.parametrize("layout", ["CLIPTextModel transformers 5",
                                    "CLIPTextModel Hub (text_model.)",
                                    "CLIPTextModelWithProjection in text_encoder/"])
def test_a_transformers_folder_loads_in_both_packages(tmp_path, layout):
    projection = "Projection" in layout
    config = PC.tiny_config(**PC.LEGACY) if projection else PC.tiny_config()
    hf = transformers_model(config, projection, "float32")
    folder = tmp_path / "text_encoder" if projection else tmp_path
    hf.save_pretrained(folder)
    if "Hub" in layout:                                   # the layout of transformers 4 and the Hub
        _rewrite_keys(folder, lambda k: f"text_model.{k}")
    ids = PC.text_ids(config, np.random.default_rng(5), 3)
    theirs = transformers_outputs(hf, ids)
    numpy_cls = N.CLIPTextModelWithProjection if projection else N.CLIPTextModel
    torch_cls = T.CLIPTextModelWithProjection if projection else T.CLIPTextModel
    ours = numpy_cls.from_pretrained(tmp_path)            # finds text_encoder/ by itself
    assert ours.dtype == np.float32 and not ours.training
    assert ours.config.eos_token_id == config.eos_token_id
    assert ours.config.extra["architectures"] == [type(hf).__name__]
    assert_outputs_match("numpy", ours(ids, output_hidden_states=True), theirs, 1e-5)
    twin = torch_cls.from_pretrained(tmp_path)
    with torch.no_grad():
        assert_outputs_match("torch", twin(torch.from_numpy(ids), output_hidden_states=True),
                             theirs, 1e-5)
    if "Hub" in layout:                                   # transformers reads it back the same
        again = transformers.CLIPTextModel.from_pretrained(tmp_path).eval()
        assert_outputs_match("transformers", ours(ids, output_hidden_states=True),
                             transformers_outputs(again, ids), 1e-5)


def test_numpy_loads_and_runs_a_folder_without_torch(tmp_path):
    config = PC.tiny_config()
    hf = transformers_model(config, True, "float32")
    hf.save_pretrained(tmp_path)
    ids = PC.text_ids(config, np.random.default_rng(5), 2)
    np.save(tmp_path / "ids.npy", ids)
    code = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from uvit_numpy.clip import CLIPTextModelWithProjection
        model = CLIPTextModelWithProjection.from_pretrained({str(tmp_path)!r})
        out = model(np.load({str(tmp_path / "ids.npy")!r}), output_hidden_states=True)
        np.save({str(tmp_path / "embeds.npy")!r}, out.text_embeds)
        np.save({str(tmp_path / "penultimate.npy")!r}, out.hidden_states[-2])
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    theirs = transformers_outputs(hf, ids)
    assert_close("text_embeds", np.load(tmp_path / "embeds.npy"), theirs["text_embeds"], 1e-5)
    assert_close("hidden_states[-2]", np.load(tmp_path / "penultimate.npy"),
                 theirs["hidden_states"][-2], 1e-5)


@pytest.mark.parametrize("projection", [False, True])
def test_our_save_pretrained_loads_in_transformers(tmp_path, projection):
    config = PC.tiny_config()
    cls = N.CLIPTextModelWithProjection if projection else N.CLIPTextModel
    ours = cls(config, dtype=np.float32, rng=3).eval()
    ours.save_pretrained(tmp_path / "numpy")
    with open(tmp_path / "numpy" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["architectures"] == [cls.__name__]
    hf_cls = transformers.CLIPTextModelWithProjection if projection else \
        transformers.CLIPTextModel
    hf = hf_cls.from_pretrained(tmp_path / "numpy").eval()
    ids = PC.text_ids(config, np.random.default_rng(6), 3)
    assert_outputs_match("numpy save", ours(ids, output_hidden_states=True),
                         transformers_outputs(hf, ids), 1e-5)
    twin = (T.CLIPTextModelWithProjection if projection else T.CLIPTextModel)(config)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    twin.save_pretrained(tmp_path / "torch")
    again = cls.from_pretrained(tmp_path / "torch")
    for key, value in ours.state_dict().items():
        assert np.array_equal(again.state_dict()[key], value), key


def test_an_old_checkpoints_position_buffer_is_checked_and_dropped(tmp_path):
    """transformers < 4.31 saved `text_model.embeddings.position_ids` with the weights."""
    config = PC.tiny_config()
    hf = transformers_model(config, True, "float32")
    hf.save_pretrained(tmp_path)
    buffer = np.arange(16)[None, :]
    _rewrite_keys(tmp_path, lambda k: k, {"text_model.embeddings.position_ids": buffer})
    ids = PC.text_ids(config, np.random.default_rng(5), 2)
    theirs = transformers_outputs(hf, ids)
    assert_outputs_match("numpy", N.CLIPTextModelWithProjection.from_pretrained(tmp_path)(
        ids, output_hidden_states=True), theirs, 1e-5)
    with torch.no_grad():
        assert_outputs_match("torch", T.CLIPTextModelWithProjection.from_pretrained(tmp_path)(
            torch.from_numpy(ids), output_hidden_states=True), theirs, 1e-5)
    _rewrite_keys(tmp_path, lambda k: k, {"text_model.embeddings.position_ids": buffer[:, ::-1]})
    for package in (N, T):
        with pytest.raises(ValueError, match="position_ids should hold 0..15"):
            package.CLIPTextModelWithProjection.from_pretrained(tmp_path)


def test_loading_refuses_a_mismatched_folder(tmp_path):
    """A projection folder into CLIPTextModel: the extra weight is named, not dropped."""
    transformers_model(PC.tiny_config(), True, "float32").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="text_projection.weight"):
        N.CLIPTextModel.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="text_projection.weight"):
        T.CLIPTextModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        os.remove(tmp_path / "model.safetensors")
        N.CLIPTextModel.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------------
# Config, inputs, API
# --------------------------------------------------------------------------------------------------
def test_config_reads_transformers_configs():
    hf_config = PC.transformers_config(PC.tiny_config())
    config = N.CLIPTextConfig.from_any(hf_config)           # transformers' object
    assert config == N.CLIPTextConfig.from_any(hf_config.to_dict()) == \
        N.CLIPTextConfig.from_any(json.loads(hf_config.to_json_string()))
    for name in N.CONFIG_DEFAULTS:
        assert getattr(config, name) == getattr(hf_config, name), name
    assert N.CLIPTextConfig().to_dict() == {**N.CONFIG_DEFAULTS}   # transformers' defaults:
    default = transformers.CLIPTextConfig()
    for name in N.CONFIG_DEFAULTS:
        assert getattr(default, name) == N.CONFIG_DEFAULTS[name], name
    # keys the text model never reads are kept and unused, as transformers keeps them
    old = N.CLIPTextConfig(**N.CONFIGS["tiny"], dropout=0.1, torch_dtype="float32",
                           _name_or_path="openai/clip")
    assert old.extra == {"dropout": 0.1, "torch_dtype": "float32", "_name_or_path": "openai/clip"}


@pytest.mark.parametrize("bad, error, match", [
    ({"hidden_size": 30}, ValueError, "not a multiple of num_attention_heads"),
    ({"hidden_act": "gelu_new"}, ValueError, "hidden_act 'gelu_new'"),
    ({"eos_token_id": [2, 3]}, TypeError, "eos_token_id must be one int"),
    ({"eos_token_id": None}, TypeError, "eos_token_id must be one int"),
    ({"num_hidden_layers": 0}, ValueError, "num_hidden_layers must be a positive int"),
    ({"vocab_size": "64"}, ValueError, "vocab_size must be a positive int"),
    ({"layer_norm_eps": -1.0}, ValueError, "layer_norm_eps"),
    ({"model_type": "bert"}, ValueError, "model_type 'clip_text_model'"),
    ({"text_config": {}}, ValueError, "full CLIPConfig"),
])
def test_config_refuses_bad_values(bad, error, match):
    with pytest.raises(error, match=match):
        N.CLIPTextConfig(**{**N.CONFIGS["tiny"], **bad})


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_bad_input_is_named(package):
    config = PC.tiny_config()
    model = (N.CLIPTextModel(config) if package == "numpy" else T.CLIPTextModel(config)).eval()
    wrap = (lambda a: a) if package == "numpy" else torch.from_numpy
    ids = PC.text_ids(config, np.random.default_rng(0), 2)
    cases = [(ids.astype(np.float32), TypeError, "integer"),
             (ids[0], ValueError, "2-d array"),
             (np.zeros((1, 17), np.int64), ValueError, "max_position_embeddings = 16"),
             (np.full((1, 3), 64), ValueError, r"values in \[0, 64\)")]
    for value, error, match in cases:
        with pytest.raises(error, match=match):
            model(wrap(value))
    with pytest.raises(ValueError, match="attention_mask is not supported"):
        model(wrap(ids), attention_mask=wrap(np.ones_like(ids)))


def test_the_attention_is_causal():
    """Changing the ids after position k changes no feature at positions <= k; before it, all."""
    config = PC.tiny_config()
    model = N.CLIPTextModel(config, dtype=np.float64, rng=1).eval()
    ids = PC.text_ids(config, np.random.default_rng(1), 1)
    changed = ids.copy()
    changed[0, 6:] = (changed[0, 6:] + 7) % config.vocab_size
    a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert np.array_equal(a[:, :6], b[:, :6])
    assert np.all(np.abs(a[:, 6:] - b[:, 6:]).max(-1) > 1e-3)


def test_outputs_read_as_transformers_outputs():
    config = N.CLIPTextConfig(**{**N.CONFIGS["tiny"], "output_hidden_states": True})
    model = N.CLIPTextModelWithProjection(config).eval()
    ids = PC.text_ids(config, np.random.default_rng(0), 2)
    out = model(ids)                                      # the config asks for hidden states
    assert out.keys() == ["text_embeds", "last_hidden_state", "hidden_states", "pooler_output"]
    assert out[0] is out.text_embeds and out["hidden_states"] is out.hidden_states
    assert out.text_embeds.shape == (2, 24) and len(out.hidden_states) == 3
    assert model(ids, output_hidden_states=False).hidden_states is None
    assert "text_embeds=(2, 24)" in repr(out)


def test_whole_model_backward_matches_central_differences():
    """Every parameter of the tiny projection model, through every output at once (float64)."""
    config = PC.tiny_config()
    model = PC.AllOutputs(N.CLIPTextModelWithProjection(config, dtype=np.float64, rng=2))
    ids = PC.text_ids(config, np.random.default_rng(2), 2, 8)
    rng = np.random.default_rng(3)
    dy = rng.standard_normal(model(ids).shape)
    error, where = module_directional_error(model, [ids], dy, rng, directions=1)
    assert error < 1e-6, f"{where}: {error:.2e}"
