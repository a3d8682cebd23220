"""The shipped digit models are what README.md says they are: complete folders, small, with the
record of the run that made them, an evaluation made with their own sampling defaults, and the
README's figures read from that evaluation. Nothing here samples 1,000 digits: the figures come
from `python -m uvit_torch.evaluate NAME --json ...`; these tests check that the files agree."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from uvit_numpy import pretrained
from uvit_numpy.training import TRAIN_CONFIGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGIT_MODELS = ("uvit-digits", "amused-digits", "amused-vqgan-digits")


def _read(name, file):
    with open(os.path.join(pretrained.path(name), file), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_the_folder_records_its_run(name):
    config = _read(name, "config.json")
    run = config["_training"]
    assert run["command"].startswith(f"python -m uvit_torch.train {name}")
    assert run["seed"] == 0 and run["seconds"] > 0
    assert run["steps"] == run["config"]["steps"]
    # the run is the named config, apart from what resume may change
    named = {k: v for k, v in TRAIN_CONFIGS[name].items() if k not in ("steps", "sampling")}
    recorded = {k: v for k, v in run["config"].items() if k in named}
    assert json.loads(json.dumps(named)) == recorded
    assert config["_sampling"] == run["config"]["sampling"]
    with open(os.path.join(pretrained.path(name), "log.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) == run["steps"]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    weights = os.path.join(pretrained.path(name), "diffusion_pytorch_model.safetensors")
    assert os.path.getsize(weights) < 8 * 2**20


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_the_evaluation_used_the_models_defaults(name):
    config, report = _read(name, "config.json"), _read(name, "evaluation.json")
    assert report["samples"] == 1000 and report["model"] == name
    assert report["seed"] == 1234
    for key, value in config["_sampling"].items():
        assert report["settings"][key] == value, key
    assert report["frechet_ratio"] == pytest.approx(
        report["frechet_distance"] / report["frechet_real_vs_real"])


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_the_readme_figures_are_the_evaluations(name):
    report = _read(name, "evaluation.json")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## The shipped models", 1)[1].split("\n## ", 1)[0]
    for text in (f"{report['class_accuracy']:.3f}", f"{report['frechet_distance']:.2f}",
                 f"{report['frechet_real_vs_real']:.2f}", f"{report['frechet_ratio']:.2f}"):
        assert text in section, (name, text)
    assert os.path.isfile(os.path.join(ROOT, "docs", f"{name}.png"))


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_both_packages_load_the_same_shipped_weights(name):
    from uvit_numpy.sample import load_digit_model as load_numpy
    from uvit_torch.sample import load_digit_model as load_torch
    ours, port = load_numpy(name).model, load_torch(name).model
    theirs = port.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, theirs[key].numpy(), err_msg=key)
    assert set(theirs) == set(ours.state_dict())
    assert all(v.dtype == torch.float32 for v in theirs.values())


# --------------------------------------------------------------------------------------------------
# The VQ-GAN tokenizer
# --------------------------------------------------------------------------------------------------
def test_the_vqgan_folder_records_its_run():
    config = _read("vqgan-digits", "config.json")
    run = config["_training"]
    assert config["_class_name"] == "VQModel"
    assert config["_tokenizer"] == {"pad": 2, "image_size": 28}
    assert run["command"].startswith("python -m uvit_torch.train vqgan-digits")
    assert run["seed"] == 0 and run["seconds"] > 0 and run["steps"] == run["config"]["steps"]
    named = {k: v for k, v in TRAIN_CONFIGS["vqgan-digits"].items() if k != "steps"}
    assert json.loads(json.dumps(named)) == {k: v for k, v in run["config"].items() if k in named}
    with open(os.path.join(pretrained.path("vqgan-digits"), "log.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) == run["steps"]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    weights = os.path.join(pretrained.path("vqgan-digits"), "diffusion_pytorch_model.safetensors")
    assert os.path.getsize(weights) < 4 * 2**20


def test_the_vqgan_evaluation_is_against_kmeans_and_in_the_readme():
    report = _read("vqgan-digits", "evaluation.json")
    tokenizers = report["tokenizers"]
    assert list(tokenizers) == ["vqgan-digits", "amused-digits"]
    assert report["command"] == "python -m uvit_torch.evaluate --tokenizers vqgan-digits " \
                                "amused-digits"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## The shipped models", 1)[1].split("\n## ", 1)[0]
    for r in tokenizers.values():
        assert r["frechet_ratio"] == pytest.approx(r["frechet_distance"] /
                                                   r["frechet_real_vs_real"])
        for text in (f"{r['psnr']:.2f}", f"{r['perplexity']:.1f}", f"{r['frechet_ratio']:.2f}",
                     f"{r['paired_frechet_distance']:.2f}"):
            assert text in section, text


def test_both_packages_tokenize_with_the_shipped_vqgan():
    from uvit_numpy.data import load_digits
    from uvit_numpy.tokenizer import VQGANTokenizer
    from uvit_torch.tokenizer import VQGANTokenizer as TorchVQGANTokenizer
    held, _ = load_digits("held_out")
    ours = VQGANTokenizer.from_pretrained(pretrained.path("vqgan-digits"))
    port = TorchVQGANTokenizer.from_pretrained(pretrained.path("vqgan-digits"))
    codes = ours.encode(held[:16])
    assert np.array_equal(port.encode(held[:16]), codes)
    np.testing.assert_allclose(port.decode(codes), ours.decode(codes), rtol=0, atol=1e-5)


def test_the_amused_config_on_vqgan_codes_differs_only_in_its_tokenizer():
    """The same training; only the tokenizer and the sampling defaults (chosen on each trained
    model) differ."""
    from uvit_numpy.tokenizer import VQGANTokenizer
    ours, kmeans = TRAIN_CONFIGS["amused-vqgan-digits"], TRAIN_CONFIGS["amused-digits"]
    assert {k: v for k, v in ours.items() if k not in ("tokenizer", "sampling")} == \
           {k: v for k, v in kmeans.items() if k not in ("tokenizer", "sampling")}
    vqgan = VQGANTokenizer.from_pretrained(pretrained.path(ours["tokenizer"]["vqgan"]))
    assert vqgan.codebook_size == ours["model"]["codebook_size"]
    assert vqgan.codebook_size == kmeans["tokenizer"]["codebook_size"]


def test_the_amused_model_on_vqgan_codes_carries_the_shipped_vqgan():
    """amused-vqgan-digits/vqvae is a copy of vqgan-digits (the folder is whole on its own), and
    sampling loads it as the model's tokenizer."""
    from uvit_numpy.sample import load_digit_model
    from uvit_numpy.tokenizer import VQGANTokenizer
    ours = os.path.join(pretrained.path("amused-vqgan-digits"), "vqvae")
    shipped = pretrained.path("vqgan-digits")
    for file in ("config.json", "diffusion_pytorch_model.safetensors"):
        with open(os.path.join(ours, file), "rb") as a, open(os.path.join(shipped, file), "rb") as b:
            assert a.read() == b.read(), file
    tok = load_digit_model("amused-vqgan-digits").tokenizer
    assert isinstance(tok, VQGANTokenizer)
    run = _read("amused-vqgan-digits", "config.json")["_training"]
    assert run["config"]["tokenizer"] == {"vqgan": "vqgan-digits"}
