"""Read and write diffusers model folders as torch tensors (the folder logic is shared with
`uvit_numpy.weights`; only the tensor reading differs, so bfloat16 weights load here too)."""

import json
import os

from uvit_numpy.weights import (CONFIG_NAME, WEIGHTS_NAME, find_model_folder, read_config,
                                weight_files)


def load_pretrained(path, variant=None, subfolder="transformer"):
    """(config dict, state dict of torch tensors) from a diffusers model or pipeline folder."""
    folder = find_model_folder(path, subfolder)
    config = read_config(folder)
    state_dict = {}
    for file in weight_files(folder, variant):
        state_dict.update(read_safetensors(file))
    return config, state_dict


def read_safetensors(file):
    """`{key: torch.Tensor}` from one safetensors file; a damaged one is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(file)
    except SafetensorError as err:
        raise ValueError(f"from_pretrained: {file!r} is damaged or not a safetensors file "
                         f"({err})") from None


def save_pretrained(path, config, state_dict, class_name="UVit2DModel"):
    """Write `config.json` and `diffusion_pytorch_model.safetensors` into folder `path`."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump({"_class_name": class_name, **config}, f, indent=2, sort_keys=True)
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    save_file(tensors, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})


def load_transformers_pretrained(path, variant=None, subfolder="text_encoder"):
    """(config dict, state dict of torch tensors) from a transformers model folder
    (config.json + model.safetensors), or a pipeline folder's `subfolder`."""
    from uvit_numpy.weights import transformers_weight_files
    folder = find_model_folder(path, subfolder)
    config = read_config(folder)
    state_dict = {}
    for file in transformers_weight_files(folder, variant):
        state_dict.update(read_safetensors(file))
    return config, state_dict
