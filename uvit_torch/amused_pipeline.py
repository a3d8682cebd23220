"""aMUSEd from a prompt to an image, in PyTorch: the twin of `uvit_numpy.amused_pipeline`.

    pipe = AmusedPipeline.from_pretrained("amused-256")          # a diffusers pipeline folder
    image = pipe("a photo of a cat", seed=0).images[0]          # (256, 256, 3) float32 in [0, 1]

The same classes, arguments, checks and draws as the NumPy pipelines (read the orchestration
there: it is one algorithm); here the three models are the torch ones (`uvit_torch.clip`,
`uvit_torch.uvit2d`, `uvit_torch.vq_model`) and the decoding loop is `uvit_torch.maskgit.generate`.
The uniform draws still come from `np.random.default_rng(seed)`, so both packages make the same
image for the same seed. Images come back as NumPy arrays (or PIL images); the codes of
`output_type="latent"` as a torch.LongTensor, as diffusers returns them.
"""

import numpy as np
import torch

from uvit_numpy import amused_pipeline as _np
from uvit_numpy.amused_pipeline import (COMPONENTS, PIPELINE_CLASSES,  # noqa: F401
                                        AmusedPipelineOutput, AmusedScheduler,
                                        check_pipeline_folder)

from . import maskgit

__all__ = ["PIPELINE_CLASSES", "COMPONENTS", "check_pipeline_folder", "AmusedScheduler",
           "AmusedPipelineOutput", "AmusedPipeline", "AmusedImg2ImgPipeline",
           "AmusedInpaintPipeline", "main"]

_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


class _TorchModels:
    """The model calls of `uvit_numpy.amused_pipeline.AmusedPipeline` on torch modules."""

    @classmethod
    def _part_classes(cls):
        from .clip import CLIPTextModelWithProjection
        from .clip_tokenizer import CLIPTokenizer
        from .uvit2d import UVit2DModel
        from .vq_model import VQModel
        return CLIPTokenizer, CLIPTextModelWithProjection, UVit2DModel, VQModel

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, variant=None):
        """Load a diffusers aMUSEd pipeline folder (checked first, see
        `check_pipeline_folder`); the three models compute in `dtype`."""
        return super().from_pretrained(path, dtype=dtype, variant=variant)

    @property
    def dtype(self):
        """The models' dtype, as a NumPy dtype (the micro-conditions are made in NumPy)."""
        return np.dtype(_NUMPY_DTYPE[self.transformer.dtype])

    @torch.no_grad()
    def _encode_text(self, prompts):
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.tokenizer.model_max_length).input_ids  # (n, S)
        out = self.text_encoder(ids, output_hidden_states=True)
        return out.text_embeds, out.hidden_states[-2]

    def _repeat(self, x, n):
        return x.repeat(n, *([1] * (x.ndim - 1)))         # all rows, then all again

    def _as_model_input(self, array):
        return torch.from_numpy(array)

    def _tokens(self, tokens):
        return torch.from_numpy(np.ascontiguousarray(tokens))

    @torch.no_grad()
    def _generate(self, text, micro_conds, tokens, num_steps, start_step, guidance_scale,
                  temperatures, noise, schedule, starting_mask_ratio, callback):
        pooled, hidden, neg_pooled, neg_hidden = text
        _, h, w = tokens.shape
        noise = [tuple(torch.from_numpy(np.asarray(u)) for u in pair) for pair in noise]
        codes = maskgit.generate(
            self.transformer, hidden, pooled, micro_conds, h, w, num_steps=num_steps,
            temperature=temperatures, mask_token_id=self.scheduler.mask_token_id,
            guidance_scale=guidance_scale, negative_encoder_hidden_states=neg_hidden,
            negative_pooled_text_emb=neg_pooled, schedule=schedule, noise=noise, tokens=tokens,
            start_step=start_step, starting_mask_ratio=starting_mask_ratio, callback=callback)
        return codes.numpy()

    @torch.no_grad()
    def _image_codes(self, pixels):
        latents = self.vqvae.encode(torch.from_numpy(pixels).to(self.vqvae.dtype)).latents
        B, _, h, w = latents.shape
        return self.vqvae.quantize(latents)[2][2].reshape(B, h, w).numpy()

    @torch.no_grad()
    def _decode(self, codes, shape):
        tokens = torch.from_numpy(np.ascontiguousarray(codes))
        return self.vqvae.decode(tokens, force_not_quantize=True, shape=shape).sample.numpy()

    def _latent(self, codes):
        return torch.from_numpy(np.ascontiguousarray(codes))


class AmusedPipeline(_TorchModels, _np.AmusedPipeline):
    """diffusers' `AmusedPipeline` on the torch models (see `uvit_numpy.amused_pipeline`)."""


class AmusedImg2ImgPipeline(_TorchModels, _np.AmusedImg2ImgPipeline):
    """diffusers' `AmusedImg2ImgPipeline` on the torch models."""


class AmusedInpaintPipeline(_TorchModels, _np.AmusedInpaintPipeline):
    """diffusers' `AmusedInpaintPipeline` on the torch models."""


def _set_threads(n):
    """n threads for torch's intra-op pool and for NumPy's BLAS (the pre- and post-processing)."""
    torch.set_num_threads(n)
    _np._set_blas_threads(n)


PIPELINES = {"text2img": AmusedPipeline, "img2img": AmusedImg2ImgPipeline,
             "inpaint": AmusedInpaintPipeline}


def main(argv=None):
    """`python -m uvit_torch.generate amused FOLDER "a prompt" --out image.png`."""
    return _np.run_command(argv, PIPELINES, "python -m uvit_torch.generate amused", _set_threads)
