"""CLIP's tokenizer for the torch package: `uvit_numpy.clip_tokenizer.CLIPTokenizer`, which also
returns torch tensors.

Tokenizing is string work, the same in both packages, so this is the NumPy package's tokenizer
(one algorithm, read it there) with one addition: `return_tensors="pt"` gives int64 tensors of
shape (B, S), as transformers' does.

    tok = CLIPTokenizer.from_pretrained("amused-256/tokenizer")
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids        # (B, 77) torch.int64
"""

import torch

from uvit_numpy import clip_tokenizer as _np_tokenizer
from uvit_numpy.clip_tokenizer import (AddedToken, BatchEncoding, build_clip_vocab,
                                       bytes_to_unicode, find_clip_bpe_file,
                                       write_clip_tokenizer_folder)

__all__ = ["AddedToken", "BatchEncoding", "CLIPTokenizer", "build_clip_vocab",
           "bytes_to_unicode", "find_clip_bpe_file", "write_clip_tokenizer_folder"]


class CLIPTokenizer(_np_tokenizer.CLIPTokenizer):
    """`uvit_numpy.clip_tokenizer.CLIPTokenizer` with `return_tensors="pt"` as well as "np"."""

    def _to_tensors(self, out, return_tensors):
        if return_tensors == "pt":
            arrays = super()._to_tensors(out, "np")          # (B, S) int64 arrays, checked there
            return {k: torch.from_numpy(v) for k, v in arrays.items()}
        if return_tensors != "np":
            raise ValueError(f"CLIPTokenizer: return_tensors must be None, 'np' or 'pt', "
                             f"got {return_tensors!r}")
        return super()._to_tensors(out, return_tensors)
