"""CIFAR-10 from a file the user has, for the paper's `cifar10_uvit_small` recipe. Nothing is
downloaded: `--data PATH` points at one of

- an `.npz` with `images` (N, 32, 32, 3) uint8 (height, width, RGB: how torchvision's `CIFAR10.data`
  and Keras hold them) and, optionally, `labels` (N,) ints (the recipe is unconditional, so they
  are only carried along; zeros when absent);
- a folder holding CIFAR-10's python batches `data_batch_1` ... `data_batch_5` (the extracted
  `cifar-10-python.tar.gz`), or a folder with such a `cifar-10-batches-py/` inside. Each batch is a
  pickle of {b"data": (10000, 3072) uint8, one image per row as its R, G and B 32x32 planes,
  b"labels": 10000 ints}. Pickles can run code when loaded: open only the release's own files.

    images, labels = load_cifar10("cifar10.npz")     # (50000, 32, 32, 3) uint8, (50000,) int64
    view = ImageView(images)                         # view[idx] -> (B, 3, 32, 32) in [-1, 1]

The images stay uint8 in memory (150 MB for the 50,000 training images); a batch is scaled to
[-1, 1] when it is drawn, as the paper's `Normalize(0.5, 0.5)` does.
"""

import os
import pickle

import numpy as np

IMAGE_SHAPE = (32, 32, 3)
BATCH_NAMES = tuple(f"data_batch_{i}" for i in range(1, 6))
FOLDER_NAME = "cifar-10-batches-py"
EXPECTED = (f"an .npz with 'images' (N, 32, 32, 3) uint8 and 'labels' (N,), or a folder of "
            f"CIFAR-10's python batches {BATCH_NAMES[0]} .. {BATCH_NAMES[-1]} (or one holding "
            f"{FOLDER_NAME}/); nothing is downloaded")


def load_cifar10(path):
    """The training images and labels at `path`: images (N, 32, 32, 3) uint8, labels (N,) int64.

    FileNotFoundError when nothing is at `path` or a folder lacks a batch (naming the missing
    files), ValueError when a file holds something else than CIFAR-10's layout.
    """
    if path is None:
        raise FileNotFoundError(f"CIFAR-10 is read from a local file: pass --data PATH, {EXPECTED}")
    path = os.fspath(path)
    if os.path.isdir(path):
        inner = os.path.join(path, FOLDER_NAME)
        folder = inner if os.path.isdir(inner) else path
        return _load_batches(folder)
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise ValueError(f"--data {path!r} is a file but not an .npz; expected {EXPECTED}")
        return _load_npz(path)
    raise FileNotFoundError(f"--data {path!r}: no such file or folder; expected {EXPECTED}")


def _load_npz(path):
    with np.load(path, allow_pickle=False) as f:
        if "images" not in f.files:
            raise ValueError(f"{path!r} has no 'images' array (it holds {sorted(f.files)}); "
                             f"expected {EXPECTED}")
        images = f["images"]
        labels = f["labels"] if "labels" in f.files else np.zeros(len(images), np.int64)
    return _checked(images, labels, path)


def _load_batches(folder):
    missing = [n for n in BATCH_NAMES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"--data {folder!r} lacks {missing}; expected {EXPECTED}")
    images, labels = [], []
    for name in BATCH_NAMES:
        file = os.path.join(folder, name)
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{file!r} is not a CIFAR-10 python batch (expected a dict with "
                             f"b'data' and b'labels')")
        data = np.asarray(batch[b"data"])
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{file!r}: expected b'data' of shape (N, 3072), got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, 3072) -> NHWC
        labels.append(np.asarray(batch[b"labels"]))
    return _checked(np.concatenate(images), np.concatenate(labels), folder)


def _checked(images, labels, where):
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{where!r}: expected images (N, 32, 32, 3) uint8, got "
                         f"{images.shape} {images.dtype}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{where!r}: expected labels ({len(images)},) ints, got "
                         f"{labels.shape} {labels.dtype}")
    return np.ascontiguousarray(images), labels.astype(np.int64)


class ImageView:
    """uint8 images (N, H, W, C) seen as the float images the diffusion batch takes: `view[idx]`
    is (B, C, H, W) float64 in [-1, 1] (x / 127.5 - 1), formed only for the rows asked for."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        x = self.images[idx].transpose(0, 3, 1, 2)            # (B, H, W, C) -> (B, C, H, W)
        return x / 127.5 - 1.0
