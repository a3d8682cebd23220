"""What the two trainers share: named training configs, the tasks, the loop, checkpoints and the
loss log. Torch-free, so the NumPy trainer (`uvit_numpy.train`) and the torch trainer
(`uvit_torch.train`) run the same loop on the same draws and can replay the same run.

**The contract.** A *task* (`DiffusionTask`, `MaskGITTask`, `VQGANTask`) is everything about a
model that does not depend on the framework: its data, the random draws of each step, the
tokenizer, the initial weights, what the network is fed and what it must output, the loss, and the
exported model folder.
A *backend* (`Backend`, implemented by `uvit_numpy.train.NumpyBackend` and
`uvit_torch.train.TorchBackend`) is the model in one framework: one step's loss and gradients, the
optimizer and the EMA, their state for a checkpoint. `run` drives the two: resume, then for each
step draw the batch, forward and backward, update, log, checkpoint; at the end export `model/`.
A task may also change the weights between steps, outside the gradient (`refreshes(step)`, then
`refresh`: the VQ-GAN's dead-code restarts), on the backend's state in the checkpoint's layout
(`Backend.state`, `Backend.load_state`), so that the change is framework-free too.

**Randomness as a pure function of (seed, step).** Every random number of step n (which digits
are in the batch, which labels are dropped to the null class, the timesteps and the noise, or the
masked positions) comes from `np.random.default_rng([seed, stream, n])`, and the digits are visited
in a fresh permutation per epoch, `default_rng([seed, 0, epoch])`. Nothing random is carried from
step to step, so `--resume` needs no generator state to be exact, both packages draw the same
numbers, and data-parallel ranks can each take their slice of the same global batch. The initial
weights are the NumPy model's, drawn from `seed` (the torch trainer copies them in).

**Run folders and checkpoints.** A run folder holds `checkpoint.safetensors` (the weights under
`model.`, their moving average under `ema.`, the AdamW moments under `optim.exp_avg.` and
`optim.exp_avg_sq.`, keyed by parameter name, and a JSON header with the step, the config, the
seed, the thread count and device), the one before it, `checkpoint.previous.safetensors`, the loss
log `log.csv` and, at the end, `model/`. A checkpoint is written to a temporary file and renamed
(`os.replace`), after the latest has become the previous one, so an interruption at any moment
leaves a whole checkpoint; a damaged latest one is named and `--resume` continues from the
previous. A new run never replaces a folder that holds a run unless told to (`overwrite`).
"""

import csv
import json
import math
import os
import shutil
import sys
import time
from typing import Protocol

import numpy as np

from .cli import (ArgumentParser, check_output_folder, non_negative_int, output_folder,
                  positive_float, positive_int)
from .optim import linear_warmup

# --------------------------------------------------------------------------------------------------
# Named configs
# --------------------------------------------------------------------------------------------------
_DIGITS_DIFFUSION = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type="epsilon")

# What the digit VQ-GANs share: diffusers' VQModel in aMUSEd's layout, three levels, on one
# grey channel padded to 32x32; each config adds its widths and its codebook.
VQGAN_DIGITS_LAYOUT = dict(
    in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3, act_fn="silu", sample_size=32, vq_embed_dim=None,
    scaling_factor=0.18215, norm_type="group", mid_block_add_attention=False,
    lookup_from_codebook=True, force_upcast=False)

TRAIN_CONFIGS = {
    # The shipped diffusion model: a class-conditional U-ViT for the 28x28 digits.
    "uvit-digits": dict(
        task="diffusion",
        model=dict(img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=6, num_heads=4,
                   mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=11,
                   conv=True, skip=True),
        # v-prediction (v = sqrt(abar) eps - sqrt(1 - abar) x0): with epsilon prediction this
        # patch-4 model still made class-less speckle after 4,000 steps (measured); see README
        diffusion={**_DIGITS_DIFFUSION, "prediction_type": "v_prediction"}, p_uncond=0.1,
        batch_size=64, steps=40000, lr=5e-4, warmup_steps=100, weight_decay=0.03,
        betas=(0.9, 0.99), eps=1e-8, grad_clip=1.0, ema_decay=0.999,
        checkpoint_every=500, log_every=25,
        # chosen on the trained model (300 samples, DPM-Solver++ 20 steps): w = 1.0 / 1.25 /
        # 1.5 / 2.0 gave class accuracy 0.937 / 0.977 / 0.993 / 0.997 and Frechet ratio
        # 1.24 / 1.72 / 2.93 / 5.84: stronger guidance makes the digits alike
        sampling=dict(scheduler="dpmsolver++", steps=20, guidance_scale=1.25)),
    # The shipped masked-token model: aMUSEd's UVit2DModel on 8x8 grids of k-means codes.
    "amused-digits": dict(
        task="maskgit",
        model=dict(hidden_size=64, use_bias=False, hidden_dropout=0.0, cond_embed_dim=11,
                   micro_cond_encode_dim=8, micro_cond_embed_dim=40, encoder_hidden_size=11,
                   vocab_size=257, codebook_size=256, in_channels=32, block_out_channels=64,
                   num_res_blocks=2, downsample=False, upsample=False, block_num_heads=2,
                   num_hidden_layers=2, num_attention_heads=2, attention_dropout=0.0,
                   intermediate_size=192, layer_norm_eps=1e-6, ln_elementwise_affine=True,
                   sample_size=8),
        tokenizer=dict(codebook_size=256, patch=4, pad=2, iterations=30, sample=64000),
        num_classes=10, p_uncond=0.1, label_smoothing=0.1, micro_conds=[32.0, 32.0, 0.0, 0.0, 6.0],
        batch_size=64, steps=16000, lr=1e-3, warmup_steps=100, weight_decay=0.01,
        betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0, ema_decay=0.999,
        checkpoint_every=500, log_every=25,
        # chosen on the trained model (README): w = 2 and a first-step temperature of 4 gave the
        # best Frechet ratio at full class accuracy; aMUSEd's own defaults are w = 10, (2, 0)
        sampling=dict(steps=12, guidance_scale=2.0, temperature=(4.0, 0.0))),
    # A few-second masked-token run for tests and smoke runs.
    "amused-tiny": dict(
        task="maskgit",
        model=dict(hidden_size=16, use_bias=False, hidden_dropout=0.0, cond_embed_dim=11,
                   micro_cond_encode_dim=4, micro_cond_embed_dim=20, encoder_hidden_size=11,
                   vocab_size=33, codebook_size=32, in_channels=8, block_out_channels=16,
                   num_res_blocks=1, downsample=False, upsample=False, block_num_heads=2,
                   num_hidden_layers=1, num_attention_heads=2, attention_dropout=0.0,
                   intermediate_size=32, layer_norm_eps=1e-6, ln_elementwise_affine=True,
                   sample_size=8),
        tokenizer=dict(codebook_size=32, patch=4, pad=2, iterations=5, sample=8000),
        num_classes=10, p_uncond=0.1, label_smoothing=0.1, micro_conds=[32.0, 32.0, 0.0, 0.0, 6.0],
        batch_size=16, steps=20, lr=2e-3, warmup_steps=5, weight_decay=0.01,
        betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0, ema_decay=0.999,
        checkpoint_every=10, log_every=5,
        sampling=dict(steps=4, guidance_scale=3.0, temperature=(2.0, 0.0))),
    # The shipped VQ-GAN: diffusers' VQModel in aMUSEd's layout (DownEncoderBlock2D /
    # UpDecoderBlock2D, two resnets a level, no mid-block attention, codes looked up by index) at
    # small widths, on the digits padded to 32x32 as the k-means tokenizer pads them: three levels
    # (two down-samplings) give the same 8x8 grid of K = 256 codes. No GAN: see README.
    "vqgan-digits": dict(
        task="vqgan",
        model=dict(VQGAN_DIGITS_LAYOUT, block_out_channels=[8, 16, 32], layers_per_block=2,
                   latent_channels=16, num_vq_embeddings=256, norm_num_groups=4),
        pad=2, reconstruction="l2", quantizer_weight=1.0,
        restart_dead_codes=dict(every=100, digits=128),
        batch_size=32, steps=2000, lr=1e-3, warmup_steps=100, weight_decay=0.0,
        betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0, ema_decay=0.999,
        checkpoint_every=200, log_every=25),
    # A few-second VQ-GAN for tests (the NumPy and torch trainers replay each other on it): the
    # same layout, narrower.
    "vqgan-tiny": dict(
        task="vqgan",
        model=dict(VQGAN_DIGITS_LAYOUT, block_out_channels=[4, 8, 8], layers_per_block=1,
                   latent_channels=4, num_vq_embeddings=32, norm_num_groups=2),
        pad=2, reconstruction="l2", quantizer_weight=1.0,
        restart_dead_codes=dict(every=2, digits=16),
        batch_size=8, steps=20, lr=2e-3, warmup_steps=5, weight_decay=0.0,
        betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0, ema_decay=0.999,
        checkpoint_every=10, log_every=5),
    # A few-second version for tests and smoke runs (not a model that makes digits).
    "uvit-tiny": dict(
        task="diffusion",
        model=dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                   mlp_ratio=2.0, qkv_bias=False, mlp_time_embed=False, num_classes=11,
                   conv=True, skip=True),
        diffusion=_DIGITS_DIFFUSION, p_uncond=0.1,
        batch_size=16, steps=20, lr=1e-3, warmup_steps=5, weight_decay=0.03,
        betas=(0.9, 0.99), eps=1e-8, grad_clip=1.0, ema_decay=0.999,
        checkpoint_every=10, log_every=5,
        sampling=dict(scheduler="dpmsolver++", steps=5, guidance_scale=2.0)),
    # The U-ViT paper's CIFAR-10 recipe (its configs/cifar10_uvit.py): U-ViT-S/2, unconditional,
    # noise prediction, random horizontal flips, AdamW lr 2e-4, wd 0.03, betas (0.99, 0.999),
    # 2,500 warm-up steps, no clipping, EMA 0.9999, batch 128 for 500K steps. The paper's
    # continuous VP-SDE (beta from 0.1 to 20) discretised on 1,000 steps is DDPM's linear schedule
    # 1e-4 .. 0.02, which is what this uses, with integer t as the network input. The images come
    # from `--data PATH` (`uvit_numpy.cifar10`), and it wants GPUs (see README).
    "cifar10_uvit_small": dict(
        task="diffusion", data="cifar10",
        model=dict(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8,
                   mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=-1,
                   conv=True, skip=True),
        diffusion=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                       beta_end=0.02, prediction_type="epsilon"),
        p_uncond=0.0, random_flip=True,
        batch_size=128, steps=500000, lr=2e-4, warmup_steps=2500, weight_decay=0.03,
        betas=(0.99, 0.999), eps=1e-8, grad_clip=None, ema_decay=0.9999,
        checkpoint_every=5000, log_every=100,
        sampling=dict(scheduler="dpmsolver++", steps=50, guidance_scale=1.0)),
}

# amused-digits on the shipped VQ-GAN's codes instead of k-means' (trained and shipped: README,
# "The shipped models"). Its sampling defaults were chosen on the trained model, as amused-digits'
# were: guidance 1.5 (300 samples, seed 7: guidance 1/1.5/2/3 x start temperature 1/2/4/8).
TRAIN_CONFIGS["amused-vqgan-digits"] = {
    **TRAIN_CONFIGS["amused-digits"], "tokenizer": dict(vqgan="vqgan-digits"),
    "sampling": dict(steps=12, guidance_scale=1.5, temperature=(4.0, 0.0))}


def train_config(name, **overrides):
    """A copy of `TRAIN_CONFIGS[name]` with top-level `overrides` applied (None values ignored)."""
    if name not in TRAIN_CONFIGS:
        raise ValueError(f"unknown training config {name!r}; expected one of "
                         f"{sorted(TRAIN_CONFIGS)}")
    cfg = json.loads(json.dumps(TRAIN_CONFIGS[name]))               # a deep copy
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in cfg:
            raise ValueError(f"train_config: {name!r} has no setting {key!r}; expected one of "
                             f"{sorted(cfg)}")
        cfg[key] = value
    cfg["name"] = name
    return cfg


# --------------------------------------------------------------------------------------------------
# Schedules of the optimisation
# --------------------------------------------------------------------------------------------------
def warmup_lr(step, lr, warmup_steps):
    """The learning rate of optimizer step `step`: `optim.linear_warmup` (linear warm-up from
    lr / warmup to lr over `warmup_steps` steps, then constant; the U-ViT paper's schedule)."""
    return linear_warmup(step, lr, warmup_steps)


def ema_decay(step, max_decay):
    """The EMA decay after optimizer step `step`: min(max_decay, (1 + step) / (10 + step)).

    The warm-up (diffusers' `EMAModel` rule in its older form) keeps a short run's average from
    being mostly the random initial weights: 0.9999 for 2,000 steps would leave 82 % of them.
    """
    return min(max_decay, (1.0 + step) / (10.0 + step))


# --------------------------------------------------------------------------------------------------
# The run's randomness
# --------------------------------------------------------------------------------------------------
STREAM_EPOCH, STREAM_STEP, STREAM_REFRESH = 0, 1, 2


def step_rng(seed, step):
    """The generator of step `step`'s random numbers (labels dropped, timesteps, noise, masks)."""
    return np.random.default_rng([seed, STREAM_STEP, step])


def batch_indices(seed, step, batch_size, n):
    """Indices (batch_size,) of the examples in step `step`'s batch (steps count from 1).

    The examples are visited epoch by epoch, each epoch in its own permutation
    `default_rng([seed, 0, epoch]).permutation(n)`; a batch that crosses the end of an epoch takes
    the rest from the next one.
    """
    start = (step - 1) * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled = 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, n)
        order = np.random.default_rng([seed, STREAM_EPOCH, epoch]).permutation(n)
        take = min(batch_size - filled, n - offset)
        out[filled:filled + take] = order[offset:offset + take]
        filled += take
    return out


def diffusion_batch(images, labels, cfg, seed, step, dtype=np.float32):
    """Step `step`'s batch of the diffusion task, as NumPy arrays.

    images: (N, H, W) grey or (N, C, H, W) in [-1, 1] (an array, or any object whose `[idx]`
    gives those rows, as `uvit_numpy.cifar10.ImageView`); labels: (N,) ints. Returns a dict with
    x0 (B, C, H, W) (C = 1 for grey images), y (B,) (each replaced by the null class
    `num_classes - 1` with probability p_uncond), t (B,) ints in [0, T), noise (B, C, H, W)
    ~ N(0, I), in `dtype`. With the config's `random_flip` (the paper's CIFAR-10 augmentation),
    each x0 is mirrored left-right with probability 1/2, drawn after the noise.
    """
    B = cfg["batch_size"]
    idx = batch_indices(seed, step, B, len(images))
    rng = step_rng(seed, step)
    null = cfg["model"]["num_classes"] - 1
    drop = rng.random(B) < cfg["p_uncond"]                          # True: condition dropped
    y = np.where(drop, null, labels[idx]).astype(np.int64)
    t = rng.integers(0, cfg["diffusion"]["num_train_timesteps"], size=B).astype(np.int64)
    x0 = images[idx]
    if x0.ndim == 3:
        x0 = x0[:, None]                                            # (B, H, W) -> (B, 1, H, W)
    x0 = x0.astype(dtype)
    noise = rng.standard_normal(x0.shape).astype(dtype)
    if cfg.get("random_flip"):
        flip = rng.random(B) < 0.5                                  # after the noise: the draws
        x0[flip] = x0[flip][..., ::-1]                              # above stay as they were
    return {"x0": x0, "y": y, "t": t, "noise": noise}


def maskgit_batch(codes, labels, cfg, seed, step, dtype=np.float32):
    """Step `step`'s batch of the masked-token task, as NumPy arrays.

    codes: (N, 8, 8) code ids of the training digits; labels: (N,) ints. Each label is replaced by
    the null class `num_classes` with probability p_uncond (drop = u < p: the condition is dropped
    when the draw says so, not kept, the slip of aMUSEd's script), then `mask_tokens` corrupts the
    codes. Returns input_ids (B, 8, 8), encoder_hidden_states (B, 1, K + 1), pooled_text_emb
    (B, K + 1), micro_conds (B, 5), targets (B, 8, 8) (-100 where not masked), y (B,).
    """
    B = cfg["batch_size"]
    idx = batch_indices(seed, step, B, len(codes))
    rng = step_rng(seed, step)
    K = cfg["num_classes"]
    drop = rng.random(B) < cfg["p_uncond"]                          # True: condition dropped
    y = np.where(drop, K, labels[idx]).astype(np.int64)
    input_ids, targets = mask_tokens(codes[idx], rng, cfg["model"]["vocab_size"] - 1)
    ehs, pooled = class_condition(y, K, dtype)
    micro = np.tile(np.asarray(cfg["micro_conds"], dtype=dtype), (B, 1))
    return {"input_ids": input_ids, "encoder_hidden_states": ehs, "pooled_text_emb": pooled,
            "micro_conds": micro, "targets": targets, "y": y}


def fit_tokenizer(cfg, images, seed):
    """The run's tokenizer: the k-means one, fitted on the training digits with the config's
    settings, or, for `tokenizer=dict(vqgan=NAME_OR_FOLDER)`, a trained VQ-GAN (a shipped name
    such as "vqgan-digits", or the `model/` folder of a `vqgan` run), loaded as it is."""
    from .tokenizer import KMeansTokenizer, VQGANTokenizer
    t = cfg["tokenizer"]
    if "vqgan" in t:
        tokenizer = VQGANTokenizer.from_pretrained(tokenizer_folder(t["vqgan"]))
        K = cfg["model"]["codebook_size"]
        if tokenizer.codebook_size != K:
            raise ValueError(f"tokenizer: the VQ-GAN {t['vqgan']!r} has {tokenizer.codebook_size} "
                             f"codes, but the model's codebook_size is {K}")
        return tokenizer
    return KMeansTokenizer.fit(images, t["codebook_size"], t["patch"], t["pad"], t["iterations"],
                               t["sample"], seed)


def tokenizer_folder(name_or_path):
    """A shipped VQ-GAN's folder by name, or the given folder."""
    from . import pretrained
    return pretrained.path(name_or_path) if name_or_path in pretrained.NAMES else name_or_path


def restart_dead_codes(codebook, z):
    """k-means' rule for an empty cluster (`tokenizer.kmeans_step`) on a VQ-GAN's codebook: every
    code that none of the vectors z chose is moved onto one of the vectors that are worst fitted
    now (the largest squared distance to their nearest code), the worst first.

    codebook: (K, C); z: (N, C) encoder outputs, N > K. Returns (the new codebook (K, C), the
    indices of the codes that were moved (D,)). A dead code gets no gradient (the codebook term
    moves only the codes chosen), so without this it stays where it is for the rest of the run.
    """
    from .functional import nearest_code
    K = len(codebook)
    chosen = nearest_code(z, codebook)                             # (N,)
    dead = np.flatnonzero(np.bincount(chosen, minlength=K) == 0)   # (D,)
    err = np.sum((z - codebook[chosen]) ** 2, axis=1)               # (N,)
    worst = np.argsort(-err, kind="stable")[:len(dead)]             # the worst-fitted first
    new = codebook.copy()
    new[dead] = z[worst]
    return new, dead


def vqgan_batch(images, cfg, seed, step, dtype=np.float32):
    """Step `step`'s batch of the VQ-GAN task: {"x": (B, 1, 32, 32)}, the padded digits of the
    step's indices (`batch_indices`); nothing else is random."""
    idx = batch_indices(seed, step, cfg["batch_size"], len(images))
    return {"x": images[idx].astype(dtype)}


def mask_tokens(tokens, rng, mask_token_id, ignore_index=-100):
    """MaskGIT's training corruption of a batch of code grids, as aMUSEd's training script does it.

    tokens: (B, H, W) code ids in [0, K). For each image a mask ratio r = cos(pi/2 u), u ~ U(0, 1)
    (the cosine schedule: on average 2/pi = 64 % masked), and exactly n = round(L r) positions
    (at least 1) chosen uniformly at random, the n smallest of a random (B, L) array, are replaced
    by `mask_token_id` (outside the codebook). Returns (input_ids, labels), both (B, H, W):
    labels hold the true code where masked and `ignore_index` elsewhere, so the loss counts the
    masked positions only.
    """
    B, H, W = tokens.shape
    L = H * W
    ratio = np.cos(0.5 * np.pi * rng.random(B))                        # (B,) in (0, 1]
    count = np.clip(np.round(L * ratio), 1, L).astype(np.int64)        # (B,) masked per image
    rank = np.argsort(np.argsort(rng.random((B, L)), axis=1), axis=1)   # a random order per row
    masked = (rank < count[:, None]).reshape(B, H, W)                  # exactly count[b] True
    input_ids = np.where(masked, mask_token_id, tokens)
    labels = np.where(masked, tokens, ignore_index)
    return input_ids.astype(np.int64), labels.astype(np.int64)


def class_condition(labels, num_classes, dtype=np.float32):
    """A class as UVit2DModel's text inputs: the one-hot (B, num_classes + 1) (the last column is
    the null class) as `pooled_text_emb` and, as one text token, `encoder_hidden_states`
    (B, 1, num_classes + 1). Through `encoder_proj` a one-hot is a learned class vector."""
    onehot = np.eye(num_classes + 1, dtype=dtype)[labels]              # (B, K + 1)
    return onehot[:, None, :], onehot                                  # (B, 1, K + 1), (B, K + 1)


# --------------------------------------------------------------------------------------------------
# The tasks: everything about a model that is not its framework
# --------------------------------------------------------------------------------------------------
class DiffusionTask:
    """U-ViT diffusion: x_t = add_noise(x0, eps, t); the network, fed (x_t, t, y), learns the
    target eps or v (the config's prediction_type) under a mean-squared error.

    The images are the digits, or CIFAR-10 read from `data` (a path, `uvit_numpy.cifar10`) for a
    config with `data="cifar10"`; an unconditional model (num_classes <= 0) is given no labels.
    """

    loss, loss_options = "mse", {}

    def __init__(self, cfg, dtype, data=None):
        from .schedulers import make_betas
        self.cfg, self.dtype = cfg, np.dtype(dtype)
        d = cfg["diffusion"]
        self.alphas_cumprod = np.cumprod(1.0 - make_betas(
            d["beta_schedule"], d["num_train_timesteps"], d["beta_start"], d["beta_end"]))
        self.prediction_type = d.get("prediction_type", "epsilon")
        if cfg.get("data") == "cifar10":
            from .cifar10 import ImageView, load_cifar10
            images, self.labels = load_cifar10(data)
            self.images = ImageView(images)                 # uint8 NHWC -> [-1, 1] NCHW rows
        else:
            self.images, self.labels = load_digits("train")

    def build(self, seed=None):
        """The NumPy model of the config; `seed` draws its initial weights (the run's start)."""
        from .uvit import UViT
        return UViT(**self.cfg["model"], dtype=self.dtype, rng=seed)

    def batch(self, seed, step):
        """Step `step`'s draws as NumPy arrays (`diffusion_batch`): x0, y, t, noise."""
        return diffusion_batch(self.images, self.labels, self.cfg, seed, step, self.dtype)

    def inputs_and_target(self, batch, schedulers):
        """The network's inputs (x_t, t, y) and the target, from a batch already in the backend's
        arrays; `schedulers` is that backend's module (`uvit_numpy.schedulers` or its torch twin),
        whose `add_noise` and `training_target` compute in the backend's own arithmetic."""
        b, abar = batch, self.alphas_cumprod
        xt = schedulers.add_noise(b["x0"], b["noise"], b["t"], abar)
        target = schedulers.training_target(b["x0"], b["noise"], b["t"], abar,
                                            self.prediction_type)
        return (xt, b["t"], b["y"] if self.cfg["model"]["num_classes"] > 0 else None), target

    def count(self, batch):
        """The number of terms the loss averages over: every element of the target."""
        return math.prod(tuple(batch["x0"].shape))

    def refreshes(self, step):
        """Whether `refresh` changes the weights after step `step`: never for this task."""
        return False

    def export(self, folder, ema_state, info):
        """`model/`: the EMA weights and config.json with the run's record and sampling defaults."""
        model = self.build(0)
        model.load_state_dict(ema_state)
        model.save_pretrained(folder, training={"config": self.cfg, **info},
                              sampling=self.cfg.get("sampling"))


class MaskGITTask:
    """UVit2DModel masked-token prediction on the codes of the digits: the cross-entropy (label
    smoothing) over the masked positions only (targets -100 elsewhere). The tokenizer is the
    config's (`fit_tokenizer`: k-means, fitted once from the run's seed, or a trained VQ-GAN),
    made when the task is built for a run (`build`)."""

    loss = "cross_entropy"

    def __init__(self, cfg, dtype, data=None):
        self.cfg, self.dtype = cfg, np.dtype(dtype)
        self.loss_options = {"label_smoothing": cfg["label_smoothing"]}
        self.images, self.labels = load_digits("train")
        self.tokenizer = self.codes = None

    def build(self, seed=None):
        """The NumPy model of the config (`seed` draws its initial weights); the first call also
        fits the run's tokenizer and encodes the digits."""
        from .uvit2d import UVit2DModel
        if self.tokenizer is None:
            self.tokenizer = fit_tokenizer(self.cfg, self.images, 0 if seed is None else seed)
            self.codes = self.tokenizer.encode(self.images)
        return UVit2DModel(**self.cfg["model"], dtype=self.dtype, rng=seed)

    def batch(self, seed, step):
        """Step `step`'s draws as NumPy arrays (`maskgit_batch`)."""
        return maskgit_batch(self.codes, self.labels, self.cfg, seed, step, self.dtype)

    def inputs_and_target(self, batch, schedulers=None):
        """The network's inputs (ids, text, pooled text, micro-conditions) and the targets."""
        b = batch
        return ((b["input_ids"], b["encoder_hidden_states"], b["pooled_text_emb"],
                 b["micro_conds"]), b["targets"])

    def count(self, batch):
        """The number of terms the loss averages over: the masked positions, whose number differs
        from image to image (so a shard's own mean is not its share of the batch's mean)."""
        return int((batch["targets"] != -100).sum())

    def refreshes(self, step):
        """Whether `refresh` changes the weights after step `step`: never for this task."""
        return False

    def export(self, folder, ema_state, info):
        """`model/`: the EMA weights, config.json with the run's record, and the tokenizer
        (`tokenizer.safetensors` for k-means, the VQ-GAN's folder `vqvae/` as aMUSEd's pipelines
        hold it)."""
        model = self.build(0)
        model.load_state_dict(ema_state)
        model.save_pretrained(folder, training={"config": self.cfg, **info},
                              sampling=self.cfg.get("sampling"))
        self.tokenizer.save(os.path.join(folder, self.tokenizer.NAME))


class VQGANTask:
    """diffusers' VQModel learning to be the digits' tokenizer: each digit padded to 32x32 with
    the background, as the k-means tokenizer pads it, encoded, quantised to its nearest codes and
    decoded. The loss (`losses.vq_autoencoder_loss`) is the reconstruction error (the config's
    `reconstruction`, "l2" or "l1", over the 32x32 image) plus `quantizer_weight` times the
    quantiser's own loss (codebook and commitment terms, diffusers' `VectorQuantizer`). No
    discriminator, no perceptual loss: a GAN-less VQ-GAN, a VQ-VAE in aMUSEd's VQ-GAN's body."""

    loss = "vq_autoencoder"

    def __init__(self, cfg, dtype, data=None):
        from .tokenizer import pad_images
        self.cfg, self.dtype = cfg, np.dtype(dtype)
        self.loss_options = {"reconstruction": cfg["reconstruction"],
                             "quantizer_weight": cfg["quantizer_weight"]}
        images, self.labels = load_digits("train")
        self.image_size = images.shape[-1]
        self.images = pad_images(images, cfg["pad"])               # (N, 1, 32, 32)

    def build(self, seed=None):
        """The NumPy VQModel of the config; `seed` draws its initial weights (diffusers' init:
        torch's defaults, the codebook U(-1/K, 1/K))."""
        from .vq_model import VQModel
        return VQModel(**self.cfg["model"], dtype=self.dtype, rng=seed)

    def batch(self, seed, step):
        """Step `step`'s padded digits (`vqgan_batch`)."""
        return vqgan_batch(self.images, self.cfg, seed, step, self.dtype)

    def inputs_and_target(self, batch, schedulers=None):
        """The model is called as VQModel(x, return_dict=False), so that it returns the two
        outputs the loss takes, (sample, commit_loss); the target is x itself."""
        return (batch["x"], False), batch["x"]

    def count(self, batch):
        """The terms of the loss: the images (both of its means are over a number of elements
        proportional to them)."""
        return len(batch["x"])

    def refreshes(self, step):
        """Whether `refresh` restarts dead codes after step `step`: every
        `restart_dead_codes["every"]` steps, if the config asks for it (None: never)."""
        restart = self.cfg.get("restart_dead_codes")
        return bool(restart) and step % restart["every"] == 0

    def refresh(self, arrays, seed, step, say=None):
        """Dead-code restarts on a backend's state `arrays` (the checkpoint's layout): the
        current encoder (`model.*`, in NumPy) encodes `restart_dead_codes["digits"]` training
        digits drawn from (seed, step), and `restart_dead_codes` moves every code that none of
        their vectors chose onto the worst-fitted ones, in the weights and in their average
        (`ema.*`); AdamW's moments of the moved codes start again from zero. Returns the
        arrays, changed; `say` gets a line with the number of codes moved."""
        from .module import NoDraws
        from .vq_model import VQModel
        key = "quantize.embedding.weight"
        model = VQModel(**self.cfg["model"], dtype=self.dtype, rng=NoDraws()).eval()
        model.load_state_dict(split_prefix(arrays, "model."))
        rng = np.random.default_rng([seed, STREAM_REFRESH, step])
        idx = rng.choice(len(self.images), self.cfg["restart_dead_codes"]["digits"],
                         replace=False)
        h = model.encode(self.images[idx].astype(self.dtype)).latents     # (M, C, 8, 8)
        z = h.transpose(0, 2, 3, 1).reshape(-1, h.shape[1])              # (M*8*8, C)
        codebook, dead = restart_dead_codes(arrays[f"model.{key}"], z)
        arrays = dict(arrays)
        arrays[f"model.{key}"] = codebook
        ema = arrays[f"ema.{key}"].copy()
        ema[dead] = codebook[dead]
        arrays[f"ema.{key}"] = ema
        for moment in ("exp_avg", "exp_avg_sq"):
            name = f"optim.{moment}.{key}"
            if name in arrays:                                 # AdamW has seen the codebook
                arrays[name] = arrays[name].copy()
                arrays[name][dead] = 0.0
        if say is not None and len(dead):
            say(f"step {step}: {len(dead)} dead codes restarted")
        return arrays

    def export(self, folder, ema_state, info):
        """`model/`: the EMA weights and config.json with the run's record and `_tokenizer` (the
        padding), which `tokenizer.VQGANTokenizer.from_pretrained` reads."""
        model = self.build(0)
        model.load_state_dict(ema_state)
        model.save_pretrained(folder, training={"config": self.cfg, **info},
                              tokenizer={"pad": self.cfg["pad"], "image_size": self.image_size})


TASKS = {"diffusion": DiffusionTask, "maskgit": MaskGITTask, "vqgan": VQGANTask}
DTYPES = {"float32": np.float32, "float64": np.float64}


def load_digits(split):
    from .data import load_digits as load
    return load(split)


# --------------------------------------------------------------------------------------------------
# The backend: the model in one framework
# --------------------------------------------------------------------------------------------------
class Backend(Protocol):
    """What `run` drives. `uvit_numpy.train.NumpyBackend` (hand-written backward, NumPy AdamW) and
    `uvit_torch.train.TorchBackend` (autograd, torch.optim, data parallelism) implement it; the
    attribute values here are the defaults of one process, which a backend inherits by subclassing.
    """

    name: str = "backend"
    """The framework and its settings, recorded with the run (e.g. "torch 2.13.0, 2 processes")."""
    is_main: bool = True
    """Writes the run folder and shows the progress bar: every process but data-parallel ranks > 0.
    Every process runs every step, on the same (all-reduced) loss, so they stop together."""
    skips_overflow: bool = False
    """A step whose gradient overflows is skipped by the backend (fp16 loss scaling) instead of
    stopping the run; only a non-finite loss stops it then."""

    def setup(self, task, seed):
        """Build the model holding `task.build(seed)`'s initial weights, its EMA (a copy) and
        the optimizer (AdamW with the config's settings)."""
        ...

    def forward_backward(self, batch):
        """One step's loss and gradients: `batch` is `task.batch(seed, step)` (NumPy arrays, the
        whole global batch). Returns (loss, gradient norm before clipping) as floats, with the
        gradients clipped to the config's `grad_clip`."""
        ...

    def optimizer_step(self, lr, ema_decay):
        """One optimizer update at learning rate `lr`, then ema <- d ema + (1 - d) weights."""
        ...

    def state(self):
        """(arrays, optimizer step counts) for a checkpoint: `model.*`, `ema.*`,
        `optim.exp_avg.*`, `optim.exp_avg_sq.*` (and a backend's own extras, e.g. `scaler.*`)."""
        ...

    def load_state(self, arrays, optimizer_steps):
        """Put a checkpoint's arrays back (any backend's: the layout is shared)."""
        ...

    def ema_state_dict(self):
        """The EMA weights as NumPy arrays, keyed like the model's state dict (`model/`'s)."""
        ...

    def settings(self):
        """What else makes a run bitwise the same on one machine: {"threads": n, "device": ...}.
        Recorded in the checkpoint; a resume under other settings is said to differ."""
        ...


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
CHECKPOINT = "checkpoint.safetensors"
PREVIOUS = "checkpoint.previous.safetensors"


def save_checkpoint(path, arrays, meta, previous=None):
    """Write `{name: array}` and the JSON-able `meta` to one safetensors file, atomically: to a
    temporary file first, renamed over `path` once whole. With `previous` (a path), the checkpoint
    at `path` becomes that one first, so the last two are kept."""
    from safetensors.numpy import save_file
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    save_file(tensors, tmp, metadata={"meta": json.dumps(meta)})
    if previous is not None and os.path.isfile(path):
        os.replace(path, previous)                                 # the last good one, kept
    os.replace(tmp, path)                                          # atomic on POSIX and Windows


def load_checkpoint(path):
    """(arrays, meta) from a checkpoint written by `save_checkpoint`. A missing file is a
    FileNotFoundError, a damaged one (truncated, not safetensors) a `DamagedCheckpoint`, each
    naming the file."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:                        # safetensors raises its own Rust errors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedCheckpoint(f"{path!r} is damaged and cannot be read ({first})") from None
    if "meta" not in meta:
        raise ValueError(f"{path!r} is not a checkpoint of this project's trainers (its header "
                         f"has no 'meta' entry)")
    return arrays, json.loads(meta["meta"])


class DamagedCheckpoint(ValueError):
    """A checkpoint file that exists but cannot be read (truncated by a full disk, say)."""


def latest_checkpoint(out, say=print):
    """(arrays, meta, path) of the newest readable checkpoint in run folder `out`: the latest, or,
    if that one is damaged, the previous (said in one line through `say`). FileNotFoundError when
    the folder holds none."""
    path, previous = os.path.join(out, CHECKPOINT), os.path.join(out, PREVIOUS)
    try:
        return (*load_checkpoint(path), path)
    except DamagedCheckpoint as err:
        if not os.path.isfile(previous):
            raise DamagedCheckpoint(f"{err}, and there is no previous checkpoint to fall back "
                                    f"on") from None
        arrays, meta = load_checkpoint(previous)
        say(f"warning: {err}; continuing from the previous checkpoint, {previous!r} "
            f"(step {meta['step']})")
        return arrays, meta, previous
    except FileNotFoundError:
        if os.path.isfile(previous):                  # interrupted between the two renames
            return (*load_checkpoint(previous), previous)
        raise FileNotFoundError(f"--resume: no checkpoint in {out!r} (expected {CHECKPOINT}); "
                                f"start the run without --resume") from None


def clean_temporary_files(out):
    """Remove the temporary files of checkpoint writes that a kill interrupted. Returns them."""
    if not os.path.isdir(out):
        return []
    stale = sorted(f for f in os.listdir(out) if ".safetensors.tmp-" in f)
    for name in stale:
        os.remove(os.path.join(out, name))
    return stale


def split_prefix(arrays, prefix):
    """The entries of `arrays` whose key starts with `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


RESUMABLE_CHANGES = ("steps", "sampling", "checkpoint_every")


def check_resume(meta, cfg, path):
    """A checkpoint may only be resumed by the config that wrote it; only the number of steps,
    the checkpoint interval and the sampling defaults (which do not change training) may differ."""
    old = {k: v for k, v in meta["config"].items() if k not in RESUMABLE_CHANGES}
    new = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in RESUMABLE_CHANGES}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"--resume: {path!r} was written with a different config (differs in "
                         f"{diff}); resume it with the same settings")


def settings_note(meta, settings):
    """One line when a run resumes under other settings than it was written with (thread count,
    device): its result will not be bitwise that of one uninterrupted run. None if the same."""
    old = meta.get("settings")
    if not old or old == settings:
        return None
    changed = ", ".join(f"{k} {old.get(k)} -> {settings.get(k)}" for k in sorted(settings)
                        if old.get(k) != settings.get(k))
    return (f"note: the checkpoint was written with other settings ({changed}); the run goes on, "
            f"but it will not be bitwise the same as one uninterrupted run (float rounding "
            f"differs with the {'thread count' if 'threads' in changed else 'device'})")


# --------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------
RUN_FILES = (CHECKPOINT, PREVIOUS, "log.csv", "model")


def run_files(out):
    """The files of a run that a folder holds (empty for a new or empty folder)."""
    return [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]


class RunExists(ValueError):
    """A new run asked for a folder that holds a run."""


def prepare_run_folder(out, resume, overwrite, hint="python -m uvit_torch.train CONFIG",
                       say=print):
    """Check `out` before any work. A folder that holds a run is never replaced silently: without
    `resume` or `overwrite` it is a `RunExists` error naming both ways on; with `overwrite` the
    run's files are removed, and said. Stale temporary files are cleaned (and said)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file, not a run folder")
    existing = run_files(out)
    if existing and not resume:
        if not overwrite:
            raise RunExists(f"{out!r} holds a run ({', '.join(existing)}); continue it with "
                            f"`{hint} --out {out} --resume`, or start over with "
                            f"--overwrite (which deletes them)")
        for name in existing:
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        say(f"--overwrite: removed the previous run's {', '.join(existing)} from {out!r}")
    stale = clean_temporary_files(out)
    if stale:
        say(f"removed {len(stale)} temporary file(s) an interrupted checkpoint write left in "
            f"{out!r}")


# --------------------------------------------------------------------------------------------------
# The loss log
# --------------------------------------------------------------------------------------------------
LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "seconds")


class LossLog:
    """`log.csv` in the run folder: one row per logged step. On resume, rows after the checkpoint's
    step (written before an interruption) are dropped, so the log is that of one unbroken run."""

    def __init__(self, path, resume_step=0):
        self.path = path
        rows = []
        if resume_step and os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row):
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)


def read_log(path):
    """The loss log as a dict of float arrays, one per column."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in LOG_FIELDS}


def check_finite(loss, grad_norm, step, checkpoint_path, last_step):
    """Stop the run on a non-finite loss or gradient, before the optimizer applies it, naming the
    last good checkpoint (which is kept)."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        where = (f"the last good checkpoint (step {last_step}) is kept at {checkpoint_path}"
                 if last_step else "no checkpoint was written yet")
        raise FloatingPointError(f"the loss is {loss} (gradient norm {grad_norm}) at step {step}; "
                                 f"stopping before the update: {where}. Try a lower --lr.")


# --------------------------------------------------------------------------------------------------
# The loop both trainers run
# --------------------------------------------------------------------------------------------------
def run(cfg, out, backend, resume=False, seed=0, dtype="float32", progress=True,
        export_only=False, command=None, overwrite=False, data=None, say=None,
        hint="python -m uvit_torch.train CONFIG"):
    """Train `cfg` into the folder `out` with `backend` (a `Backend`), or resume it.

    The loop: resume from the newest readable checkpoint (`resume`), then for each step draw the
    task's batch, `backend.forward_backward`, stop on a non-finite loss or gradient before the
    update, `backend.optimizer_step` at the warmed-up learning rate and the EMA decay, log every
    `log_every` steps and checkpoint every `checkpoint_every`; finally export `model/`. With
    `export_only` it writes `model/` from the latest checkpoint's EMA weights without training
    (to sample from a run that is still going). `data`: where CIFAR-10 is read from (configs with
    `data="cifar10"`). `say`: where one-line notes go (default: the standard error); `hint`: the
    command a refusal to replace a run suggests. Returns a summary dict.
    """
    say = say or _say
    if cfg["checkpoint_every"] % cfg["log_every"]:
        raise ValueError(f"checkpoint_every ({cfg['checkpoint_every']}) must be a multiple of "
                         f"log_every ({cfg['log_every']}), so that a resumed log lines up")
    is_main = backend.is_main
    if is_main and not export_only:
        prepare_run_folder(out, resume, overwrite, hint, say=say)
    task = TASKS[cfg["task"]](cfg, DTYPES[dtype], data=data)
    backend.setup(task, seed)
    settings = backend.settings()
    start, elapsed = 0, 0.0
    if resume or export_only:
        arrays, meta, path = latest_checkpoint(out, say=say if is_main else _quiet)
        check_resume(meta, cfg, path)
        if meta["seed"] != seed or meta["dtype"] != dtype:
            raise ValueError(f"--resume: {path!r} was written with seed {meta['seed']} and "
                             f"dtype {meta['dtype']}, not seed {seed} and dtype {dtype}")
        backend.load_state(arrays, meta["optimizer_steps"])
        start, elapsed = meta["step"], meta["seconds"]
        note = settings_note(meta, settings)
        if note and is_main and not export_only:
            say(note)
        if export_only:
            info = {"seed": seed, "steps": start, "seconds": round(elapsed, 1),
                    "framework": backend.name, "dtype": dtype, **settings,
                    "command": meta.get("command", command)}
            model_dir = os.path.join(out, "model")
            if is_main:
                task.export(model_dir, backend.ema_state_dict(), info)
            return {"steps": start, "seconds": elapsed, "loss": None, "checkpoint": path,
                    "model": model_dir}
        if start >= cfg["steps"]:
            raise ValueError(f"--resume: the checkpoint is at step {start}, which is not before "
                             f"the last step {cfg['steps']}; pass a larger --steps to go on")
    if is_main:
        os.makedirs(out, exist_ok=True)
        log = LossLog(os.path.join(out, "log.csv"), resume_step=start)
    ckpt_path = os.path.join(out, CHECKPOINT)
    meta = {"config": cfg, "seed": seed, "dtype": dtype, "framework": backend.name,
            "settings": settings, "command": command}
    last_good, window, row = start, [], None
    bar = _progress_bar(cfg, start, progress and is_main)
    for step in range(start + 1, cfg["steps"] + 1):
        tic = time.perf_counter()
        loss, grad_norm = backend.forward_backward(task.batch(seed, step))
        try:
            check_finite(loss, 0.0 if backend.skips_overflow else grad_norm, step, ckpt_path,
                         last_good)
        finally:
            if bar is not None and not math.isfinite(loss):
                bar.close()                           # the message goes on a line of its own
        lr = warmup_lr(step, cfg["lr"], cfg["warmup_steps"])
        backend.optimizer_step(lr, ema_decay(step, cfg["ema_decay"]))
        if task.refreshes(step):                      # weights changed outside the gradient
            arrays, optimizer_steps = backend.state()
            backend.load_state(task.refresh(arrays, seed, step, say=say if is_main else None),
                               optimizer_steps)
        seconds = time.perf_counter() - tic
        elapsed += seconds
        window.append(loss)
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            row = dict(step=step, loss=float(np.mean(window)), lr=lr, grad_norm=grad_norm,
                       seconds=round(elapsed, 3))
            if is_main:
                log.write(**row)
            window = []
        if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
            if is_main:
                arrays, optimizer_steps = backend.state()
                save_checkpoint(ckpt_path, arrays, {**meta, "step": step, "seconds": elapsed,
                                                    "optimizer_steps": optimizer_steps},
                                previous=os.path.join(out, PREVIOUS))
            last_good = step
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", step_s=f"{seconds:.2f}",
                            img_s=f"{cfg['batch_size'] / seconds:.0f}")
    if bar is not None:
        bar.close()
    model_dir = os.path.join(out, "model")
    info = {"seed": seed, "steps": cfg["steps"], "seconds": round(elapsed, 1),
            "framework": backend.name, "dtype": dtype, **settings, "command": command}
    if is_main:
        task.export(model_dir, backend.ema_state_dict(), info)
    return {"steps": cfg["steps"], "seconds": elapsed, "loss": row["loss"] if row else None,
            "checkpoint": ckpt_path, "model": model_dir}


def _say(text):
    print(text, file=sys.stderr)


def _quiet(text):
    pass


def _progress_bar(cfg, start, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg["steps"], initial=start, desc=cfg["name"], unit="step",
                dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# The command line both trainers share
# --------------------------------------------------------------------------------------------------
def build_parser(prog, description):
    """The command line both trainers share."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", choices=sorted(TRAIN_CONFIGS),
                        help="named training config (uvit_numpy.training.TRAIN_CONFIGS)")
    parser.add_argument("--out", type=output_folder, help="run folder (default runs/CONFIG)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's checkpoint (the previous one if the "
                             "latest is damaged)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a folder that holds a run (deletes its checkpoints, "
                             "log and model/)")
    parser.add_argument("--steps", type=positive_int, help="total steps (to extend a finished run)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default: the "
                                                          "config's)")
    parser.add_argument("--batch-size", type=positive_int, help="default: the config's")
    parser.add_argument("--checkpoint-every", type=positive_int, help="default: the config's")
    parser.add_argument("--log-every", type=positive_int, help="default: the config's")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads of the math libraries (default 1: the small models here "
                             "run fastest on one thread on a busy machine; the checkpoint records "
                             "it, since float rounding depends on it)")
    parser.add_argument("--data",
                        help="CIFAR-10 for cifar10_uvit_small: an .npz with images "
                             "(N, 32, 32, 3) uint8 and labels, or the folder of its python "
                             "batches data_batch_1..5 (nothing is downloaded)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export", action="store_true",
                        help="only write model/ from the checkpoint's EMA weights (no training)")
    return parser


def check_args(parser, args):
    """The checks argparse cannot make alone, before any work (a usage error exits 2)."""
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out and --overwrite replaces it: pass one")
    if args.export and args.overwrite:
        parser.error("--export writes model/ from the run's checkpoint; --overwrite deletes it")
    out = args.out or os.path.join("runs", args.config)
    try:
        check_output_folder(out)                         # the default runs/CONFIG too
    except ValueError as err:
        parser.error(f"--out: {err}")
    if args.data is not None and TRAIN_CONFIGS[args.config].get("data") is None:
        parser.error(f"--data is read only by configs that train on a data set from a file "
                     f"(cifar10_uvit_small); {args.config} trains on the digits")
    return out


def main(backend, args, command=None, hint="python -m uvit_torch.train"):
    """Run the parsed command line `args` with `backend`; prints a JSON summary. Exit status:
    0 done, 1 a failure (a diverged run, a damaged checkpoint, a folder that holds a run). Every
    failure is one line on the standard error. `command`: the command line, recorded with the
    run; `hint`: the command's name, for the messages that suggest how to go on."""
    cfg = train_config(args.config, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                       checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    out = args.out or os.path.join("runs", args.config)
    try:
        summary = run(cfg, out, backend, resume=args.resume, seed=args.seed, dtype=args.dtype,
                      progress=not args.no_progress, export_only=args.export, command=command,
                      overwrite=args.overwrite, data=args.data, hint=f"{hint} {args.config}")
    except (FloatingPointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if backend.is_main:                                      # one summary under torchrun
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                          for k, v in summary.items()}))
    return 0
