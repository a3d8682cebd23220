"""The U-ViT paper's latent systems end to end, in NumPy: a class or a prompt in, a picture out.

The paper's headline models do not denoise pixels. They denoise the 4-channel latents of Stable
Diffusion's KL autoencoder (`autoencoder.FrozenAutoencoderKL`), 32x32 for a 256x256 picture,
64x64 for 512x512, and its scripts (`eval_ldm_discrete.py` for ImageNet, `sample_t2i_discrete.py`
and `eval_t2i_discrete.py` for MS-COCO) make a picture in four stages:

    1. condition   ImageNet: a class y in 0..999, and the null class 1000 for guidance;
                   MS-COCO: the prompt's CLIP ViT-L/14 features, `CLIPTextModel`'s last hidden
                   state (B, 77, 768) (the paper's `libs/clip.py`, `FrozenCLIPEmbedder`), and the
                   features of the empty prompt "" for guidance (`scripts/extract_empty_feature.py`)
    2. noise       z ~ N(0, I), (B, 4, h, w)
    3. sample      DPM-Solver++ (`dpm_solver.py`): `NoiseScheduleVP('discrete', betas=Stable
                   Diffusion's betas as float32)` (`noise_schedule`), `DPM_Solver(model_fn,
                   schedule, predict_x0=True, thresholding=False).sample(z, steps=50,
                   eps=1/1000, T=1)`, i.e. order 3, method "fast", skip_type "time_uniform" (its
                   defaults), 50 model evaluations; the network under classifier-free guidance
                   (`cfg_nnet`):
                       eps = cond + s (cond - uncond)
    4. decode      images = autoencoder.decode(z) (which divides by the scale factor first), then
                   [-1, 1] -> [0, 1] (`unpreprocess`), then 8-bit as torchvision's `save_image`.

**Time.** The paper trains its discrete models on x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps
with n in {1, ..., N}, N = 1000, abar_n = prod_{i <= n} (1 - beta_i), and feeds the network n
itself (`train_ldm_discrete.py`: `Schedule.sample`, then `nnet(xn, n)`). `NoiseScheduleVP
('discrete')` puts step n at t = n / N, so the sampler's `model_fn(x, t)` calls the network with
N t (`discrete_model_fn`): exactly n at the knots, fractional in between, from 1000 at t = 1 down
to the last evaluation above n = 1 (the sampler ends at t = eps = 1/N without evaluating there).
diffusers' schedulers count from 0 (their timestep k is n - 1); the paper's U-ViTs do not.

**Each config's constants**, as the paper's `configs/*.py` set them (and its README's commands):

    config                  task   autoencoder file         scale_factor  guidance s  latents
    imagenet256_uvit_large  class  autoencoder_kl.pth       0.18215       0.4         4x32x32
    imagenet256_uvit_huge   class  autoencoder_kl_ema.pth   0.18215       0.4         4x32x32
    imagenet512_uvit_large  class  autoencoder_kl.pth       0.18215       0.7         4x64x64
    imagenet512_uvit_huge   class  autoencoder_kl_ema.pth   0.18215       0.7         4x64x64
    mscoco_uvit_small       text   autoencoder_kl.pth       0.23010       1.0         4x32x32
    mscoco_uvit_small_deep  text   autoencoder_kl.pth       0.23010       1.0         4x32x32

The files and scale factors are `autoencoder.AUTOENCODER_FILES` / `SCALE_FACTORS` (where each
comes from is written there): the ImageNet configs set only `pretrained_path`, so the class
default 0.18215 applies; configs/mscoco_uvit_small.py sets `scale_factor=0.23010`, which its
trainer and evaluator pass on. **A pitfall**: the paper's own `sample_t2i_discrete.py` calls
`get_model(config.autoencoder.pretrained_path)` and so decodes the MS-COCO model's latents with
0.18215, multiplying them by 0.23010 / 0.18215 = 1.26 more than they were trained for; here the
MS-COCO configs decode with 0.23010, as the training and FID code do. The guidance scales are each
config's `sample.scale`. The deep MS-COCO model is the README's `configs/mscoco_uvit_small.py
--config.nnet.depth=16`, so it shares the small one's constants.

**Noise and seeds.** The starting latents are `np.random.default_rng(seed).standard_normal((B,
C, h, w))` in float64, in C order (sample 0's channel 0 row by row first), then rounded to the
model's dtype (`initial_latents`); `uvit_torch.uvit_pipeline` draws the very same numbers, so a
seed makes the same picture in both packages (to float rounding). It is not the picture the
paper's scripts make for a seed: they draw with `torch.randn` on the GPU.

**Weights.** The released U-ViTs and autoencoders are `.pth` files (pickled state dicts), which
only torch can read. This package never imports torch, so it takes the same state dicts as
**safetensors** files, converted once with torch:

    python -m uvit_torch.checkpoint imagenet256_uvit_huge.pth imagenet256_uvit_huge.safetensors
    python -m uvit_torch.checkpoint autoencoder_kl_ema.pth autoencoder_kl_ema.safetensors

(the same keys and values; `uvit_torch.uvit_pipeline` reads either format). The command:

    python -m uvit_numpy.generate uvit imagenet256_uvit_huge.safetensors \\
        --config imagenet256_uvit_huge --autoencoder autoencoder_kl_ema.safetensors \\
        --class 207 --out dog.png
    python -m uvit_numpy.generate uvit mscoco_uvit_small.safetensors --config mscoco_uvit_small \\
        --autoencoder autoencoder_kl.safetensors --clip clip-vit-large-patch14 \\
        --prompt "a cat on a sofa" --out cat.png

`--clip` names a transformers folder of CLIP ViT-L/14 (openai/clip-vit-large-patch14 as
downloaded: the full CLIP model, whose text tower is taken; or a `CLIPTextModel` folder; or a
diffusers pipeline folder with `text_encoder/` and `tokenizer/`, such as Stable Diffusion 1.x's),
with its tokenizer files. Every argument is checked before any work: a checkpoint that does not
fit the config is refused from its shapes before anything is built (`check_checkpoint_fits`).

Glossary: B batch, C latent channels (4), h x w latent grid, H x W image, S text tokens (77).
"""

import argparse
import os
import sys
import time

import numpy as np

from .autoencoder import (AUTOENCODER_FILES, PAPER_DDCONFIG, PAPER_EMBED_DIM, SCALE_FACTORS,
                          FrozenAutoencoderKL)
from .checks import check_floating, check_integer, check_range, check_rank
from .configs import UVIT_CONFIGS
from .dpm_solver import DPM_Solver, NoiseScheduleVP

__all__ = ["NUM_TRAIN_TIMESTEPS", "PIPELINE_CONFIGS", "stable_diffusion_beta_schedule",
           "noise_schedule", "initial_latents", "guidance", "null_labels", "class_cfg_nnet",
           "text_cfg_nnet", "discrete_model_fn", "sample_latents", "unpreprocess", "to_uint8",
           "encode_prompts", "empty_context", "UViTPipeline", "PipelineOutput",
           "checkpoint_fingerprint", "config_fingerprint", "check_checkpoint_fits", "main"]

NUM_TRAIN_TIMESTEPS = 1000                 # N: the paper's discrete models count n = 1 .. N


def _paper_settings(task, paper_config, guidance_scale):
    """One row of the table in the module docstring (`paper_config`: the name whose constants
    apply, for the deep MS-COCO model the small one's)."""
    return {"task": task, "autoencoder": AUTOENCODER_FILES[paper_config],
            "scale_factor": SCALE_FACTORS[paper_config], "guidance_scale": guidance_scale}


# Each latent config's task, autoencoder file, scale factor and guidance scale (`sample.scale` of
# the paper's configs/*.py). The network's own sizes are `configs.UVIT_CONFIGS[name]`.
PIPELINE_CONFIGS = {
    "imagenet256_uvit_large": _paper_settings("class", "imagenet256_uvit_large", 0.4),
    "imagenet256_uvit_huge": _paper_settings("class", "imagenet256_uvit_huge", 0.4),
    "imagenet512_uvit_large": _paper_settings("class", "imagenet512_uvit_large", 0.7),
    "imagenet512_uvit_huge": _paper_settings("class", "imagenet512_uvit_huge", 0.7),
    "mscoco_uvit_small": _paper_settings("text", "mscoco_uvit_small", 1.0),
    "mscoco_uvit_small_deep": _paper_settings("text", "mscoco_uvit_small", 1.0),
}


# --------------------------------------------------------------------------------------------------
# 1. Conditions, classifier-free guidance (the paper's `cfg_nnet`) and the time the network sees
# --------------------------------------------------------------------------------------------------
def guidance(cond, uncond, scale):
    """The paper's guided prediction: cond + s (cond - uncond), written as its code writes it
    (s = 0 is the conditional prediction; diffusers' w is 1 + s). cond, uncond: (B, C, h, w)."""
    return cond + scale * (cond - uncond)


def null_labels(batch, num_classes):
    """The null class for every sample, (B,) int64: the last row of `label_emb`, index
    num_classes - 1 (1000 for the paper's 1001-class ImageNet models: its `dataset.K`)."""
    return np.full((batch,), num_classes - 1, dtype=np.int64)


def class_cfg_nnet(nnet, labels, scale):
    """The paper's `cfg_nnet` for class labels: (x, timesteps) -> eps (B, C, h, w).

    labels: (B,) ints. With s = 0 one forward (the conditional one); otherwise two, conditional
    then unconditional (the null class), as `eval_ldm_discrete.py` runs them."""
    null = null_labels(len(labels), nnet.num_classes)

    def cfg_nnet(x, timesteps):
        cond = nnet(x, timesteps, labels)
        if scale == 0:
            return cond
        uncond = nnet(x, timesteps, null)
        return guidance(cond, uncond, scale)
    return cfg_nnet


def text_cfg_nnet(nnet, contexts, empty_context, scale):
    """The paper's `cfg_nnet` for text: (x, timesteps) -> eps (B, C, h, w).

    contexts: (B, S, clip_dim), the prompts' features; empty_context: (S, clip_dim), the empty
    prompt's, repeated for every sample (`einops.repeat(..., 'L D -> B L D')`)."""
    uncond_context = np.repeat(empty_context[None], len(contexts), axis=0)  # (S, D) -> (B, S, D)

    def cfg_nnet(x, timesteps):
        cond = nnet(x, timesteps, contexts)
        if scale == 0:
            return cond
        uncond = nnet(x, timesteps, uncond_context)
        return guidance(cond, uncond, scale)
    return cfg_nnet


def discrete_model_fn(cfg_nnet, num_train_timesteps=NUM_TRAIN_TIMESTEPS):
    """The sampler's `model_fn(x, t_continuous)`: the network at n = N t (see the module's
    docstring, "Time"), as the paper's `t = t_continuous * N`."""
    def model_fn(x, t_continuous):
        return cfg_nnet(x, t_continuous * num_train_timesteps)
    return model_fn


# --------------------------------------------------------------------------------------------------
# 1. Text conditions: the paper's FrozenCLIPEmbedder
# --------------------------------------------------------------------------------------------------
def encode_prompts(text_encoder, tokenizer, prompts, max_length=77):
    """The paper's `FrozenCLIPEmbedder.encode`: prompts (a list of B strings) -> CLIP's last
    hidden state (B, S, hidden_size), S = max_length. Tokens truncated and padded to max_length
    (CLIP pads with its end-of-text token), no attention mask (the attention is causal, so the
    padding changes no feature before it)."""
    ids = tokenizer(list(prompts), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="np").input_ids           # (B, S) int64
    return text_encoder(ids).last_hidden_state               # (B, S, hidden_size)


def empty_context(text_encoder, tokenizer, max_length=77):
    """The context of the empty prompt (S, hidden_size), as `scripts/extract_empty_feature.py`
    makes it: `encode([''])[0]`, the empty prompt on its own."""
    return encode_prompts(text_encoder, tokenizer, [""], max_length)[0]


# --------------------------------------------------------------------------------------------------
# 2. The starting noise
# --------------------------------------------------------------------------------------------------
def initial_latents(seed, batch, latent_shape, dtype=np.float32):
    """z ~ N(0, I): (B, C, h, w) in `dtype`, drawn as float64 from `np.random.default_rng(seed)`
    in C order (all of sample 0 first) and rounded once. Both packages use this draw.
    latent_shape: (C, h, w)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *latent_shape)).astype(dtype)   # (B, C, h, w)


# --------------------------------------------------------------------------------------------------
# 3. Sampling: Stable Diffusion's betas, as the paper's scripts build them, and DPM-Solver++
# --------------------------------------------------------------------------------------------------
def stable_diffusion_beta_schedule(linear_start=0.00085, linear_end=0.0120,
                                   n_timestep=NUM_TRAIN_TIMESTEPS):
    """The paper's `stable_diffusion_beta_schedule`: betas (N,) float64, uniform in sqrt(beta):
    beta_n = (sqrt(start) + (n - 1) (sqrt(end) - sqrt(start)) / (N - 1))^2, n = 1 .. N.

    (np.linspace and the paper's torch.linspace round a quarter of these float64 values
    differently, by one ulp; rounded to float32, as the paper hands them to the sampler, they are
    the same numbers.)"""
    return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=np.float64) ** 2


def noise_schedule(betas=None):
    """The sampler's schedule: `NoiseScheduleVP('discrete')` over the betas (N,) (Stable
    Diffusion's by default) rounded to float32, as the paper hands them over
    (`torch.tensor(_betas).float()`), but held in float64, so that log alpha_n =
    1/2 sum_{i <= n} log(1 - beta_i) is summed in float64.

    Why: the paper's float32 table is summed in float32, and how depends on the device (torch's
    CPU cumsum accumulates in double, its CUDA one in float32, NumPy's in float32): the three
    tables differ by up to 2e-6, which moves a sample by ~1e-6. Summed in float64, both packages
    hold the same table to float64 rounding, within 1e-7 of any of those."""
    betas = stable_diffusion_beta_schedule() if betas is None else np.asarray(betas)
    return NoiseScheduleVP("discrete", betas=betas.astype(np.float32).astype(np.float64))


def sample_latents(model_fn, z_init, steps=50, schedule=None):
    """DPM-Solver++ from z_init (B, C, h, w) at t = 1 to t = 1/N, as the paper's scripts call it
    (the arguments it leaves at their defaults are written out). Returns (B, C, h, w).
    Method "fast" with order 3 evaluates the model exactly `steps` times."""
    schedule = noise_schedule() if schedule is None else schedule
    solver = DPM_Solver(model_fn, schedule, predict_x0=True, thresholding=False)
    return solver.sample(z_init, steps=steps, eps=1.0 / schedule.total_N, T=1.0, order=3,
                         skip_type="time_uniform", method="fast")


# --------------------------------------------------------------------------------------------------
# 4. Pictures
# --------------------------------------------------------------------------------------------------
def unpreprocess(images):
    """The paper's `dataset.unpreprocess`: [-1, 1] -> [0, 1], clamped. (B, 3, H, W)."""
    return np.clip(0.5 * (images + 1.0), 0.0, 1.0)


def to_uint8(images):
    """[0, 1] images (B, 3, H, W) -> (B, H, W, 3) uint8, as torchvision's `save_image` rounds
    them: floor(255 x + 0.5), clamped to [0, 255]."""
    pixels = np.clip(images * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)   # truncation = floor
    return pixels.transpose(0, 2, 3, 1)                   # (B, 3, H, W) -> (B, H, W, 3)


def save_png(path, pixels):
    """Write one (H, W, 3) uint8 picture as a PNG (Pillow, which matplotlib brings)."""
    from PIL import Image
    Image.fromarray(pixels).save(path, format="PNG")


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
class PipelineOutput:
    """What a pipeline returns: `latents` (B, C, h, w), the sampler's output, and `images`
    (B, 3, H, W) in [0, 1]; `pixels` gives them as (B, H, W, 3) uint8."""

    def __init__(self, latents, images):
        self.latents, self.images = latents, images

    @property
    def pixels(self):
        return to_uint8(np.asarray(self.images))


class UViTPipeline:
    """A paper U-ViT, its autoencoder and (for text) CLIP's text encoder and tokenizer.

    nnet: a `uvit.UViT` with a null class (class-conditional) or a `uvit.UViTText`.
    autoencoder: a `FrozenAutoencoderKL` whose `scale_factor` is the config's (`decode` applies
        it). guidance_scale: the paper's s (the config's `sample.scale`: 0.4, 0.7 or 1.0).
    text_encoder, tokenizer: a `clip.CLIPTextModel` and a `clip_tokenizer.CLIPTokenizer`, for
        UViTText; their width and length must be the network's clip_dim and num_clip_token.
    The modules are put in eval mode. The stages are methods (the benchmark and the book time
    and show them one at a time):
    `encode_text` -> `sample` -> `decode`; `__call__` runs them all.
    """

    def __init__(self, nnet, autoencoder, guidance_scale=0.4, text_encoder=None, tokenizer=None):
        # eval mode: nothing is recorded for a backward pass (100 forwards would keep 100 caches)
        self.nnet, self.autoencoder = nnet.eval(), autoencoder.eval()
        self.text_encoder = None if text_encoder is None else text_encoder.eval()
        self.tokenizer = tokenizer
        self.guidance_scale = guidance_scale
        self.is_text = hasattr(nnet, "clip_dim")
        check_guidance_scale(guidance_scale)
        if self.is_text:
            check_text_encoder(nnet.clip_dim, nnet.num_clip_token, text_encoder, tokenizer)
        elif nnet.num_classes < 2:
            raise ValueError(f"UViTPipeline: expected a class-conditional U-ViT with a null class "
                             f"(num_classes >= 2) or a UViTText, got num_classes="
                             f"{nnet.num_classes}")

    @property
    def latent_shape(self):
        """(C, h, w) of the latents the network denoises."""
        return (self.nnet.in_chans, self.nnet.img_size, self.nnet.img_size)

    @property
    def num_classes(self):
        """The real classes (the null class excluded): 1000 for ImageNet."""
        return self.nnet.num_classes - 1

    # --- stage 1 --------------------------------------------------------------------------------
    def encode_text(self, prompts):
        """(contexts (B, S, clip_dim), empty context (S, clip_dim)) in the network's dtype."""
        prompts = check_prompts(prompts)
        length = self.nnet.num_clip_token
        contexts = encode_prompts(self.text_encoder, self.tokenizer, prompts, length)
        empty = empty_context(self.text_encoder, self.tokenizer, length)
        return contexts.astype(self.nnet.dtype), empty.astype(self.nnet.dtype)

    # --- stages 2 and 3 -------------------------------------------------------------------------
    def sample(self, labels=None, contexts=None, empty_context=None, seed=0, steps=50,
               guidance_scale=None, z_init=None, progress=False):
        """Latents (B, C, h, w): labels (B,) ints in [0, num_classes) for a class-conditional
        network, or contexts (B, S, clip_dim) and empty_context (S, clip_dim) for UViTText.
        z_init: the starting noise (default `initial_latents(seed, B, ...)`). progress: a tqdm bar
        over the model evaluations (one per step; two forwards each with guidance)."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check_guidance_scale(scale)
        check_steps(steps)
        if self.is_text:
            check_contexts(contexts, empty_context, self.nnet)
            cfg_nnet = text_cfg_nnet(self.nnet, contexts, empty_context, scale)
            batch = len(contexts)
        else:
            labels = check_labels(labels, self.num_classes)
            cfg_nnet = class_cfg_nnet(self.nnet, labels, scale)
            batch = len(labels)
        if z_init is None:
            z_init = initial_latents(seed, batch, self.latent_shape, self.nnet.dtype)
        model_fn = discrete_model_fn(cfg_nnet)
        with progress_bar(steps, progress) as bar:
            def counted(x, t):                       # one tick per model evaluation
                out = model_fn(x, t)
                bar.update(1)
                return out
            return sample_latents(counted, z_init, steps)

    # --- stage 4 --------------------------------------------------------------------------------
    def decode(self, latents):
        """Latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1] (the autoencoder divides by its
        scale factor first)."""
        return unpreprocess(self.autoencoder.decode(latents))

    def __call__(self, labels=None, prompts=None, seed=0, steps=50, guidance_scale=None,
                 progress=False):
        """Labels (class-conditional) or a list of prompts (text) -> a `PipelineOutput`."""
        contexts = empty = None
        if self.is_text:
            contexts, empty = self.encode_text(prompts)
        latents = self.sample(labels, contexts, empty, seed, steps, guidance_scale,
                              progress=progress)
        return PipelineOutput(latents, self.decode(latents))


def progress_bar(total, enabled):
    """A tqdm bar over the sampler's model evaluations (silent when not enabled)."""
    from tqdm import tqdm
    return tqdm(total=total, desc="sampling", unit="step", disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------------
# Argument checks (shared with the torch twin)
# --------------------------------------------------------------------------------------------------
def check_guidance_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not np.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale: expected a finite number >= 0 (the paper's scale s; "
                         f"0 is no guidance), got {scale!r}")


def check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected a positive int (model evaluations), got {steps!r}")


def check_labels(labels, num_classes):
    """labels: a (B,) int array (or a list) of real classes 0 .. num_classes - 1 (not the null
    class). Returns it as int64."""
    if labels is None:
        raise ValueError(f"labels: this network is class-conditional: expected (B,) class labels "
                         f"in [0, {num_classes}), got None")
    labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    check_integer("labels", labels)
    check_rank("labels", labels, 1, "(B,)")
    check_range("labels", labels, 0, num_classes)
    return np.asarray(labels, dtype=np.int64)


def check_prompts(prompts):
    """A string or a list of strings -> a list of B >= 1 strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts \
            or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts: this network is text-conditional: expected a string or a "
                         f"list of strings, got {prompts!r}")
    return list(prompts)


def check_contexts(contexts, empty, nnet):
    S, D = nnet.num_clip_token, nnet.clip_dim
    for name, x, rank, layout in (("contexts", contexts, 3, "(B, S, clip_dim)"),
                                  ("empty_context", empty, 2, "(S, clip_dim)")):
        if x is None:
            raise ValueError(f"{name}: this network is text-conditional: expected an array "
                             f"{layout} = {'(B, ' if rank == 3 else '('}{S}, {D}), got None")
        check_floating(name, x)
        check_rank(name, x, rank, layout)
        if tuple(x.shape[-2:]) != (S, D):
            raise ValueError(f"{name}: expected (..., {S}, {D}) (num_clip_token, clip_dim), got "
                             f"shape {tuple(x.shape)}")


def check_text_encoder(clip_dim, num_clip_token, text_encoder, tokenizer):
    """The text encoder must be there and fit the network: width clip_dim, at least
    num_clip_token positions."""
    if text_encoder is None or tokenizer is None:
        raise ValueError("UViTPipeline: a UViTText needs a text_encoder and a tokenizer")
    config = text_encoder.config
    if config.hidden_size != clip_dim:
        raise ValueError(f"the text encoder's width hidden_size={config.hidden_size} is not "
                         f"the network's clip_dim={clip_dim}")
    if config.max_position_embeddings < num_clip_token:
        raise ValueError(f"the text encoder reads at most {config.max_position_embeddings} "
                         f"tokens, the network expects num_clip_token={num_clip_token}")


# --------------------------------------------------------------------------------------------------
# Does a checkpoint fit a config? (from its shapes, before anything is built)
# --------------------------------------------------------------------------------------------------
FINGERPRINT_FIELDS = ("embed_dim", "depth", "patch_size", "in_chans", "tokens", "num_classes",
                      "clip_dim", "mlp_ratio", "qkv_bias", "mlp_time_embed", "conv")


def checkpoint_fingerprint(shapes):
    """The sizes a U-ViT state dict reveals, from `{key: shape}` alone: embed_dim (pos_embed's
    width), depth (2 x the input blocks), patch_size and in_chans (patch_embed.proj), tokens
    (pos_embed's rows: extras + patches), num_classes (label_emb's rows, -1 without), clip_dim
    (context_embed's input, None without), mlp_ratio, qkv_bias, mlp_time_embed and conv (which
    keys exist). num_heads leaves no trace in the shapes. ValueError for a state dict that is no
    U-ViT's."""
    core = ("pos_embed", "patch_embed.proj.weight", "mid_block.mlp.fc1.weight")
    missing = [k for k in core if k not in shapes]
    if missing:
        some = sorted(shapes)[:4]
        raise ValueError(f"not a U-ViT state dict of the paper's layout: no {missing} (its keys "
                         f"begin {some})")
    _, tokens, D = shapes["pos_embed"]                          # (1, extras + L, D)
    _, C, P, _ = shapes["patch_embed.proj.weight"]              # (D, C, P, P)
    in_blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("in_blocks.")}
    return {"embed_dim": D, "depth": 2 * len(in_blocks), "patch_size": P, "in_chans": C,
            "tokens": tokens,
            "num_classes": shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else -1,
            "clip_dim": (shapes["context_embed.weight"][1] if "context_embed.weight" in shapes
                         else None),
            "mlp_ratio": shapes["mid_block.mlp.fc1.weight"][0] / D,
            "qkv_bias": "mid_block.attn.qkv.bias" in shapes,
            "mlp_time_embed": "time_embed.0.weight" in shapes,
            "conv": "final_layer.weight" in shapes}


def config_fingerprint(config):
    """The same sizes from a U-ViT's constructor arguments (a `UVIT_CONFIGS` entry)."""
    text = "clip_dim" in config
    L = (config["img_size"] // config["patch_size"]) ** 2
    num_classes = -1 if text else config.get("num_classes", -1)
    extras = 1 + (config["num_clip_token"] if text else int(num_classes > 0))
    return {"embed_dim": config["embed_dim"], "depth": 2 * (config["depth"] // 2),
            "patch_size": config["patch_size"], "in_chans": config.get("in_chans", 3),
            "tokens": extras + L, "num_classes": num_classes,
            "clip_dim": config["clip_dim"] if text else None,
            "mlp_ratio": float(config.get("mlp_ratio", 4.0)),
            "qkv_bias": bool(config.get("qkv_bias", False)),
            "mlp_time_embed": bool(config.get("mlp_time_embed", False)),
            "conv": bool(config.get("conv", True))}


def check_checkpoint_fits(shapes, name, source="the checkpoint"):
    """ValueError unless the state dict's shapes (`{key: shape}`) fit the paper's config `name`,
    naming every size that differs and the paper's configs the checkpoint does fit."""
    have = checkpoint_fingerprint(shapes)
    want = config_fingerprint(UVIT_CONFIGS[name])
    diffs = [f"{k} {have[k]} (expected {want[k]})" for k in FINGERPRINT_FIELDS
             if have[k] != want[k]]
    if diffs:
        fits = [n for n, c in UVIT_CONFIGS.items() if config_fingerprint(c) == have]
        hint = (f"; it fits the paper's {' or '.join(fits)}" if fits
                else "; it fits none of the paper's configs")
        raise ValueError(f"{source} does not fit --config {name}: it has "
                         f"{', '.join(diffs)}{hint}")


# --------------------------------------------------------------------------------------------------
# Files: safetensors state dicts, CLIP folders
# --------------------------------------------------------------------------------------------------
def safetensors_shapes(path):
    """`{key: shape}` of a safetensors file, read from its header only (no tensor is loaded)."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:                   # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


def clip_folders(path):
    """(text-encoder folder, tokenizer folder) of a `--clip` folder: the folder itself, or a
    diffusers pipeline's `text_encoder/` and `tokenizer/`. FileNotFoundError naming what is
    missing."""
    from .weights import find_model_folder
    encoder = find_model_folder(path, "text_encoder")
    for folder in (encoder, path, os.path.join(path, "tokenizer")):
        if any(os.path.isfile(os.path.join(folder, f))
               for f in ("tokenizer.json", "vocab.json")):
            return encoder, folder
    raise FileNotFoundError(f"--clip {path}: no CLIP tokenizer (tokenizer.json, or vocab.json "
                            f"and merges.txt) in it nor in its tokenizer/ subfolder")


def clip_text_config(config):
    """The text tower's config from a folder's config.json: itself (a `CLIPTextModel` folder),
    or the `text_config` of a full CLIP model (openai/clip-vit-large-patch14), as transformers'
    `CLIPTextModel.from_pretrained` takes it."""
    if config.get("model_type") == "clip" or "text_config" in config:
        return {**config["text_config"], "model_type": "clip_text_model"}
    return config


def read_clip_text_weights(folder, framework="numpy"):
    """The text tower's tensors of a transformers folder: every `text_model.*` key of a full CLIP
    model (the vision tower and projections are left unread), or all of a `CLIPTextModel`'s.
    framework: "numpy" (arrays) or "pt" (torch tensors)."""
    from safetensors import safe_open

    from .weights import read_config, transformers_weight_files
    config = read_config(folder)
    full = config.get("model_type") == "clip" or "text_config" in config
    out = {}
    for file in transformers_weight_files(folder):
        with safe_open(file, framework=framework) as f:
            for key in f.keys():
                if not full or key.startswith("text_model."):
                    out[key] = f.get_tensor(key)
    return out


def load_clip(path, dtype=np.float32):
    """(CLIPTextModel, CLIPTokenizer) in NumPy from a `--clip` folder (see `clip_folders`)."""
    from .clip import CLIPTextConfig, CLIPTextModel
    from .clip_tokenizer import CLIPTokenizer
    from .module import NoDraws
    from .weights import read_config
    encoder_folder, tokenizer_folder = clip_folders(path)
    config = CLIPTextConfig.from_any(clip_text_config(read_config(encoder_folder)))
    model = CLIPTextModel(config, dtype=dtype, rng=NoDraws())
    model.load_state_dict(read_clip_text_weights(encoder_folder, "numpy"))
    return model.eval(), CLIPTokenizer.from_pretrained(tokenizer_folder)


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def build_parser(prog, weights_help):
    parser = argparse.ArgumentParser(prog=prog, description="Make a picture with one of the U-ViT "
                                     "paper's latent models (class-conditional ImageNet or "
                                     "text-to-image MS-COCO).")
    parser.add_argument("checkpoint", help=f"the U-ViT's weights ({weights_help})")
    parser.add_argument("--config", required=True, choices=sorted(PIPELINE_CONFIGS),
                        help="the paper's config the checkpoint was trained with")
    parser.add_argument("--autoencoder", required=True,
                        help=f"the paper's autoencoder weights ({weights_help}); each config's "
                             f"file: " + ", ".join(f"{k} {v['autoencoder']}"
                                                   for k, v in PIPELINE_CONFIGS.items()))
    parser.add_argument("--class", dest="class_label", type=int,
                        help="ImageNet class, 0..999 (class-conditional configs)")
    parser.add_argument("--prompt", help="the text (text-to-image configs)")
    parser.add_argument("--clip", help="a transformers CLIP ViT-L/14 folder with its tokenizer "
                                       "(text-to-image configs)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--steps", type=int, default=50, help="model evaluations (default 50)")
    parser.add_argument("--guidance", type=float,
                        help="the paper's guidance scale s (default: the config's, 0.4 / 0.7 / "
                             "1.0; 0 is no guidance)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the library's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_arguments(args, weights_suffixes, conversion_hint):
    """Every argument of the command, before any work. Returns a list of error messages."""
    errors = []
    settings = PIPELINE_CONFIGS[args.config]
    for what, path in (("checkpoint", args.checkpoint), ("--autoencoder", args.autoencoder)):
        if not os.path.isfile(path):
            errors.append(f"{what}: no such file: {path}")
        elif not path.endswith(weights_suffixes):
            hint = conversion_hint(path) if path.endswith(".pth") else ""
            errors.append(f"{what}: expected a {' or '.join(weights_suffixes)} file, got "
                          f"{path}{hint}")
    if settings["task"] == "class":
        K = UVIT_CONFIGS[args.config]["num_classes"] - 1       # 1000 classes and the null class
        if args.class_label is None:
            errors.append(f"--class: {args.config} is class-conditional: give a class 0..{K - 1} "
                          f"(e.g. --class 207)")
        elif not 0 <= args.class_label < K:
            errors.append(f"--class: expected a class in 0..{K - 1} ({K} is the null class of "
                          f"guidance), got {args.class_label}")
        for flag, value in (("--prompt", args.prompt), ("--clip", args.clip)):
            if value is not None:
                errors.append(f"{flag}: {args.config} is class-conditional and takes no {flag}")
    else:
        if args.prompt is None:
            errors.append(f"--prompt: {args.config} is text-to-image: give a --prompt")
        if args.clip is None:
            errors.append(f"--clip: {args.config} needs CLIP ViT-L/14's text encoder and "
                          f"tokenizer: give their transformers folder")
        elif not os.path.isdir(args.clip):
            errors.append(f"--clip: no such folder: {args.clip}")
        if args.class_label is not None:
            errors.append(f"--class: {args.config} is text-to-image and takes no --class")
    errors += check_out(args.out)
    if args.steps < 1:
        errors.append(f"--steps: expected at least 1, got {args.steps}")
    if args.guidance is not None and not (np.isfinite(args.guidance) and args.guidance >= 0):
        errors.append(f"--guidance: expected a number >= 0 (the paper's s), got {args.guidance}")
    if args.threads is not None and args.threads < 1:
        errors.append(f"--threads: expected at least 1, got {args.threads}")
    return errors


def check_out(path):
    """--out must be a .png in an existing, writable folder (an existing file is overwritten)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not path.lower().endswith(".png"):
        return [f"--out: expected a .png file name, got {path}"]
    if os.path.isdir(path):
        return [f"--out: {path} is a folder"]
    if not os.path.isdir(folder):
        return [f"--out: the folder {folder} does not exist"]
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return [f"--out: cannot write {path} (no permission)"]
    return []


def run_command(args, backend):
    """The command of both packages: check everything, load, sample, decode, write the PNG.
    `backend` (`NumpyBackend` here, `uvit_torch.uvit_pipeline.TorchBackend`) loads the files and
    makes the pipeline. Returns the exit status (2: bad arguments; 1: a file that does not fit)."""
    errors = check_arguments(args, backend.weights_suffixes, backend.conversion_hint)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        return 2
    settings = PIPELINE_CONFIGS[args.config]
    if args.threads is not None:
        backend.set_threads(args.threads)
    if os.path.basename(args.autoencoder).split(".")[0] != settings["autoencoder"].split(".")[0]:
        print(f"note: the paper's {args.config} uses {settings['autoencoder']}; you gave "
              f"{os.path.basename(args.autoencoder)}", file=sys.stderr)
    say = (lambda *a: None) if args.no_progress else (lambda m: print(m, file=sys.stderr))
    try:
        shapes = backend.read_shapes(args.checkpoint)          # cheap: before anything is built
        check_checkpoint_fits(shapes, args.config, args.checkpoint)
        if settings["task"] == "text":
            clip_folders(args.clip)                            # the files are there
        say(f"loading the autoencoder {args.autoencoder} (scale factor "
            f"{settings['scale_factor']})")
        autoencoder = backend.load_autoencoder(args.autoencoder, settings["scale_factor"])
        text_encoder = tokenizer = None
        if settings["task"] == "text":
            say(f"loading CLIP's text encoder from {args.clip}")
            text_encoder, tokenizer = backend.load_clip(args.clip)
            nnet_config = UVIT_CONFIGS[args.config]
            check_text_encoder(nnet_config["clip_dim"], nnet_config["num_clip_token"],
                               text_encoder, tokenizer)
        say(f"loading {args.config} from {args.checkpoint}")
        nnet = backend.load_nnet(args.checkpoint, args.config)
        pipe = backend.pipeline(nnet, autoencoder, settings["guidance_scale"], text_encoder,
                                tokenizer)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    scale = settings["guidance_scale"] if args.guidance is None else args.guidance
    tic = time.perf_counter()
    if settings["task"] == "text":
        out = pipe(prompts=[args.prompt], seed=args.seed, steps=args.steps,
                   guidance_scale=scale, progress=not args.no_progress)
        what = f"prompt {args.prompt!r}"
    else:
        out = pipe(labels=[args.class_label], seed=args.seed, steps=args.steps,
                   guidance_scale=scale, progress=not args.no_progress)
        what = f"class {args.class_label}"
    seconds = time.perf_counter() - tic
    save_png(args.out, out.pixels[0])
    print(f"{args.config}, {what}, {args.steps} steps, guidance {scale}, seed {args.seed}: "
          f"{seconds:.1f} s -> {args.out}")
    return 0


def conversion_command(path):
    """The command that converts a paper .pth into the safetensors file this package reads."""
    return (f" (this package reads no .pth: convert it once with torch: python -m "
            f"uvit_torch.checkpoint {path} {os.path.splitext(path)[0]}.safetensors)")


class NumpyBackend:
    """How the NumPy command reads its files: safetensors state dicts, without torch, into
    models built without drawing weights. ddconfig: the autoencoder's (the paper's)."""

    weights_suffixes = (".safetensors",)
    conversion_hint = staticmethod(conversion_command)

    def __init__(self, dtype=np.float32, ddconfig=PAPER_DDCONFIG):
        self.dtype, self.ddconfig = dtype, ddconfig

    def set_threads(self, n):
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")

    def read_shapes(self, path):
        return safetensors_shapes(path)

    def load_autoencoder(self, path, scale_factor):
        from .module import NoDraws
        from .weights import read_safetensors
        model = FrozenAutoencoderKL(self.ddconfig, PAPER_EMBED_DIM, scale_factor,
                                    dtype=self.dtype, rng=NoDraws())
        model.load_state_dict(read_safetensors([path]))
        return model

    def load_clip(self, path):
        return load_clip(path, self.dtype)

    def load_nnet(self, path, name):
        from . import uvit
        from .module import NoDraws
        from .weights import read_safetensors
        model = uvit.from_config(name, dtype=self.dtype, rng=NoDraws())
        model.load_state_dict(read_safetensors([path]))
        return model.eval()

    def pipeline(self, nnet, autoencoder, guidance_scale, text_encoder, tokenizer):
        return UViTPipeline(nnet, autoencoder, guidance_scale, text_encoder, tokenizer)


def main(argv=None, prog="python -m uvit_numpy.generate uvit"):
    """`uvit CHECKPOINT.safetensors --config NAME --autoencoder FILE (--class K | --prompt TEXT
    --clip FOLDER) --out PNG [--steps 50] [--guidance S] [--seed 0] [--threads N]`."""
    args = build_parser(prog, "a safetensors file of the paper's state dict").parse_args(argv)
    return run_command(args, NumpyBackend())


if __name__ == "__main__":
    sys.exit(main())
