"""Read and write diffusers model folders with NumPy only (no torch).

A diffusers model folder holds `config.json` (the constructor arguments, plus keys diffusers writes
for itself such as `_class_name` and `_diffusers_version`) and the weights in
`diffusion_pytorch_model.safetensors` (or `diffusion_pytorch_model.<variant>.safetensors`, or
shards listed in `diffusion_pytorch_model.safetensors.index.json`). A pipeline folder keeps the
model in a subfolder, for aMUSEd `transformer/`. Safetensors files are read with
`safetensors.numpy`, which never imports torch.
"""

import json
import os

import numpy as np

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def _weights_name(variant):
    return WEIGHTS_NAME if variant is None else WEIGHTS_NAME.replace(".safetensors",
                                                                     f".{variant}.safetensors")


def find_model_folder(path, subfolder="transformer"):
    """The folder that holds the model's config.json: `path` itself, or `path/subfolder` for a
    pipeline folder. Raises FileNotFoundError naming what was looked for."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"from_pretrained: {path!r} is not a folder")
    for folder in (path, os.path.join(path, subfolder)):
        if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            return folder
    raise FileNotFoundError(f"from_pretrained: no {CONFIG_NAME} in {path!r} nor in its "
                            f"{subfolder!r} subfolder")


def folder_config(config, extra):
    """config.json's content: a model's constructor arguments, and `extra` entries (how it was
    trained, its sampling defaults) under `_`-prefixed keys, which loaders leave aside."""
    return {**config, **{f"_{k}": v for k, v in extra.items() if v is not None}}


def read_config(folder):
    """The config.json of a model folder, as a dict (diffusers' private `_` keys included).
    A file that is not a JSON object is a ValueError naming the file and where it breaks."""
    path = os.path.join(folder, CONFIG_NAME)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path!r} is not a text file ({err.reason} at byte {err.start})") \
            from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!r} is not valid JSON: {err.msg} at line {err.lineno}, column "
                         f"{err.colno}") from None
    if not isinstance(config, dict):
        raise TypeError(f"from_pretrained: {CONFIG_NAME} in {folder!r} is not a JSON object")
    return config


def weight_files(folder, variant=None):
    """The safetensors file(s) of a model folder: one file, or the shards of an index.

    Raises FileNotFoundError, listing the files that are there, when there are no weights.
    """
    single = os.path.join(folder, _weights_name(variant))
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, INDEX_NAME if variant is None
                         else INDEX_NAME.replace(".safetensors", f".{variant}.safetensors"))
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    present = sorted(os.listdir(folder))
    hint = (" (only PyTorch .bin weights: re-save them with safe_serialization=True)"
            if any(name.endswith(".bin") for name in present) else "")
    raise FileNotFoundError(f"from_pretrained: no weights in {folder!r}: expected "
                            f"{_weights_name(variant)} or {INDEX_NAME}, found {present}{hint}")


def read_safetensors(files):
    """`{key: np.ndarray}` from one or more safetensors files, read without torch."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    state_dict = {}
    for file in files:
        try:
            state_dict.update(load_file(file))
        except (TypeError, ValueError) as err:  # e.g. bfloat16, which NumPy has no dtype for
            raise ValueError(f"from_pretrained: cannot read {file!r} with NumPy: {err}") from err
        except SafetensorError as err:          # a truncated or damaged file
            raise ValueError(f"from_pretrained: {file!r} is damaged or not a safetensors file "
                             f"({err})") from None
    return state_dict


def load_pretrained(path, variant=None, subfolder="transformer"):
    """(config dict, state dict of NumPy arrays) from a diffusers model or pipeline folder."""
    folder = find_model_folder(path, subfolder)
    config = read_config(folder)
    return config, read_safetensors(weight_files(folder, variant))


def save_pretrained(path, config, state_dict, class_name="UVit2DModel"):
    """Write `config.json` and `diffusion_pytorch_model.safetensors` into folder `path`."""
    from safetensors.numpy import save_file
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump({"_class_name": class_name, **config}, f, indent=2, sort_keys=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(arrays, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------
# transformers folders (CLIP's text encoder): config.json + model.safetensors
# --------------------------------------------------------------------------------------------------
TRANSFORMERS_WEIGHTS_NAME = "model.safetensors"
TRANSFORMERS_INDEX_NAME = "model.safetensors.index.json"


def transformers_weight_files(folder, variant=None):
    """The safetensors file(s) of a transformers model folder: `model.safetensors` (or
    `model.<variant>.safetensors`), or the shards of `model.safetensors.index.json`.

    Raises FileNotFoundError, listing the files that are there, when there are no weights.
    """
    def named(name):
        return name if variant is None else name.replace(".safetensors", f".{variant}.safetensors")
    single = os.path.join(folder, named(TRANSFORMERS_WEIGHTS_NAME))
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, named(TRANSFORMERS_INDEX_NAME))
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    present = sorted(os.listdir(folder))
    hint = (" (only PyTorch .bin weights: re-save them with safe_serialization=True)"
            if any(name.endswith(".bin") for name in present) else "")
    raise FileNotFoundError(f"from_pretrained: no weights in {folder!r}: expected "
                            f"{named(TRANSFORMERS_WEIGHTS_NAME)} or "
                            f"{named(TRANSFORMERS_INDEX_NAME)}, found {present}{hint}")


def load_transformers_pretrained(path, variant=None, subfolder="text_encoder"):
    """(config dict, state dict of NumPy arrays) from a transformers model folder, or from a
    diffusers pipeline folder that keeps it in `subfolder` (aMUSEd: `text_encoder/`)."""
    folder = find_model_folder(path, subfolder)
    return read_config(folder), read_safetensors(transformers_weight_files(folder, variant))
