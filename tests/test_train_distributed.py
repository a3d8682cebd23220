"""The torch trainer at scale, on CPU: data parallelism under torchrun (2 gloo processes give the
1-process run at the same global batch, float64, and resume exactly), gradient accumulation,
gradient checkpointing (the same gradients), bf16 autocast (a loss near float32's), fp16 with its
gradient scaler, and the CIFAR-10 recipe's data reading and checks."""

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from uvit_numpy import train as np_train
from uvit_numpy import training as T
from uvit_numpy import cifar10
from uvit_torch import train as torch_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(steps=5, log_every=1)                 # one log row per step: the whole loss curve


def rel_error(a, b):
    """max |a - b| / max |a|, the error relative to the size of the array."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))


def worst_weights(path_a, path_b):
    """(worst relative error, its key) over the weights and EMA of two run folders."""
    a, _ = T.load_checkpoint(os.path.join(path_a, "checkpoint.safetensors"))
    b, _ = T.load_checkpoint(os.path.join(path_b, "checkpoint.safetensors"))
    assert set(a) == set(b)
    return max((rel_error(a[k], b[k]), k) for k in a if k.startswith(("model.", "ema.")))


def bitwise_same(path_a, path_b):
    a, meta_a = T.load_checkpoint(os.path.join(path_a, "checkpoint.safetensors"))
    b, meta_b = T.load_checkpoint(os.path.join(path_b, "checkpoint.safetensors"))
    return (set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
            and meta_a["optimizer_steps"] == meta_b["optimizer_steps"])


def log_columns(path, *columns):
    log = T.read_log(os.path.join(path, "log.csv"))
    return np.stack([log[c] for c in columns])


def run_here(name, out, dtype="float64", resume=False, overrides=None, **options):
    """One process, in this process; `options` are TorchBackend's."""
    cfg = T.train_config(name, **{**TINY, **(overrides or {})})
    return T.run(cfg, str(out), torch_train.TorchBackend(**options), dtype=dtype, progress=False,
                 resume=resume)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, *args):
    """Start `python -m torch.distributed.run --nproc_per_node nproc -m uvit_torch.train ARGS`
    (what `torchrun` runs), gloo on the CPU, one thread per process. Returns the Popen."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "uvit_torch.train", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(launch):
    """The stdout of a torchrun launch that succeeded."""
    stdout, stderr = launch.communicate(timeout=240)
    assert launch.returncode == 0, f"torchrun failed:\n{stdout}\n{stderr[-3000:]}"
    return stdout


# --------------------------------------------------------------------------------------------------
# Two gloo processes under torchrun against one process
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Two torchrun launches of uvit-tiny in float64 with 2 processes x 2 micro-batches
    (batch 16 = 2 x 2 x 4 rows): 5 steps straight, checkpointing at step 3 (kept as the
    previous checkpoint) and 5; then that step-3 checkpoint, with the whole 5-row log beside it
    as an interruption after step 5 would leave it, resumed to 5 under torchrun ("resumed") and
    kept aside for a 1-process resume ("at3"). (Each launch starts three Pythons that import
    torch: two launches, not three, to keep the test's time.)"""
    root = tmp_path_factory.mktemp("ddp")
    common = ["uvit-tiny", "--dtype", "float64", "--log-every", "1", "--grad-accum", "2",
              "--checkpoint-every", "3", "--no-progress"]
    stdout = finished(torchrun(2, *common, "--out", str(root / "straight"), "--steps", "5"))
    for name in ("resumed", "at3"):
        os.makedirs(root / name)
        shutil.copy(root / "straight" / T.PREVIOUS, root / name / "checkpoint.safetensors")
        shutil.copy(root / "straight" / "log.csv", root / name / "log.csv")
    _, meta = T.load_checkpoint(str(root / "at3" / "checkpoint.safetensors"))
    assert meta["step"] == 3
    finished(torchrun(2, *common, "--out", str(root / "resumed"), "--steps", "5", "--resume"))
    run_here("uvit-tiny", root / "one")
    return root, stdout


def test_two_processes_give_the_one_process_run(two_process_runs):
    """Same loss curve and weights as the plain 1-process run at the same global batch; only
    the order of the gradient sums differs (measured: 1.1e-14 for the weights, 2.2e-16 for the
    losses; 4.5e-15 for the weights without accumulation)."""
    root, _ = two_process_runs
    worst, key = worst_weights(root / "one", root / "straight")
    assert worst <= 1e-12, f"1 vs 2 processes: weights differ by {worst:.2e} at {key}"
    one = log_columns(root / "one", "step", "loss", "grad_norm", "lr")
    two = log_columns(root / "straight", "step", "loss", "grad_norm", "lr")
    assert np.array_equal(one[0], [1, 2, 3, 4, 5]) and np.array_equal(one[0], two[0])
    assert np.max(np.abs(one - two) / np.abs(one)) <= 1e-12


def test_only_rank_0_writes_and_reports(two_process_runs):
    root, stdout = two_process_runs
    summaries = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["steps"] == 5
    assert sorted(os.listdir(root / "straight")) == [T.PREVIOUS, "checkpoint.safetensors",
                                                     "log.csv", "model"]
    assert len(T.read_log(str(root / "straight" / "log.csv"))["step"]) == 5   # not twice
    _, meta = T.load_checkpoint(str(root / "straight" / "checkpoint.safetensors"))
    assert "2 processes (gloo)" in meta["framework"] and "2 micro-batches" in meta["framework"]
    config = json.loads((root / "straight" / "model" / "config.json").read_text())
    assert config["_training"]["steps"] == 5 and config["use_checkpoint"] is False


def test_a_two_process_run_resumes_exactly(two_process_runs):
    root, _ = two_process_runs
    assert bitwise_same(root / "straight", root / "resumed")
    straight = (root / "straight" / "log.csv").read_text().splitlines()
    resumed = (root / "resumed" / "log.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in straight] == [r.split(",")[:4] for r in resumed]


def test_one_process_resumes_a_two_process_checkpoint(two_process_runs):
    root, _ = two_process_runs
    run_here("uvit-tiny", root / "at3", resume=True)
    worst, key = worst_weights(root / "one", root / "at3")
    assert worst <= 1e-12, f"resumed on 1 process: weights differ by {worst:.2e} at {key}"


# --------------------------------------------------------------------------------------------------
# Gradient accumulation, checkpointing and mixed precision in one process
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["uvit-tiny", "amused-tiny"])
def test_accumulation_gives_the_same_run(tmp_path, name):
    """4 micro-batches of 4 rows: the sum of each one's share of the global mean. The masked-token
    loss averages over a different number of positions per image, so it is weighted by the global
    count, not averaged per micro-batch (measured: 1e-14 and 4e-13; the larger is UVit2DModel's
    attn2 over one text token, whose q/k gradients are zero but for rounding)."""
    run_here(name, tmp_path / "plain")
    run_here(name, tmp_path / "accum", grad_accum=4)
    worst, key = worst_weights(tmp_path / "plain", tmp_path / "accum")
    assert worst <= 1e-12, f"{name}: accumulation changes the weights by {worst:.2e} at {key}"
    plain, accum = log_columns(tmp_path / "plain", "loss"), log_columns(tmp_path / "accum", "loss")
    assert np.max(np.abs(plain - accum) / plain) <= 1e-12


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    cfg = T.train_config("uvit-tiny")
    grads = []
    for flag in (False, True):
        backend = torch_train.TorchBackend(gradient_checkpointing=flag)
        task = T.DiffusionTask(cfg, np.float64)
        backend.setup(task, 0)
        loss, norm = backend.forward_backward(task.batch(0, 1))
        grads.append(({k: p.grad.clone() for k, p in backend.model.named_parameters()}, loss))
    assert len(calls) == 3                               # in_blocks, mid_block, out_blocks: 1 each
    (plain, loss_a), (ckpt, loss_b) = grads
    assert loss_a == loss_b
    worst = max(rel_error(plain[k].numpy(), ckpt[k].numpy()) for k in plain)
    assert worst <= 1e-12, f"checkpointing changes the gradients by {worst:.2e}"


def test_gradient_checkpointing_is_u_vits_only(tmp_path):
    with pytest.raises(ValueError, match="U-ViT's use_checkpoint; UVit2DModel has no U-ViT"):
        run_here("amused-tiny", tmp_path, gradient_checkpointing=True)


@pytest.mark.parametrize("name", ["uvit-tiny", "amused-tiny"])
def test_bf16_autocast_stays_near_float32(tmp_path, name):
    """bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2.0e-3). Measured relative loss
    differences to float32: 1.2e-4 (uvit-tiny) and 1.3e-4 (amused-tiny) at step 1, at most 1.3e-3
    over 5 steps. Tolerances: 2e-3 at step 1 (the same weights), 1e-2 over the 5 steps."""
    run_here(name, tmp_path / "f32", dtype="float32")
    run_here(name, tmp_path / "bf16", dtype="float32", mixed_precision="bf16")
    f32, bf16 = log_columns(tmp_path / "f32", "loss")[0], log_columns(tmp_path / "bf16", "loss")[0]
    diff = np.abs(bf16 - f32) / f32
    assert diff[0] > 1e-7, "bf16 autocast changed nothing: did it run?"
    assert diff[0] <= 2e-3 and diff.max() <= 1e-2, f"bf16 vs float32 loss: {diff}"


def test_fp16_with_its_gradient_scaler_resumes_exactly(tmp_path):
    run_here("uvit-tiny", tmp_path / "straight", dtype="float32", mixed_precision="fp16")
    run_here("uvit-tiny", tmp_path / "resumed", dtype="float32", mixed_precision="fp16",
             overrides=dict(steps=3))
    run_here("uvit-tiny", tmp_path / "resumed", dtype="float32", mixed_precision="fp16",
             resume=True)
    assert bitwise_same(tmp_path / "straight", tmp_path / "resumed")
    arrays, _ = T.load_checkpoint(str(tmp_path / "straight" / "checkpoint.safetensors"))
    assert arrays["scaler.scale"][0] == 65536.0       # torch's initial scale, no overflow yet
    assert np.all(np.isfinite(log_columns(tmp_path / "straight", "loss")))


def test_the_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="batch_size 16 does not split into 1 process"):
        run_here("uvit-tiny", tmp_path, grad_accum=3)
    with pytest.raises(ValueError, match="autocasts a float32 model; got --dtype float64"):
        run_here("uvit-tiny", tmp_path, mixed_precision="bf16")


# --------------------------------------------------------------------------------------------------
# The CIFAR-10 recipe
# --------------------------------------------------------------------------------------------------
def test_the_cifar10_recipe_is_the_papers():
    from uvit_numpy.uvit import config
    cfg = T.train_config("cifar10_uvit_small")
    assert (cfg["lr"], cfg["weight_decay"], tuple(cfg["betas"])) == (2e-4, 0.03, (0.99, 0.999))
    assert (cfg["warmup_steps"], cfg["ema_decay"], cfg["batch_size"]) == (2500, 0.9999, 128)
    assert cfg["steps"] == 500000 and cfg["random_flip"] and cfg["grad_clip"] is None
    paper = config("cifar10_uvit_small")
    assert all(cfg["model"][k] == v for k, v in paper.items())
    assert cfg["diffusion"]["prediction_type"] == "epsilon"


def fake_cifar(rng, n):
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_cifar10_reads_an_npz_and_the_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = fake_cifar(rng, 10)
    np.savez(tmp_path / "c.npz", images=images, labels=labels)
    x, y = cifar10.load_cifar10(tmp_path / "c.npz")
    assert np.array_equal(x, images) and np.array_equal(y, labels) and y.dtype == np.int64
    folder = tmp_path / "cifar-10-batches-py"          # the release's layout, rows as planes
    folder.mkdir()
    for i, name in enumerate(cifar10.BATCH_NAMES):
        part = images[2 * i:2 * i + 2]
        rows = part.transpose(0, 3, 1, 2).reshape(2, 3072)          # NHWC -> (N, R G B planes)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": list(labels[2 * i:2 * i + 2])}, f)
    for where in (tmp_path, folder):                   # the folder or the one above it
        x, y = cifar10.load_cifar10(where)
        assert np.array_equal(x, images) and np.array_equal(y, labels)
    view = cifar10.ImageView(images)
    assert view[np.array([3])].shape == (1, 3, 32, 32)
    assert np.array_equal(view[np.array([3])][0, 1], images[3, :, :, 1] / 127.5 - 1.0)


def test_cifar10_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --data PATH"):
        cifar10.load_cifar10(None)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        cifar10.load_cifar10(tmp_path / "nothing.npz")
    with pytest.raises(FileNotFoundError, match=r"lacks \['data_batch_1'"):
        cifar10.load_cifar10(tmp_path)
    np.savez(tmp_path / "grey.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"expected images \(N, 32, 32, 3\) uint8"):
        cifar10.load_cifar10(tmp_path / "grey.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="has no 'images' array"):
        cifar10.load_cifar10(tmp_path / "other.npz")


def test_random_flip_mirrors_and_leaves_the_other_draws(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = fake_cifar(rng, 40)
    view = cifar10.ImageView(images)
    cfg = T.train_config("cifar10_uvit_small", batch_size=32)
    flipped = T.diffusion_batch(view, labels, cfg, 0, 2)
    plain = T.diffusion_batch(view, labels, {**cfg, "random_flip": False}, 0, 2)
    for k in ("t", "y", "noise"):
        assert np.array_equal(flipped[k], plain[k])
    mirrored = np.all(flipped["x0"] == plain["x0"][..., ::-1], axis=(1, 2, 3))
    kept = np.all(flipped["x0"] == plain["x0"], axis=(1, 2, 3))
    assert np.all(mirrored | kept) and 5 < mirrored.sum() < 27        # about half of 32


def test_a_tiny_cifar10_run_and_the_clear_errors(tmp_path, capsys):
    images, labels = fake_cifar(np.random.default_rng(2), 24)
    np.savez(tmp_path / "c.npz", images=images, labels=labels)
    tiny = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                mlp_ratio=2.0, qkv_bias=False, mlp_time_embed=False, num_classes=-1, conv=True,
                skip=True)
    cfg = T.train_config("cifar10_uvit_small", model=tiny, batch_size=8, steps=2, warmup_steps=1,
                         checkpoint_every=2, log_every=1)
    summary = T.run(cfg, str(tmp_path / "run"), torch_train.TorchBackend(
        gradient_checkpointing=True), progress=False, data=str(tmp_path / "c.npz"))
    assert np.isfinite(summary["loss"])
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    # the task reads the data, so the NumPy trainer takes the same images and draws
    np_summary = T.run(cfg, str(tmp_path / "np"), np_train.NumpyBackend(), progress=False,
                       data=str(tmp_path / "c.npz"))
    assert abs(np_summary["loss"] - summary["loss"]) <= 1e-4 * summary["loss"]
    assert torch_train.main(["cifar10_uvit_small", "--out", str(tmp_path / "x"),
                             "--no-progress"]) == 1
    assert "pass --data PATH" in capsys.readouterr().err
