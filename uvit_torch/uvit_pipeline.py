"""The U-ViT paper's latent systems end to end in PyTorch: the twin of `uvit_numpy.uvit_pipeline`.

The same stages, functions, class and command (read the NumPy file's docstring for the paper's
recipe, each config's autoencoder file, scale factor and guidance scale, the time convention and
the order of the noise), on tensors. The starting latents are the NumPy package's draw
(`np.random.default_rng(seed)`, float64, rounded to the model's dtype), so a seed makes the same
picture in both packages. Everything runs under `torch.inference_mode()`, on the network's device.

This command reads the paper's `.pth` files directly (`torch.load(weights_only=True)`) as well as
their safetensors conversions:

    python -m uvit_torch.generate uvit imagenet256_uvit_huge.pth --config imagenet256_uvit_huge \\
        --autoencoder autoencoder_kl_ema.pth --class 207 --out dog.png
"""

import sys

import numpy as np
import torch

from uvit_numpy import uvit_pipeline as _np
from uvit_numpy.uvit_pipeline import (NUM_TRAIN_TIMESTEPS, PIPELINE_CONFIGS,  # noqa: F401
                                      check_checkpoint_fits, check_contexts,
                                      check_guidance_scale, check_prompts, check_steps,
                                      check_text_encoder, checkpoint_fingerprint, clip_folders,
                                      clip_text_config, config_fingerprint, discrete_model_fn,
                                      guidance, progress_bar, read_clip_text_weights,
                                      safetensors_shapes, stable_diffusion_beta_schedule,
                                      to_uint8)

from .autoencoder import PAPER_DDCONFIG, PAPER_EMBED_DIM, FrozenAutoencoderKL
from .dpm_solver import DPM_Solver, NoiseScheduleVP

__all__ = ["NUM_TRAIN_TIMESTEPS", "PIPELINE_CONFIGS", "stable_diffusion_beta_schedule",
           "noise_schedule", "initial_latents", "guidance", "null_labels", "class_cfg_nnet",
           "text_cfg_nnet", "discrete_model_fn", "sample_latents", "unpreprocess",
           "encode_prompts", "empty_context", "UViTPipeline", "PipelineOutput", "TorchBackend",
           "main"]


def noise_schedule(betas=None):
    """`NoiseScheduleVP('discrete')` over the betas rounded to float32 (the paper's
    `torch.tensor(_betas).float()`), held in float64 so the table is summed in float64 (see the
    NumPy twin for why); Stable Diffusion's betas by default."""
    betas = stable_diffusion_beta_schedule() if betas is None else np.asarray(betas)
    return NoiseScheduleVP("discrete", betas=torch.tensor(betas).float().double())


def initial_latents(seed, batch, latent_shape, dtype=torch.float32, device=None):
    """The NumPy package's draw (float64 from `np.random.default_rng(seed)`, C order), rounded to
    `dtype` once: (B, C, h, w) on `device`."""
    z = _np.initial_latents(seed, batch, latent_shape, np.float64)
    return torch.from_numpy(z).to(device=device, dtype=dtype)


def null_labels(batch, num_classes, device=None):
    """The null class num_classes - 1 for every sample: (B,) int64."""
    return torch.full((batch,), num_classes - 1, dtype=torch.int64, device=device)


def class_cfg_nnet(nnet, labels, scale):
    """The paper's `cfg_nnet` for labels (B,): cond, then uncond (the null class) unless s = 0."""
    null = null_labels(len(labels), nnet.num_classes, labels.device)

    def cfg_nnet(x, timesteps):
        cond = nnet(x, timesteps, labels)
        if scale == 0:
            return cond
        return guidance(cond, nnet(x, timesteps, null), scale)
    return cfg_nnet


def text_cfg_nnet(nnet, contexts, empty_context, scale):
    """The paper's `cfg_nnet` for text: contexts (B, S, D), the empty context (S, D) repeated."""
    uncond_context = empty_context.unsqueeze(0).expand(len(contexts), -1, -1)  # (B, S, D)

    def cfg_nnet(x, timesteps):
        cond = nnet(x, timesteps, contexts)
        if scale == 0:
            return cond
        return guidance(cond, nnet(x, timesteps, uncond_context), scale)
    return cfg_nnet


def sample_latents(model_fn, z_init, steps=50, schedule=None):
    """DPM-Solver++ as the paper's scripts call it (order 3, "fast", time-uniform, t: 1 -> 1/N)."""
    schedule = noise_schedule() if schedule is None else schedule
    solver = DPM_Solver(model_fn, schedule, predict_x0=True, thresholding=False)
    return solver.sample(z_init, steps=steps, eps=1.0 / schedule.total_N, T=1.0, order=3,
                         skip_type="time_uniform", method="fast")


def unpreprocess(images):
    """[-1, 1] -> [0, 1], clamped (the paper's `dataset.unpreprocess`)."""
    return torch.clamp(0.5 * (images + 1.0), 0.0, 1.0)


def encode_prompts(text_encoder, tokenizer, prompts, max_length=77):
    """The paper's `FrozenCLIPEmbedder.encode`: CLIP's last hidden state (B, S, hidden_size)."""
    device = next(text_encoder.parameters()).device
    ids = tokenizer(list(prompts), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt").input_ids.to(device)     # (B, S) int64
    return text_encoder(ids).last_hidden_state


def empty_context(text_encoder, tokenizer, max_length=77):
    """`extract_empty_feature.py`'s context: `encode([''])[0]`, (S, hidden_size)."""
    return encode_prompts(text_encoder, tokenizer, [""], max_length)[0]


class PipelineOutput(_np.PipelineOutput):
    """`latents` (B, C, h, w) and `images` (B, 3, H, W) in [0, 1], tensors; `pixels`: (B, H, W,
    3) uint8 NumPy."""

    @property
    def pixels(self):
        return to_uint8(self.images.detach().cpu().numpy())


class UViTPipeline:
    """A paper U-ViT, its autoencoder and (for text) CLIP's text encoder and tokenizer; see
    `uvit_numpy.uvit_pipeline.UViTPipeline` (the same arguments, stages and checks)."""

    def __init__(self, nnet, autoencoder, guidance_scale=0.4, text_encoder=None, tokenizer=None):
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
        return (self.nnet.in_chans, self.nnet.img_size, self.nnet.img_size)

    @property
    def num_classes(self):
        return self.nnet.num_classes - 1

    @property
    def _weight(self):
        return next(self.nnet.parameters())

    @torch.inference_mode()
    def encode_text(self, prompts):
        """(contexts (B, S, clip_dim), empty context (S, clip_dim)) in the network's dtype."""
        prompts = check_prompts(prompts)
        length = self.nnet.num_clip_token
        contexts = encode_prompts(self.text_encoder, self.tokenizer, prompts, length)
        empty = empty_context(self.text_encoder, self.tokenizer, length)
        w = self._weight
        return contexts.to(w.device, w.dtype), empty.to(w.device, w.dtype)

    @torch.inference_mode()
    def sample(self, labels=None, contexts=None, empty_context=None, seed=0, steps=50,
               guidance_scale=None, z_init=None, progress=False):
        """Latents (B, C, h, w); see the NumPy twin."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check_guidance_scale(scale)
        check_steps(steps)
        w = self._weight
        if self.is_text:
            check_contexts(contexts, empty_context, self.nnet)
            cfg_nnet = text_cfg_nnet(self.nnet, contexts, empty_context, scale)
            batch = len(contexts)
        else:
            labels = _np.check_labels(labels if not isinstance(labels, torch.Tensor)
                                      else labels.cpu().numpy(), self.num_classes)
            labels = torch.from_numpy(labels).to(w.device)
            cfg_nnet = class_cfg_nnet(self.nnet, labels, scale)
            batch = len(labels)
        if z_init is None:
            z_init = initial_latents(seed, batch, self.latent_shape, w.dtype, w.device)
        model_fn = discrete_model_fn(cfg_nnet)
        with progress_bar(steps, progress) as bar:
            def counted(x, t):
                out = model_fn(x, t)
                bar.update(1)
                return out
            return sample_latents(counted, z_init, steps)

    @torch.inference_mode()
    def decode(self, latents):
        """Latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
        ae_weight = next(self.autoencoder.parameters())
        return unpreprocess(self.autoencoder.decode(latents.to(ae_weight.dtype)))

    def __call__(self, labels=None, prompts=None, seed=0, steps=50, guidance_scale=None,
                 progress=False):
        contexts = empty = None
        if self.is_text:
            contexts, empty = self.encode_text(prompts)
        latents = self.sample(labels, contexts, empty, seed, steps, guidance_scale,
                              progress=progress)
        return PipelineOutput(latents, self.decode(latents))


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
class TorchBackend:
    """How the torch command reads its files: `.pth` (torch.load(weights_only=True)) or
    safetensors; models built on the meta device take the loaded tensors (no random init)."""

    weights_suffixes = (".pth", ".safetensors")

    def __init__(self, dtype=torch.float32, device="cpu", ddconfig=PAPER_DDCONFIG):
        self.dtype, self.device, self.ddconfig = dtype, device, ddconfig
        self._state_dicts = {}           # a .pth read for its shapes is not read twice

    @staticmethod
    def conversion_hint(path):
        return ""

    def set_threads(self, n):
        torch.set_num_threads(n)

    def read_shapes(self, path):
        if path.endswith(".safetensors"):
            return safetensors_shapes(path)
        from .checkpoint import load_pth
        self._state_dicts[path] = load_pth(path)
        return {k: tuple(v.shape) for k, v in self._state_dicts[path].items()}

    def _load(self, model, path):
        """Load the file at `path` into a meta-device model (its tensors become the parameters)."""
        from .checkpoint import load_state_dict_file
        state_dict = self._state_dicts.pop(path, None) or load_state_dict_file(path)
        model.load_state_dict({k: v.to(self.dtype) if v.is_floating_point() else v
                               for k, v in state_dict.items()}, assign=True)
        return model.to(self.device).eval()

    def load_autoencoder(self, path, scale_factor):
        with torch.device("meta"):
            model = FrozenAutoencoderKL(self.ddconfig, PAPER_EMBED_DIM, scale_factor,
                                        dtype=self.dtype)
        return self._load(model, path)

    def load_clip(self, path):
        from uvit_numpy.weights import read_config

        from .clip import CLIPTextConfig, CLIPTextModel
        from .clip_tokenizer import CLIPTokenizer
        encoder_folder, tokenizer_folder = clip_folders(path)
        config = CLIPTextConfig.from_any(clip_text_config(read_config(encoder_folder)))
        with torch.device("meta"):
            model = CLIPTextModel(config, dtype=self.dtype)
        state_dict = {k: v.to(self.dtype) if v.is_floating_point() else v
                      for k, v in read_clip_text_weights(encoder_folder, "pt").items()}
        model.load_state_dict(state_dict, assign=True)
        return model.to(self.device).eval(), CLIPTokenizer.from_pretrained(tokenizer_folder)

    def load_nnet(self, path, name):
        from . import uvit
        with torch.device("meta"):
            model = uvit.from_config(name, dtype=self.dtype)
        return self._load(model, path)

    def pipeline(self, nnet, autoencoder, guidance_scale, text_encoder, tokenizer):
        return UViTPipeline(nnet, autoencoder, guidance_scale, text_encoder, tokenizer)


def main(argv=None, prog="python -m uvit_torch.generate uvit"):
    """The torch twin of `uvit_numpy.uvit_pipeline.main`: the same arguments; CHECKPOINT and
    --autoencoder may be the paper's .pth files."""
    args = _np.build_parser(prog, "the paper's .pth, or its safetensors conversion"
                            ).parse_args(argv)
    return _np.run_command(args, TorchBackend())


if __name__ == "__main__":
    sys.exit(main())
