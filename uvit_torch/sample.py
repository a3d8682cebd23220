"""Make digits with torch: `python -m uvit_torch.sample`, the twin of `uvit_numpy.sample`.

    python -m uvit_torch.sample uvit-digits --labels 0,1,2,3,4,5,6,7,8,9 --per-label 8 --seed 0 \\
        --out runs/digits.png --npz runs/digits.npz

Same arguments, defaults and files as the NumPy command (see `uvit_numpy.sample`); the model runs
in torch, the noise is the same seeded NumPy noise, so both commands make the same digits up to
float rounding (masked-token decoding draws its uniforms from torch here). `--threads` sets
torch's threads and NumPy's BLAS's (default 1, see `uvit_numpy.cli`).
"""

import sys

import numpy as np
import torch

from uvit_numpy.data import to_unit
from uvit_numpy.cli import progress_bar, run_main
from uvit_numpy.sample import build_parser, check_labels, maskgit_conditions, make_scheduler
from uvit_numpy.sample import load_digit_model as np_load_digit_model
from uvit_numpy.sample import run_command, settings

from . import schedulers


def load_digit_model(name_or_path, dtype=torch.float32, tokenizer=None):
    """Load a digit model (a shipped name or a folder) as torch modules. Returns a DigitModel.
    `tokenizer`: see `uvit_numpy.sample.load_digit_model`; a VQ-GAN tokenizer runs in torch too
    (`uvit_torch.tokenizer`), k-means stays NumPy's (a table look-up)."""
    from uvit_numpy.tokenizer import VQGANTokenizer as NumpyVQGANTokenizer

    from .tokenizer import VQGANTokenizer
    from .uvit import UViT
    from .uvit2d import UVit2DModel
    digit_model = np_load_digit_model(name_or_path, dtype,
                                      {"diffusion": UViT, "maskgit": UVit2DModel},
                                      tokenizer=tokenizer)
    if isinstance(digit_model.tokenizer, NumpyVQGANTokenizer):
        digit_model.tokenizer = VQGANTokenizer.from_numpy(digit_model.tokenizer)
    return digit_model


@torch.no_grad()
def sample_digits(digit_model, labels, seed=0, scheduler=None, steps=None, guidance_scale=None,
                  temperature=None, eta=None, batch_size=250, progress=False):
    """Digits of the given labels: images (N, 28, 28) float32 NumPy array in [0, 1]. progress:
    a progress bar on standard error, one tick per sampling step of each batch."""
    import os

    from .sampling import sample
    from .maskgit import generate
    labels = np.asarray(labels, dtype=np.int64)
    check_labels(digit_model, labels)
    s = settings(digit_model, scheduler, steps, guidance_scale, temperature, eta)
    model = digit_model.model
    dtype = next(model.parameters()).dtype
    batches = range(0, len(labels), batch_size)
    out = []
    with progress_bar(len(batches) * s["steps"], os.path.basename(digit_model.folder or "sample"),
                      enabled=progress) as bar:
        def tick(step, x):
            bar.update(1)
        for b, start in enumerate(batches):
            part = labels[start:start + batch_size]
            if digit_model.kind == "diffusion":
                sched = make_scheduler(s["scheduler"],
                                       digit_model.training["config"]["diffusion"], schedulers)
                x = sample(model, part, sched, s["steps"], s["guidance_scale"], seed=[seed, b],
                           eta=s["eta"], callback=tick)
                out.append(to_unit(x[:, 0].cpu().numpy()))
            else:
                cfg = digit_model.training["config"]
                np_dtype = np.float64 if dtype == torch.float64 else np.float32
                conds = maskgit_conditions(part, cfg["num_classes"], cfg["micro_conds"], np_dtype)
                ehs, pooled, neg_ehs, neg_pooled, micro = (torch.from_numpy(c) for c in conds)
                g = digit_model.tokenizer.grid
                generator = torch.Generator().manual_seed(seed * 100003 + b)
                codes = generate(model, ehs, pooled, micro, g, g, num_steps=s["steps"],
                                 temperature=tuple(s["temperature"]),
                                 guidance_scale=s["guidance_scale"],
                                 negative_encoder_hidden_states=neg_ehs,
                                 negative_pooled_text_emb=neg_pooled, generator=generator,
                                 callback=tick)
                out.append(to_unit(digit_model.tokenizer.decode(codes.numpy())))
    return np.concatenate(out).astype(np.float32)


def main(argv=None):
    parser = build_parser("python -m uvit_torch.sample")
    args = parser.parse_args(argv)
    return run_main(run_command, parser, args, load_digit_model, sample_digits, torch=True)


if __name__ == "__main__":
    sys.exit(main())
