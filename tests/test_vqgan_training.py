"""The VQ-GAN task (`vqgan-tiny`): its loss against torch autograd, both trainers on it (the loss
falls, they replay each other, a resume is exact, the data-parallel sum adds up), the VQ-GAN
tokenizer it exports (NumPy and torch agree), a masked-token model trained on its codes, sampling
with a VQ-GAN tokenizer folder, and the tokenizer evaluation."""

import json
import os

import numpy as np
import pytest
import torch

from uvit_numpy import data, losses
from uvit_numpy import train as np_train
from uvit_numpy import training as T
from uvit_numpy.tokenizer import (
    KMeansTokenizer,
    VQGANTokenizer,
    crop_images,
    load_tokenizer,
    pad_images,
)
from uvit_torch import losses as torch_losses
from uvit_torch import train as torch_train
from uvit_torch.tokenizer import VQGANTokenizer as TorchVQGANTokenizer

BACKENDS = {"torch": torch_train.TorchBackend, "numpy": np_train.NumpyBackend}
SHORT = dict(steps=6, checkpoint_every=6, log_every=3)


def _train(root, backend, out, name="vqgan-tiny", dtype="float32", **overrides):
    cfg = T.train_config(name, **{**SHORT, **overrides})
    return T.run(cfg, str(root / out), BACKENDS[backend](), dtype=dtype, progress=False)


@pytest.fixture(scope="module")
def tiny_vqgan(tmp_path_factory):
    """A 6-step vqgan-tiny run (torch, float32): its model/ folder."""
    root = tmp_path_factory.mktemp("vqgan")
    _train(root, "torch", "run")
    return str(root / "run" / "model")


# --------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reconstruction", ["l2", "l1"])
def test_vq_autoencoder_loss_and_its_backward_match_torch(reconstruction):
    rng = np.random.default_rng(0)
    sample, target = rng.standard_normal((2, 3, 1, 4, 4))
    target[0, 0, 0, 0] = sample[0, 0, 0, 0]                       # a zero difference: L1's kink
    commit = np.asarray(0.7)
    loss, cache = losses.vq_autoencoder_loss((sample, commit), target, reconstruction, 0.3,
                                             return_cache=True)
    d_sample, d_commit = losses.vq_autoencoder_loss_backward(1.7, cache)
    s = torch.tensor(sample, requires_grad=True)
    c = torch.tensor(commit, requires_grad=True)
    ref = torch_losses.vq_autoencoder_loss((s, c), torch.tensor(target), reconstruction, 0.3)
    (1.7 * ref).backward()
    assert abs(float(loss) - ref.item()) <= 1e-15 * abs(ref.item())
    np.testing.assert_allclose(d_sample, s.grad.numpy(), rtol=0, atol=1e-15)
    assert d_commit == pytest.approx(c.grad.item(), rel=1e-15)


def test_vq_autoencoder_loss_refuses_bad_options():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expected reconstruction in \['l1', 'l2'\], got 'l3'"):
        losses.vq_autoencoder_loss((x, np.asarray(0.0)), x, "l3")
    with pytest.raises(TypeError, match="expected outputs = \\(sample, commit_loss\\)"):
        losses.vq_autoencoder_loss(x, x)


def test_padding_is_the_tokenizers_and_is_undone():
    images, _ = data.load_digits("held_out")
    x = pad_images(images[:3])
    assert x.shape == (3, 1, 32, 32) and (x[:, :, :2] == -1).all() and (x[..., -2:] == -1).all()
    assert np.array_equal(crop_images(x), images[:3])


def test_dead_codes_move_onto_the_worst_fitted_vectors():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 0.1, (50, 2)), [[5.0, 5.0], [-4.0, 0.0]]])
    codebook = np.array([[0.0, 0.0], [50.0, 50.0], [0.1, 0.0], [-50.0, 0.0]])  # 1, 3 dead
    new, dead = T.restart_dead_codes(codebook, z)
    assert dead.tolist() == [1, 3]
    assert new[1].tolist() == [5.0, 5.0] and new[3].tolist() == [-4.0, 0.0]  # worst first
    assert np.array_equal(new[[0, 2]], codebook[[0, 2]])           # the live ones stay
    again, none = T.restart_dead_codes(new, z)
    assert len(none) == 0 and np.array_equal(again, new)


def test_refresh_moves_the_codes_in_the_weights_and_the_average_and_resets_adam():
    cfg = T.train_config("vqgan-tiny")
    task = T.VQGANTask(cfg, np.float64)
    weights = task.build(0).state_dict()
    key = "quantize.embedding.weight"
    arrays = {**{f"model.{k}": v for k, v in weights.items()},
              **{f"ema.{k}": v.copy() for k, v in weights.items()},
              f"optim.exp_avg.{key}": np.ones_like(weights[key]),
              f"optim.exp_avg_sq.{key}": np.ones_like(weights[key])}
    said = []
    out = task.refresh(arrays, 0, 2, say=said.append)
    moved = np.flatnonzero(np.any(out[f"model.{key}"] != weights[key], axis=1))
    assert len(moved) > 0 and said == [f"step 2: {len(moved)} dead codes restarted"]
    assert np.array_equal(out[f"ema.{key}"], out[f"model.{key}"])  # the same rows moved
    assert (out[f"optim.exp_avg.{key}"][moved] == 0).all()
    assert (np.delete(out[f"optim.exp_avg_sq.{key}"], moved, axis=0) == 1).all()
    assert np.array_equal(arrays[f"model.{key}"], weights[key])   # the input is not changed
    assert [task.refreshes(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    cfg["restart_dead_codes"] = None                               # the option off
    assert not T.VQGANTask(cfg, np.float64).refreshes(2)


# --------------------------------------------------------------------------------------------------
# The trainers on the task
# --------------------------------------------------------------------------------------------------
def test_numpy_and_torch_trainers_replay_the_same_vqgan_run(tmp_path):
    """float64: the same initial weights and batches; the codes chosen are the same at every step
    (an argmin that went another way would show as a large difference), and so are the dead-code
    restarts (vqgan-tiny restarts every 2 steps)."""
    _train(tmp_path, "torch", "torch", dtype="float64")
    _train(tmp_path, "numpy", "numpy", dtype="float64")
    a, _ = T.load_checkpoint(str(tmp_path / "torch" / T.CHECKPOINT))
    b, _ = T.load_checkpoint(str(tmp_path / "numpy" / T.CHECKPOINT))
    worst = max(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30)
                for k in a if k.startswith(("model.", "ema.")))
    assert worst <= 1e-10, f"torch and NumPy vqgan-tiny runs differ by {worst:.2e}"
    log_a = T.read_log(str(tmp_path / "torch" / "log.csv"))
    log_b = T.read_log(str(tmp_path / "numpy" / "log.csv"))
    np.testing.assert_allclose(log_a["loss"], log_b["loss"], rtol=1e-10)
    assert log_a["loss"][-1] < log_a["loss"][0]


def test_a_vqgan_resume_gives_bitwise_the_uninterrupted_run(tmp_path):
    _train(tmp_path, "torch", "straight")
    _train(tmp_path, "torch", "resumed", steps=3, checkpoint_every=3)
    T.run(T.train_config("vqgan-tiny", **SHORT), str(tmp_path / "resumed"),
          torch_train.TorchBackend(), resume=True, progress=False)
    a, _ = T.load_checkpoint(str(tmp_path / "straight" / T.CHECKPOINT))
    b, _ = T.load_checkpoint(str(tmp_path / "resumed" / T.CHECKPOINT))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_data_parallel_sum_of_the_vq_loss_adds_up():
    """Two shards' `task_loss_sum`, divided by the batch's images, is the batch's mean loss
    (what `TorchBackend._sharded_forward_backward` relies on)."""
    cfg = T.train_config("vqgan-tiny")
    task = T.VQGANTask(cfg, np.float64)
    model = torch_train.VQModel(**task.build(0).config, dtype=torch.float64)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in task.build(0).state_dict().items()})
    x = torch.from_numpy(task.batch(0, 1)["x"])
    with torch.no_grad():
        whole = torch_train.task_loss(task, model(x, False), x)
        parts = [torch_train.task_loss_sum(task, model(p, False), p) for p in (x[:3], x[3:])]
    assert task.count({"x": x.numpy()}) == len(x)
    assert float(sum(parts) / len(x)) == pytest.approx(float(whole), rel=1e-13)


def test_the_exported_folder_is_a_diffusers_vqmodel_with_its_padding(tiny_vqgan):
    config = json.loads(open(os.path.join(tiny_vqgan, "config.json")).read())
    assert config["_class_name"] == "VQModel" and config["_tokenizer"] == {"pad": 2,
                                                                          "image_size": 28}
    assert config["_training"]["config"]["name"] == "vqgan-tiny"
    from diffusers import VQModel
    theirs = VQModel.from_pretrained(tiny_vqgan)                 # diffusers reads it unchanged
    assert theirs.config.num_vq_embeddings == 32 and theirs.config.lookup_from_codebook


# --------------------------------------------------------------------------------------------------
# The VQ-GAN tokenizer
# --------------------------------------------------------------------------------------------------
def test_vqgan_tokenizer_round_trip_in_both_packages(tiny_vqgan):
    held, _ = data.load_digits("held_out")
    ours = VQGANTokenizer.from_pretrained(tiny_vqgan)
    port = TorchVQGANTokenizer.from_pretrained(tiny_vqgan)
    codes = ours.encode(held[:20], batch_size=7)
    assert codes.shape == (20, 8, 8) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 32 and ours.grid == 8
    assert np.array_equal(port.encode(held[:20]), codes)
    images = ours.decode(codes, batch_size=6)
    assert images.shape == (20, 28, 28) and -1 <= images.min() and images.max() <= 1
    np.testing.assert_allclose(port.decode(codes), images, rtol=0, atol=1e-5)
    # the model's own forward pass (encode, quantise, decode) gives the same picture
    x = pad_images(held[:20])
    np.testing.assert_allclose(np.clip(crop_images(ours.model(x).sample), -1, 1), images,
                               rtol=0, atol=1e-6)
    partial = ours.decode_partial(np.where(np.arange(64).reshape(8, 8) < 8, 32, codes), 32)
    assert partial.shape == (20, 28, 28) and (partial[:, :2] == 0.0).all()   # row 0: masked
    with pytest.raises(ValueError, match=r"expected values in \[0, 32\)"):
        ours.decode(np.full((1, 8, 8), 32))
    assert isinstance(load_tokenizer(tiny_vqgan), VQGANTokenizer)


# --------------------------------------------------------------------------------------------------
# A masked-token model on the VQ-GAN's codes, and sampling with it
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def amused_on_vqgan(tiny_vqgan, tmp_path_factory):
    """amused-tiny trained 5 steps on the tiny VQ-GAN's codes of 200 training digits (the NumPy
    VQ-GAN encodes them when the task is built: all 4,500 would take most of a minute)."""
    root = tmp_path_factory.mktemp("amused-vq")
    cfg = T.train_config("amused-tiny", tokenizer={"vqgan": tiny_vqgan}, steps=5,
                         checkpoint_every=5)
    images, labels = data.load_digits("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(T, "load_digits", lambda split: (images[:200], labels[:200]))
        T.run(cfg, str(root / "run"), np_train.NumpyBackend(), progress=False)
    return str(root / "run" / "model")


def test_a_maskgit_run_on_vqgan_codes_ships_the_vqgan(amused_on_vqgan, tiny_vqgan):
    assert os.path.isfile(os.path.join(amused_on_vqgan, "vqvae", "config.json"))
    assert not os.path.exists(os.path.join(amused_on_vqgan, "tokenizer.safetensors"))
    copy = VQGANTokenizer.from_pretrained(os.path.join(amused_on_vqgan, "vqvae"))
    original = VQGANTokenizer.from_pretrained(tiny_vqgan)
    assert all(np.array_equal(v, original.model.state_dict()[k])
               for k, v in copy.model.state_dict().items())
    assert copy.record["config"]["name"] == "vqgan-tiny"          # the copy says where from
    config = json.loads(open(os.path.join(amused_on_vqgan, "config.json")).read())
    assert config["_training"]["config"]["tokenizer"] == {"vqgan": tiny_vqgan}


def test_sampling_decodes_with_the_vqgan(amused_on_vqgan, tiny_vqgan, tmp_path):
    from uvit_numpy import sample as np_sample
    from uvit_torch import sample as torch_sample
    for module, tag in ((np_sample, "np"), (torch_sample, "torch")):
        for extra in ([], ["--tokenizer", tiny_vqgan]):
            npz = tmp_path / f"{tag}{len(extra)}.npz"
            assert module.main([amused_on_vqgan, "--labels", "3,7", "--per-label", "1", "--out",
                                str(tmp_path / "x.png"), "--npz", str(npz), *extra]) == 0
            images = np.load(npz)["images"]
            assert images.shape == (2, 28, 28) and 0 <= images.min() and images.max() <= 1
    a, b = np.load(tmp_path / "np0.npz")["images"], np.load(tmp_path / "np2.npz")["images"]
    assert np.array_equal(a, b)                     # the folder's copy is the VQ-GAN itself
    assert isinstance(torch_sample.load_digit_model(amused_on_vqgan).tokenizer,
                      TorchVQGANTokenizer)          # torch decodes in torch


def test_a_tokenizer_of_the_wrong_kind_is_refused_before_sampling(amused_on_vqgan, tiny_vqgan,
                                                                  tmp_path, capsys):
    from uvit_numpy import sample as np_sample
    from uvit_numpy.sample import load_digit_model
    kmeans = KMeansTokenizer(np.zeros((32, 16), np.float32))
    kmeans.save(str(tmp_path / "k.safetensors"))
    with pytest.raises(ValueError, match="trained on a VQ-GAN's codes.*is k-means"):
        load_digit_model(amused_on_vqgan, tokenizer=str(tmp_path / "k.safetensors"))
    assert np_sample.main(["amused-digits", "--tokenizer", tiny_vqgan, "--out",
                           str(tmp_path / "x.png")]) == 1
    assert "trained on k-means codes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a tokenizer is only for masked-token models"):
        load_digit_model("uvit-digits", tokenizer=tiny_vqgan)
    cfg = T.train_config("amused-digits", tokenizer={"vqgan": tiny_vqgan})
    with pytest.raises(ValueError, match="has 32 codes, but the model's codebook_size is 256"):
        T.fit_tokenizer(cfg, None, 0)


# --------------------------------------------------------------------------------------------------
# The tokenizer evaluation
# --------------------------------------------------------------------------------------------------
class Identity:
    """A 'tokenizer' that keeps every digit as it is: the yardstick of `evaluate_tokenizer`."""
    codebook_size = 1

    def encode(self, images):
        self.last = images
        return np.zeros((len(images), 1, 1), dtype=np.int64)

    def decode(self, codes):
        return self.last


def test_a_lossless_tokenizer_scores_the_real_digits():
    from uvit_torch.evaluate import evaluate_tokenizer
    r = evaluate_tokenizer(Identity())
    assert r["psnr"] == float("inf") or r["psnr"] > 100
    assert abs(r["paired_frechet_distance"]) < 1e-6
    assert r["frechet_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert r["used"] == 1 and r["top_share"] == 1.0


def test_the_tokenizer_command_writes_the_table(tmp_path, capsys):
    """On the shipped k-means tokenizer (a table look-up: fast)."""
    from uvit_torch import evaluate
    out = tmp_path / "t.json"
    assert evaluate.main(["--tokenizers", "amused-digits", "--json", str(out)]) == 0
    assert "Frechet ratio of reconstructions" in capsys.readouterr().out
    report = json.loads(out.read_text())["tokenizers"]["amused-digits"]
    assert report["codebook_size"] == 256 and report["used"] == 256   # k-means reseeds empties
    assert 1.0 < report["frechet_ratio"] < 3.0 and 15 < report["psnr"] < 40


def test_the_tokenizer_command_refuses_what_is_no_tokenizer(tmp_path, capsys):
    from uvit_torch import evaluate
    assert evaluate.main(["--tokenizers", "uvit-digits"]) == 1
    assert "holds no VQ-GAN tokenizer" in capsys.readouterr().err
    assert evaluate.main(["--tokenizers", str(tmp_path)]) == 1
    assert "no tokenizer at" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["uvit_numpy", "uvit_torch"])
def test_sample_names_a_missing_tokenizer_before_loading(package, tmp_path, capsys):
    """`sample --tokenizer` with a path that does not exist, or with a diffusion model, is a
    usage error (status 2) naming the option, before any model is loaded; nothing is written."""
    import importlib
    main = importlib.import_module(f"{package}.sample").main
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit) as stop:
        main(["amused-digits", "--tokenizer", str(tmp_path / "nope"), "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--tokenizer: expected a shipped VQ-GAN" in err and "nope" in err
    with pytest.raises(SystemExit) as stop:
        main(["uvit-digits", "--tokenizer", "vqgan-digits", "--out", str(out)])
    assert stop.value.code == 2 and "is a diffusion model" in capsys.readouterr().err
    assert not out.exists()
