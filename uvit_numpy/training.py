"""What the two trainers share: named training configs, the run's randomness, the learning-rate and
EMA schedules, checkpoints and the loss log. Torch-free, so the NumPy trainer (`uvit_numpy.train`)
and the torch trainer (`uvit_torch.train`) read the same file and can replay the same run.

**Randomness as a pure function of (seed, step).** Every random number of step n (which digits
are in the batch, which labels are dropped to the null class, the timesteps and the noise, or the
masked positions) comes from `np.random.default_rng([seed, stream, n])`, and the digits are visited
in a fresh permutation per epoch, `default_rng([seed, 0, epoch])`. Nothing random is carried from
step to step, so `--resume` needs no generator state to be exact, both packages draw the same
numbers, and data-parallel ranks can each take their slice of the same global batch. The initial
weights are the NumPy model's, drawn from `seed` (the torch trainer copies them in).

**Checkpoints** are one safetensors file: the weights under `model.`, their moving average under
`ema.`, the AdamW moments under `optim.exp_avg.` and `optim.exp_avg_sq.` (keyed by parameter name),
and a JSON header with the step, the config and the optimizer's step counts. Written to a
temporary file and renamed (`os.replace`), so an interruption leaves the previous checkpoint whole.
"""

import csv
import json
import math
import os
import sys
import time

import numpy as np

from .optim import linear_warmup

# --------------------------------------------------------------------------------------------------
# Named configs
# --------------------------------------------------------------------------------------------------
_DIGITS_DIFFUSION = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type="epsilon")

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
    # 1e-4 .. 0.02, which is what this uses, with integer t as the network input. Torch only: the
    # images come from `--data PATH` (`uvit_torch.cifar10`), and it wants GPUs (see README).
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

# Where a config's images come from, when not from the digits: only backends that list the name
# in their `datasets` attribute can train it (the NumPy trainer reads the digits only).
DATASETS = {"cifar10": "CIFAR-10 from --data PATH (uvit_torch.cifar10)"}


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
STREAM_EPOCH, STREAM_STEP = 0, 1


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
    gives those rows, as `uvit_torch.cifar10.ImageView`); labels: (N,) ints. Returns a dict with
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
    """The run's k-means tokenizer, fitted on the training digits with the config's settings."""
    from .tokenizer import KMeansTokenizer
    t = cfg["tokenizer"]
    return KMeansTokenizer.fit(images, t["codebook_size"], t["patch"], t["pad"], t["iterations"],
                               t["sample"], seed)


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
# Checkpoints
# --------------------------------------------------------------------------------------------------
def save_checkpoint(path, arrays, meta):
    """Write `{name: array}` and the JSON-able `meta` to one safetensors file, atomically."""
    from safetensors.numpy import save_file
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    save_file(tensors, tmp, metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)                                          # atomic on POSIX and Windows


def load_checkpoint(path):
    """(arrays, meta) from a checkpoint written by `save_checkpoint`."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    if "meta" not in meta:
        raise ValueError(f"{path!r} is not a checkpoint of this project's trainers (its header "
                         f"has no 'meta' entry)")
    return arrays, json.loads(meta["meta"])


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
        export_only=False, command=None):
    """Train `cfg` into the folder `out` with `backend` (the torch or the NumPy one), or resume it.

    The backend holds the model, its EMA and the optimizer, and knows four things:
    `setup(cfg, seed, dtype)`, `forward_backward(step)` -> (loss, gradient norm before clipping,
    gradients clipped), `optimizer_step(step, lr)` (AdamW, then the EMA), `arrays()` ->
    (checkpoint arrays, optimizer step counts), `load(arrays, optimizer_steps)` and
    `export(folder, info)`. This loop does the rest: the learning-rate schedule, the log, the
    checkpoints, resuming and stopping. With `export_only` it writes `model/` from the
    checkpoint's EMA weights without training (to sample from a run that is still going).
    Returns a summary dict.

    Data parallelism (the torch backend under torchrun) needs three optional attributes of the
    backend: `is_main` (default True): only that process writes the log, the checkpoints and
    `model/`, and shows the progress bar, while every process runs the same steps on the same
    (all-reduced) loss and gradient norm, so they stop together; `datasets`: the names of
    `DATASETS` it can read; `scales_gradients` (default False): a float16 gradient scaler skips
    the updates whose gradients overflow, so a non-finite gradient norm does not stop the run.
    """
    if cfg["checkpoint_every"] % cfg["log_every"]:
        raise ValueError(f"checkpoint_every ({cfg['checkpoint_every']}) must be a multiple of "
                         f"log_every ({cfg['log_every']}), so that a resumed log lines up")
    data = cfg.get("data")
    if data is not None and data not in getattr(backend, "datasets", ()):
        raise ValueError(f"{cfg.get('name', 'this config')} trains on "
                         f"{DATASETS.get(data, data)}, which the {backend.name} trainer does not "
                         f"read; train it with python -m uvit_torch.train")
    is_main = getattr(backend, "is_main", True)
    scaled = getattr(backend, "scales_gradients", False)
    ckpt_path = os.path.join(out, "checkpoint.safetensors")
    backend.setup(cfg, seed, dtype)
    start, elapsed = 0, 0.0
    if resume or export_only:
        arrays, meta = load_checkpoint(ckpt_path)
        check_resume(meta, cfg, ckpt_path)
        if meta["seed"] != seed or meta["dtype"] != dtype:
            raise ValueError(f"--resume: {ckpt_path!r} was written with seed {meta['seed']} and "
                             f"dtype {meta['dtype']}, not seed {seed} and dtype {dtype}")
        backend.load(arrays, meta["optimizer_steps"])
        start, elapsed = meta["step"], meta["seconds"]
        if export_only:
            model_dir = os.path.join(out, "model")
            if is_main:
                backend.export(model_dir, {"seed": seed, "steps": start,
                                           "seconds": round(elapsed, 1),
                                           "framework": backend.name, "dtype": dtype,
                                           "command": meta.get("command", command)})
            return {"steps": start, "seconds": elapsed, "loss": None, "checkpoint": ckpt_path,
                    "model": model_dir}
        if start >= cfg["steps"]:
            raise ValueError(f"--resume: the checkpoint is at step {start}, which is not before "
                             f"the last step {cfg['steps']}; pass a larger --steps to go on")
    if is_main:
        os.makedirs(out, exist_ok=True)
        log = LossLog(os.path.join(out, "log.csv"), resume_step=start)
    meta = {"config": cfg, "seed": seed, "dtype": dtype, "framework": backend.name,
            "command": command}
    last_good, window, row = start, [], None
    bar = _progress_bar(cfg, start, progress and is_main)
    for step in range(start + 1, cfg["steps"] + 1):
        tic = time.perf_counter()
        loss, grad_norm = backend.forward_backward(step)
        check_finite(loss, 0.0 if scaled else grad_norm, step, ckpt_path, last_good)
        lr = warmup_lr(step, cfg["lr"], cfg["warmup_steps"])
        backend.optimizer_step(step, lr)
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
                arrays, optimizer_steps = backend.arrays()
                save_checkpoint(ckpt_path, arrays, {**meta, "step": step, "seconds": elapsed,
                                                    "optimizer_steps": optimizer_steps})
            last_good = step
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", step_s=f"{seconds:.2f}",
                            img_s=f"{cfg['batch_size'] / seconds:.0f}")
    if bar is not None:
        bar.close()
    model_dir = os.path.join(out, "model")
    info = {"seed": seed, "steps": cfg["steps"], "seconds": round(elapsed, 1),
            "framework": backend.name, "dtype": dtype, "command": command}
    if is_main:
        backend.export(model_dir, info)
    return {"steps": cfg["steps"], "seconds": elapsed, "loss": row["loss"] if row else None,
            "checkpoint": ckpt_path, "model": model_dir}


def _progress_bar(cfg, start, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg["steps"], initial=start, desc=cfg["name"], unit="step",
                dynamic_ncols=True)


def build_parser(prog, description):
    """The command line both trainers share."""
    import argparse
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", choices=sorted(TRAIN_CONFIGS),
                        help="named training config (uvit_numpy.training.TRAIN_CONFIGS)")
    parser.add_argument("--out", help="run folder (default runs/CONFIG)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--steps", type=int, help="total steps (to extend a finished run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--checkpoint-every", type=int, help="default: the config's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export", action="store_true",
                        help="only write model/ from the checkpoint's EMA weights (no training)")
    return parser


def main(backend, args, command=None):
    """Run the parsed command line `args` with `backend`; prints a JSON summary. Exit status.
    `command`: the command line, recorded with the exported model."""
    cfg = train_config(args.config, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                       checkpoint_every=args.checkpoint_every,
                       log_every=getattr(args, "log_every", None))
    out = args.out or os.path.join("runs", args.config)
    try:
        summary = run(cfg, out, backend, resume=args.resume, seed=args.seed, dtype=args.dtype,
                      progress=not args.no_progress, export_only=args.export, command=command)
    except (FloatingPointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if getattr(backend, "is_main", True):                    # one summary under torchrun
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                          for k, v in summary.items()}))
    return 0
