"""aMUSEd's pipelines, both packages, against diffusers' `AmusedPipeline`, `AmusedImg2ImgPipeline`
and `AmusedInpaintPipeline`.

diffusers' pipelines are built from random tiny transformers/diffusers parts and saved with
`save_pretrained` (`uvit_torch.parity.amused.save_tiny_pipeline`); ours load that folder. Every
call runs diffusers, the NumPy pipeline and the torch pipeline on the same prompts and the same
uniform draws (diffusers' own draws replaced by them, `replay_draws`): the final codes must be
identical and the images within 1e-5 (float32). NumPy vs torch in float64 (<= 1e-10) and float32
are the parity cases of `uvit_torch.parity.amused`. Then: the two tokenizer layouts, the seed,
the truncation warning, the image processing (torch's nearest resize, PIL inputs), the folder
and argument errors, the command and its dispatcher, and the benchmark's code on tiny parts.
"""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import uvit_numpy.amused_pipeline as NP  # noqa: E402
import uvit_torch.amused_pipeline as TP  # noqa: E402
from tests.parity_params import assert_case_passes, case_params  # noqa: E402
from uvit_numpy import generate as np_generate  # noqa: E402
from uvit_torch import generate as torch_generate  # noqa: E402
from uvit_torch import parity  # noqa: E402
from uvit_torch.parity import amused as A  # noqa: E402
from uvit_torch.parity.harness import assert_close  # noqa: E402

PACKAGES = {"numpy": NP, "torch": TP}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, diffusers pipelines by kind) of a random tiny aMUSEd saved by diffusers."""
    parity.quiet_diffusers()
    folder = str(tmp_path_factory.mktemp("amused") / "tiny")
    return folder, A.save_tiny_pipeline(folder)


@pytest.fixture(scope="module")
def ours(tiny):
    """{(package, kind): pipeline} loaded from the folder (once per package; the other kinds
    share the parts)."""
    folder, _ = tiny
    pipes = {}
    for name, module in PACKAGES.items():
        first = module.AmusedPipeline.from_pretrained(folder)
        parts = dict(vqvae=first.vqvae, tokenizer=first.tokenizer,
                     text_encoder=first.text_encoder, transformer=first.transformer,
                     scheduler=first.scheduler)
        for kind, cls in module.PIPELINES.items():
            pipes[name, kind] = cls(**parts)
    return pipes


def _call(pipe, kw, **extra):
    """(final codes as NumPy, images) of one of our pipelines; the long prompt's warning muted."""
    codes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pipe(**kw, **extra, callback=lambda step, c: codes.append(np.asarray(c)))
    return codes[-1], out.images


# --------------------------------------------------------------------------------------------------
# Against diffusers
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, variant", A.CASES, ids=[A._name(*c) for c in A.CASES])
def test_pipelines_equal_diffusers(tiny, ours, kind, variant):
    """Same prompts, same draws: the codes are identical to diffusers', the images within 1e-5,
    in both packages; and the comparison is not a trivial one (varied codes, pixels inside
    (0, 1))."""
    _, pipes = tiny
    rng = np.random.default_rng(100 + 10 * A.CASES.index((kind, variant)))
    kw = A.call_arguments(kind, rng, 2, variant)
    runs, batch, given = A.steps_and_batch(kind, kw)
    noise, mask_noise = A.draws(rng, runs, batch, A.grid_tokens(kw),
                                given if kind == "img2img" else None)
    extra = {"noise": noise} if mask_noise is None else {"noise": noise, "mask_noise": mask_noise}
    codes, images = A.run_diffusers(pipes[kind], noise, mask_noise, **kw)
    for name in PACKAGES:
        our_codes, our_images = _call(ours[name, kind], kw, **extra)
        assert np.array_equal(our_codes, codes), f"{name}: codes differ from diffusers'"
        assert_close(f"{name} {kind} images", our_images, images, 1e-5)
    assert images.dtype == np.float32 and images.shape[-1] == 3
    assert len(np.unique(codes)) >= 8
    assert (codes != A.MASK_TOKEN_ID).all()
    assert 0.5 < np.mean((images > 0) & (images < 1))     # the clip hides little


def test_a_long_prompt_is_cut_and_said(ours):
    """A prompt longer than the tokenizer's 16 tokens is cut to 16 ids ending with the end-of-text
    token (as transformers' truncation: the comparisons with diffusers include such a prompt),
    and a warning shows the part that was cut; a short prompt raises no warning."""
    pipe = ours["numpy", "text2img"]
    long = A.PROMPTS[2]
    with pytest.warns(UserWarning, match=r"tokens long and the text encoder reads 16: this part "
                                         r"was cut: '.*tokenizer has to cut'"):
        pooled, hidden, _, _ = pipe.encode_prompt(long, guidance_scale=1.0)
    ids = pipe.tokenizer([long], padding="max_length", max_length=16, truncation=True,
                         return_tensors="np").input_ids
    assert ids.shape == (1, 16) and ids[0, -1] == pipe.tokenizer.eos_token_id
    out = pipe.text_encoder(ids, output_hidden_states=True)
    assert np.array_equal(pooled, out.text_embeds)
    assert np.array_equal(hidden, out.hidden_states[-2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.encode_prompt("a cat", guidance_scale=1.0)


def test_text_conditioning_is_the_penultimate_layer_and_the_projection(ours):
    """encoder_hidden_states = hidden_states[-2], pooled_text_emb = text_embeds; rows repeated
    prompt-major as diffusers' `.repeat`; negatives only with guidance ("" by default)."""
    pipe = ours["numpy", "text2img"]
    pooled, hidden, neg_pooled, neg_hidden = pipe.encode_prompt(["a cat", "a dog"],
                                                                num_images_per_prompt=2)
    def encoded(texts):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=16, truncation=True,
                             return_tensors="np").input_ids
        return pipe.text_encoder(ids, output_hidden_states=True)
    out, empty = encoded(["a cat", "a dog"]), encoded(["", ""])   # "" for each prompt
    assert np.array_equal(hidden, out.hidden_states[-2][[0, 1, 0, 1]])
    assert not np.allclose(hidden, out.hidden_states[-1][[0, 1, 0, 1]])
    assert np.array_equal(pooled, out.text_embeds[[0, 1, 0, 1]])
    assert np.array_equal(neg_pooled, empty.text_embeds[[0, 1, 0, 1]])
    assert np.array_equal(neg_hidden, empty.hidden_states[-2][[0, 1, 0, 1]])
    assert pipe.encode_prompt("a cat", guidance_scale=1.0)[2:] == (None, None)
    micro = pipe.micro_conditions(20, 12, (2, 3), 5, 3)
    assert micro.shape == (3, 5) and micro[0].tolist() == [20, 12, 2, 3, 5]   # width first


# --------------------------------------------------------------------------------------------------
# NumPy vs torch (the parity cases), and the seed
# --------------------------------------------------------------------------------------------------
F64_CASES = [c for c in A.cases()]


@pytest.mark.parametrize("case, dtype, batch",
                         [p for p in case_params(F64_CASES) if p.values[1] == "float64"])
def test_numpy_vs_torch_float64(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


def test_the_cases_join_the_parity_report():
    names = [c.name for c in parity.all_cases()]
    assert "amused inpaint tiny (strength 0.7)" in names
    against = [c.name for c in parity.all_cases(against_diffusers=True)]
    assert "amused img2img tiny (strength 0.6) vs diffusers" in against


def test_the_same_seed_makes_the_same_image_in_both_packages(ours):
    kw = dict(prompt="a cat", negative_prompt="a dog", guidance_scale=3.0, seed=7,
              num_inference_steps=4)
    a, b = ours["numpy", "text2img"](**kw).images, ours["torch", "text2img"](**kw).images
    assert_close("seed 7", a, b, 1e-5)
    c = ours["numpy", "text2img"](**dict(kw, seed=8)).images
    assert not np.allclose(a, c)
    d = ours["numpy", "text2img"](**dict(kw, prompt="something else")).images
    assert not np.allclose(a, d)                            # the prompt matters
    rng_run = ours["numpy", "text2img"](**dict(kw, seed=np.random.default_rng(7))).images
    assert np.array_equal(a, rng_run)
    noise = NP.draw_noise(np.random.default_rng(7), 4, 1, 64)
    replay = ours["numpy", "text2img"](**dict(kw, seed=None, noise=noise)).images
    assert np.array_equal(a, replay)


def test_output_types(ours):
    pipe, tpipe = ours["numpy", "text2img"], ours["torch", "text2img"]
    kw = dict(seed=1, num_inference_steps=3)
    images = pipe("a cat", **kw).images
    codes = pipe("a cat", **kw, output_type="latent").images
    assert codes.shape == (1, 8, 8) and codes.dtype == np.int64
    assert isinstance(tpipe("a cat", **kw, output_type="latent").images, torch.Tensor)
    pil = pipe("a cat", **kw, output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    assert np.array_equal(np.array(pil[0]), (images[0] * 255).round().astype(np.uint8))
    timings = {}
    pipe("a cat", seed=1, num_inference_steps=3, timings=timings)
    assert len(timings["steps"]) == 3 and timings["text"] > 0 and timings["decode"] > 0


def test_float64_pipelines_load_and_agree(tiny):
    """from_pretrained(dtype=float64) in both packages: the same codes, images <= 1e-10."""
    folder, _ = tiny
    a = NP.AmusedPipeline.from_pretrained(folder, dtype=np.float64)
    b = TP.AmusedPipeline.from_pretrained(folder, dtype=torch.float64)
    kw = dict(prompt=["a cat", "a mat"], seed=3, guidance_scale=2.0, num_inference_steps=6)
    out_a, out_b = a(**kw).images, b(**kw).images
    assert out_a.dtype == np.float64 and out_b.dtype == np.float64
    assert_close("float64 pipelines", out_a, out_b, 1e-10)


def test_both_tokenizer_layouts_give_the_same_text(tiny, tmp_path):
    """The folder diffusers wrote (transformers 5's tokenizer.json) and the Hub's layout
    (vocab.json + merges.txt, as amused-256 ships it) load to the same conditioning."""
    folder, _ = tiny
    hub = tmp_path / "hub"
    shutil.copytree(folder, hub)
    shutil.rmtree(hub / "tokenizer")
    A.write_tiny_tokenizer(str(hub / "tokenizer"))
    a = NP.AmusedPipeline.from_pretrained(folder).encode_prompt(["a cat on a mat", ""])
    b = NP.AmusedPipeline.from_pretrained(str(hub)).encode_prompt(["a cat on a mat", ""])
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


# --------------------------------------------------------------------------------------------------
# Images in
# --------------------------------------------------------------------------------------------------
def test_nearest_resize_is_torch_s():
    """`nearest_indices` picks the source pixels F.interpolate(mode="nearest") picks, for
    shrinking, growing, doubling and odd sizes."""
    for n_in in range(1, 40):
        for n_out in range(1, 40):
            x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, 1, n_in)
            theirs = torch.nn.functional.interpolate(x, size=(1, n_out))[0, 0, 0].long().numpy()
            assert np.array_equal(NP.nearest_indices(n_in, n_out), theirs), (n_in, n_out)


def test_image_processing_equals_diffusers(tiny):
    """`preprocess_image` / `preprocess_mask` against diffusers' processors of the pipelines:
    arrays of sizes that are not multiples of the scale factor, PIL images (Lanczos), masks."""
    from PIL import Image
    _, pipes = tiny
    inpaint = pipes["inpaint"]
    rng = np.random.default_rng(0)
    array = rng.random((2, 17, 21, 3)).astype(np.float32)
    pil = Image.fromarray((array[0] * 255).astype(np.uint8))
    rgba = pil.convert("RGBA")
    for image in (array, pil, [pil, pil]):
        ours = NP.preprocess_image(image, 2)
        theirs = inpaint.image_processor.preprocess(image).numpy()
        assert ours.shape == theirs.shape == (ours.shape[0], 3, 16, 20)
        assert np.array_equal(ours, theirs)
    assert np.array_equal(NP.preprocess_image(rgba, 2), NP.preprocess_image(pil, 2))
    masks = rng.random((2, 17, 21)).astype(np.float32)
    pil_mask = Image.fromarray((masks[0] * 255).astype(np.uint8)).convert("RGB")
    for mask in (masks, masks[0], masks[..., None], masks[0][..., None], pil_mask):
        ours = NP.preprocess_mask(mask, 8, 10)
        theirs = inpaint.mask_processor.preprocess(mask, 8, 10).numpy()
        assert np.array_equal(ours, theirs.reshape(ours.shape).astype(bool))


def test_pil_images_equal_diffusers(tiny, ours):
    """img2img and inpainting from PIL images of a size that is not a multiple of the scale
    factor (resized with Lanczos), against diffusers."""
    from PIL import Image
    _, pipes = tiny
    rng = np.random.default_rng(5)
    image = Image.fromarray((A.images(rng, 1, (17, 21))[0] * 255).astype(np.uint8))
    mask = Image.fromarray(((rng.random((17, 21)) < 0.5) * 255).astype(np.uint8))
    for kind, kw in (("img2img", dict(image=image, strength=0.5)),
                     ("inpaint", dict(image=image, mask_image=mask))):
        kw = dict(kw, prompt="a cat", guidance_scale=3.0)
        runs, batch, _ = A.steps_and_batch(kind, kw)
        noise, mask_noise = A.draws(rng, runs, batch, 8 * 10, 1 if kind == "img2img" else None)
        extra = {"noise": noise} if mask_noise is None else {"noise": noise,
                                                             "mask_noise": mask_noise}
        codes, images = A.run_diffusers(pipes[kind], noise, mask_noise, **kw)
        our_codes, our_images = _call(ours["torch", kind], kw, **extra)
        assert images.shape == (1, 16, 20, 3)
        assert np.array_equal(our_codes, codes)
        assert_close(f"{kind} from PIL", our_images, images, 1e-5)


# --------------------------------------------------------------------------------------------------
# Errors, before any work
# --------------------------------------------------------------------------------------------------
def test_folder_errors_name_what_is_missing(tiny, tmp_path):
    folder, _ = tiny
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        NP.AmusedPipeline.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        NP.AmusedPipeline.from_pretrained(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    os.remove(broken / "text_encoder" / "model.safetensors")
    shutil.rmtree(broken / "vqvae")
    os.remove(broken / "tokenizer" / "tokenizer.json")
    with pytest.raises(FileNotFoundError) as err:
        TP.AmusedPipeline.from_pretrained(str(broken))
    message = str(err.value)
    assert "\n" not in message
    for piece in ("text_encoder/model.safetensors", "vqvae/ (the folder)",
                  "tokenizer/tokenizer.json (or tokenizer/vocab.json + tokenizer/merges.txt)"):
        assert piece in message
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps(dict(index, _class_name="StableDiffusion"
                                                                               "Pipeline")))
    with pytest.raises(ValueError, match="holds a 'StableDiffusionPipeline', not an aMUSEd"):
        NP.AmusedPipeline.from_pretrained(str(other))
    (other / "model_index.json").write_text(json.dumps(dict(index, vqvae=["diffusers",
                                                                          "AutoencoderKL"])))
    with pytest.raises(ValueError, match="vqvae is .*AutoencoderKL.*expected a VQModel"):
        NP.AmusedPipeline.from_pretrained(str(other))


def test_argument_errors(ours):
    pipe, img2img, inpaint = (ours["numpy", k] for k in ("text2img", "img2img", "inpaint"))
    image = A.images(np.random.default_rng(0), 1)
    bad = [
        (pipe, dict(height=15), ValueError, "height: the VQ-GAN makes 2 x 2 pixels per code, so "
                                            "height must be a positive multiple of 2, got 15"),
        (pipe, dict(width=14), ValueError, "this transformer halves it, so both sides must be "
                                           "multiples of 4 pixels"),
        (pipe, dict(output_type="pt"), ValueError, "output_type: expected one of"),
        (pipe, dict(num_inference_steps=0), ValueError, "num_inference_steps: expected an int"),
        (pipe, dict(seed=1, noise=[]), ValueError, "pass seed or noise"),
        (pipe, dict(noise=[(np.zeros((1, 64)), np.zeros((1, 64)))]), ValueError,
         "expected a list of 12 .u_sample, u_gumbel. pairs"),
        (pipe, dict(noise=[(np.zeros((1, 63)), np.zeros((1, 64)))] * 12), ValueError,
         r"noise\[0\]\[0\]: expected uniforms of shape \(1, 64\)"),
        (pipe, dict(negative_prompt=["a", "b"]), ValueError, "one per prompt"),
        (pipe, dict(seed=-1), TypeError, "seed: expected a non-negative int"),
        (img2img, dict(image=image, strength=0), ValueError, r"strength: expected a number in"),
        (img2img, dict(image=np.concatenate([image, image])), ValueError,
         r"one image per prompt \(1\), got 2"),
        (img2img, dict(image=image * 255), ValueError, r"expected values in \[0, 1\]"),
        (img2img, dict(image=(image * 255).astype(np.uint8)), TypeError, "divide uint8"),
        (img2img, dict(image=image[:, :10, :12]), ValueError, "multiples of 4 pixels"),
        (img2img, dict(image=image, noise=NP.draw_noise(np.random.default_rng(0), 6, 1, 64)),
         ValueError, "noise= and mask_noise= go together"),
        (inpaint, dict(image=image, mask_image=np.zeros((2, 16, 16))), ValueError,
         r"one mask per image \(1\), got 2"),
        (inpaint, dict(image=image, mask_image=np.zeros((16, 16)), strength=0.05), ValueError,
         "runs no step"),
    ]
    for target, kw, error, match in bad:
        with pytest.raises(error, match=match):
            target("a cat", **kw)


def test_parts_that_do_not_fit_are_refused(ours):
    pipe = ours["numpy", "text2img"]
    parts = dict(vqvae=pipe.vqvae, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                 transformer=pipe.transformer)
    with pytest.raises(ValueError, match="mask_token_id 40 is not below the transformer's "
                                         "vocab_size 33"):
        NP.AmusedPipeline(**parts, scheduler=NP.AmusedScheduler(40))


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def test_command_makes_the_pipeline_s_image(tiny, ours, tmp_path, capsys):
    """`generate amused FOLDER PROMPT --out x.png --seed 3` writes the image the pipeline makes
    with seed 3 (both packages, through the dispatcher), with a progress bar and the timings."""
    from PIL import Image
    folder, _ = tiny
    expected = ours["numpy", "text2img"]("a cat", negative_prompt="blurry", seed=3,
                                         guidance_scale=4.0, num_inference_steps=5,
                                         output_type="pil").images[0]
    for name, dispatcher in (("numpy", np_generate), ("torch", torch_generate)):
        out = tmp_path / f"{name}.png"
        status = dispatcher.main(["amused", folder, "a cat", "--out", str(out), "--seed", "3",
                                  "--negative", "blurry", "--guidance", "4", "--steps", "5",
                                  "--threads", "1"])
        assert status == 0
        assert np.array_equal(np.array(Image.open(out)), np.array(expected))
        err = capsys.readouterr().err
        assert "5/5" in err and "s/step" in err and f"16 x 16 image -> {out}" in err


def test_command_img2img_and_inpaint(tiny, ours, tmp_path):
    from PIL import Image
    folder, _ = tiny
    image = Image.fromarray((A.images(np.random.default_rng(2), 1)[0] * 255).astype(np.uint8))
    mask = Image.fromarray(np.tile(np.uint8([0, 255]), (16, 8)))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    runs = {"img2img": (["--strength", "0.7"], dict(image=image, strength=0.7)),
            "inpaint": (["--mask", str(tmp_path / "mask.png")], dict(image=image,
                                                                      mask_image=mask))}
    for kind, (flags, kw) in runs.items():
        out = tmp_path / f"{kind}.png"
        assert NP.main([folder, "a dog", "--image", str(tmp_path / "in.png"), *flags,
                        "--out", str(out), "--seed", "4", "--steps", "6"]) == 0
        expected = ours["numpy", kind]("a dog", seed=4, output_type="pil", num_inference_steps=6,
                                       **kw).images[0]
        assert np.array_equal(np.array(Image.open(out)), np.array(expected))


def test_command_errors_come_before_any_work(tiny, tmp_path, capsys):
    folder, _ = tiny
    cases = [
        ([str(tmp_path), "x"], "no model_index.json"),
        ([folder, "x", "--out", str(tmp_path / "no" / "such" / "x.png")], "does not exist"),
        ([folder, "x", "--out", str(tmp_path / "x.txt")], "expected an image file name"),
        ([folder, "x", "--out", str(tmp_path)], "expected an image file name"),
        ([folder, "x", "--height", "18"], "must be multiples of 4 pixels"),
        ([folder, "x", "--width", "7"], "positive multiple of 2"),
        ([folder, "x", "--mask", "m.png"], "--mask needs --image"),
        ([folder, "x", "--strength", "0.5"], "--strength needs --image"),
        ([folder, "x", "--image", str(tmp_path / "missing.png")], "no such file"),
        ([folder, "x", "--image", "a.png", "--height", "16"], "the image sets the size"),
        ([folder, "x", "--image", "a.png", "--strength", "1.5"], r"expected a number in \(0, 1\]"),
        ([folder, "x", "--seed", "-2"], "--seed: expected a non-negative integer"),
    ]
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    if not os.access(readonly, os.W_OK):                   # (root can write anywhere)
        cases.append(([folder, "x", "--out", str(readonly / "x.png")], "permission denied"))
    for argv, message in cases:
        assert NP.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert message in err or __import__("re").search(message, err), (argv, err)
        assert "loaded" not in err


def test_command_says_a_long_prompt_is_cut(tiny, tmp_path, capsys):
    folder, _ = tiny
    assert TP.main([folder, A.PROMPTS[2], "--out", str(tmp_path / "x.png"), "--steps", "2",
                    "--seed", "0"]) == 0
    err = capsys.readouterr().err
    assert "note: the prompt is" in err and "the text encoder reads 16: cut: " in err
    assert "UserWarning" not in err


def test_dispatcher_refuses_an_unknown_system(capsys):
    for dispatcher in (np_generate, torch_generate):
        assert dispatcher.main(["dalle", "x"]) == 2
        assert "unknown system 'dalle'; expected one of: amused, uvit" in capsys.readouterr().err
        assert dispatcher.main([]) == 2


# --------------------------------------------------------------------------------------------------
# The benchmark's code, on tiny parts
# --------------------------------------------------------------------------------------------------
def test_the_pipeline_benchmark_runs_on_tiny_parts():
    import io

    from uvit_torch.parity import bench
    out = io.StringIO()
    result = bench.run_pipeline("amused-tiny", out=out)
    report = out.getvalue()
    for piece in ("text", "transformer steps", "VQ decode", "total", "peak", "NumPy / torch"):
        assert piece in report, piece
    assert result["numpy"]["total"] > 0 and result["torch"]["total"] > 0
    assert result["codes_equal"]
    assert "amused-256" in bench.PIPELINES and "amused-tiny" in bench.PIPELINES


def test_the_row_tap_convolution_equals_torch_s():
    """`functional.conv2d`'s stride-1 path (`_conv2d_row_taps`, the VQ-GAN's convolutions without
    an im2col copy) against torch in float64: kernel shapes 1x1, 3x3, 1x3, 3x1, 2x2, paddings 0
    to 2, odd sizes, batch 2; and the window view it caches for the backward is unchanged."""
    import uvit_numpy.functional as F
    rng = np.random.default_rng(0)
    for (kh, kw), padding, (H, W) in [((1, 1), 0, (5, 7)), ((3, 3), 1, (6, 5)), ((1, 3), (0, 1),
                                      (4, 9)), ((3, 1), 2, (3, 3)), ((2, 2), 0, (7, 4))]:
        x = rng.standard_normal((2, 5, H, W))
        w, b = rng.standard_normal((6, 5, kh, kw)), rng.standard_normal(6)
        ours, cache = F.conv2d(x, w, b, 1, padding, return_cache=True)
        theirs = torch.nn.functional.conv2d(*(torch.from_numpy(v) for v in (x, w, b)), 1,
                                            padding).numpy()
        assert_close(f"conv2d {kh}x{kw} padding {padding}", ours, theirs, 1e-10)
        dy = rng.standard_normal(ours.shape)
        dx, dw, db = F.conv2d_backward(dy, cache)
        tx, tw, tb = (torch.from_numpy(v).requires_grad_() for v in (x, w, b))
        torch.nn.functional.conv2d(tx, tw, tb, 1, padding).backward(torch.from_numpy(dy))
        for name, ours_grad, theirs_grad in (("dx", dx, tx), ("dw", dw, tw), ("db", db, tb)):
            assert_close(name, ours_grad, theirs_grad.grad, 1e-10)
