"""What a newcomer hits first: the torch port given NumPy arrays, a junk checkpoint, the parity
command's options, and the benchmark's report of a missed target."""

import numpy as np
import pytest
import torch

import uvit_torch as T
from uvit_torch import parity
from uvit_torch.checkpoint import load_pth

NUMPY_MESSAGE = r"expected a torch\.Tensor, got a numpy\.ndarray"


def test_uvit2d_port_given_numpy_arrays_says_so():
    model = T.UVit2DModel.from_config("tiny")
    args = (np.zeros((1, 4, 4), dtype=np.int64), np.zeros((1, 3, 24), np.float32),
            np.zeros((1, 24), np.float32), np.zeros((1, 5), np.float32))
    with pytest.raises(TypeError, match="UVit2DModel: input_ids: " + NUMPY_MESSAGE):
        model(*args)


def test_uvit_port_given_numpy_arrays_says_so():
    model = T.UViT(img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=2, num_heads=2,
                   num_classes=3)
    with pytest.raises(TypeError, match="UViT: x: " + NUMPY_MESSAGE):
        model(np.zeros((1, 1, 8, 8), np.float32), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="UViT: y: " + NUMPY_MESSAGE):
        model(torch.zeros(1, 1, 8, 8), torch.zeros(1), np.zeros(1, dtype=np.int64))


def test_decoding_functions_given_numpy_arrays_say_so():
    with pytest.raises(TypeError, match="masked_decoding_step: logits: " + NUMPY_MESSAGE):
        T.maskgit.masked_decoding_step(np.zeros((1, 4, 2, 2)), torch.zeros(1, 2, 2).long(), 0, 2, 9)
    model = T.UVit2DModel.from_config("tiny")
    with pytest.raises(TypeError, match="generate: encoder_hidden_states: " + NUMPY_MESSAGE):
        T.maskgit.generate(model, np.zeros((1, 3, 24), np.float32), torch.zeros(1, 24),
                          torch.zeros(1, 5), 4, 4, num_steps=2)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_a_junk_pth_is_not_a_checkpoint_and_no_unsafe_hint(tmp_path, content):
    import pickle
    path = tmp_path / "junk.pth"
    if content is None:
        path.write_bytes(pickle.dumps({"weights": object}))   # a pickle torch refuses to load
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a U-ViT checkpoint") as info:
        load_pth(str(path))
    assert "weights_only=False will" not in str(info.value)
    assert "which would run whatever code" in str(info.value)


def test_parity_unknown_config_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit) as info:
        parity.main(["--config", "amused-1024"])
    assert info.value.code == 2
    assert "choose from 'amused-256', 'amused-512', 'tiny'" in capsys.readouterr().err


def test_parity_only_matching_nothing_says_so(capsys):
    assert parity.main(["--only", "no such case"]) == 1
    assert "no case whose name contains 'no such case'" in capsys.readouterr().err


def test_parity_report_fits_100_columns(capsys):
    assert parity.main(["--only", "UVit2DModel tiny no elementwise"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100


def test_benchmark_marks_a_missed_target():
    from uvit_torch.parity.bench import machine, verdict
    assert verdict(1.2, 1.5) == "(target <= 1.5)"
    assert "MISSED" in verdict(1.8, 1.5) and "20%" in verdict(1.8, 1.5)
    line = machine()
    assert line.startswith("machine: ") and "NumPy" in line and "threads" in line
