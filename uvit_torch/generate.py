"""`python -m uvit_torch.generate SYSTEM ...`: make images with a whole system, in PyTorch.

    python -m uvit_torch.generate amused FOLDER "a photo of a cat" --out cat.png --seed 0

The twin of `uvit_numpy.generate` (same systems, arguments and checks) with the torch models:

* amused: aMUSEd from a diffusers pipeline folder (`uvit_torch.amused_pipeline.main`).
* uvit: the U-ViT paper's latent pipelines; CHECKPOINT and --autoencoder may be the paper's .pth
  files (`uvit_torch.uvit_pipeline.main`).
"""

import sys

from uvit_numpy.generate import main as _dispatch

# system -> the module whose `main(argv)` runs it
SYSTEMS = {"amused": "uvit_torch.amused_pipeline", "uvit": "uvit_torch.uvit_pipeline"}


def main(argv=None):
    """Dispatch on the first word of `argv` (default sys.argv[1:]). Returns the exit status."""
    return _dispatch(argv, SYSTEMS, prog="python -m uvit_torch.generate")


if __name__ == "__main__":
    sys.exit(main())
