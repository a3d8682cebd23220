"""The U-ViT paper's latent pipelines (`uvit_pipeline` in both packages), on tiny random models.

* NumPy against torch, end to end: class-conditional and text-to-image (float64 <= 1e-10,
  float32 <= 1e-5), the command's PNGs too.
* The wiring, each piece against an independent computation: the guidance formula and the null
  class, the empty-prompt context (transformers' CLIP run as the paper's `FrozenCLIPEmbedder`),
  the time the network is fed (n = N t), the schedule against the paper's training definition,
  the scale factor on decode, the order of the starting noise, 8-bit rounding.
* The command's checks: every bad argument is refused before any model is built, and a
  checkpoint that does not fit its config is refused from its shapes.
The autoencoder and the sampler have their own oracles (test_autoencoder.py, test_dpm_solver.py).
"""

import json
import os

import numpy as np
import pytest
import torch

from uvit_numpy import autoencoder as NA
from uvit_numpy import clip as NC
from uvit_numpy import clip_tokenizer as NTok
from uvit_numpy import uvit as NU
from uvit_numpy import uvit_pipeline as NP
from uvit_numpy.configs import UVIT_CONFIGS
from uvit_numpy.dpm_solver import DPM_Solver
from uvit_torch import autoencoder as TA
from uvit_torch import clip as TC
from uvit_torch import uvit as TU
from uvit_torch import uvit_pipeline as TP
from uvit_torch.parity.harness import (TOLERANCE, TORCH_DTYPE, assert_close, numpy_state_dict,
                                       randomize_)

torch.set_num_threads(1)

# Tiny stand-ins of the paper's networks: 8x8 latents (16x16 pictures), patch 2, width 32.
TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32,
                     ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
TINY_CLASS = dict(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2,
                  mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=11, conv=False)
TINY_TEXT = dict(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2,
                 mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, clip_dim=32,
                 num_clip_token=16)
STEPS = 5                                  # "fast": a third- and a second-order update


# --------------------------------------------------------------------------------------------------
# Tiny models, the same weights in both packages
# --------------------------------------------------------------------------------------------------
def nnet_pair(kwargs, dtype, seed=0):
    """(NumPy, torch) U-ViT with the same perturbed random weights."""
    torch.manual_seed(seed)
    cls = TU.UViTText if "clip_dim" in kwargs else TU.UViT
    theirs = cls(**kwargs, dtype=TORCH_DTYPE[np.dtype(dtype)]).eval()
    randomize_(theirs, seed)
    with torch.no_grad():                  # pos_embed starts random; the rest already is
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn(p.shape, dtype=p.dtype))
    cls = NU.UViTText if "clip_dim" in kwargs else NU.UViT
    ours = cls(**kwargs, dtype=dtype).eval()
    ours.load_state_dict(numpy_state_dict(theirs))
    return ours, theirs


def autoencoder_pair(dtype, scale_factor, seed=1):
    torch.manual_seed(seed)
    theirs = TA.FrozenAutoencoderKL(TINY_DDCONFIG, 4, scale_factor,
                                    dtype=TORCH_DTYPE[np.dtype(dtype)])
    randomize_(theirs, seed)
    ours = NA.FrozenAutoencoderKL(TINY_DDCONFIG, 4, scale_factor, dtype=dtype)
    ours.load_state_dict(numpy_state_dict(theirs))
    return ours, theirs


def tiny_vocab():
    """CLIP's recipe without merges: every byte character, the same with </w>, the two special
    tokens; each character is a token."""
    chars = list(NTok.bytes_to_unicode().values())
    tokens = chars + [c + NTok.END_OF_WORD for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer_folder(folder, max_length=16):
    vocab = tiny_vocab()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": max_length, **special}, f)
    return folder


def tiny_clip_config():
    vocab = tiny_vocab()
    return {**NC.CONFIGS["tiny"], "vocab_size": len(vocab), "hidden_size": 32,
            "max_position_embeddings": 16, "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"]}


def clip_pair(dtype, seed=2):
    torch.manual_seed(seed)
    theirs = TC.CLIPTextModel(tiny_clip_config(), dtype=TORCH_DTYPE[np.dtype(dtype)]).eval()
    randomize_(theirs, seed)
    ours = NC.CLIPTextModel(tiny_clip_config(), dtype=dtype).eval()
    ours.load_state_dict(numpy_state_dict(theirs))
    return ours, theirs


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return write_tokenizer_folder(str(tmp_path_factory.mktemp("tok") / "tokenizer"))


def pipelines(dtype, text=False, tokenizer_folder=None, scale_factor=0.23010, guidance=0.7):
    """(NumPy pipeline, torch pipeline) over the same tiny weights."""
    n_net, t_net = nnet_pair(TINY_TEXT if text else TINY_CLASS, dtype)
    n_ae, t_ae = autoencoder_pair(dtype, scale_factor)
    if not text:
        return NP.UViTPipeline(n_net, n_ae, guidance), TP.UViTPipeline(t_net, t_ae, guidance)
    n_clip, t_clip = clip_pair(dtype)
    n_tok = NTok.CLIPTokenizer.from_pretrained(tokenizer_folder)
    from uvit_torch.clip_tokenizer import CLIPTokenizer
    t_tok = CLIPTokenizer.from_pretrained(tokenizer_folder)
    return (NP.UViTPipeline(n_net, n_ae, guidance, n_clip, n_tok),
            TP.UViTPipeline(t_net, t_ae, guidance, t_clip, t_tok))


# --------------------------------------------------------------------------------------------------
# NumPy against torch, end to end
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_class_pipeline_numpy_matches_torch(dtype):
    ours, theirs = pipelines(dtype)
    a = ours(labels=[3, 9], seed=7, steps=STEPS)
    b = theirs(labels=[3, 9], seed=7, steps=STEPS)
    tol = TOLERANCE[np.dtype(dtype)]
    assert a.latents.dtype == dtype and a.images.shape == (2, 3, 16, 16)
    assert_close("latents", a.latents, b.latents, tol)
    assert_close("images", a.images, b.images, tol)
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_text_pipeline_numpy_matches_torch(dtype, tokenizer_folder):
    ours, theirs = pipelines(dtype, text=True, tokenizer_folder=tokenizer_folder)
    prompts = ["a red cube", "two dogs on the grass, at night"]
    tol = TOLERANCE[np.dtype(dtype)]
    ctx, empty = ours.encode_text(prompts)
    t_ctx, t_empty = theirs.encode_text(prompts)
    assert ctx.shape == (2, 16, 32) and empty.shape == (16, 32)
    assert_close("contexts", ctx, t_ctx, tol)
    assert_close("empty context", empty, t_empty, tol)
    a = ours(prompts=prompts, seed=3, steps=STEPS)
    b = theirs(prompts=prompts, seed=3, steps=STEPS)
    assert_close("latents", a.latents, b.latents, tol)
    assert_close("images", a.images, b.images, tol)


# --------------------------------------------------------------------------------------------------
# The wiring, piece by piece
# --------------------------------------------------------------------------------------------------
class Spy:
    """A stand-in network that records its calls and returns a known function of its inputs:
    eps = 0.1 x + 0.001 t + 0.01 (label or mean context), different for every condition."""

    def __init__(self, num_classes=11, text=False):
        self.num_classes, self.calls = num_classes, []
        if text:
            self.clip_dim, self.num_clip_token = 3, 4
        self.in_chans, self.img_size, self.dtype = 2, 4, np.float64

    def __call__(self, x, timesteps, cond):
        self.calls.append((np.array(timesteps), np.array(cond)))
        c = np.asarray(cond, dtype=np.float64)
        c = c.reshape(len(x), -1).mean(axis=1)                     # (B,)
        return 0.1 * x + 1e-3 * timesteps[:, None, None, None] + 1e-2 * c[:, None, None, None]


def test_guidance_is_the_papers_cfg_nnet():
    spy = Spy()
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4))
    t = np.array([500.0, 500.0, 500.0])
    labels = np.array([0, 4, 9])
    out = NP.class_cfg_nnet(spy, labels, 0.4)(x, t)
    (t1, y1), (t2, y2) = spy.calls
    assert np.array_equal(y1, labels) and np.array_equal(y2, [10, 10, 10])   # the null class
    cond, uncond = Spy()(x, t, labels), Spy()(x, t, np.full(3, 10))
    assert np.array_equal(out, cond + 0.4 * (cond - uncond))
    assert not np.allclose(out, cond)
    spy.calls.clear()                                            # s = 0: the conditional alone
    assert np.array_equal(NP.class_cfg_nnet(spy, labels, 0)(x, t), cond) and len(spy.calls) == 1
    # the torch twin: the same labels, the same formula
    t_spy = TorchSpy(spy)
    t_out = TP.class_cfg_nnet(t_spy, torch.from_numpy(labels), 0.4)(torch.from_numpy(x),
                                                                    torch.from_numpy(t))
    assert [c[1].tolist() for c in t_spy.inner.calls[-2:]] == [[0, 4, 9], [10, 10, 10]]
    assert np.array_equal(t_out.numpy(), out)


class TorchSpy:
    """The Spy on tensors."""

    def __init__(self, inner):
        self.inner, self.num_classes = inner, inner.num_classes

    def __call__(self, x, timesteps, cond):
        return torch.from_numpy(self.inner(x.numpy(), timesteps.numpy(), cond.numpy()))


def test_text_guidance_uses_the_empty_context():
    spy = Spy(text=True)
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((2, 2, 4, 4)), np.array([10.0, 10.0])
    contexts, empty = rng.standard_normal((2, 4, 3)), rng.standard_normal((4, 3))
    out = NP.text_cfg_nnet(spy, contexts, empty, 1.0)(x, t)
    (_, c1), (_, c2) = spy.calls
    assert np.array_equal(c1, contexts)
    assert np.array_equal(c2, np.stack([empty, empty]))           # repeated for every sample
    cond, uncond = Spy(text=True)(x, t, contexts), Spy(text=True)(x, t, np.stack([empty] * 2))
    assert np.array_equal(out, cond + 1.0 * (cond - uncond))


def test_the_network_is_fed_n_equal_N_t():
    """The paper's discrete models are trained with labels n = 1..1000 on x_n (abar_n = prod of
    (1 - beta_i), i <= n); the sampler must feed n = 1000 t, and its schedule at t = n / 1000
    must be that abar_n."""
    spy = Spy()
    steps = 6                                                    # "fast": orders 3, 2, 1
    model_fn = NP.discrete_model_fn(NP.class_cfg_nnet(spy, np.array([1]), 0.0))
    NP.sample_latents(model_fn, np.zeros((1, 2, 4, 4)), steps)
    fed = np.array([call[0][0] for call in spy.calls])
    grid = 1000.0 * np.linspace(1.0, 1e-3, steps + 1)            # time-uniform, t = 1 .. 1/N
    assert len(fed) == steps and fed[0] == 1000.0
    np.testing.assert_allclose(fed, grid[:-1], rtol=1e-12)      # every grid point but the end
    # the schedule: alpha_{n/N}^2 = prod_{i <= n} (1 - beta_i), the training's abar_n
    betas = NP.stable_diffusion_beta_schedule().astype(np.float32).astype(np.float64)
    abar = np.cumprod(1.0 - betas)
    ns = NP.noise_schedule()
    for n in (1, 2, 500, 999, 1000):
        assert abs(ns.marginal_alpha(np.float64(n / 1000)) ** 2 / abar[n - 1] - 1) < 1e-12


def test_betas_are_the_papers_as_float32():
    """The paper's torch.linspace(sqrt 0.00085, sqrt 0.012, 1000, float64) ** 2, then .float()."""
    theirs = (torch.linspace(0.00085 ** 0.5, 0.0120 ** 0.5, 1000, dtype=torch.float64) ** 2)
    ours = NP.stable_diffusion_beta_schedule()
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-15, atol=0)
    assert np.array_equal(ours.astype(np.float32), theirs.float().numpy())


def test_sampling_is_the_papers_dpm_solver_call():
    """sample_latents = DPM_Solver(model_fn, schedule, predict_x0=True).sample(z, steps,
    eps=1/N, T=1) with the solver's own defaults (order 3, 'fast', 'time_uniform')."""
    spy = Spy()
    model_fn = NP.discrete_model_fn(NP.class_cfg_nnet(spy, np.array([2, 5]), 0.4))
    z = np.random.default_rng(2).standard_normal((2, 2, 4, 4))
    ours = NP.sample_latents(model_fn, z, 7)
    theirs = DPM_Solver(model_fn, NP.noise_schedule(), predict_x0=True,
                        thresholding=False).sample(z, steps=7, eps=1.0 / 1000, T=1.0)
    assert np.array_equal(ours, theirs)


def test_decode_divides_by_the_configs_scale_factor():
    ae, _ = autoencoder_pair(np.float64, 0.23010)
    plain, _ = autoencoder_pair(np.float64, 1.0)
    pipe = NP.UViTPipeline(NU.UViT(**TINY_CLASS, dtype=np.float64), ae, 0.4)
    z = np.random.default_rng(3).standard_normal((1, 4, 8, 8))
    images = pipe.decode(z)
    expected = np.clip(0.5 * (plain.decoder(plain.post_quant_conv(z / 0.23010)) + 1), 0, 1)
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-13)
    # the table: ImageNet decodes with Stable Diffusion's 0.18215, MS-COCO with 0.23010
    assert {k: v["scale_factor"] for k, v in NP.PIPELINE_CONFIGS.items()} == {
        "imagenet256_uvit_large": 0.18215, "imagenet256_uvit_huge": 0.18215,
        "imagenet512_uvit_large": 0.18215, "imagenet512_uvit_huge": 0.18215,
        "mscoco_uvit_small": 0.23010, "mscoco_uvit_small_deep": 0.23010}
    assert {k: v["autoencoder"] for k, v in NP.PIPELINE_CONFIGS.items()
            if "huge" in k} == {k: "autoencoder_kl_ema.pth" for k in NP.PIPELINE_CONFIGS
                                if "huge" in k}


def frozen_clip_embedder(model_folder, tokenizer_folder, prompts):
    """The paper's `FrozenCLIPEmbedder.encode`, with transformers (max_length 16 here)."""
    import transformers
    tok = transformers.CLIPTokenizer.from_pretrained(tokenizer_folder)
    model = transformers.CLIPTextModel.from_pretrained(model_folder,
                                                       dtype=torch.float64).eval()
    batch = tok(prompts, truncation=True, max_length=16, return_length=True,
                return_overflowing_tokens=False, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"]).last_hidden_state.numpy()


def test_text_features_are_the_papers_frozen_clip_embedder(tmp_path, tokenizer_folder):
    ours, _ = clip_pair(np.float64)
    ours.save_pretrained(str(tmp_path / "clip"))
    tok = NTok.CLIPTokenizer.from_pretrained(tokenizer_folder)
    prompts = ["a red cube", "an astronaut riding a horse, in watercolour and far too long"]
    expected = frozen_clip_embedder(str(tmp_path / "clip"), tokenizer_folder, prompts)
    assert_close("contexts", NP.encode_prompts(ours, tok, prompts, 16), expected, 1e-10)
    empty = NP.empty_context(ours, tok, 16)                        # extract_empty_feature.py
    assert_close("empty context", empty,
                 frozen_clip_embedder(str(tmp_path / "clip"), tokenizer_folder, [""])[0], 1e-10)
    vocab = tiny_vocab()                     # "" is <|startoftext|> then <|endoftext|> to the end
    ids = np.array([[vocab["<|startoftext|>"]] + [vocab["<|endoftext|>"]] * 15])
    assert np.array_equal(empty, ours(ids).last_hidden_state[0])


def test_starting_noise_order_and_seed():
    z = NP.initial_latents(5, 2, (4, 8, 8), np.float32)
    expected = np.random.default_rng(5).standard_normal(2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    assert np.array_equal(z, expected.astype(np.float32))          # C order, sample 0 first
    assert np.array_equal(TP.initial_latents(5, 2, (4, 8, 8)).numpy(), z)
    assert not np.array_equal(z, NP.initial_latents(6, 2, (4, 8, 8)))


def test_pixels_round_as_torchvision_save_image():
    x = np.random.default_rng(4).uniform(-0.1, 1.1, (2, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, :3] = [0.5 / 255, 254.5 / 255, 1.5 / 255]         # ties
    theirs = torch.from_numpy(x).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    assert np.array_equal(NP.to_uint8(x), theirs.permute(0, 2, 3, 1).numpy())


def test_pipeline_refuses_bad_input():
    pipe = NP.UViTPipeline(NU.UViT(**TINY_CLASS), NA.FrozenAutoencoderKL(TINY_DDCONFIG, 4), 0.4)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 10\)"):
        pipe.sample(labels=[10])                                   # 10 is the null class
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe.sample(labels=[1], guidance_scale=-1.0)
    with pytest.raises(ValueError, match="steps"):
        pipe.sample(labels=[1], steps=0)
    with pytest.raises(ValueError, match="labels: this network is class-conditional"):
        pipe.sample()
    text = NU.UViTText(**TINY_TEXT)
    with pytest.raises(ValueError, match="needs a text_encoder"):
        NP.UViTPipeline(text, pipe.autoencoder)


# --------------------------------------------------------------------------------------------------
# Does a checkpoint fit its config?
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(UVIT_CONFIGS))
def test_fingerprint_of_every_paper_config(name):
    """The sizes read from a state dict's shapes are the config's (the torch model on the meta
    device gives the real shapes without allocating them)."""
    with torch.device("meta"):
        model = TU.from_config(name)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert NP.checkpoint_fingerprint(shapes) == NP.config_fingerprint(UVIT_CONFIGS[name])
    NP.check_checkpoint_fits(shapes, name)


def test_a_checkpoint_of_another_config_is_named():
    with torch.device("meta"):
        large = TU.from_config("imagenet256_uvit_large")
    shapes = {k: tuple(v.shape) for k, v in large.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit --config imagenet256_uvit_huge: it has "
                                         r"embed_dim 1024 \(expected 1152\), depth 20 "
                                         r"\(expected 28\).*conv True \(expected False\); it "
                                         r"fits the paper's imagenet256_uvit_large"):
        NP.check_checkpoint_fits(shapes, "imagenet256_uvit_huge", "the checkpoint")
    with pytest.raises(ValueError, match="not a U-ViT state dict"):
        NP.checkpoint_fingerprint({"encoder.conv_in.weight": (128, 3, 3, 3)})


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def save_safetensors(state_dict, path):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
    return path


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Tiny checkpoints (float32) standing in for imagenet256_uvit_huge and mscoco_uvit_small,
    whose configs are patched to the tiny ones (1001 classes, as the paper's), and a tiny CLIP
    folder with its tokenizer; both packages' backends build the tiny autoencoder."""
    klass = {**TINY_CLASS, "num_classes": 1001}
    monkeypatch.setitem(UVIT_CONFIGS, "imagenet256_uvit_huge", klass)
    monkeypatch.setitem(UVIT_CONFIGS, "mscoco_uvit_small", TINY_TEXT)
    n_class, t_class = nnet_pair(klass, np.float32)
    n_text, _ = nnet_pair(TINY_TEXT, np.float32)
    n_ae, t_ae = autoencoder_pair(np.float32, 1.0)
    n_clip, _ = clip_pair(np.float32)
    n_clip.save_pretrained(str(tmp_path / "clip"))
    write_tokenizer_folder(str(tmp_path / "clip"))
    torch.save(t_class.state_dict(), tmp_path / "huge.pth")
    torch.save(t_ae.state_dict(), tmp_path / "ae.pth")
    return {"huge": save_safetensors(n_class.state_dict(), str(tmp_path / "huge.safetensors")),
            "text": save_safetensors(n_text.state_dict(), str(tmp_path / "text.safetensors")),
            "ae": save_safetensors(n_ae.state_dict(), str(tmp_path / "ae.safetensors")),
            "huge.pth": str(tmp_path / "huge.pth"), "ae.pth": str(tmp_path / "ae.pth"),
            "clip": str(tmp_path / "clip"), "dir": tmp_path}


def run(package, argv, **backend):
    backend_cls = NP.NumpyBackend if package == "numpy" else TP.TorchBackend
    args = NP.build_parser("uvit", "weights").parse_args(argv)
    return NP.run_command(args, backend_cls(ddconfig=TINY_DDCONFIG, **backend))


def read_png(path):
    from PIL import Image
    return np.asarray(Image.open(path))


def test_command_makes_the_same_picture_in_both_packages(files, capsys):
    d = files["dir"]
    common = ["--config", "imagenet256_uvit_huge", "--class", "207", "--steps", "4", "--seed",
              "3", "--no-progress"]
    assert run("numpy", [files["huge"], "--autoencoder", files["ae"], "--out",
                         str(d / "np.png")] + common) == 0
    assert run("torch", [files["huge.pth"], "--autoencoder", files["ae.pth"], "--out",
                         str(d / "pt.png")] + common) == 0
    a, b = read_png(d / "np.png"), read_png(d / "pt.png")
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert "class 207, 4 steps, guidance 0.4, seed 3" in capsys.readouterr().out
    text = ["--config", "mscoco_uvit_small", "--prompt", "a cat", "--clip", files["clip"],
            "--steps", "3", "--no-progress"]
    assert run("numpy", [files["text"], "--autoencoder", files["ae"], "--out",
                         str(d / "np_text.png")] + text) == 0
    assert run("torch", [files["text"], "--autoencoder", files["ae"], "--out",
                         str(d / "pt_text.png")] + text) == 0
    a, b = read_png(d / "np_text.png"), read_png(d / "pt_text.png")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_converted_checkpoint_equals_the_pth(files, tmp_path):
    from uvit_torch import checkpoint
    out = str(tmp_path / "converted.safetensors")
    assert checkpoint.main([files["huge.pth"], out]) == 0
    from safetensors.numpy import load_file
    theirs = {k: v.numpy() for k, v in torch.load(files["huge.pth"], weights_only=True).items()}
    ours = load_file(out)
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def refused(package, argv, capsys, *messages, status=2):
    """Run the command with every loader replaced by a failure: a refusal must come before any
    file is read into a model."""
    backend_cls = NP.NumpyBackend if package == "numpy" else TP.TorchBackend
    args = NP.build_parser("uvit", "weights").parse_args(argv)

    class NoLoads(backend_cls):
        def load_nnet(self, *a):
            raise AssertionError("a U-ViT was built before the arguments were checked")
        load_autoencoder = load_clip = load_nnet
    assert NP.run_command(args, NoLoads(ddconfig=TINY_DDCONFIG)) == status
    err = capsys.readouterr().err
    for m in messages:
        assert m in err, err


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_command_refuses_bad_arguments_before_any_work(files, capsys, package):
    d, huge = files["dir"], files["huge"]
    base = ["--config", "imagenet256_uvit_huge", "--autoencoder", files["ae"], "--out",
            str(d / "x.png")]
    refused(package, [huge, "--config", "imagenet256_uvit_huge", "--autoencoder",
                      str(d / "missing.safetensors"), "--class", "1", "--out", str(d / "x.png")],
            capsys, "--autoencoder: no such file")
    refused(package, [huge] + base + ["--class", "1000"], capsys,
            "--class: expected a class in 0..999 (1000 is the null class of guidance), got 1000")
    refused(package, [huge] + base + ["--class", "-1"], capsys, "got -1")
    refused(package, [huge] + base, capsys, "--class: imagenet256_uvit_huge is class-cond")
    refused(package, [huge] + base[:-1] + [str(d / "no" / "x.png"), "--class", "1"], capsys,
            "--out: the folder", "does not exist")
    refused(package, [huge] + base[:-1] + [str(d / "x.jpg"), "--class", "1"], capsys,
            "--out: expected a .png")
    refused(package, [huge] + base[:-1] + [str(d), "--class", "1"], capsys, "--out: expected")
    refused(package, [huge] + base + ["--class", "1", "--prompt", "x"], capsys,
            "takes no --prompt")
    refused(package, [huge] + base + ["--class", "1", "--steps", "0", "--guidance", "-1"],
            capsys, "--steps: expected at least 1", "--guidance: expected a number >= 0")
    refused(package, [files["text"], "--config", "mscoco_uvit_small", "--autoencoder",
                      files["ae"], "--out", str(d / "x.png")], capsys,
            "--prompt: mscoco_uvit_small is text-to-image", "--clip: mscoco_uvit_small needs")
    # a checkpoint of another config: refused from its shapes (status 1), nothing built
    refused(package, [files["text"]] + base + ["--class", "1"], capsys,
            "does not fit --config imagenet256_uvit_huge", "clip_dim 32 (expected None)",
            status=1)


def test_numpy_command_names_the_conversion_of_a_pth(files, capsys):
    refused("numpy", [files["huge.pth"], "--config", "imagenet256_uvit_huge", "--autoencoder",
                      files["ae"], "--class", "1", "--out", str(files["dir"] / "x.png")], capsys,
            "this package reads no .pth", "python -m uvit_torch.checkpoint")


def test_clip_folder_of_a_full_clip_model(tmp_path, tokenizer_folder):
    """openai/clip-vit-large-patch14's layout: a CLIPConfig (text_config inside) and the weights
    of both towers; the text tower is taken, as transformers' CLIPTextModel.from_pretrained."""
    from safetensors.numpy import save_file
    ours, _ = clip_pair(np.float64)
    folder = tmp_path / "full"
    os.makedirs(folder)
    with open(folder / "config.json", "w") as f:
        json.dump({"model_type": "clip", "text_config": tiny_clip_config(),
                   "vision_config": {"hidden_size": 8}, "projection_dim": 8}, f)
    tensors = {k: np.ascontiguousarray(v) for k, v in ours.state_dict().items()}
    tensors.update({"vision_model.embeddings.class_embedding": np.zeros(8),
                    "logit_scale": np.zeros(()), "text_projection.weight": np.zeros((8, 32))})
    save_file(tensors, str(folder / "model.safetensors"))
    for name in os.listdir(tokenizer_folder):
        with open(os.path.join(tokenizer_folder, name), "rb") as src:
            (folder / name).write_bytes(src.read())
    model, tok = NP.load_clip(str(folder), np.float64)
    ids = tok(["a cat"], padding="max_length", max_length=16, return_tensors="np").input_ids
    assert np.array_equal(model(ids).last_hidden_state, ours(ids).last_hidden_state)
    t_model, _ = TP.TorchBackend(dtype=torch.float64).load_clip(str(folder))
    assert_close("torch", t_model(torch.from_numpy(ids)).last_hidden_state,
                 ours(ids).last_hidden_state, 1e-10)


# --------------------------------------------------------------------------------------------------
# The benchmark's code, on tiny models
# --------------------------------------------------------------------------------------------------
def test_pipeline_benchmark_runs_on_tiny_models(monkeypatch, capsys):
    """`python -m uvit_torch.bench --pipeline imagenet256_uvit_huge` with the config and the
    autoencoder patched to tiny ones: every stage timed in both packages, the extrapolation to
    50 steps, memory, and the two pictures equal to float32 rounding."""
    from uvit_torch.parity import bench
    monkeypatch.setitem(UVIT_CONFIGS, "imagenet256_uvit_huge", {**TINY_CLASS,
                                                                "num_classes": 1001})
    monkeypatch.setattr(NA, "PAPER_DDCONFIG", TINY_DDCONFIG)
    assert bench.main(["--pipeline", "imagenet256_uvit_huge", "--steps", "3", "--repeats", "2",
                       "--pause", "0"]) == 0
    report = capsys.readouterr().out
    for line in ("guided evaluation", "sampling", "decode", "total (sampling + decode)",
                 "50 steps, extrapolated", "tracemalloc", "parity (float32)"):
        assert line in report, report
    from uvit_torch.parity.bench_uvit_pipeline import run_pipeline
    res = run_pipeline("imagenet256_uvit_huge", steps=4, repeats=1, pause=0, memory=False,
                       out=open(os.devnull, "w"))
    assert set(res["stages"]) == {"guided evaluation", "sampling", "decode"}
    assert all(t > 0 for by in res["stages"].values() for t in by.values())
    assert res["latents rel error"] <= 1e-5 and res["images rel error"] <= 1e-5


def test_generate_dispatches_uvit_to_the_pipeline_command(capsys):
    """`python -m uvit_numpy.generate uvit ...` (and torch's) is this pipeline's command, and an
    argument mistake is named under the dispatcher's name, before any work."""
    from uvit_numpy import generate as np_generate
    from uvit_torch import generate as torch_generate
    for package, dispatcher in (("uvit_numpy", np_generate), ("uvit_torch", torch_generate)):
        with pytest.raises(SystemExit) as stop:
            dispatcher.main(["uvit", "nnet.safetensors", "--config", "imagenet9_uvit_tiny"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"python -m {package}.generate uvit: error: argument --config" in err
