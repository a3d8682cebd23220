"""The VQ-GAN tokenizer with its model run in torch: `uvit_numpy.tokenizer.VQGANTokenizer`'s
methods, NumPy arrays in and out, with the encoder and decoder in torch (several times faster on a
CPU than the NumPy convolutions). The k-means tokenizer has no twin: it is a table look-up.

    tok = VQGANTokenizer.from_pretrained(pretrained.path("vqgan-digits"))
    codes = tok.encode(images)          # (N, 28, 28) in [-1, 1] -> (N, 8, 8) int64
    images = tok.decode(codes)          # -> (N, 28, 28) in [-1, 1]
"""

import numpy as np
import torch

from uvit_numpy import tokenizer as N

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class VQGANTokenizer(N.VQGANTokenizer):
    """`uvit_numpy.tokenizer.VQGANTokenizer` over `uvit_torch.vq_model.VQModel`."""

    @staticmethod
    def load_model(folder, dtype):
        from .vq_model import VQModel
        return VQModel.from_pretrained(folder, dtype=TORCH_DTYPE[np.dtype(dtype)])

    @classmethod
    def from_numpy(cls, tokenizer):
        """The same tokenizer (weights, padding, record) with its model in torch."""
        from .vq_model import VQModel
        dtype = TORCH_DTYPE[np.dtype(tokenizer.model.dtype)]
        model = VQModel(**tokenizer.model.config, dtype=dtype)
        model.load_state_dict({k: torch.from_numpy(v.copy())
                               for k, v in tokenizer.model.state_dict().items()})
        return cls(model.eval(), tokenizer.pad, tokenizer.image_size, tokenizer.record)

    @torch.no_grad()
    def _codes(self, x):
        h = self.model.encode(torch.from_numpy(x).to(self.model.dtype)).latents  # (b, C, 8, 8)
        _, _, (_, _, idx) = self.model.quantize(h)                                # (b*8*8,)
        return idx.reshape(len(h), self.grid, self.grid).numpy()                  # (b, 8, 8)

    @torch.no_grad()
    def _pixels(self, codes):
        shape = (len(codes), codes.shape[1], codes.shape[2], self.embed_dim)     # (b, h, w, C)
        x = self.model.decode(torch.from_numpy(codes), force_not_quantize=True, shape=shape)
        return x.sample.numpy()                                                   # (b, 1, 32, 32)
