"""The U-ViT paper's KL autoencoder (`FrozenAutoencoderKL`), in both packages.

* NumPy vs the torch port and the port vs diffusers' `AutoencoderKL` (the same network under other
  names): encode_moments, decode and encode with given noise, tiny configs (with and without mid
  attention, odd sizes, an embed_dim of the paper's own), float64 <= 1e-10, float32 <= 1e-5.
* The paper's real autoencoder (83,653,863 parameters) once against diffusers (slow).
* The paper's key layout: built by our map from diffusers' keys, converted back by diffusers' own
  LDM converter (an independent oracle), loaded by both packages and given back unchanged; the
  `.pth` route and the diffusers-folder route.
"""

import re
import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402

import uvit_numpy.autoencoder as NA  # noqa: E402
import uvit_torch.autoencoder as TA  # noqa: E402
from tests.parity_params import assert_case_passes, case_params  # noqa: E402
from uvit_torch import parity  # noqa: E402
from uvit_torch.parity import vae as PV  # noqa: E402
from uvit_torch.parity.harness import assert_close, numpy_state_dict, to_torch  # noqa: E402

CASES = PV.kl_cases()
DIFFUSERS_CASES = PV.diffusers_kl_cases(("float64", "float32"))
TINY = PV.kl_ddconfig(ch=32, ch_mult=[1, 2], num_res_blocks=1)
TINY_DIFFUSERS = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                      up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1,
                      latent_channels=4)


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    parity.quiet_diffusers()


@pytest.mark.parametrize("case, dtype, batch", case_params(CASES))
def test_numpy_vs_torch_port(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


@pytest.mark.parametrize("case, dtype, batch", case_params(DIFFUSERS_CASES))
def test_torch_port_vs_diffusers(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


def test_the_reports_list_the_autoencoder():
    assert "FrozenAutoencoderKL decode: ch 32 x [1, 2]" in [c.name for c in parity.all_cases()]
    names = [c.name for c in parity.all_cases(against_diffusers=True)]
    assert "FrozenAutoencoderKL decode: ch 32 x [1, 2] vs diffusers" in names


@pytest.mark.slow
def test_the_papers_autoencoder_against_diffusers():
    """PAPER_DDCONFIG (ch 128, ch_mult [1, 2, 4, 4], two resnets per level, z 4, double_z, mid
    attention only), embed_dim 4, random weights, one 16 x 16 image and one 2 x 2 latent, float64
    and float32, NumPy against diffusers' AutoencoderKL sharing one copy of the weights.
    Measured: 6 s of CPU time (the wall time was 14-20 s on a shared, busy 2-core machine)."""
    start = time.process_time()
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        ours, theirs = PV.shared_kl_pair(dtype)
        assert ours.num_parameters() == 83_653_863
        assert sum(p.numel() for p in theirs.parameters()) == 83_653_863
        rng = np.random.default_rng(16)
        x = rng.uniform(-1.0, 1.0, (1, 3, 16, 16)).astype(dtype)
        z = (0.18215 * rng.standard_normal((1, 4, 2, 2))).astype(dtype)
        noise = rng.standard_normal((1, 4, 2, 2)).astype(dtype)
        moments, decoded = ours.encode_moments(x), ours.decode(z)
        with torch.no_grad():
            dist = theirs.encode(to_torch(x)).latent_dist
            ref_decoded = theirs.decode((1.0 / 0.18215) * to_torch(z)).sample
        name = np.dtype(dtype).name
        print(assert_close(f"encode_moments {name}", moments, dist.parameters, tol).report())
        print(assert_close(f"decode {name}", decoded, ref_decoded, tol).report())
        assert_close(f"sample {name}", ours.sample(moments, noise=noise),
                     0.18215 * (dist.mean + dist.std * torch.from_numpy(noise)), tol)
        del ours, theirs
    print(f"CPU time {time.process_time() - start:.1f} s")


# --------------------------------------------------------------------------------------------------
# The paper's key layout
# --------------------------------------------------------------------------------------------------
def _diffusers_tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return PV.randomize_(AutoencoderKL(**TINY_DIFFUSERS).to(dtype).eval(), seed)


def test_paper_layout_is_what_diffusers_converter_reads_and_round_trips():
    """Our map turns diffusers' weights into the paper's layout; diffusers' own LDM converter
    (`convert_ldm_vae_checkpoint`, written independently) turns that back into exactly diffusers'
    state dict. Both packages load the paper's layout and give it back unchanged."""
    theirs = _diffusers_tiny()
    ours = NA.FrozenAutoencoderKL(TINY, 4, dtype=np.float64)
    ours.load_diffusers_state_dict(numpy_state_dict(theirs))
    paper = ours.state_dict()
    assert "encoder.mid.attn_1.q.weight" in paper and "decoder.up.1.upsample.conv.bias" in paper
    assert "encoder.down.1.block.0.nin_shortcut.weight" in paper
    assert paper["decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
    assert not any("down_blocks" in k or "to_q" in k or "conv_shortcut" in k for k in paper)
    back = convert_ldm_vae_checkpoint({k: torch.from_numpy(v.copy()) for k, v in paper.items()},
                                      TINY_DIFFUSERS)
    reference = theirs.state_dict()
    assert sorted(back) == sorted(reference)
    for key in reference:
        assert torch.equal(back[key], reference[key]), key
    again = NA.FrozenAutoencoderKL(TINY, 4, dtype=np.float64, rng=1)
    again.load_state_dict(paper)
    assert all(np.array_equal(again.state_dict()[k], paper[k]) for k in paper)
    port = TA.FrozenAutoencoderKL(TINY, 4, dtype=torch.float64)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in paper.items()})
    port_sd = port.state_dict()
    assert sorted(port_sd) == sorted(paper)
    assert all(np.array_equal(port_sd[k].numpy(), paper[k]) for k in paper)
    wrapper = torch.nn.Module()                           # the hooks work under a prefix too
    wrapper.autoencoder = TA.FrozenAutoencoderKL(TINY, 4, dtype=torch.float64)
    wrapper.load_state_dict({f"autoencoder.{k}": torch.from_numpy(v) for k, v in paper.items()})
    assert sorted(wrapper.state_dict()) == sorted(f"autoencoder.{k}" for k in paper)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8))
    with torch.no_grad():
        assert_close("wrapped", wrapper.autoencoder.encode_moments(to_torch(x)),
                     ours.encode_moments(x), 1e-10)


def test_paper_keys_and_shared_keys_are_inverse():
    ours = NA.FrozenAutoencoderKL(PV.kl_ddconfig(ch=32, ch_mult=[1, 1, 2], num_res_blocks=2), 4)
    for key in ours.diffusers_state_dict():
        assert NA.shared_key(NA.paper_key(key, 3), 3) == key
    assert NA.paper_key("decoder.up_blocks.0.resnets.2.conv_shortcut.weight", 3) == \
        "decoder.up.2.block.2.nin_shortcut.weight"


def test_pth_files_load_in_both_packages(tmp_path):
    """The paper's `.pth` route: a plain state dict of tensors in its layout, read with
    torch.load(weights_only=True)."""
    theirs = _diffusers_tiny(torch.float32)
    ours = NA.FrozenAutoencoderKL(TINY, 4)
    ours.load_diffusers_state_dict(numpy_state_dict(theirs))
    torch.save({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()},
               tmp_path / "autoencoder_kl.pth")
    np_model = TA.load_pretrained(tmp_path / "autoencoder_kl.pth", TINY, scale_factor=0.2301,
                                  backend="numpy", dtype=np.float64)
    t_model = TA.load_pretrained(tmp_path / "autoencoder_kl.pth", TINY, scale_factor=0.2301)
    assert np_model.scale_factor == t_model.scale_factor == 0.2301
    assert not t_model.training and not any(p.requires_grad for p in t_model.parameters())
    assert not np_model.training
    z = np.random.default_rng(0).standard_normal((2, 4, 3, 2)).astype(np.float32)
    with torch.no_grad():
        ref = theirs.decode((1.0 / 0.2301) * torch.from_numpy(z)).sample
        assert_close("torch .pth", t_model.decode(torch.from_numpy(z)), ref, 1e-5)
    assert_close("numpy .pth", np_model.decode(z), ref, 1e-5)
    torch.save({"state_dict": {}}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match="not tensors"):
        TA.load_pretrained(tmp_path / "wrapped.pth", TINY)
    with pytest.raises(ValueError, match="backend"):
        TA.load_pretrained(tmp_path / "autoencoder_kl.pth", TINY, backend="jax")


@pytest.mark.parametrize("folder", ["vae_folder", "pipeline"])
def test_diffusers_folder_route_equals_diffusers_decode(tmp_path, folder):
    """A diffusers AutoencoderKL folder (the sd-vae-ft-mse layout; or a pipeline's vae/) loads
    into the paper's class in both packages (NumPy without torch); its decode equals diffusers'
    decode of z / scale_factor, and the folder's scaling_factor is the default scale."""
    theirs = _diffusers_tiny(torch.float32)
    path = tmp_path / "vae_folder" if folder == "vae_folder" else tmp_path / "pipeline" / "vae"
    theirs.save_pretrained(path)
    root = tmp_path / folder
    np_model = NA.FrozenAutoencoderKL.from_diffusers(root)
    t_model = TA.FrozenAutoencoderKL.from_diffusers(root)
    assert np_model.scale_factor == t_model.scale_factor == 0.18215
    assert NA.FrozenAutoencoderKL.from_diffusers(root, scale_factor=0.2301).scale_factor == 0.2301
    z = np.random.default_rng(1).standard_normal((2, 4, 4, 3)).astype(np.float32)
    with torch.no_grad():
        ref = theirs.decode((1.0 / 0.18215) * torch.from_numpy(z)).sample
        t_out = t_model.decode(torch.from_numpy(z))
    assert_close("numpy from_diffusers decode", np_model.decode(z), ref, 1e-5)
    assert_close("torch from_diffusers decode", t_out, ref, 0.0)


def test_sample_clamps_the_log_variance_and_scales():
    ours = NA.FrozenAutoencoderKL(TINY, 4, scale_factor=0.5, dtype=np.float64)
    port = TA.FrozenAutoencoderKL(TINY, 4, scale_factor=0.5, dtype=torch.float64)
    mean = np.full((1, 4, 1, 2), 0.25)
    logvar = np.array([50.0, -50.0, 0.0, 2.0]).reshape(1, 4, 1, 1) * np.ones((1, 4, 1, 2))
    moments = np.concatenate([mean, logvar], axis=1)
    noise = np.ones((1, 4, 1, 2))
    expected = 0.5 * (mean + np.exp(0.5 * np.clip(logvar, -30, 20)) * noise)
    np.testing.assert_allclose(ours.sample(moments, noise=noise), expected, rtol=1e-15)
    np.testing.assert_allclose(port.sample(torch.from_numpy(moments),
                                           noise=torch.from_numpy(noise)).numpy(), expected,
                               rtol=1e-15)
    a, b = ours.sample(moments, rng=3), ours.sample(moments, rng=3)
    np.testing.assert_array_equal(a, b)                   # a seed reproduces the draw
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8))
    np.testing.assert_array_equal(ours(x, "encode_moments"), ours.encode_moments(x))
    with pytest.raises(NotImplementedError, match="fn must be"):
        ours(x, "reconstruct")


def test_scale_factor_table_in_the_docstring_is_the_constants():
    rows = re.findall(r"^\s+(\w+_uvit_\w+)\s+(autoencoder_kl\w*\.pth)\s+([0-9.]+)$",
                      NA.__doc__, flags=re.M)
    assert {r[0]: float(r[2]) for r in rows} == NA.SCALE_FACTORS
    assert {r[0]: r[1] for r in rows} == NA.AUTOENCODER_FILES
    assert NA.SCALE_FACTORS["mscoco_uvit_small"] == 0.23010


@pytest.mark.parametrize("ddconfig, error, match", [
    ({"ch": 32}, ValueError, "missing key"),
    (dict(TINY, double_z=False), ValueError, "double_z=True"),
    (dict(TINY, attn_resolutions=[16]), NotImplementedError, "attn_resolutions"),
    (dict(TINY, ch_mult=[2, 4]), NotImplementedError, "first entry other than 1"),
    (dict(TINY, attn_type="linear"), NotImplementedError, "attn_type='linear'"),
    (dict(TINY, dropout=0.1), NotImplementedError, "dropout"),
])
def test_bad_ddconfig(ddconfig, error, match):
    for cls in (NA.FrozenAutoencoderKL, TA.FrozenAutoencoderKL):
        with pytest.raises(error, match=match):
            cls(ddconfig, 4)


def test_bad_state_dicts_and_inputs_are_named():
    ours = NA.FrozenAutoencoderKL(TINY, 4)
    port = TA.FrozenAutoencoderKL(TINY, 4)
    diffusers_keys = ours.diffusers_state_dict()
    for model, sd in ((ours, diffusers_keys),
                      (port, {k: torch.from_numpy(v) for k, v in diffusers_keys.items()})):
        with pytest.raises(ValueError, match=r"missing keys.*encoder\.mid\.attn_1\.q\.weight"):
            model.load_state_dict(sd)
    paper = ours.state_dict()
    bad = dict(paper, **{"quant_conv.weight": np.zeros((8, 8, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"mis-shaped.*quant_conv\.weight"):
        ours.load_state_dict(bad)
    with pytest.raises(ValueError, match="2 embed_dim = 8 channels"):
        ours.sample(np.zeros((1, 6, 2, 2), np.float32))
    with pytest.raises(TypeError, match="floating"):
        ours.decode(np.zeros((1, 4, 2, 2), np.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        port.decode(np.zeros((1, 4, 2, 2), np.float32))


def test_folder_of_another_model_is_refused(tmp_path):
    import json
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(ValueError, match="VQModel.*not an AutoencoderKL"):
        NA.FrozenAutoencoderKL.from_diffusers(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL",
                                                            "shift_factor": 0.06}))
    with pytest.raises(ValueError, match="shift of the latents"):
        NA.FrozenAutoencoderKL.from_diffusers(tmp_path / "m")
