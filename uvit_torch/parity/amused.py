"""Parity cases for aMUSEd's pipelines (`uvit_numpy.amused_pipeline`, `uvit_torch.amused_pipeline`).

* `cases()`: the NumPy pipelines against their torch twins on the same tiny parts, from the same
  seed: text to image (guided, with a negative prompt; unguided, two images per prompt, another
  size), img2img and inpainting. float64 <= 1e-10, float32 <= 1e-5 on the images.
* `diffusers_cases()`: the torch pipelines against diffusers' `AmusedPipeline`,
  `AmusedImg2ImgPipeline` and `AmusedInpaintPipeline`, built from random tiny transformers and
  diffusers parts (CLIP text model with projection, UVit2DModel, VQModel, AmusedScheduler), saved
  with diffusers' `save_pretrained` and loaded by ours from that folder; diffusers' random draws
  are replaced by ours (`replay_draws`). float32.

The compared output is the images; a code that differs changes its 2 x 2 pixels by far more than
the tolerance, so equal images mean equal codes (the tests also compare the codes themselves).

The tiny parts: a byte-level CLIP tokenizer (every byte a token, a few merges, 16 tokens long), a
2-layer CLIP text tower of width 32 projecting to 24, UVit2DModel's "tiny" config (8 x 8 codes,
halved inside; one res block per stage and one transformer layer, for speed) reading them, and
VQModel's "tiny" VQ-GAN (2 pixels per code, 32 codes): 16 x 16 images. Constant weights are
perturbed (`randomize_`), the codebook spread over the encoder's latents (`spread_codebook_`), and
the decoder's last convolution scaled so that most pixels land inside (0, 1), where the final clip
does not hide a difference.
"""

import contextlib
import json
import os
import tempfile
import zlib

import numpy as np
import torch

import uvit_numpy.amused_pipeline as NP
import uvit_numpy.clip as NC
import uvit_numpy.maskgit as NM
import uvit_numpy.uvit2d as NU
import uvit_numpy.vq_model as NQ
from uvit_numpy import clip_tokenizer as CT

from .. import amused_pipeline as TP
from .. import clip as TC
from .. import uvit2d as TU
from .. import vq_model as TQ
from . import Case
from .harness import TORCH_DTYPE, numpy_state_dict, randomize_

# --------------------------------------------------------------------------------------------------
# The tiny parts
# --------------------------------------------------------------------------------------------------
MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("m", "a")]
MAX_LENGTH = 16                     # the tokenizer's model_max_length = the text positions
MASK_TOKEN_ID = 32                  # UVit2DModel's vocab_size - 1 (32 codes, then the mask)


def tiny_vocab():
    """(vocab, merges): CLIP's recipe on every byte (with and without </w>), a few merges and the
    two special tokens; start 516, end 517."""
    chars = list(CT.BYTE_TO_CHAR.values())
    tokens = chars + [c + CT.END_OF_WORD for c in chars] + ["".join(m) for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, list(MERGES)


def write_tiny_tokenizer(folder):
    """A CLIP tokenizer folder in the Hub's layout (vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json), 16 tokens long. Returns the folder."""
    vocab, merges = tiny_vocab()
    os.makedirs(folder, exist_ok=True)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    files = {"vocab.json": vocab, "tokenizer_config.json": {"model_max_length": MAX_LENGTH,
                                                             **special},
             "special_tokens_map.json": special}
    for name, content in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def text_config():
    """The tiny CLIP text tower's config (our `CLIPTextConfig`), ids from `tiny_vocab`."""
    vocab, _ = tiny_vocab()
    return NC.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48,
                             projection_dim=24, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=MAX_LENGTH,
                             bos_token_id=vocab["<|startoftext|>"],
                             eos_token_id=vocab["<|endoftext|>"],
                             pad_token_id=vocab["<|endoftext|>"])


TRANSFORMER = NU.resolve_config("tiny", encoder_hidden_size=32, cond_embed_dim=24,
                                vocab_size=MASK_TOKEN_ID + 1, codebook_size=32,
                                num_res_blocks=1, num_hidden_layers=1)
VQ = NQ.resolve_config("tiny")


def images(rng, batch, size=(16, 16)):
    """Random pictures (batch, H, W, 3) float32 in [0, 1]: smooth blobs plus noise."""
    H, W = size
    y, x = np.mgrid[0:H, 0:W] / max(H, W)
    phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1, 3))
    smooth = 0.5 + 0.4 * np.sin(6 * x[None, ..., None] + 4 * y[None, ..., None] + phase)
    return np.clip(smooth + 0.1 * rng.standard_normal((batch, H, W, 3)), 0, 1).astype(np.float32)


@torch.no_grad()
def prepare_parts_(text_encoder, transformer, vqvae, seed=0):
    """Make random torch parts (ours or upstream's) fit for a comparison, in place: constant
    weights perturbed, the codebook spread over the encoder's latents, the decoder's output
    scaled into mostly (0, 1)."""
    from .vae import spread_codebook_
    for module in (text_encoder, transformer, vqvae):
        randomize_(module.eval(), seed)
    probe = torch.from_numpy(images(np.random.default_rng(seed), 4)).permute(0, 3, 1, 2)
    latents = vqvae.encode(probe.to(vqvae.dtype)).latents
    spread_codebook_(vqvae.quantize, latents, seed)
    conv = vqvae.decoder.conv_out
    codes = torch.arange(32).reshape(2, 4, 4)
    out = vqvae.decode(codes, force_not_quantize=True, shape=(2, 4, 4, VQ["latent_channels"]))
    scale = 0.25 / out.sample.std()                       # most pixels 0.5 +- 0.5
    conv.weight.mul_(scale)
    conv.bias.mul_(scale).add_(0.5 - scale * out.sample.mean())


def torch_parts(dtype=torch.float32, seed=0):
    """(text_encoder, transformer, vqvae) of our torch package, random and prepared."""
    torch.manual_seed(seed)
    parts = (TC.CLIPTextModelWithProjection(text_config(), dtype=dtype),
             TU.UVit2DModel(**TRANSFORMER, dtype=dtype), TQ.VQModel(**VQ, dtype=dtype))
    prepare_parts_(*parts, seed=seed)
    return parts


def pipeline_pair(kind="text2img", dtype=np.float64, seed=0):
    """(NumPy pipeline, torch pipeline) of `kind` ("text2img", "img2img", "inpaint") on the same
    tiny parts (the torch parts random and prepared, the NumPy ones holding their weights)."""
    text, transformer, vqvae = torch_parts(TORCH_DTYPE[np.dtype(dtype)], seed)
    vocab, merges = tiny_vocab()
    tokenizer_args = dict(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    scheduler = NP.AmusedScheduler(MASK_TOKEN_ID)
    n_text = NC.CLIPTextModelWithProjection(text_config(), dtype=dtype).eval()
    n_text.load_state_dict(numpy_state_dict(text))
    n_transformer = NU.UVit2DModel(**TRANSFORMER, dtype=dtype).eval()
    n_transformer.load_state_dict(numpy_state_dict(transformer))
    n_vq = NQ.VQModel(**VQ, dtype=dtype).eval()
    n_vq.load_state_dict(numpy_state_dict(vqvae))
    from ..clip_tokenizer import CLIPTokenizer
    ours = NP.PIPELINES[kind](n_vq, CT.CLIPTokenizer(**tokenizer_args), n_text, n_transformer,
                              scheduler)
    theirs = TP.PIPELINES[kind](vqvae, CLIPTokenizer(**tokenizer_args), text, transformer,
                                scheduler)
    return ours, theirs


# --------------------------------------------------------------------------------------------------
# diffusers' pipelines from random upstream parts, saved as a folder
# --------------------------------------------------------------------------------------------------
def diffusers_parts(seed=0):
    """(tokenizer, text_encoder, transformer, vqvae, scheduler) of transformers and diffusers,
    random (float32) and prepared."""
    import transformers
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder))
    c = text_config()
    torch.manual_seed(seed)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        **{k: v for k, v in c.to_dict().items() if k != "output_hidden_states"}))
    transformer = UVit2DModel(**TRANSFORMER)
    vqvae = VQModel(**{k: list(v) if isinstance(v, tuple) else v for k, v in VQ.items()})
    prepare_parts_(text, transformer, vqvae, seed)
    return tokenizer, text, transformer, vqvae, AmusedScheduler(mask_token_id=MASK_TOKEN_ID)


def save_tiny_pipeline(folder, seed=0):
    """Build diffusers' `AmusedPipeline` from `diffusers_parts`, `save_pretrained` it into
    `folder`, and return the three diffusers pipelines on those parts: {"text2img": ...,
    "img2img": ..., "inpaint": ...}."""
    from diffusers import AmusedImg2ImgPipeline, AmusedInpaintPipeline, AmusedPipeline
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()
    tokenizer, text, transformer, vqvae, scheduler = diffusers_parts(seed)
    parts = dict(vqvae=vqvae, tokenizer=tokenizer, text_encoder=text, transformer=transformer)
    pipes = {"text2img": AmusedPipeline(**parts, scheduler=scheduler)}
    pipes["text2img"].save_pretrained(folder)
    pipes["img2img"] = AmusedImg2ImgPipeline(**parts, scheduler=type(scheduler)(
        mask_token_id=MASK_TOKEN_ID))
    pipes["inpaint"] = AmusedInpaintPipeline(**parts, scheduler=type(scheduler)(
        mask_token_id=MASK_TOKEN_ID))                     # sets its scheduler to "linear"
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@contextlib.contextmanager
def replay_draws(noise, mask_noise=None):
    """Within the block, diffusers' aMUSEd draws come from the given uniforms, used as ours are:
    `torch.multinomial` (a step's sampling) picks by inverse CDF with the next u_sample (in
    float64), `gumbel_noise` is -log(-log(u)) of the next u_gumbel, and `torch.rand`
    (img2img's `add_noise`) returns `mask_noise` in float32."""
    import diffusers.schedulers.scheduling_amused as amused
    samples, gumbels = iter([u for u, _ in noise]), iter([g for _, g in noise])

    def multinomial(probs, num_samples, generator=None):
        u = torch.from_numpy(np.asarray(next(samples), dtype=np.float64)).reshape(-1, 1)
        cdf = torch.cumsum(probs.double(), dim=-1)               # (B*L, K)
        return (cdf < u * cdf[:, -1:]).sum(-1, keepdim=True).clamp(max=probs.shape[-1] - 1)

    def gumbel(t, generator=None):
        return torch.from_numpy(NM.gumbel_noise(np.asarray(next(gumbels)))).to(t.dtype
                                                                              ).reshape(t.shape)

    def rand(shape, **kwargs):
        return torch.from_numpy(np.asarray(mask_noise, dtype=np.float32)).reshape(shape)

    saved = torch.multinomial, amused.gumbel_noise, torch.rand
    torch.multinomial, amused.gumbel_noise = multinomial, gumbel
    if mask_noise is not None:
        torch.rand = rand
    try:
        yield
    finally:
        torch.multinomial, amused.gumbel_noise, torch.rand = saved


def run_diffusers(pipe, noise, mask_noise=None, **kwargs):
    """(final codes (B, h, w) int64, images (B, H, W, 3)) of a diffusers aMUSEd pipeline called
    with `kwargs` and our draws."""
    codes = []
    with replay_draws(noise, mask_noise), torch.no_grad():
        out = pipe(**kwargs, output_type="np", callback=lambda i, t, latents: codes.append(
            latents.clone()))
    return codes[-1].numpy(), out.images


def draws(rng, steps, batch, tokens, masked_batch=None):
    """(noise, mask_noise): one (u_sample, u_gumbel) pair (batch, tokens) per step, and
    img2img's (masked_batch, tokens) uniforms (float32 values, as torch.rand would draw them)."""
    noise = NP.draw_noise(rng, steps, batch, tokens)
    mask = None if masked_batch is None else \
        rng.random((masked_batch, tokens)).astype(np.float32).astype(np.float64)
    return noise, mask


# --------------------------------------------------------------------------------------------------
# The calls compared
# --------------------------------------------------------------------------------------------------
PROMPTS = ["a cat", "a dog on a mat", "a very long prompt that the tiny tokenizer has to cut"]


def call_arguments(kind, rng, batch, variant=0):
    """The keyword arguments of a pipeline call of `kind` for `batch` prompts (NumPy inputs)."""
    prompts = [PROMPTS[(variant + i) % len(PROMPTS)] for i in range(batch)]
    if kind == "text2img":
        if variant == 0:
            return dict(prompt=prompts, negative_prompt=["blurry"] * batch, guidance_scale=4.0)
        return dict(prompt=prompts, guidance_scale=1.0, num_images_per_prompt=2, height=12,
                    width=20, temperature=3.0, micro_conditioning_aesthetic_score=5,
                    micro_conditioning_crop_coord=(2, 3), num_inference_steps=8)
    kw = dict(prompt=prompts, image=images(rng, batch), guidance_scale=5.0)
    if kind == "img2img":
        return dict(kw, strength=0.6) if variant == 0 else dict(kw, strength=1.0,
                                                                num_inference_steps=8)
    mask = (rng.random((batch, 16, 16)) < 0.4).astype(np.float32)
    return dict(kw, mask_image=mask, strength=1.0 if variant == 0 else 0.7)


def steps_and_batch(kind, kw):
    """(steps that run, images made, images given) of a call."""
    prompts = 1 if isinstance(kw["prompt"], str) else len(kw["prompt"])
    batch = prompts * kw.get("num_images_per_prompt", 1)
    steps = kw.get("num_inference_steps", 12)
    strength = kw.get("strength", 0.5 if kind == "img2img" else 1.0)   # diffusers' defaults
    runs = steps if kind == "text2img" else int(steps * strength)
    return runs, batch, (prompts if "image" in kw else None)


def grid_tokens(kw, f=2):
    if "image" in kw:
        return kw["image"].shape[1] // f * (kw["image"].shape[2] // f)
    return kw.get("height", 16) // f * (kw.get("width", 16) // f)


CASES = [("text2img", 0), ("text2img", 1), ("img2img", 0), ("img2img", 1), ("inpaint", 0),
         ("inpaint", 1)]


def _name(kind, variant):
    what = {("text2img", 0): "guided, negative prompt", ("text2img", 1): "unguided, 2 per prompt,"
            " 12x20, 8 steps", ("img2img", 0): "strength 0.6", ("inpaint", 0): "strength 1",
            ("inpaint", 1): "strength 0.7", ("img2img", 1): "strength 1, 8 steps"}[(kind,
                                                                                  variant)]
    return f"amused {kind} tiny ({what})"


def _numpy_case(kind, variant):
    name = _name(kind, variant)

    def build(dtype, batch):
        ours, theirs = pipeline_pair(kind, dtype)
        rng = np.random.default_rng(zlib.crc32(f"{name}/{batch}".encode()))
        kw = call_arguments(kind, rng, batch, variant)
        seed = int(rng.integers(1 << 30))

        def run(pipe):
            def call():
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")              # the long prompt is cut
                    return pipe(**kw, seed=seed).images
            return call
        return run(ours), run(theirs), ()
    return Case(name, build, batches=(2,))


def cases():
    """The NumPy pipelines vs the torch twins (float64 and float32)."""
    return [_numpy_case(kind, variant) for kind, variant in CASES]


_FOLDERS = {}


def tiny_pipeline_folder(seed=0):
    """(folder, diffusers pipelines) of `save_tiny_pipeline`, made once per process in a
    temporary folder that is removed at exit."""
    if seed not in _FOLDERS:
        tmp = tempfile.TemporaryDirectory(prefix="amused-tiny-")
        _FOLDERS[seed] = (tmp, save_tiny_pipeline(tmp.name, seed))
    tmp, pipes = _FOLDERS[seed]
    return tmp.name, pipes


def _diffusers_case(kind, variant):
    name = f"{_name(kind, variant)} vs diffusers"

    def build(dtype, batch):
        folder, pipes = tiny_pipeline_folder()
        ours = TP.PIPELINES[kind].from_pretrained(folder)
        rng = np.random.default_rng(zlib.crc32(f"{name}/{batch}".encode()))
        kw = call_arguments(kind, rng, batch, variant)
        runs, B, given = steps_and_batch(kind, kw)
        noise, mask_noise = draws(rng, runs, B, grid_tokens(kw), given if kind == "img2img"
                                  else None)
        extra = {} if mask_noise is None else {"mask_noise": mask_noise}

        def run_ours():
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ours(**kw, noise=noise, **extra).images

        def run_theirs():
            return run_diffusers(pipes[kind], noise, mask_noise, **kw)[1]
        return run_ours, run_theirs, ()
    return Case(name, build, batches=(2,), dtypes=("float32",))


def diffusers_cases():
    """The torch pipelines vs diffusers' (float32); empty without transformers."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return []
    return [_diffusers_case(kind, variant) for kind, variant in CASES]
