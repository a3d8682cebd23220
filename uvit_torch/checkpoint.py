"""Reading the U-ViT paper's released `.pth` checkpoints, for both packages.

The released files (`cifar10_uvit_small.pth`, `imagenet256_uvit_huge.pth`, ...) are plain state
dicts: `{key: tensor}` with the keys of the paper's `UViT`, which are ours. torch reads them safely
with `weights_only=True` (no arbitrary pickled code runs); `to_numpy_state_dict` turns the tensors
into arrays for `uvit_numpy` (which cannot read a `.pth` itself: it never imports torch).

    from uvit_torch.checkpoint import load_pretrained
    model = load_pretrained("cifar10_uvit_small.pth", "cifar10_uvit_small")               # torch
    model = load_pretrained("cifar10_uvit_small.pth", "cifar10_uvit_small", backend="numpy")

`uvit_numpy` never imports torch, so its commands read these state dicts as safetensors files;
`convert` (or the command below) writes one, with the same keys and values, from a `.pth`:

    python -m uvit_torch.checkpoint imagenet256_uvit_huge.pth imagenet256_uvit_huge.safetensors
    python -m uvit_torch.checkpoint autoencoder_kl_ema.pth autoencoder_kl_ema.safetensors
"""

import argparse
import os
import sys

import numpy as np
import torch


def load_pth(path):
    """Read a plain state-dict `.pth` on the CPU with `torch.load(weights_only=True)`.

    Returns `{key: tensor}`. A file that holds something else is an error saying what was found:
    a TypeError for a non-dict, a ValueError for a dict with non-tensor entries (a training
    checkpoint wrapping the weights, say).
    """
    import pickle
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError) as err:
        # torch's own message would suggest weights_only=False, i.e. running the file's code
        raise ValueError(f"load_pth: {path} is not a U-ViT checkpoint (a state dict of tensors "
                         f"saved with torch.save): torch could not read it safely "
                         f"({type(err).__name__}). It is not loaded with weights_only=False, "
                         f"which would run whatever code the file holds.") from None
    if not isinstance(sd, dict):
        raise TypeError(f"load_pth: expected a state dict (dict of tensors) in {path}, got a "
                         f"{type(sd).__name__}")
    bad = {k: type(v).__name__ for k, v in sd.items() if not isinstance(v, torch.Tensor)}
    if bad:
        raise ValueError(f"load_pth: expected a plain state dict of tensors in {path}; these "
                         f"entries are not tensors: {bad}")
    return sd


def to_numpy_state_dict(state_dict, dtype=None):
    """`{key: tensor}` -> `{key: np.ndarray}` for `uvit_numpy` models (copies on the CPU).

    Half-precision tensors become float32 (NumPy has no bfloat16); `dtype` casts every floating
    array (the NumPy model also casts on loading, to its own dtype).
    """
    out = {}
    for key, value in state_dict.items():
        t = value.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        arr = t.numpy().copy()
        if dtype is not None and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        out[key] = arr
    return out


def load_numpy_state_dict(path, dtype=None):
    """A `.pth` state dict as `{key: np.ndarray}`: `to_numpy_state_dict(load_pth(path))`."""
    return to_numpy_state_dict(load_pth(path), dtype)


def load_pretrained(path, name, backend="torch", dtype=None, **overrides):
    """The paper's model `name` (a key of `CONFIGS`) with the weights of the `.pth` at `path`.

    backend "torch" returns a `uvit_torch` model (dtype a torch dtype, default float32), "numpy" a
    `uvit_numpy` one (dtype a NumPy dtype, default float32). Both in eval mode. Key and shape
    mismatches raise one ValueError listing them all.
    """
    if backend == "torch":
        from . import uvit
        model = uvit.from_config(name, dtype=dtype, **overrides)
        model.load_state_dict(load_pth(path))
    elif backend == "numpy":
        from uvit_numpy import uvit as nuvit
        model = nuvit.from_config(name, dtype=np.float32 if dtype is None else dtype, **overrides)
        model.load_state_dict(load_numpy_state_dict(path))
    else:
        raise ValueError(f"load_pretrained: expected backend 'torch' or 'numpy', got {backend!r}")
    return model.eval()


# --------------------------------------------------------------------------------------------------
# .pth -> safetensors, for uvit_numpy
# --------------------------------------------------------------------------------------------------
def convert(pth_path, out_path):
    """Write the state dict of the `.pth` at `pth_path` as the safetensors file `out_path` (the
    same keys; the same values, float16/bfloat16 ones widened to float32 as `to_numpy_state_dict`
    does, since NumPy reads no bfloat16). Written to a temporary file, then renamed. Returns the
    number of tensors."""
    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(v) for k, v in load_numpy_state_dict(pth_path).items()}
    tmp = out_path + ".tmp"
    save_file(arrays, tmp, metadata={"format": "pt", "source": os.path.basename(pth_path)})
    os.replace(tmp, out_path)
    return len(arrays)


def load_state_dict_file(path):
    """`{key: tensor}` from a `.pth` (`load_pth`) or a `.safetensors` file (the converted one)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return load_pth(path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m uvit_torch.checkpoint",
        description="Convert a U-ViT paper checkpoint (a .pth state dict: a U-ViT, or "
                    "autoencoder_kl(_ema).pth) into a safetensors file that uvit_numpy reads.")
    parser.add_argument("pth", help="the .pth file (read with torch.load(weights_only=True))")
    parser.add_argument("out", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error(f"expected an output name ending in .safetensors, got {args.out}")
    if not os.path.isfile(args.pth):
        parser.error(f"no such file: {args.pth}")
    try:
        n = convert(args.pth, args.out)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.pth} -> {args.out} ({n} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
