"""A vector-quantising tokenizer for the digits: k-means over 4x4 patches, written out in NumPy.

aMUSEd's transformer works on a grid of codebook ids that a VQ-GAN makes from an image. For 28x28
digits a k-means codebook does the same job in a few lines and without a second network to train:

    digit (28, 28) --zero-pad to 32x32--> 64 patches of 4x4 --nearest centroid--> codes (8, 8)
    codes (8, 8) --look up the centroids--> 64 patches --put back, cut the padding--> (28, 28)

Each of the K = 256 centroids is a 4x4 patch (a "visual word"); decoding is the exact inverse of
the patching, so the only loss is the quantisation. The codes are very unbalanced: the blank patch
of the background is most of every digit, so a masked-token model that always predicts "blank"
is right about 70 % of the time for free (`code_statistics` says how much).

    tok = KMeansTokenizer.fit(train_images, codebook_size=256, seed=0)   # ~10 s
    codes = tok.encode(images)          # (N, 28, 28) in [-1, 1] -> (N, 8, 8) int64
    images = tok.decode(codes)          # (N, 8, 8) -> (N, 28, 28) in [-1, 1]
    tok.save("tokenizer.safetensors"); KMeansTokenizer.load(...)

`VQGANTokenizer` does the same job with a learned encoder, codebook and decoder: a diffusers
`VQModel` trained on the padded digits by the `vqgan` task (`uvit_numpy.training`), the shipped
`vqgan-digits`. Same methods, same (N, 8, 8) grids; its codes see beyond their own 4x4 patch.

    tok = VQGANTokenizer.from_pretrained(pretrained.path("vqgan-digits"))
"""

import os

import numpy as np

from .checks import check_floating, check_integer, check_range, check_rank

TOKENIZER_NAME = "tokenizer.safetensors"     # its file beside the model's weights in a folder
VQGAN_NAME = "vqvae"                         # a VQ-GAN tokenizer's subfolder (aMUSEd's name)


# --------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------
def to_patches(images, patch=4, pad=2):
    """(N, H, W) images -> (N, h, w, P*P) patches, after zero-padding `pad` pixels on every side
    (the value 0 of the padding is the background after the [0, 1] -> [-1, 1] scaling, -1, so the
    images are padded with -1). Patches in row-major order, pixels row-major within a patch."""
    check_floating("to_patches: images", images)
    check_rank("to_patches: images", images, 3, "(N, H, W)")
    x = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), constant_values=-1.0)  # (N, H+2p, W+2p)
    N, H, W = x.shape
    if H % patch or W % patch:
        raise ValueError(f"to_patches: the padded size {H}x{W} is not a multiple of the patch "
                         f"size {patch}")
    h, w = H // patch, W // patch
    x = x.reshape(N, h, patch, w, patch)                  # (N, h, p1, w, p2)
    return x.transpose(0, 1, 3, 2, 4).reshape(N, h, w, patch * patch)  # (N, h, w, P*P)


def from_patches(patches, patch=4, pad=2):
    """The inverse of `to_patches`: (N, h, w, P*P) -> (N, h P - 2 pad, w P - 2 pad)."""
    N, h, w, _ = patches.shape
    x = patches.reshape(N, h, w, patch, patch)            # (N, h, w, p1, p2)
    x = x.transpose(0, 1, 3, 2, 4).reshape(N, h * patch, w * patch)  # (N, H+2p, W+2p)
    return x[:, pad:h * patch - pad, pad:w * patch - pad]


def pad_images(images, pad=2):
    """(N, H, W) images in [-1, 1] -> (N, 1, H + 2 pad, W + 2 pad), padded with the background -1
    as `to_patches` pads them: the VQ-GAN's input (one channel, NCHW)."""
    check_floating("pad_images: images", images)
    check_rank("pad_images: images", images, 3, "(N, H, W)")
    x = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), constant_values=-1.0)  # (N, H+2p, W+2p)
    return x[:, None]                                     # (N, H+2p, W+2p) -> (N, 1, ., .)


def crop_images(images, pad=2):
    """The inverse of `pad_images`: (N, 1, H + 2 pad, W + 2 pad) -> (N, H, W)."""
    return images[:, 0, pad:images.shape[2] - pad, pad:images.shape[3] - pad]


# --------------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------------
def squared_distances(x, centroids):
    """||x_i - c_k||^2 for every pair: (M, D), (K, D) -> (M, K), as ||x||^2 - 2 x.c + ||c||^2
    (one matrix product instead of an (M, K, D) array of differences)."""
    d = np.sum(x * x, axis=1)[:, None] - 2.0 * (x @ centroids.T) + np.sum(centroids ** 2, axis=1)
    return np.maximum(d, 0.0)                             # rounding can go a hair below zero


def nearest(x, centroids, chunk=65536):
    """The index of the nearest centroid of every row of x (M, D) -> (M,) int64, in chunks so the
    (chunk, K) distance matrix stays small."""
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), chunk):
        out[start:start + chunk] = np.argmin(squared_distances(x[start:start + chunk], centroids),
                                             axis=1)
    return out


def kmeans_plus_plus(x, k, rng):
    """k-means++ seeding: the first centroid uniformly, each next one with probability
    proportional to its squared distance to the nearest centroid chosen so far. (k, D)."""
    centroids = [x[rng.integers(len(x))]]
    closest = squared_distances(x, centroids[0][None])[:, 0]  # (M,)
    for _ in range(1, k):
        total = closest.sum()
        if total == 0:                                    # fewer distinct points than k
            i = rng.integers(len(x))
        else:
            i = rng.choice(len(x), p=closest / total)
        centroids.append(x[i])
        closest = np.minimum(closest, squared_distances(x, x[i][None])[:, 0])
    return np.stack(centroids)


def kmeans_step(x, centroids, rng=None):
    """One Lloyd iteration: assign every point to its nearest centroid, move every centroid to
    the mean of its points. A centroid that got no point is moved to the point that is worst
    fitted now (the largest distance to its centroid), so no code goes unused. Returns
    (new centroids (K, D), assignments (M,), mean squared error)."""
    K = len(centroids)
    assign = nearest(x, centroids)
    counts = np.bincount(assign, minlength=K)             # (K,)
    sums = np.zeros_like(centroids)
    np.add.at(sums, assign, x)                            # repeated assignments accumulate
    new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
    err = np.sum((x - centroids[assign]) ** 2, axis=1)    # (M,) with the old centroids
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        worst = np.argsort(err)[::-1][:len(empty)]        # the worst-fitted points
        new[empty] = x[worst]
    return new, assign, float(err.mean())


def kmeans(x, k, iterations=30, seed=0):
    """k-means (k-means++ seeding, then `iterations` Lloyd steps) of the rows of x (M, D).
    Returns (centroids (k, D), the mean squared error after each step)."""
    rng = np.random.default_rng(seed)
    centroids = kmeans_plus_plus(x, k, rng)
    history = []
    for _ in range(iterations):
        centroids, _, err = kmeans_step(x, centroids, rng)
        history.append(err)
    return centroids, history


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------
class KMeansTokenizer:
    """Digits (N, 28, 28) in [-1, 1] <-> codes (N, 8, 8) in [0, K), through a codebook of 4x4
    patches. `codebook`: (K, P*P) float32; `patch`, `pad`: the patching (28 + 2 * 2 = 32 = 8 * 4).
    """

    NAME = TOKENIZER_NAME                    # what it is saved as in a masked-token model's folder

    def __init__(self, codebook, patch=4, pad=2, image_size=28):
        codebook = np.asarray(codebook, dtype=np.float32)
        if codebook.ndim != 2 or codebook.shape[1] != patch * patch:
            raise ValueError(f"KMeansTokenizer: expected a codebook (K, {patch * patch}), got "
                             f"{codebook.shape}")
        if (image_size + 2 * pad) % patch:
            raise ValueError(f"KMeansTokenizer: image_size {image_size} + 2 * pad {pad} is not a "
                             f"multiple of patch {patch}")
        self.codebook, self.patch, self.pad, self.image_size = codebook, patch, pad, image_size
        self.grid = (image_size + 2 * pad) // patch

    @property
    def codebook_size(self):
        return len(self.codebook)

    @classmethod
    def fit(cls, images, codebook_size=256, patch=4, pad=2, iterations=30, sample=64000, seed=0):
        """k-means on the patches of `images` (N, 28, 28) in [-1, 1]: `sample` patches drawn at
        random (all, if there are fewer), `iterations` Lloyd steps, seeded."""
        patches = to_patches(images.astype(np.float32), patch, pad).reshape(-1, patch * patch)
        rng = np.random.default_rng(seed)
        if sample and len(patches) > sample:
            patches = patches[rng.choice(len(patches), size=sample, replace=False)]
        codebook, _ = kmeans(patches.astype(np.float64), codebook_size, iterations, seed)
        return cls(codebook, patch, pad, images.shape[-1])

    def encode(self, images):
        """(N, 28, 28) floats in [-1, 1] -> (N, 8, 8) int64 code ids."""
        check_floating("KMeansTokenizer.encode: images", images)
        check_rank("KMeansTokenizer.encode: images", images, 3, "(N, H, W)")
        if images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"KMeansTokenizer.encode: expected images of {self.image_size}x"
                             f"{self.image_size}, got {images.shape[1]}x{images.shape[2]}")
        p = to_patches(images.astype(np.float32), self.patch, self.pad)  # (N, h, w, P*P)
        N, h, w, D = p.shape
        return nearest(p.reshape(-1, D), self.codebook).reshape(N, h, w)

    def decode(self, codes):
        """(N, 8, 8) code ids -> (N, 28, 28) float32 images in [-1, 1]."""
        check_integer("KMeansTokenizer.decode: codes", codes)
        check_rank("KMeansTokenizer.decode: codes", codes, 3, "(N, h, w)")
        check_range("KMeansTokenizer.decode: codes", codes, 0, self.codebook_size)
        return from_patches(self.codebook[codes], self.patch, self.pad)

    def decode_partial(self, codes, mask_token_id, fill=0.0):
        """Like `decode`, for a grid that still holds mask tokens (a MaskGIT step in progress):
        masked patches are painted `fill` (0.0, mid grey on the [-1, 1] scale)."""
        check_integer("KMeansTokenizer.decode_partial: codes", codes)
        masked = codes == mask_token_id                                 # (N, h, w)
        patches = self.codebook[np.where(masked, 0, codes)]            # (N, h, w, P*P)
        patches = np.where(masked[..., None], np.float32(fill), patches)
        return from_patches(patches, self.patch, self.pad)

    def save(self, path):
        """The codebook and its patching in one safetensors file."""
        from safetensors.numpy import save_file
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file({"codebook": np.ascontiguousarray(self.codebook)}, path,
                  metadata={"patch": str(self.patch), "pad": str(self.pad),
                            "image_size": str(self.image_size)})

    @classmethod
    def load(cls, path):
        from safetensors import safe_open
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            codebook = f.get_tensor("codebook")
        try:
            return cls(codebook, int(meta["patch"]), int(meta["pad"]), int(meta["image_size"]))
        except KeyError as err:
            raise ValueError(f"{path!r} is not a tokenizer file: its header has no {err}") from None


class VQGANTokenizer:
    """Digits (N, 28, 28) in [-1, 1] <-> codes (N, 8, 8) in [0, K), through a trained `VQModel`
    (`lookup_from_codebook`, one input channel): pad to 32x32 with the background, encode and take
    the nearest codes; decode looks the codes up, decodes, cuts the padding and clips to [-1, 1].

    model: a `uvit_numpy.vq_model.VQModel` (or any object with its `encode`, `quantize`, `decode`
    and `config`); pad, image_size: the padding the model was trained with (its folder's
    `_tokenizer` entry). The methods are `KMeansTokenizer`'s, so a masked-token model's training
    and sampling take either.
    """

    NAME = VQGAN_NAME                        # what it is saved as in a masked-token model's folder

    def __init__(self, model, pad=2, image_size=28, record=None):
        config = model.config
        if not config.get("lookup_from_codebook") or config.get("in_channels") != 1:
            raise ValueError(f"VQGANTokenizer: expected a VQModel with one input channel and "
                             f"lookup_from_codebook=True, got in_channels "
                             f"{config.get('in_channels')}, lookup_from_codebook "
                             f"{config.get('lookup_from_codebook')}")
        side = image_size + 2 * pad
        levels = len(config["block_out_channels"])
        if side % 2 ** (levels - 1):
            raise ValueError(f"VQGANTokenizer: image_size {image_size} + 2 * pad {pad} = {side} "
                             f"does not halve exactly {levels - 1} times")
        self.model, self.pad, self.image_size, self.record = model, pad, image_size, record
        self.grid = side // 2 ** (levels - 1)
        self.embed_dim = config["vq_embed_dim"] or config["latent_channels"]

    @property
    def codebook_size(self):
        return self.model.config["num_vq_embeddings"]

    @classmethod
    def from_pretrained(cls, folder, dtype=np.float32):
        """The tokenizer of a VQModel folder the `vqgan` task wrote (its `_tokenizer` entry holds
        the padding); NumPy only."""
        from .weights import find_model_folder, read_config
        folder = find_model_folder(folder, VQGAN_NAME)
        config = read_config(folder)
        info = config.get("_tokenizer")
        if config.get("_class_name") != "VQModel" or not info:
            raise ValueError(f"{folder!r} holds no VQ-GAN tokenizer of this project: expected "
                             f"a VQModel's config.json with a _tokenizer entry (pad, image_size)")
        return cls(cls.load_model(folder, dtype), info["pad"], info["image_size"],
                   record=config.get("_training"))

    @staticmethod
    def load_model(folder, dtype):
        """The VQModel of `folder` (NumPy's; `uvit_torch.tokenizer` loads torch's)."""
        from .vq_model import VQModel
        return VQModel.from_pretrained(folder, dtype)

    def save(self, folder):
        """The VQModel as a diffusers folder, with its padding (`_tokenizer`) and the record of
        the run that trained it (`_training`), so that the copy says where it came from."""
        self.model.save_pretrained(folder, training=self.record,
                                   tokenizer={"pad": self.pad, "image_size": self.image_size})

    def encode(self, images, batch_size=500):
        """(N, 28, 28) floats in [-1, 1] -> (N, 8, 8) int64 code ids (in batches)."""
        check_floating("VQGANTokenizer.encode: images", images)
        check_rank("VQGANTokenizer.encode: images", images, 3, "(N, H, W)")
        if images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"VQGANTokenizer.encode: expected images of {self.image_size}x"
                             f"{self.image_size}, got {images.shape[1]}x{images.shape[2]}")
        x = pad_images(images.astype(np.float32), self.pad)           # (N, 1, 32, 32)
        out = [self._codes(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.int64)

    def decode(self, codes, batch_size=500):
        """(N, 8, 8) code ids -> (N, 28, 28) float images in [-1, 1] (the decoder's output cut
        and clipped: the decoder is not bounded)."""
        check_integer("VQGANTokenizer.decode: codes", codes)
        check_rank("VQGANTokenizer.decode: codes", codes, 3, "(N, h, w)")
        check_range("VQGANTokenizer.decode: codes", codes, 0, self.codebook_size)
        out = [crop_images(self._pixels(codes[start:start + batch_size]), self.pad)
               for start in range(0, len(codes), batch_size)]          # (b, 1, 32, 32) -> 28
        return np.clip(np.concatenate(out), -1.0, 1.0)

    def _codes(self, x):
        """The model's part of `encode`: padded images (b, 1, 32, 32) -> codes (b, 8, 8)."""
        h = self.model.encode(x.astype(self.model.dtype)).latents      # (b, C, 8, 8)
        _, _, (_, _, idx) = self.model.quantize(h)                      # (b*8*8,)
        return idx.reshape(len(h), self.grid, self.grid)                # -> (b, 8, 8)

    def _pixels(self, codes):
        """The model's part of `decode`: codes (b, 8, 8) -> padded images (b, 1, 32, 32)."""
        shape = (len(codes), codes.shape[1], codes.shape[2], self.embed_dim)  # (b, h, w, C)
        return self.model.decode(codes, force_not_quantize=True, shape=shape).sample

    def decode_partial(self, codes, mask_token_id, fill=0.0):
        """Like `decode`, for a grid that still holds mask tokens: each masked cell is decoded as
        the background's code (a code's pixels depend on its neighbours too), then its square of
        pixels is painted `fill`."""
        check_integer("VQGANTokenizer.decode_partial: codes", codes)
        masked = codes == mask_token_id                                 # (N, h, w)
        blank = self.encode(np.full((1, self.image_size, self.image_size), -1.0,
                                    dtype=np.float32))[0, 0, 0]        # the empty corner's code
        images = pad_images(self.decode(np.where(masked, blank, codes)), self.pad)[:, 0]
        cell = (self.image_size + 2 * self.pad) // self.grid            # pixels per code
        paint = np.repeat(np.repeat(masked, cell, axis=1), cell, axis=2)  # (N, 32, 32)
        images = np.where(paint, np.float32(fill), images)
        return images[:, self.pad:-self.pad, self.pad:-self.pad]


def load_tokenizer(path):
    """The tokenizer at `path`: a VQ-GAN folder (config.json with `_tokenizer`), a k-means file
    (`tokenizer.safetensors`), or a masked-token model's folder holding either (`vqvae/` first)."""
    if os.path.isfile(path):
        return KMeansTokenizer.load(path)
    if os.path.isdir(os.path.join(path, VQGAN_NAME)):
        return VQGANTokenizer.from_pretrained(os.path.join(path, VQGAN_NAME))
    if os.path.isfile(os.path.join(path, TOKENIZER_NAME)):
        return KMeansTokenizer.load(os.path.join(path, TOKENIZER_NAME))
    if os.path.isfile(os.path.join(path, "config.json")):
        return VQGANTokenizer.from_pretrained(path)       # names what is wrong if it is not one
    raise FileNotFoundError(f"no tokenizer at {path!r}: expected a VQ-GAN folder (config.json), "
                            f"a {TOKENIZER_NAME} file, or a folder holding {VQGAN_NAME}/ or "
                            f"{TOKENIZER_NAME}")


def psnr(images, reconstructions):
    """Peak signal-to-noise ratio in dB of images in [-1, 1], measured on the [0, 1] scale:
    10 log10(1 / MSE) over all pixels."""
    mse = np.mean(((images - reconstructions) / 2.0) ** 2)
    if mse == 0:
        return float("inf")                               # a lossless round trip
    return float(10.0 * np.log10(1.0 / mse))


def code_statistics(codes, codebook_size):
    """How unbalanced the codes are: {"top_share": the most frequent code's share of all codes,
    "top_code", "used": how many codes occur, "perplexity": exp(entropy) of the code
    frequencies}."""
    freq = np.bincount(codes.reshape(-1), minlength=codebook_size) / codes.size
    nz = freq[freq > 0]
    return {"top_code": int(np.argmax(freq)), "top_share": float(freq.max()),
            "used": int((freq > 0).sum()), "perplexity": float(np.exp(-np.sum(nz * np.log(nz))))}
