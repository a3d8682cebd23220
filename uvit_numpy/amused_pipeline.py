"""aMUSEd from a prompt to an image, in NumPy: diffusers' `AmusedPipeline`, `AmusedImg2ImgPipeline`
and `AmusedInpaintPipeline`, reading the same folders and making the same images.

    pipe = AmusedPipeline.from_pretrained("amused-256")      # a diffusers pipeline folder
    image = pipe("a photo of a cat", seed=0).images[0]      # (256, 256, 3) float32 in [0, 1]

Five parts the package already has, wired as diffusers wires them:

    prompt --CLIPTokenizer--> ids (B, 77) --CLIPTextModelWithProjection-->
        hidden_states[-2] (B, 77, 768)  = encoder_hidden_states (the penultimate layer's tokens)
        text_embeds (B, 768)            = pooled_text_emb (the projected end-of-text feature)
      (and the same for the negative prompt, "" by default, when guidance_scale > 1)
    micro_conds (B, 5) = [width, height, crop x, crop y, aesthetic score]   (width first)
    all-mask grid (B, h, w) --maskgit.generate: UVit2DModel, guidance on the logits,
                              AmusedScheduler's step, num_inference_steps times--> codes (B, h, w)
    codes --VQModel.decode (codebook lookup, decoder)--> image (B, 3, H, W), clipped to [0, 1]

with h = H / f, w = W / f, f = 2^(levels of the VQ-GAN - 1) (aMUSEd: 16, 256 px -> 16 x 16 codes).
`AmusedImg2ImgPipeline` starts from an image's codes instead: `strength` s skips the first
12 - int(12 s) steps and masks the codes at random as the schedule had masked them then
(`maskgit.add_noise`). `AmusedInpaintPipeline` masks the codes under a mask image (white =
repaint), and decodes with the linear schedule, each step's masked count scaled by the fraction
masked at the start. Images go to the VQ-GAN in [0, 1] (aMUSEd's VQ-GAN does not take [-1, 1]).

Randomness: every draw is a uniform array. A run takes one pair (u_sample, u_gumbel), each
(B, h*w), per step: u_sample picks each token's code by inverse CDF (the first code whose
cumulative probability reaches u), u_gumbel gives the Gumbel noise -log(-log(u)) of the
confidences (both logs clamped at 1e-20, as diffusers). img2img takes one more array (B, h*w)
first, for `add_noise`. They come from `np.random.default_rng(seed)` in this order (the torch
package draws them the same way, so both make the same image for the same seed), or are given
(`noise=[(u_sample, u_gumbel), ...]`, `mask_noise=`) to replay any other run, diffusers' included.

Output: `.images`, float (B, H, W, 3) in [0, 1] (`output_type="np"`), a list of PIL images
("pil", rounded to uint8 as diffusers does) or the codes (B, h, w) int64 ("latent").
Differences from diffusers, where diffusers would fail: a single negative prompt serves every
prompt, non-RGB PIL images are converted to RGB; and everything is checked before any work.
"""

import argparse
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from . import maskgit
from .checks import dtype_name, is_floating

__all__ = ["PIPELINE_CLASSES", "COMPONENTS", "check_pipeline_folder", "AmusedScheduler",
           "AmusedPipelineOutput", "nearest_indices", "resize_nearest", "preprocess_image",
           "preprocess_mask", "draw_noise", "check_pixel_size", "repeat_batch", "AmusedPipeline",
           "AmusedImg2ImgPipeline", "AmusedInpaintPipeline", "build_parser", "run_command",
           "main"]

# --------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------
# The pipeline classes whose folders hold aMUSEd's five parts (any of the three loads any of them).
PIPELINE_CLASSES = ("AmusedPipeline", "AmusedImg2ImgPipeline", "AmusedInpaintPipeline")

# model_index.json's entries: component -> (library, accepted class names).
COMPONENTS = {
    "vqvae": ("diffusers", ("VQModel",)),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
    "text_encoder": ("transformers", ("CLIPTextModelWithProjection",)),
    "transformer": ("diffusers", ("UVit2DModel",)),
    "scheduler": ("diffusers", ("AmusedScheduler",)),
}


def _weights_present(folder, names, variant):
    """Whether `folder` holds one of the weight files `names` (single file or shard index)."""
    def named(name):
        return name if variant is None else name.replace(".safetensors", f".{variant}.safetensors")
    return any(os.path.isfile(os.path.join(folder, named(n))) for n in names)


def _component_problems(path, name, variant):
    """What is missing from component folder `name` of a pipeline folder: a list of phrases."""
    folder = os.path.join(path, name)
    if not os.path.isdir(folder):
        return [f"{name}/ (the folder)"]
    if name == "tokenizer":
        has = [os.path.isfile(os.path.join(folder, n))
               for n in ("tokenizer.json", "vocab.json", "merges.txt")]
        return [] if has[0] or (has[1] and has[2]) else [
            "tokenizer/tokenizer.json (or tokenizer/vocab.json + tokenizer/merges.txt)"]
    if name == "scheduler":
        return ([] if os.path.isfile(os.path.join(folder, "scheduler_config.json"))
                else ["scheduler/scheduler_config.json"])
    problems = [] if os.path.isfile(os.path.join(folder, "config.json")) \
        else [f"{name}/config.json"]
    stem = "model" if name == "text_encoder" else "diffusion_pytorch_model"
    files = (f"{stem}.safetensors", f"{stem}.safetensors.index.json")
    if not _weights_present(folder, files, variant):
        bins = any(n.endswith(".bin") for n in os.listdir(folder))
        weights = files[0] if variant is None else files[0].replace(".safetensors",
                                                                    f".{variant}.safetensors")
        problems.append(f"{name}/{weights}" + (" (only .bin weights there: re-save them with "
                                                "safe_serialization=True)" if bins else ""))
    return problems


def check_pipeline_folder(path, variant=None):
    """Check, before any weight is read, that `path` is a diffusers aMUSEd pipeline folder.

    It needs model_index.json naming an aMUSEd pipeline (`PIPELINE_CLASSES`) and the five parts of
    `COMPONENTS`, each in its subfolder with its config and safetensors weights (the tokenizer:
    tokenizer.json, or vocab.json + merges.txt; the scheduler: scheduler_config.json). Raises
    FileNotFoundError (something missing, all of it named on one line) or ValueError (a folder of
    another pipeline, or a part of another class). Returns model_index.json's content.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a folder (expected a diffusers aMUSEd pipeline "
                                f"folder, such as a download of amused/amused-256)")
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"{path!r} is not a diffusers pipeline folder: it has no "
                                f"model_index.json")
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{index_file!r} is not readable JSON: {err}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{index_file!r} is not a JSON object")
    class_name = index.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(f"{path!r} holds a {class_name!r}, not an aMUSEd pipeline (expected "
                         f"model_index.json's _class_name among {PIPELINE_CLASSES})")
    wrong = []
    for name, (_, classes) in COMPONENTS.items():
        entry = index.get(name)
        if entry is not None and (not isinstance(entry, list) or len(entry) != 2
                                  or entry[1] not in classes):
            wrong.append(f"{name} is {entry!r}, expected a {' or '.join(classes)}")
    if wrong:
        raise ValueError(f"{path!r} is not an aMUSEd pipeline: model_index.json says "
                         f"{'; '.join(wrong)}")
    missing = [f"model_index.json's {name!r} entry" for name in COMPONENTS if name not in index]
    for name in COMPONENTS:
        missing += _component_problems(path, name, variant)
    if missing:
        raise FileNotFoundError(f"{path!r} is not a complete aMUSEd pipeline: missing "
                                f"{', '.join(missing)}")
    return index


@dataclass
class AmusedScheduler:
    """The settings of diffusers' `AmusedScheduler` (its scheduler_config.json): the id that marks
    a masked token and the masking schedule. The step itself is `maskgit.masked_decoding_step`,
    the temperatures `maskgit.scheduler_temperatures`, the re-masking `maskgit.add_noise`."""
    mask_token_id: int
    masking_schedule: str = "cosine"

    def __post_init__(self):
        if not isinstance(self.mask_token_id, Integral) or isinstance(self.mask_token_id, bool) \
                or self.mask_token_id < 0:
            raise ValueError(f"AmusedScheduler: mask_token_id must be a non-negative int, got "
                             f"{self.mask_token_id!r}")
        if self.masking_schedule not in ("cosine", "linear"):
            raise ValueError(f"AmusedScheduler: masking_schedule must be 'cosine' or 'linear', "
                             f"got {self.masking_schedule!r}")

    @property
    def config(self):
        return {"mask_token_id": self.mask_token_id, "masking_schedule": self.masking_schedule}

    @classmethod
    def from_pretrained(cls, path, subfolder="scheduler"):
        """Read scheduler_config.json from `path/subfolder` (or `path` itself)."""
        for folder in (os.path.join(path, subfolder), path):
            file = os.path.join(folder, "scheduler_config.json")
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    config = json.load(f)
                if config.get("_class_name", "AmusedScheduler") != "AmusedScheduler":
                    raise ValueError(f"{file!r} holds a {config['_class_name']!r}, not an "
                                     f"AmusedScheduler")
                if "mask_token_id" not in config:
                    raise ValueError(f"{file!r} has no mask_token_id")
                return cls(config["mask_token_id"], config.get("masking_schedule", "cosine"))
        raise FileNotFoundError(f"no scheduler_config.json in {path!r} nor in its {subfolder!r} "
                                f"subfolder")


@dataclass
class AmusedPipelineOutput:
    """What a pipeline returns, as diffusers' `ImagePipelineOutput`: `images`."""
    images: object


# --------------------------------------------------------------------------------------------------
# Images in: diffusers' VaeImageProcessor(do_normalize=False), for PIL images and arrays
# --------------------------------------------------------------------------------------------------
def nearest_indices(in_size, out_size):
    """The source index of each of `out_size` outputs when resizing `in_size` pixels, exactly as
    torch's `F.interpolate(mode="nearest")` picks it (diffusers resizes arrays with it):
    identity for equal sizes, i // 2 when doubling, else floor(i * s) with s = in / out, both
    the scale and the product in float32, capped at in_size - 1. (out_size,) int64."""
    i = np.arange(out_size)
    if out_size == in_size:
        return i
    if out_size == 2 * in_size:
        return i >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def resize_nearest(images, height, width):
    """(B, C, H, W) -> (B, C, height, width) by nearest neighbour (torch's rule, see
    `nearest_indices`)."""
    rows = nearest_indices(images.shape[2], height)          # (height,)
    cols = nearest_indices(images.shape[3], width)           # (width,)
    return images[:, :, rows[:, None], cols[None, :]]        # (B, C, height, width)


def _is_pil(x):
    return type(x).__module__.startswith("PIL.") and hasattr(x, "resize") and hasattr(x, "mode")


def _as_list(image):
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _check_unit_floats(name, array):
    if not is_floating(array):
        raise TypeError(f"{name}: expected floats in [0, 1] (or PIL images), got an array of "
                        f"{dtype_name(array)} (divide uint8 pixels by 255)")
    if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1 or np.isnan(array).any()):
        raise ValueError(f"{name}: expected values in [0, 1], got [{np.nanmin(array):.3g}, "
                         f"{np.nanmax(array):.3g}]" + (" and NaN" if np.isnan(array).any()
                                                       else ""))


def preprocess_image(image, vae_scale_factor):
    """Images -> (B, 3, H, W) float32 in [0, 1], H and W rounded down to multiples of
    `vae_scale_factor`, as diffusers' aMUSEd image processor makes them.

    image: a PIL image, a list of PIL images (one size), or a float array (H, W, 3) or
    (B, H, W, 3) in [0, 1]. PIL images are resized with PIL's Lanczos filter (diffusers' choice;
    nothing changes when the size is already a multiple), converted to RGB if they are not, then
    read as uint8 / 255 in float32; arrays are resized by nearest neighbour, as torch does.
    """
    items = _as_list(image)
    if not items:
        raise ValueError("image: expected an image, got an empty list")
    if all(_is_pil(i) for i in items):
        from PIL import Image
        W, H = items[0].size
        if any(i.size != (W, H) for i in items):
            raise ValueError(f"image: expected images of one size, got sizes "
                             f"{sorted({i.size for i in items})} (width, height)")
        h, w = H - H % vae_scale_factor, W - W % vae_scale_factor
        _check_image_size("image", H, W, h, w, vae_scale_factor)
        items = [i.resize((w, h), resample=Image.Resampling.LANCZOS) for i in items]
        items = [i if i.mode == "RGB" else i.convert("RGB") for i in items]
        pixels = np.stack([np.array(i).astype(np.float32) / 255.0 for i in items])  # (B, h, w, 3)
        return pixels.transpose(0, 3, 1, 2)               # (B, h, w, 3) -> (B, 3, h, w)
    if len(items) > 1 or _is_pil(items[0]) or not isinstance(items[0], np.ndarray):
        raise TypeError(f"image: expected a PIL image, a list of PIL images or a float array "
                        f"(H, W, 3) or (B, H, W, 3), got {type(image).__name__}")
    array = items[0]
    if array.ndim == 3:
        array = array[None]                               # (H, W, 3) -> (1, H, W, 3)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"image: expected an array of shape (H, W, 3) or (B, H, W, 3) (RGB, "
                         f"channels last), got {tuple(items[0].shape)}")
    _check_unit_floats("image", array)
    _, H, W, _ = array.shape
    h, w = H - H % vae_scale_factor, W - W % vae_scale_factor
    _check_image_size("image", H, W, h, w, vae_scale_factor)
    pixels = array.astype(np.float32).transpose(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    return resize_nearest(pixels, h, w)


def _check_image_size(name, H, W, h, w, vae_scale_factor):
    if h == 0 or w == 0:
        raise ValueError(f"{name}: {H} x {W} pixels is smaller than the VQ-GAN's {vae_scale_factor}"
                         f" pixels per code")


def preprocess_mask(mask_image, height, width):
    """Mask images -> (B, height, width) bools on the code grid, True = repaint, as diffusers'
    aMUSEd mask processor makes them: resized to the grid (PIL: Lanczos, then grey scale;
    arrays: nearest neighbour), then >= 0.5 is True.

    mask_image: a PIL image or a list of them (white repaints), or a float array in [0, 1] of
    shape (H, W), (H, W, 1), (B, H, W) or (B, H, W, 1).
    """
    items = _as_list(mask_image)
    if not items:
        raise ValueError("mask_image: expected a mask, got an empty list")
    if all(_is_pil(i) for i in items):
        from PIL import Image
        items = [i.resize((width, height), resample=Image.Resampling.LANCZOS).convert("L")
                 for i in items]
        mask = np.stack([np.array(i).astype(np.float32) / 255.0 for i in items])  # (B, h, w)
        return mask >= 0.5
    if len(items) > 1 or not isinstance(items[0], np.ndarray):
        raise TypeError(f"mask_image: expected a PIL image, a list of PIL images or a float "
                        f"array, got {type(mask_image).__name__}")
    array = items[0]
    if array.ndim == 2:
        array = array[None]                               # (H, W) -> (1, H, W)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[None, ..., 0]                       # (H, W, 1) -> (1, H, W)
    elif array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]                             # (B, H, W, 1) -> (B, H, W)
    elif array.ndim != 3:
        raise ValueError(f"mask_image: expected an array of shape (H, W), (H, W, 1), (B, H, W) "
                         f"or (B, H, W, 1), got {tuple(items[0].shape)}")
    _check_unit_floats("mask_image", array)
    mask = resize_nearest(array.astype(np.float32)[:, None], height, width)  # (B, 1, h, w)
    return mask[:, 0] >= 0.5                              # (B, 1, h, w) -> (B, h, w)


# --------------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------------
def draw_noise(rng, num_steps, batch, num_tokens):
    """One (u_sample, u_gumbel) pair per step, each (batch, num_tokens) float64 uniforms in
    [0, 1), drawn from `rng` in that order."""
    return [(rng.random((batch, num_tokens)), rng.random((batch, num_tokens)))
            for _ in range(num_steps)]


def _check_uniforms(name, u, shape):
    """A given uniform draw: a float array of `shape` with values in [0, 1]."""
    u = np.asarray(u)
    if tuple(u.shape) != shape:
        raise ValueError(f"{name}: expected uniforms of shape {shape} (batch, h*w), got "
                         f"{tuple(u.shape)}")
    if not is_floating(u) or (u.size and (u.min() < 0 or u.max() > 1)):
        raise ValueError(f"{name}: expected floats in [0, 1], got {dtype_name(u)}"
                         + (f" in [{u.min():.3g}, {u.max():.3g}]" if u.size else ""))
    return u


def _resolve_draws(seed, noise, num_steps, batch, num_tokens, mask_shape=None, mask_noise=None):
    """(step draws, mask draw or None) from a seed or as given, checked. mask_shape: the shape of
    img2img's re-masking draw (None: not needed); it is drawn first."""
    if seed is not None and (noise is not None or mask_noise is not None):
        raise ValueError("pass seed or noise (and mask_noise), not both")
    if seed is not None and not isinstance(seed, np.random.Generator) and (
            not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0):
        raise TypeError(f"seed: expected a non-negative int or an np.random.Generator, got "
                        f"{seed!r}")
    if noise is None and mask_noise is None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        first = rng.random(mask_shape) if mask_shape is not None else None
        return draw_noise(rng, num_steps, batch, num_tokens), first
    if noise is None or (mask_shape is not None and mask_noise is None):
        raise ValueError("noise= and mask_noise= go together (img2img draws both)")
    if mask_shape is None and mask_noise is not None:
        raise ValueError("mask_noise: only img2img re-masks the image's codes at random")
    if not isinstance(noise, (list, tuple)) or len(noise) != num_steps:
        got = len(noise) if isinstance(noise, (list, tuple)) else type(noise).__name__
        raise ValueError(f"noise: expected a list of {num_steps} (u_sample, u_gumbel) pairs, one "
                         f"per step that runs, got {got}")
    shape = (batch, num_tokens)
    pairs = []
    for k, pair in enumerate(noise):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"noise[{k}]: expected a pair (u_sample, u_gumbel)")
        pairs.append((_check_uniforms(f"noise[{k}][0]", pair[0], shape),
                      _check_uniforms(f"noise[{k}][1]", pair[1], shape)))
    first = None if mask_shape is None else _check_uniforms("mask_noise", mask_noise, mask_shape)
    return pairs, first


# --------------------------------------------------------------------------------------------------
# Argument checks (all before any work)
# --------------------------------------------------------------------------------------------------
def _check_int(name, value, low):
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def _check_number(name, value):
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a finite number, got {value!r}")
    return value


def _check_prompts(prompt, negative_prompt):
    """(prompts, negative prompts or None) as lists of str; a single negative serves all."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts \
            or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt: expected a str or a non-empty list of str, got {prompt!r}")
    if negative_prompt is None:
        return list(prompts), None
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) \
        else negative_prompt
    if not isinstance(negatives, (list, tuple)) or not all(isinstance(p, str) for p in negatives):
        raise TypeError(f"negative_prompt: expected a str or a list of str, got "
                        f"{negative_prompt!r}")
    if len(negatives) != len(prompts):
        raise ValueError(f"negative_prompt: expected one per prompt ({len(prompts)}), got "
                         f"{len(negatives)}")
    return list(prompts), list(negatives)


def _check_temperature(temperature, num_steps):
    if isinstance(temperature, np.ndarray):
        if temperature.shape != (num_steps,):
            raise ValueError(f"temperature: an array needs one value per step, ({num_steps},), "
                             f"got {temperature.shape}")
        return temperature
    if isinstance(temperature, (tuple, list)):
        if len(temperature) != 2:
            raise ValueError(f"temperature: expected a pair (first, last), got {temperature!r}")
        for t in temperature:
            _check_number("temperature", t)
        return tuple(temperature)
    return _check_number("temperature", temperature)


OUTPUT_TYPES = ("np", "pil", "latent")


def check_pixel_size(height, width, vae_scale_factor, downsample):
    """(height, width) as ints; ValueError unless both are positive multiples of
    `vae_scale_factor` (the VQ-GAN's pixels per code) and, when the transformer halves its code
    grid (`downsample`), give even grid sides."""
    f = vae_scale_factor
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < f or value % f:
            raise ValueError(f"{name}: the VQ-GAN makes {f} x {f} pixels per code, so {name} "
                             f"must be a positive multiple of {f}, got {value!r}")
    if downsample and ((height // f) % 2 or (width // f) % 2):
        raise ValueError(f"height x width = {height} x {width} gives a {height // f} x "
                         f"{width // f} code grid; this transformer halves it, so both sides "
                         f"must be multiples of {2 * f} pixels")
    return int(height), int(width)


def repeat_batch(x, n):
    """x repeated n times along the batch axis, (b, ...) -> (n b, ...): all rows, then all rows
    again, as torch's `.repeat(n, 1, ...)` in diffusers' pipelines (not each row n times)."""
    return np.tile(x, (n,) + (1,) * (x.ndim - 1))


# --------------------------------------------------------------------------------------------------
# The pipelines
# --------------------------------------------------------------------------------------------------
class AmusedPipeline:
    """diffusers' `AmusedPipeline` in NumPy: a prompt to an image (see the module's docstring).

    Parts (the names of diffusers' pipeline): `vqvae` (VQModel), `tokenizer` (CLIPTokenizer),
    `text_encoder` (CLIPTextModelWithProjection), `transformer` (UVit2DModel), `scheduler`
    (AmusedScheduler's settings). Build with `from_pretrained(folder)` or from the parts; the
    parts are checked to fit together (widths, codebook, token ids) when the pipeline is built.
    """

    def __init__(self, vqvae, tokenizer, text_encoder, transformer, scheduler):
        self.vqvae, self.tokenizer, self.text_encoder = vqvae, tokenizer, text_encoder
        self.transformer, self.scheduler = transformer, scheduler
        self._check_parts()

    # ---- the parts ---------------------------------------------------------------------------
    @classmethod
    def _part_classes(cls):
        """(CLIPTokenizer, CLIPTextModelWithProjection, UVit2DModel, VQModel) of this package."""
        from .clip import CLIPTextModelWithProjection
        from .clip_tokenizer import CLIPTokenizer
        from .uvit2d import UVit2DModel
        from .vq_model import VQModel
        return CLIPTokenizer, CLIPTextModelWithProjection, UVit2DModel, VQModel

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, variant=None):
        """Load a diffusers aMUSEd pipeline folder (any of the three pipelines' folders), without
        torch. The folder is checked first (`check_pipeline_folder`: everything missing named in
        one line); the three models compute in `dtype`."""
        check_pipeline_folder(path, variant)
        tokenizer_cls, text_cls, transformer_cls, vq_cls = cls._part_classes()
        path = os.fspath(path)
        return cls(vqvae=vq_cls.from_pretrained(os.path.join(path, "vqvae"), dtype=dtype,
                                                 variant=variant),
                   tokenizer=tokenizer_cls.from_pretrained(path, subfolder="tokenizer"),
                   text_encoder=text_cls.from_pretrained(path, dtype=dtype, variant=variant,
                                                         subfolder="text_encoder"),
                   transformer=transformer_cls.from_pretrained(
                       os.path.join(path, "transformer"), dtype=dtype, variant=variant),
                   scheduler=AmusedScheduler.from_pretrained(path))

    def _check_parts(self):
        """ValueError naming the first mismatch between the parts."""
        t, text, vq = self.transformer.config, self.text_encoder.config, self.vqvae.config
        checks = [
            (t["encoder_hidden_size"] == text.hidden_size,
             f"the transformer's encoder_hidden_size {t['encoder_hidden_size']} is not the text "
             f"encoder's hidden_size {text.hidden_size}"),
            (t["cond_embed_dim"] == text.projection_dim,
             f"the transformer's cond_embed_dim {t['cond_embed_dim']} is not the text encoder's "
             f"projection_dim {text.projection_dim}"),
            (t["micro_cond_embed_dim"] == 5 * t["micro_cond_encode_dim"],
             f"the transformer takes {t['micro_cond_embed_dim']} / {t['micro_cond_encode_dim']} "
             f"micro-conditions, aMUSEd gives 5"),
            (self.scheduler.mask_token_id < t["vocab_size"],
             f"the scheduler's mask_token_id {self.scheduler.mask_token_id} is not below the "
             f"transformer's vocab_size {t['vocab_size']}"),
            (t["codebook_size"] <= vq["num_vq_embeddings"],
             f"the transformer predicts {t['codebook_size']} codes, the VQ-GAN has only "
             f"{vq['num_vq_embeddings']}"),
            (vq["latent_channels"] == (vq["vq_embed_dim"] or vq["latent_channels"]),
             f"the VQ-GAN's latent_channels {vq['latent_channels']} differ from its vq_embed_dim "
             f"{vq['vq_embed_dim']} (aMUSEd's decode lays the codes out with latent_channels)"),
            (vq["lookup_from_codebook"],
             "the VQ-GAN has lookup_from_codebook=False, so it cannot decode code indices"),
            (self.tokenizer.model_max_length <= text.max_position_embeddings,
             f"the tokenizer pads to {self.tokenizer.model_max_length} tokens, the text encoder "
             f"reads at most {text.max_position_embeddings}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: the parts do not fit: {message}")

    @property
    def vae_scale_factor(self):
        """Pixels per code along each side: 2^(levels of the VQ-GAN - 1) (aMUSEd: 16)."""
        return 2 ** (len(self.vqvae.config["block_out_channels"]) - 1)

    @property
    def dtype(self):
        return self.transformer.dtype

    # ---- argument checks -----------------------------------------------------------------------
    def check_size(self, height, width):
        """(height, width) in pixels, the defaults filled in (the transformer's sample_size codes
        per side), checked by `check_pixel_size`."""
        f, t = self.vae_scale_factor, self.transformer.config
        height = t["sample_size"] * f if height is None else height
        width = t["sample_size"] * f if width is None else width
        return check_pixel_size(height, width, f, t["downsample"])

    def _check_common(self, prompt, negative_prompt, num_inference_steps, guidance_scale,
                      num_images_per_prompt, micro_conditioning_aesthetic_score,
                      micro_conditioning_crop_coord, temperature, output_type):
        prompts, negatives = _check_prompts(prompt, negative_prompt)
        _check_int("num_inference_steps", num_inference_steps, 1)
        _check_number("guidance_scale", guidance_scale)
        _check_int("num_images_per_prompt", num_images_per_prompt, 1)
        _check_number("micro_conditioning_aesthetic_score", micro_conditioning_aesthetic_score)
        crop = micro_conditioning_crop_coord
        if not isinstance(crop, (tuple, list)) or len(crop) != 2:
            raise ValueError(f"micro_conditioning_crop_coord: expected a pair, got {crop!r}")
        for c in crop:
            _check_number("micro_conditioning_crop_coord", c)
        temperature = _check_temperature(temperature, num_inference_steps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {OUTPUT_TYPES}, got {output_type!r}")
        return prompts, negatives, temperature

    # ---- stage 1: the text -------------------------------------------------------------------
    def _warn_truncated(self, prompts):
        """Warn, as diffusers' pipelines do, when a prompt is longer than the text encoder reads
        (77 tokens, start and end included): the tail is cut, and the warning shows it."""
        limit = self.tokenizer.model_max_length
        for text in prompts:
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(ids) > limit:
                cut = self.tokenizer.decode(ids[limit - 1:-1])
                warnings.warn(f"the prompt is {len(ids)} tokens long and the text encoder reads "
                              f"{limit}: this part was cut: {cut!r}", stacklevel=5)

    def encode_prompt(self, prompt, negative_prompt=None, num_images_per_prompt=1,
                      guidance_scale=10.0):
        """The text conditioning, as diffusers computes it. Returns (pooled (B, P), hidden
        (B, S, C), negative pooled, negative hidden), B = len(prompts) * num_images_per_prompt,
        the rows repeated as diffusers' `.repeat` does (all prompts, then all again); the
        negatives are None unless guidance_scale > 1 ("" for each prompt by default).

        hidden is the *penultimate* layer's output (`hidden_states[-2]`, before the last layer and
        the final LayerNorm); pooled is the projected end-of-text feature (`text_embeds`).
        """
        prompts, negatives = _check_prompts(prompt, negative_prompt)
        self._warn_truncated(prompts + (negatives or []))
        pooled, hidden = self._encode_text(prompts)
        n = num_images_per_prompt
        pooled, hidden = self._repeat(pooled, n), self._repeat(hidden, n)
        if guidance_scale <= 1.0:
            return pooled, hidden, None, None
        neg_pooled, neg_hidden = self._encode_text(negatives or [""] * len(prompts))
        return pooled, hidden, self._repeat(neg_pooled, n), self._repeat(neg_hidden, n)

    def micro_conditions(self, width, height, crop_coord, aesthetic_score, batch):
        """(batch, 5) [width, height, crop x, crop y, aesthetic score] in the models' dtype: width
        before height, as open-muse trained aMUSEd (diffusers keeps the order)."""
        row = [width, height, crop_coord[0], crop_coord[1], aesthetic_score]
        return np.tile(np.array(row, dtype=self.dtype), (batch, 1))  # (5,) -> (batch, 5)

    # ---- stage 3: codes to pixels ------------------------------------------------------------
    def decode_codes(self, codes, output_type="np"):
        """codes (B, h, w) int64 -> `output_type`: "np" float (B, h f, w f, 3) in [0, 1] (the
        VQ-GAN's output clipped, channels last), "pil" a list of PIL images (x 255, rounded to
        uint8, as diffusers), "latent" the codes themselves."""
        if output_type == "latent":
            return self._latent(codes)
        B, h, w = codes.shape
        shape = (B, h, w, self.vqvae.config["latent_channels"])
        images = np.clip(self._decode(codes, shape), 0, 1).transpose(0, 2, 3, 1)  # -> (B, H, W, 3)
        if output_type == "np":
            return images
        from PIL import Image
        pixels = (images.astype(np.float32) * 255).round().astype(np.uint8)
        return [Image.fromarray(p) for p in pixels]

    # ---- the model calls: the only methods the torch twin overrides ---------------------------
    def _encode_text(self, prompts):
        """prompts (n str) -> (text_embeds (n, P), hidden_states[-2] (n, S, C))."""
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="np",
                             max_length=self.tokenizer.model_max_length).input_ids  # (n, S)
        out = self.text_encoder(ids, output_hidden_states=True)
        return out.text_embeds, out.hidden_states[-2]

    def _repeat(self, x, n):
        """x repeated n times along the batch (`repeat_batch`)."""
        return repeat_batch(x, n)

    def _generate(self, text, micro_conds, tokens, num_steps, start_step, guidance_scale,
                  temperatures, noise, schedule, starting_mask_ratio, callback):
        """`maskgit.generate` on the transformer. Returns codes (B, h, w) int64."""
        pooled, hidden, neg_pooled, neg_hidden = text
        _, h, w = tokens.shape
        return maskgit.generate(
            self.transformer, hidden, pooled, micro_conds, h, w, num_steps=num_steps,
            temperature=temperatures, mask_token_id=self.scheduler.mask_token_id,
            guidance_scale=guidance_scale, negative_encoder_hidden_states=neg_hidden,
            negative_pooled_text_emb=neg_pooled, schedule=schedule, noise=noise,
            tokens=tokens, start_step=start_step, starting_mask_ratio=starting_mask_ratio,
            callback=callback)

    def _image_codes(self, pixels):
        """(B, 3, H, W) float32 in [0, 1] -> the VQ-GAN's codes (B, h, w) int64."""
        latents = self.vqvae.encode(pixels.astype(self.vqvae.dtype)).latents  # (B, C, h, w)
        B, _, h, w = latents.shape
        return self.vqvae.quantize(latents)[2][2].reshape(B, h, w)  # (B*h*w,) -> (B, h, w)

    def _decode(self, codes, shape):
        """codes (B, h, w) -> the VQ-GAN's image (B, 3, H, W), not yet clipped."""
        return self.vqvae.decode(codes, force_not_quantize=True, shape=shape).sample

    def _latent(self, codes):
        return codes

    # ---- the call ------------------------------------------------------------------------------
    def _run(self, prompts, negatives, tokens, num_steps, start_step, guidance_scale,
             num_images_per_prompt, width, height, crop, aesthetic, temperature, noise, schedule,
             starting_mask_ratio, output_type, callback, timings):
        """The three stages, timed into `timings` (a dict, when given): "text", "steps" (a list,
        one per step run) and "decode" seconds."""
        timings = {} if timings is None else timings
        tic = time.perf_counter()
        text = self.encode_prompt(prompts, negatives, num_images_per_prompt, guidance_scale)
        micro = self._as_model_input(self.micro_conditions(width, height, crop, aesthetic,
                                                           tokens.shape[0]))
        timings["text"] = time.perf_counter() - tic
        timings["steps"] = []
        if start_step < num_steps:
            last = [time.perf_counter()]

            def on_step(step, grid):
                now = time.perf_counter()
                timings["steps"].append(now - last[0])
                last[0] = now
                if callback is not None:
                    callback(step, grid)
            temperatures = maskgit.scheduler_temperatures(temperature, num_steps)
            tokens = self._generate(text, micro, tokens, num_steps, start_step, guidance_scale,
                                    temperatures, noise, schedule, starting_mask_ratio, on_step)
        tic = time.perf_counter()
        images = self.decode_codes(tokens, output_type)
        timings["decode"] = time.perf_counter() - tic
        return AmusedPipelineOutput(images=images)

    def _as_model_input(self, array):
        """A NumPy input of the transformer as the models take it (the torch twin: a tensor)."""
        return array

    def __call__(self, prompt, negative_prompt=None, num_inference_steps=12, guidance_scale=10.0,
                 height=None, width=None, num_images_per_prompt=1,
                 micro_conditioning_aesthetic_score=6, micro_conditioning_crop_coord=(0, 0),
                 temperature=(2, 0), seed=None, noise=None, output_type="np", callback=None,
                 timings=None):
        """Make images from prompts, as diffusers' `AmusedPipeline.__call__`.

        prompt: a str or a list of them; negative_prompt: one str for all, or one per prompt
        (guidance only: "" when None). guidance_scale > 1 runs the transformer on both and uses
        uncond + guidance_scale (cond - uncond) on the logits. height, width: pixels, multiples
        of `vae_scale_factor` (default: the transformer's sample_size codes). temperature: the
        Gumbel temperature, a pair (first, last) or a number t (t -> 0.01) per step.
        seed (int or np.random.Generator) or noise (one (u_sample, u_gumbel) pair per step, each
        (B, h*w), B = len(prompts) * num_images_per_prompt): the draws (module docstring).
        callback(step, codes) after every step; timings: a dict filled with the seconds of each
        stage. Returns `AmusedPipelineOutput(images)`.
        """
        prompts, negatives, temperature = self._check_common(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt,
            micro_conditioning_aesthetic_score, micro_conditioning_crop_coord, temperature,
            output_type)
        height, width = self.check_size(height, width)
        f = self.vae_scale_factor
        B = len(prompts) * num_images_per_prompt
        h, w = height // f, width // f
        noise, _ = _resolve_draws(seed, noise, num_inference_steps, B, h * w)
        tokens = np.full((B, h, w), self.scheduler.mask_token_id, dtype=np.int64)
        return self._run(prompts, negatives, self._tokens(tokens), num_inference_steps, 0,
                         guidance_scale, num_images_per_prompt, width, height,
                         micro_conditioning_crop_coord, micro_conditioning_aesthetic_score,
                         temperature, noise, self.scheduler.masking_schedule, 1.0, output_type,
                         callback, timings)

    def _tokens(self, tokens):
        """A NumPy grid of token ids as the twin's `_generate` takes it."""
        return tokens


def _strength_steps(strength, num_inference_steps):
    """(steps that run, first step) for `strength`, as diffusers: int(steps * strength) run."""
    if not isinstance(strength, Real) or isinstance(strength, bool) or not 0 < strength <= 1:
        raise ValueError(f"strength: expected a number in (0, 1], got {strength!r}")
    run = int(num_inference_steps * strength)
    return run, num_inference_steps - run


class AmusedImg2ImgPipeline(AmusedPipeline):
    """diffusers' `AmusedImg2ImgPipeline` in NumPy: an image and a prompt to a new image.

    The image's codes (the VQ-GAN's encoder and quantiser) are masked at random as much as the
    schedule has masked after step 12 - int(12 strength) - 1 (`maskgit.add_noise`; strength 0.5:
    about 71% of them), then decoded from that step on. The image sets the size (rounded down to
    multiples of `vae_scale_factor`).
    """

    def __call__(self, prompt, image, strength=0.5, num_inference_steps=12, guidance_scale=10.0,
                 negative_prompt=None, num_images_per_prompt=1,
                 micro_conditioning_aesthetic_score=6, micro_conditioning_crop_coord=(0, 0),
                 temperature=(2, 0), seed=None, noise=None, mask_noise=None, output_type="np",
                 callback=None, timings=None):
        """prompt and the rest as `AmusedPipeline.__call__`; image: a PIL image, a list of them,
        or floats (H, W, 3) / (B, H, W, 3) in [0, 1], one per prompt. strength in (0, 1]: the
        share of the steps that run. mask_noise: the uniforms (B_image, h*w) of the random
        masking, given with `noise` (which then has one pair per step that runs)."""
        prompts, negatives, temperature = self._check_common(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt,
            micro_conditioning_aesthetic_score, micro_conditioning_crop_coord, temperature,
            output_type)
        run, start = _strength_steps(strength, num_inference_steps)
        pixels = preprocess_image(image, self.vae_scale_factor)   # (B_image, 3, H, W)
        B_image, _, height, width = pixels.shape
        _check_image_batch(B_image, len(prompts))
        self.check_size(height, width)
        f = self.vae_scale_factor
        h, w = height // f, width // f
        B = B_image * num_images_per_prompt
        noise, mask_noise = _resolve_draws(seed, noise, run, B, h * w, (B_image, h * w),
                                           mask_noise)
        codes = self._image_codes(pixels)                         # (B_image, h, w)
        # diffusers masks at the step before the first one that runs, `timesteps[start - 1]`
        # (start 0 wraps to the last step, which masks nothing)
        codes = maskgit.add_noise(codes, (start - 1) % num_inference_steps, num_inference_steps,
                                  self.scheduler.mask_token_id,
                                  schedule=self.scheduler.masking_schedule, noise=mask_noise)
        tokens = repeat_batch(codes, num_images_per_prompt)       # (B, h, w)
        return self._run(prompts, negatives, self._tokens(tokens), num_inference_steps, start,
                         guidance_scale, num_images_per_prompt, width, height,
                         micro_conditioning_crop_coord, micro_conditioning_aesthetic_score,
                         temperature, noise, self.scheduler.masking_schedule, 1.0, output_type,
                         callback, timings)


def _check_image_batch(count, prompts):
    if count != prompts:
        raise ValueError(f"image: expected one image per prompt ({prompts}), got {count}")


class AmusedInpaintPipeline(AmusedPipeline):
    """diffusers' `AmusedInpaintPipeline` in NumPy: repaint the part of an image under a mask.

    The image's codes under the mask (resized to the code grid, >= 0.5 repaints) become mask
    tokens; decoding then runs with the *linear* schedule (diffusers' inpainting pipeline sets it),
    each step's masked count scaled by the share of codes masked at the start, so only the masked
    codes are ever predicted. strength (default 1) skips the first steps as in img2img.
    """

    def __call__(self, prompt, image, mask_image, strength=1.0, num_inference_steps=12,
                 guidance_scale=10.0, negative_prompt=None, num_images_per_prompt=1,
                 micro_conditioning_aesthetic_score=6, micro_conditioning_crop_coord=(0, 0),
                 temperature=(2, 0), seed=None, noise=None, output_type="np", callback=None,
                 timings=None):
        """prompt and the rest as `AmusedPipeline.__call__`; image as `AmusedImg2ImgPipeline`;
        mask_image: a PIL image (white repaints), a list of them, or floats in [0, 1] (H, W),
        (B, H, W) or with a last axis of 1, one per image."""
        prompts, negatives, temperature = self._check_common(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt,
            micro_conditioning_aesthetic_score, micro_conditioning_crop_coord, temperature,
            output_type)
        run, start = _strength_steps(strength, num_inference_steps)
        if run == 0:
            raise ValueError(f"strength {strength} of {num_inference_steps} steps runs no step, "
                             f"and the masked codes would never be predicted; raise it to at "
                             f"least {1 / num_inference_steps:.3g}")
        pixels = preprocess_image(image, self.vae_scale_factor)   # (B_image, 3, H, W)
        B_image, _, height, width = pixels.shape
        _check_image_batch(B_image, len(prompts))
        self.check_size(height, width)
        f = self.vae_scale_factor
        h, w = height // f, width // f
        mask = preprocess_mask(mask_image, h, w)                  # (B_mask, h, w) bools
        if mask.shape[0] != B_image:
            raise ValueError(f"mask_image: expected one mask per image ({B_image}), got "
                             f"{mask.shape[0]}")
        B = B_image * num_images_per_prompt
        noise, _ = _resolve_draws(seed, noise, run, B, h * w)
        codes = self._image_codes(pixels)                         # (B_image, h, w)
        codes = np.where(mask, self.scheduler.mask_token_id, codes)
        # the share masked, over the whole batch, in float32 (diffusers: mask.sum() / numel())
        starting_mask_ratio = np.float32(mask.sum()) / np.float32(mask.size)
        tokens = repeat_batch(codes, num_images_per_prompt)       # (B, h, w)
        return self._run(prompts, negatives, self._tokens(tokens), num_inference_steps, start,
                         guidance_scale, num_images_per_prompt, width, height,
                         micro_conditioning_crop_coord, micro_conditioning_aesthetic_score,
                         temperature, noise, "linear", starting_mask_ratio, output_type,
                         callback, timings)


# --------------------------------------------------------------------------------------------------
# The command: python -m uvit_numpy.generate amused FOLDER "a prompt" --out image.png
# --------------------------------------------------------------------------------------------------
COMMAND_DOC = """Make an image with aMUSEd from a diffusers pipeline folder (amused-256, say):

    {prog} amused-256 "a photo of a cat" --out cat.png --seed 0
    {prog} amused-256 "a dog" --negative "blurry" --steps 12 --guidance 10
    {prog} amused-256 "a watercolour" --image photo.png --strength 0.7 --out paint.png
    {prog} amused-256 "a red hat" --image photo.png --mask hat.png --out hat-red.png

Text to image by default; --image makes it image to image (--strength: the share of the steps
that run, default 0.5), --image with --mask inpainting (white in the mask is repainted; --strength
default 1). Every argument, the folder and the output path are checked before any work; a prompt
longer than the text encoder reads (77 tokens) is cut, and the cut part is shown.
"""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser(prog):
    parser = argparse.ArgumentParser(prog=prog, description=COMMAND_DOC.format(prog=prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a diffusers aMUSEd pipeline folder")
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("--out", default="image.png",
                        help="the image file to write (default image.png; .png, .jpg, ...)")
    parser.add_argument("--negative", default=None, help="negative prompt (default: none, \"\")")
    parser.add_argument("--steps", type=_positive_int, default=12,
                        help="decoding steps (default 12)")
    parser.add_argument("--guidance", type=_finite_float, default=10.0,
                        help="guidance scale on the logits (default 10; <= 1: no guidance)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the draws (default: "
                        "fresh randomness)")
    parser.add_argument("--image", default=None, help="start from this image (img2img)")
    parser.add_argument("--strength", type=_finite_float, default=None,
                        help="with --image: the share of the steps that run, in (0, 1] "
                             "(default 0.5; 1 with --mask)")
    parser.add_argument("--mask", default=None,
                        help="with --image: repaint where this mask is white (inpainting)")
    parser.add_argument("--height", type=_positive_int, default=None,
                        help="pixels (default: the model's size; a multiple of the VQ-GAN's "
                             "pixels per code)")
    parser.add_argument("--width", type=_positive_int, default=None, help="pixels, as --height")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads of the math libraries (default: their own, all cores)")
    return parser


class CommandError(Exception):
    """A bad argument found before any work: the command prints it and exits with status 2."""


def check_output_path(path):
    """CommandError unless `path` names a file that can be written, in a format PIL writes (by
    its extension), in a folder that exists."""
    from PIL import Image
    ext = os.path.splitext(path)[1].lower()
    formats = Image.registered_extensions()
    if ext not in formats or formats[ext] not in Image.SAVE:
        raise CommandError(f"--out {path!r}: expected an image file name such as image.png "
                           f"(an extension PIL writes: .png, .jpg, .webp, ...)")
    if os.path.isdir(path):
        raise CommandError(f"--out {path!r} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"--out {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CommandError(f"--out {path!r}: cannot write there (permission denied)")
    return formats[ext]


def _read_config(path, name, file):
    with open(os.path.join(path, name, file), encoding="utf-8") as f:
        return json.load(f)


def _open_image(path, flag):
    """A PIL image from a file (its pixels read now), or CommandError naming the problem."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise CommandError(f"{flag} {path!r}: no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise CommandError(f"{flag} {path!r}: not an image PIL can read ({err})") from None


def check_command(args):
    """Every check that needs no weights: the arguments, the folder, --out, the images' sizes,
    the prompt's length (cut and said). Returns (kind, image, mask, settings) where kind is
    "text2img", "img2img" or "inpaint". Raises CommandError, or the folder check's error."""
    if args.mask is not None and args.image is None:
        raise CommandError("--mask needs --image (inpainting repaints part of an image)")
    if args.strength is not None and args.image is None:
        raise CommandError("--strength needs --image (it says how much of the image to redo)")
    if args.image is not None and (args.height is not None or args.width is not None):
        raise CommandError("--height/--width are for text to image; with --image the image "
                           "sets the size")
    if args.strength is not None and not 0 < args.strength <= 1:
        raise CommandError(f"--strength: expected a number in (0, 1], got {args.strength}")
    if args.seed is not None and args.seed < 0:
        raise CommandError(f"--seed: expected a non-negative integer, got {args.seed}")
    kind = "text2img" if args.image is None else ("img2img" if args.mask is None else "inpaint")
    strength = args.strength if args.strength is not None else (
        0.5 if kind == "img2img" else 1.0)
    if kind == "inpaint" and int(args.steps * strength) < 1:
        raise CommandError(f"--strength {strength} of {args.steps} steps runs no step; raise it "
                           f"to at least {1 / args.steps:.3g}")
    fmt = check_output_path(args.out)
    check_pipeline_folder(args.folder)
    vq = _read_config(args.folder, "vqvae", "config.json")
    transformer = _read_config(args.folder, "transformer", "config.json")
    f = 2 ** (len(vq.get("block_out_channels", (64,))) - 1)
    downsample = bool(transformer.get("downsample", False))
    image = mask = None
    if kind == "text2img":
        side = transformer.get("sample_size", 64) * f
        height = side if args.height is None else args.height
        width = side if args.width is None else args.width
        try:
            height, width = check_pixel_size(height, width, f, downsample)
        except ValueError as err:
            raise CommandError(f"--height/--width: {err}") from None
    else:
        image = _open_image(args.image, "--image")
        W, H = image.size
        width, height = W - W % f, H - H % f
        try:
            check_pixel_size(height, width, f, downsample)
        except ValueError as err:
            raise CommandError(f"--image {args.image!r} ({W} x {H} pixels, used as {width} x "
                               f"{height}): {err}") from None
        if kind == "inpaint":
            mask = _open_image(args.mask, "--mask")
    return kind, image, mask, dict(height=height, width=width, strength=strength, format=fmt)


def _note_truncation(tokenizer, texts, out):
    """Print, before any work, the part of each text that the text encoder will not read."""
    limit = tokenizer.model_max_length
    for label, text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) > limit:
            print(f"note: the {label} is {len(ids)} tokens and the text encoder reads {limit}: "
                  f"cut: {tokenizer.decode(ids[limit - 1:-1])!r}", file=out)


def run_command(argv, pipelines, prog, set_threads, load_kwargs=None):
    """The command of both packages. pipelines: {"text2img": cls, "img2img": cls, "inpaint":
    cls} of the package; set_threads(n): its thread setter. Returns the exit status (2: a bad
    argument, found before any work)."""
    import sys

    from tqdm import tqdm
    args = build_parser(prog).parse_args(argv)
    try:
        kind, image, mask, s = check_command(args)
    except (CommandError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads is not None:
        set_threads(args.threads)
    cls = pipelines[kind]
    tic = time.perf_counter()
    from .clip_tokenizer import CLIPTokenizer
    _note_truncation(CLIPTokenizer.from_pretrained(args.folder, subfolder="tokenizer"),
                     [("prompt", args.prompt)] + ([("negative prompt", args.negative)]
                                                  if args.negative else []), sys.stderr)
    pipe = cls.from_pretrained(args.folder, **(load_kwargs or {}))
    print(f"loaded {args.folder} in {time.perf_counter() - tic:.1f} s", file=sys.stderr)
    runs = args.steps if kind == "text2img" else int(args.steps * s["strength"])
    bar = tqdm(total=runs, desc=f"aMUSEd {kind}", unit="step", file=sys.stderr)
    last = [time.perf_counter()]

    def on_step(step, codes):
        now = time.perf_counter()
        bar.set_postfix_str(f"{now - last[0]:.2f} s/step")
        bar.update(1)
        last[0] = now
    timings = {}
    common = dict(negative_prompt=args.negative, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, seed=args.seed, output_type="pil",
                  callback=on_step, timings=timings)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the prompt is")   # said above, before work
        if kind == "text2img":
            out = pipe(args.prompt, height=s["height"], width=s["width"], **common)
        elif kind == "img2img":
            out = pipe(args.prompt, image=image, strength=s["strength"], **common)
        else:
            out = pipe(args.prompt, image=image, mask_image=mask, strength=s["strength"],
                       **common)
    bar.close()
    tmp = f"{args.out}.tmp-{os.getpid()}"
    out.images[0].save(tmp, format=s["format"])
    os.replace(tmp, args.out)                             # never a half-written image
    steps = timings["steps"]
    print(f"{s['width']} x {s['height']} image -> {args.out}  (text {timings['text']:.1f} s, "
          f"{len(steps)} steps {sum(steps):.1f} s"
          + (f" = {sum(steps) / len(steps):.2f} s/step" if steps else "")
          + f", VQ decode {timings['decode']:.1f} s)", file=sys.stderr)
    return 0


def _set_blas_threads(n):
    from threadpoolctl import threadpool_limits
    threadpool_limits(n, user_api="blas")


PIPELINES = {"text2img": AmusedPipeline, "img2img": AmusedImg2ImgPipeline,
             "inpaint": AmusedInpaintPipeline}


def main(argv=None):
    """`python -m uvit_numpy.generate amused FOLDER "a prompt" --out image.png`."""
    return run_command(argv, PIPELINES, "python -m uvit_numpy.generate amused", _set_blas_threads)
