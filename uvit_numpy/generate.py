"""`python -m uvit_numpy.generate SYSTEM ...`: make images with a whole system, in NumPy.

    python -m uvit_numpy.generate amused FOLDER "a photo of a cat" --out cat.png --seed 0
    python -m uvit_numpy.generate uvit nnet_ema.safetensors --config imagenet256_uvit_huge \
        --autoencoder autoencoder_kl_ema.safetensors --class 207 --out dog.png

The first word picks the system; the rest are that system's arguments (`... amused --help`):

* amused: aMUSEd (CLIP's text encoder, UVit2DModel, the VQ-GAN) from a diffusers pipeline
  folder; text to image, image to image (--image) and inpainting (--image --mask)
  (`uvit_numpy.amused_pipeline.main`).
* uvit: the U-ViT paper's latent models (class-conditional ImageNet, text-to-image MS-COCO) with
  its autoencoder and DPM-Solver, from the paper's checkpoints (`uvit_numpy.uvit_pipeline.main`).

`uvit_torch.generate` is the same command with the torch models.
"""

import importlib
import sys

# system -> the module whose `main(argv)` runs it
SYSTEMS = {"amused": "uvit_numpy.amused_pipeline", "uvit": "uvit_numpy.uvit_pipeline"}


def main(argv=None, systems=None, prog="python -m uvit_numpy.generate"):
    """Dispatch on the first word of `argv` (default sys.argv[1:]). Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    systems = SYSTEMS if systems is None else systems
    names = ", ".join(sorted(systems))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} SYSTEM ARGS...   (SYSTEM: {names}; {prog} SYSTEM --help for its "
              f"arguments)", file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] not in systems:
        print(f"error: unknown system {argv[0]!r}; expected one of: {names}", file=sys.stderr)
        return 2
    return importlib.import_module(systems[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
