"""The autoencoders' blocks and aMUSEd's VQ-GAN (`VQModel`), in both packages.

* NumPy vs the torch port: every block (GroupNorm, ResnetBlock2D, the VAE's NCHW Downsample2D and
  Upsample2D, the mid block's Attention, UNetMidBlock2D, DownEncoderBlock2D, UpDecoderBlock2D,
  Encoder, Decoder), the VectorQuantizer (both of torch.cdist's routes) and tiny VQ-GANs (with and
  without mid attention, lookup_from_codebook on and off, odd image sizes, a vq_embed_dim of its
  own): float64 <= 1e-10, float32 <= 1e-5, code indices identical.
* The torch port vs diffusers' own classes, both dtypes, the same tolerances.
* aMUSEd's real VQ-GAN config (146,244,675 parameters) once, on one 32 x 32 image, against
  diffusers (slow: 12 s of CPU time, see the test).
* Central differences for the new functional backwards and blocks (their torch-autograd checks
  are in test_backward.py, which runs every case of the --grads report).
* The API as diffusers has it, folders, and bad input.
"""

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import VQModel as DiffusersVQModel  # noqa: E402

import uvit_numpy.functional as F  # noqa: E402
import uvit_numpy.vae as NV  # noqa: E402
import uvit_numpy.vq_model as NQ  # noqa: E402
import uvit_torch.vq_model as TQ  # noqa: E402
from tests.parity_params import assert_case_passes, case_params  # noqa: E402
from uvit_numpy.gradcheck import directional_error, module_directional_error  # noqa: E402
from uvit_numpy.module import NoDraws  # noqa: E402
from uvit_torch import parity  # noqa: E402
from uvit_torch.parity import vae as PV  # noqa: E402
from uvit_torch.parity.harness import TOLERANCE, assert_close, to_torch  # noqa: E402

# the KL autoencoder's cases run in test_autoencoder.py
CASES = [c for c in PV.cases() if not c.name.startswith("FrozenAutoencoderKL")]
DIFFUSERS_CASES = [c for c in PV.diffusers_cases(dtypes=("float64", "float32"))
                   if not c.name.startswith("FrozenAutoencoderKL")]


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    parity.quiet_diffusers()


# --------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, dtype, batch", case_params(CASES))
def test_numpy_vs_torch_port(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


@pytest.mark.parametrize("case, dtype, batch", case_params(DIFFUSERS_CASES))
def test_torch_port_vs_diffusers(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


def test_cases_cover_every_block_and_both_reports():
    names = " | ".join(c.name for c in CASES)
    for piece in ("GroupNorm", "ResnetBlock2D 8 -> 12 conv_shortcut", "Downsample2D VAE",
                  "Upsample2D VAE", "Attention VAE mid block", "UNetMidBlock2D with attention",
                  "UNetMidBlock2D no attention", "DownEncoderBlock2D", "UpDecoderBlock2D",
                  "Encoder", "Decoder", "VectorQuantizer indices: 12 codes, direct",
                  "VectorQuantizer indices: 40 codes, matrix", "VQModel sample: tiny",
                  "VQModel decode ids: tiny", "lookup off", "13x11"):
        assert piece in names, piece
    report = [c.name for c in parity.all_cases()]
    assert "VQModel sample: tiny" in report
    from tests.test_backward import GRAD_CASES        # grads.grad_cases(), built once a session
    grad_names = " | ".join(c.name for c in GRAD_CASES)
    for piece in ("group_norm", "pad2d", "upsample_nearest2d", "avg_pool2d", "straight_through",
                  "vq_loss legacy", "ResnetBlock2D", "Attention VAE mid block", "Encoder",
                  "Decoder", "VectorQuantizer grads", "VQModel grads: tiny"):
        assert piece in grad_names, f"no gradient case for {piece!r}"


def test_float32_stays_float32():
    for case in CASES:
        ours, _, inputs = case.build(np.dtype(np.float32), 1)
        out = ours(*inputs)
        if np.issubdtype(np.asarray(out).dtype, np.floating):
            assert np.asarray(out).dtype == np.float32, case.name


def test_parameter_counts_equal_diffusers():
    for name, overrides, _, _ in PV.VQ_VARIANTS:
        cfg = NQ.resolve_config("tiny", **overrides)
        with torch.device("meta"):
            theirs = DiffusersVQModel(**{k: list(v) if isinstance(v, tuple) else v
                                         for k, v in cfg.items()})
            port = TQ.VQModel(**cfg)
        ours = NQ.VQModel(**cfg, rng=0)
        n = sum(p.numel() for p in theirs.parameters())
        assert ours.num_parameters() == n == sum(p.numel() for p in port.parameters()), name
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict()), name


# --------------------------------------------------------------------------------------------------
# aMUSEd's VQ-GAN at its real size
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_amused_vq_gan_real_config_against_diffusers():
    """aMUSEd's VQ-GAN (146,244,675 parameters), one 32 x 32 image (2 x 2 codes), float32 and
    float64, NumPy against diffusers sharing one copy of the weights.

    float64: <= 1e-10 and identical codes. float32: identical codes; the NumPy model within 1e-5
    of the float64 result of the same float32 weights (it is a float32-accurate implementation),
    and within 1e-5 of diffusers computed with torch's plain convolution. Measured with the
    stock oneDNN convolution, diffusers' own float32 result is 1.0e-5 to 1.3e-5 away from that
    float64 result (two seeds), more than ours (3e-6 to 4e-6): oneDNN's float32 3x3 kernels, over
    ~40 convolutions, round more than an im2col GEMM does. That is torch's float32 error, not a
    difference of the two implementations, so the float32 comparison is made with
    `torch.backends.mkldnn` off (torch's im2col + GEMM path; the same network, computed with
    torch's own reference convolution).
    Measured: 12 s of CPU time (the wall time was 19-32 s on a shared, busy 2-core machine).
    """
    start = time.process_time()
    x32 = np.random.default_rng(0).uniform(-1.0, 1.0, (1, 3, 32, 32)).astype(np.float32)
    ours, theirs = PV.shared_vq_pair("amused", np.float32)
    assert ours.num_parameters() == 146_244_675
    assert sum(p.numel() for p in theirs.parameters()) == 146_244_675
    latents = ours.encode(x32).latents
    PV.spread_codebook_(theirs.quantize, torch.from_numpy(latents))
    ids32 = ours.quantize(latents)[2][2]
    sample32 = ours.decode(latents).sample
    torch.backends.mkldnn.enabled = False
    try:
        with torch.no_grad():
            h = theirs.encode(to_torch(x32)).latents
            theirs_ids32 = theirs.quantize(h)[2][2].numpy()
            theirs_sample32 = theirs.decode(h).sample.numpy().copy()
    finally:
        torch.backends.mkldnn.enabled = True
    state32 = ours.state_dict()
    del ours, theirs, h
    # the same (float32-valued) weights in float64, shared again
    ours64 = NQ.VQModel.from_config("amused", dtype=np.float64,
                                    rng=NoDraws()).eval()
    ours64.load_state_dict(state32)
    del state32
    with torch.device("meta"):
        theirs64 = DiffusersVQModel(**{k: list(v) if isinstance(v, tuple) else v
                                       for k, v in ours64.config.items()})
    theirs64.load_state_dict({k: torch.from_numpy(v) for k, v in ours64.state_dict().items()},
                             assign=True)
    x64 = x32.astype(np.float64)
    latents64 = ours64.encode(x64).latents
    ids64 = ours64.quantize(latents64)[2][2]
    out64 = ours64.decode(latents64)
    with torch.no_grad():
        h = theirs64.eval().encode(to_torch(x64)).latents
        theirs_ids64 = theirs64.quantize(h)[2][2].numpy()
        theirs_out64 = theirs64.decode(h)
    print(assert_close("amused VQ-GAN float64, numpy vs diffusers", out64.sample,
                       theirs_out64.sample, 1e-10).report())
    assert_close("commit loss float64", out64.commit_loss, theirs_out64.commit_loss, 1e-10)
    np.testing.assert_array_equal(ids64, theirs_ids64)
    np.testing.assert_array_equal(ids32, ids64)
    np.testing.assert_array_equal(ids32, theirs_ids32)
    assert len(set(ids64.tolist())) > 1                    # the codes differ by position
    print(assert_close("amused VQ-GAN float32 numpy vs float64", sample32, theirs_out64.sample,
                       1e-5).report())
    print(assert_close("amused VQ-GAN float32, numpy vs diffusers (torch's plain conv)",
                       sample32, theirs_sample32, 1e-5).report())
    print(f"CPU time {time.process_time() - start:.1f} s")


# --------------------------------------------------------------------------------------------------
# Central differences (float64, no torch)
# --------------------------------------------------------------------------------------------------
CD_FUNCTIONS = [c for c in PV.function_cases() if c.name not in PV.STOP_GRADIENT]


@pytest.mark.parametrize("case", CD_FUNCTIONS, ids=[c.name for c in CD_FUNCTIONS])
def test_functional_backward_matches_central_differences(case):
    fn, _, inputs = case.build(np.dtype(np.float64), 2)
    wrt = case.grad_inputs or [i for i, x in enumerate(inputs)
                               if np.issubdtype(np.asarray(x).dtype, np.floating)]
    out = fn(*inputs)
    rng = np.random.default_rng(7)
    dy = rng.standard_normal(np.shape(out))
    analytic = fn.backward(dy)
    err = directional_error(lambda *xs: fn.forward_fn(*xs)[0], inputs, analytic, dy, rng,
                            wrt=list(wrt))
    assert err <= 1e-6, f"{case.name}: central differences disagree by {err:.2e}"


def _perturbed(model, seed=3, scale=0.3):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p += scale * rng.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("make, shape", [
    (lambda: NV.ResnetBlock2D(in_channels=4, out_channels=6, temb_channels=None, groups=2,
                              output_scale_factor=1.5, dtype=np.float64, rng=0), (2, 4, 3, 5)),
    (lambda: NV.Attention(4, heads=2, dim_head=2, norm_num_groups=2, eps=1e-6, bias=True,
                          residual_connection=True, rescale_output_factor=2.0,
                          dtype=np.float64, rng=0), (2, 4, 3, 2)),
    (lambda: NV.Encoder(3, 2, ("DownEncoderBlock2D",) * 2, (4, 8), 1, 2, dtype=np.float64,
                        rng=0), (1, 3, 5, 4)),
    (lambda: NV.Decoder(2, 3, ("UpDecoderBlock2D",) * 2, (4, 8), 1, 2, dtype=np.float64,
                        rng=0), (1, 2, 2, 3)),
], ids=["ResnetBlock2D", "Attention", "Encoder", "Decoder"])
def test_block_backward_matches_central_differences(make, shape):
    model = _perturbed(make())
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(model.eval()(x).shape)
    err, where = module_directional_error(model, (x,), dy, rng, wrt=(0,), directions=1)
    assert err <= 1e-6, f"central differences disagree by {err:.2e} in {where}"


def test_straight_through_is_the_identity_to_z_and_the_loss_moves_the_codes():
    """The quantiser's backward: with no loss gradient the input gets the output's gradient
    unchanged and the codebook gets nothing; the loss adds 2 (z - z_q) / n to z (legacy weight 1)
    and 2 beta (z_q - z) / n to the rows picked."""
    q = NQ.VectorQuantizer(6, 3, 0.25, dtype=np.float64, rng=0)
    q.embedding.weight = np.random.default_rng(0).standard_normal((6, 3))
    z = np.random.default_rng(1).standard_normal((2, 3, 2, 2))
    dy = np.random.default_rng(2).standard_normal(z.shape)
    z_q, _, (_, _, idx) = q(z)
    np.testing.assert_allclose(z_q, q.embedding.weight[idx].reshape(2, 2, 2, 3)
                               .transpose(0, 3, 1, 2), atol=1e-15)
    np.testing.assert_array_equal(q.backward(dy), dy)
    assert not np.any(q.grads()["embedding.weight"])
    q.zero_grad()
    q(z)
    dz = q.backward(dy, 1.0)
    diff = z_q - z
    np.testing.assert_allclose(dz, dy - 2 * diff / z.size, rtol=1e-12)
    rows = np.zeros((6, 3))
    np.add.at(rows, idx, 0.25 * 2 * diff.transpose(0, 2, 3, 1).reshape(-1, 3) / z.size)
    np.testing.assert_allclose(q.grads()["embedding.weight"], rows, rtol=1e-12, atol=1e-18)


def test_vq_loss_legacy_swaps_the_weights_not_the_value():
    rng = np.random.default_rng(0)
    z, z_q = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    a, ca = F.vq_loss(z, z_q, 0.25, legacy=True, return_cache=True)
    b, cb = F.vq_loss(z, z_q, 0.25, legacy=False, return_cache=True)
    assert a == b == pytest.approx(1.25 * np.mean((z - z_q) ** 2), rel=1e-15)
    dz_a, dq_a = F.vq_loss_backward(1.0, ca)
    dz_b, dq_b = F.vq_loss_backward(1.0, cb)
    np.testing.assert_allclose(dz_a, 4 * dz_b, rtol=1e-15)      # weight 1 vs beta = 0.25
    np.testing.assert_allclose(dq_b, 4 * dq_a, rtol=1e-15)


def test_euclidean_distances_take_torchs_two_routes():
    rng = np.random.default_rng(0)
    for n, k in ((4, 12), (25, 25), (26, 5), (4, 26)):
        x, y = rng.standard_normal((n, 7)), rng.standard_normal((k, 7))
        ours = F.euclidean_distances(x, y)
        theirs = torch.cdist(torch.from_numpy(x), torch.from_numpy(y)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-14)
    # a tie goes to the lowest index, in both
    codes = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    z = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_array_equal(F.nearest_code(z, codes), [0, 0])
    theirs = torch.argmin(torch.cdist(torch.from_numpy(z), torch.from_numpy(codes)), dim=1)
    np.testing.assert_array_equal(theirs.numpy(), [0, 0])


# --------------------------------------------------------------------------------------------------
# The API, as diffusers has it
# --------------------------------------------------------------------------------------------------
def _tiny_pair(dtype=np.float64, **overrides):
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 8, 6)).astype(dtype)
    ours, theirs = PV.vq_pair(dtype, probe=x, torch_cls=DiffusersVQModel, **overrides)
    return ours, theirs, x


def test_quantize_returns_what_diffusers_returns():
    ours, theirs, x = _tiny_pair()
    h = ours.encode(x).latents
    z_q, loss, (perplexity, min_encodings, idx) = ours.quantize(h)
    with torch.no_grad():
        t_zq, t_loss, (t_p, t_m, t_idx) = theirs.quantize(to_torch(h))
    assert perplexity is None and min_encodings is None and t_p is None and t_m is None
    assert idx.shape == tuple(t_idx.shape) == (2 * 4 * 3,) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, t_idx.numpy())
    assert loss.shape == () and z_q.shape == h.shape
    assert_close("loss", loss, t_loss, 1e-10)
    sane = NQ.VectorQuantizer(32, 4, 0.25, sane_index_shape=True, dtype=np.float64)
    sane.load_state_dict(ours.quantize.state_dict())
    np.testing.assert_array_equal(sane(h)[2][2], idx.reshape(2, 4, 3))


def test_decode_routes_and_outputs():
    """decode(h) quantises; decode(ids, force_not_quantize=True, shape) looks codes up (aMUSEd's
    path); without lookup_from_codebook, force_not_quantize decodes h as it is."""
    ours, theirs, x = _tiny_pair()
    h = ours.encode(x).latents
    ids = ours.quantize(h)[2][2].reshape(2, 4, 3)
    by_ids = ours.decode(ids, force_not_quantize=True, shape=(2, 4, 3, 4))
    by_h = ours.decode(h)
    assert_close("ids route vs quantise route", by_ids.sample, by_h.sample, 1e-12)
    assert by_ids.commit_loss.dtype == np.int64 and not by_ids.commit_loss.any()
    with torch.no_grad():
        ref = theirs.decode(torch.from_numpy(ids), force_not_quantize=True, shape=(2, 4, 3, 4))
    assert ref.commit_loss.dtype == torch.int64
    sample, loss = ours.decode(h, return_dict=False)
    assert_close("tuple", sample, by_h.sample, 0.0)
    (latents,) = ours.encode(x, return_dict=False)
    assert_close("encode tuple", latents, h, 0.0)
    out_sample, out_loss = ours(x, return_dict=False)
    assert_close("forward", out_sample, by_h.sample, 0.0)
    no_lookup, theirs_nl, _ = _tiny_pair(lookup_from_codebook=False)
    raw = no_lookup.decode(h, force_not_quantize=True)
    with torch.no_grad():
        raw_ref = theirs_nl.decode(to_torch(h), force_not_quantize=True)
    assert_close("force_not_quantize without lookup", raw.sample, raw_ref.sample, 1e-10)
    assert not raw.commit_loss.any() and raw.commit_loss.dtype == np.float64


def test_model_backward_reaches_the_encoder_through_the_codes():
    """VQModel.backward after forward: the input and every parameter get a gradient; the codebook
    only through the commit loss."""
    ours, _, x = _tiny_pair()
    ours.train()
    out = ours(x)
    dx = ours.backward(np.random.default_rng(0).standard_normal(out.sample.shape))
    assert dx.shape == x.shape and np.any(dx)
    g = ours.grads()
    assert not np.any(g["quantize.embedding.weight"])
    assert np.any(g["encoder.conv_in.weight"])
    ours.zero_grad()
    out = ours(x)
    ours.backward(np.zeros_like(out.sample), 1.0)
    assert np.any(ours.grads()["quantize.embedding.weight"])


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------
def test_diffusers_folder_loads_in_both_packages_and_ours_loads_in_diffusers(tmp_path):
    ours, theirs, x = _tiny_pair(np.float32)
    theirs.save_pretrained(tmp_path / "pipeline" / "vqvae")
    np_model = NQ.VQModel.from_pretrained(tmp_path / "pipeline")         # finds vqvae/
    t_model = TQ.VQModel.from_pretrained(tmp_path / "pipeline" / "vqvae")
    with torch.no_grad():
        ref = theirs(to_torch(x)).sample
        t_out = t_model(to_torch(x)).sample
    assert_close("numpy from_pretrained", np_model(x).sample, ref, TOLERANCE[np.dtype("f4")])
    assert_close("torch from_pretrained", t_out, ref, 0.0)
    assert np_model.config == ours.config
    np_model.save_pretrained(tmp_path / "ours", trained_by="a test")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == "VQModel" and config["_trained_by"] == "a test"
    back = DiffusersVQModel.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert_close("diffusers reads ours", back(to_torch(x)).sample, ref, 0.0)
    t_model.save_pretrained(tmp_path / "ours_t")
    assert NQ.VQModel.from_pretrained(tmp_path / "ours_t").config == ours.config


def test_numpy_from_pretrained_needs_no_torch(tmp_path):
    _, theirs, x = _tiny_pair(np.float32)
    theirs.save_pretrained(tmp_path / "vq")
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", theirs(to_torch(x)).sample.numpy())
    code = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from uvit_numpy.vq_model import VQModel
        m = VQModel.from_pretrained({str(tmp_path / "vq")!r})
        out = m(np.load({str(tmp_path / "x.npy")!r})).sample
        ref = np.load({str(tmp_path / "ref.npy")!r})
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), np.abs(out - ref).max()
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_folder_of_another_model_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="AutoencoderKL.*not a VQModel"):
        NQ.VQModel.from_pretrained(tmp_path / "m")


# --------------------------------------------------------------------------------------------------
# Bad input and what is not implemented
# --------------------------------------------------------------------------------------------------
def test_bad_input_is_named_before_any_work():
    model = NQ.VQModel.from_config("tiny", dtype=np.float64).eval()
    port = TQ.VQModel.from_config("tiny").eval()
    with pytest.raises(ValueError, match="expected channels 3"):
        model(np.zeros((1, 4, 8, 8)))
    with pytest.raises(ValueError, match="too small for 1 down-samplings: each side must be at "
                                         "least 2"):
        model(np.zeros((1, 3, 1, 8)))
    with pytest.raises(TypeError, match="floating"):
        model(np.zeros((1, 3, 8, 8), dtype=np.int64))
    ids = np.zeros((1, 4, 4), dtype=np.int64)
    for m, i in ((model, ids), (port, torch.from_numpy(ids))):
        with pytest.raises(ValueError, match="needs shape"):
            m.decode(i, force_not_quantize=True)
        with pytest.raises(ValueError, match=r"holds B\*h\*w = 32 codes, but 16"):
            m.decode(i, force_not_quantize=True, shape=(2, 4, 4, 4))
        with pytest.raises(ValueError, match="expected C = 4"):
            m.decode(i, force_not_quantize=True, shape=(1, 4, 4, 3))
        with pytest.raises(ValueError, match=r"values in \[0, 32\)"):
            m.decode(i + 32, force_not_quantize=True, shape=(1, 4, 4, 4))
        with pytest.raises(TypeError, match="integer"):
            m.decode(i * 1.0, force_not_quantize=True, shape=(1, 4, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        port(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['latent_chanels'\]"):
        NQ.VQModel.from_config("tiny", latent_chanels=4)


@pytest.mark.parametrize("make, what", [
    (lambda: NV.Decoder(norm_type="spatial"), "norm_type='spatial'"),
    (lambda: NV.ResnetBlock2D(in_channels=32), "temb_channels=512"),
    (lambda: NV.Encoder(down_block_types=("AttnDownEncoderBlock2D",)), "AttnDownEncoderBlock2D"),
    (lambda: NQ.VectorQuantizer(4, 2, 0.25, remap="used.npy"), "remap"),
    (lambda: NV.UNetMidBlock2D(32, None, resnet_time_scale_shift="spatial"), "spatial"),
    (lambda: NV.get_activation("mish"), "mish"),
])
def test_unimplemented_options_say_so(make, what):
    with pytest.raises(NotImplementedError, match=what.replace("(", r"\(").replace(")", r"\)")):
        make()
