"""The models trained by this project's own trainers, shipped inside the package.

    uvit-digits/        a class-conditional U-ViT for the 28x28 digits (diffusion)
    amused-digits/      aMUSEd's UVit2DModel on 8x8 grids of k-means codes, with its tokenizer
    amused-vqgan-digits/  the same UVit2DModel trained on vqgan-digits' codes (a copy in vqvae/)
    vqgan-digits/       diffusers' VQModel (aMUSEd's VQ-GAN at small widths): digits <-> 8x8 codes
    digit-classifier/   the small CNN that `python -m uvit_torch.evaluate` judges samples with

Each is a model folder (config.json and safetensors weights; the config's `_training` entry
records the command, seed, steps and time that produced it), loadable by both packages; the
NumPy side never needs torch to read them. README.md gives the commands that reproduce them.
"""

import os

NAMES = ("uvit-digits", "amused-digits", "amused-vqgan-digits", "vqgan-digits",
         "digit-classifier")
ROOT = os.path.dirname(os.path.abspath(__file__))


def path(name):
    """The folder of the shipped model `name`; a clear error if it is unknown or not there."""
    if name not in NAMES:
        raise ValueError(f"unknown shipped model {name!r}; expected one of {list(NAMES)}")
    folder = os.path.join(ROOT, name)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"the shipped model {name!r} is not in {folder}: reinstall the "
                                f"package, or train it (README.md, 'The shipped models')")
    return folder
