"""The commands refuse nonsense before any work, in one line, and write nothing (issue 23).

Each bad argument is tried as a user would try it, judged by the exit status, by what is printed
(one line, no traceback) and by the files (none written, nothing sampled). Most tests call the
commands' `main(argv)` in this process (a `python -m` subprocess costs seconds of imports); a
few run the real command end to end, where only a subprocess shows the exit status and that no
traceback escapes. Also: `--threads` takes effect and is put back, progress bars go to standard
error only, and the NumPy models name a torch tensor.
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uvit_numpy import cli, pretrained
from uvit_numpy import sample as np_sample
from uvit_torch import evaluate, parity
from uvit_torch import sample as torch_sample
from uvit_torch.parity import bench

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = {"numpy": np_sample, "torch": torch_sample}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch current folder holding one plain file, SOMEFILE."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "SOMEFILE").write_text("not a folder")
    return tmp_path


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def refuses_to_load(monkeypatch, module):
    """Make loading a model fail the test: a refused command must not get that far."""
    def load(*args, **kwargs):
        raise AssertionError("the command loaded a model before refusing its arguments")
    monkeypatch.setattr(module, "load_digit_model", load)


def never(*args, **kwargs):
    raise AssertionError("the command started its work before refusing its arguments")


def one_line_error(err):
    """The error lines of standard error: exactly one, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------------------------------
# sample (both packages): every bad argument is a one-line usage error, before any loading
# --------------------------------------------------------------------------------------------------
BAD_SAMPLE_ARGS = [
    (["uvit-digits", "--out", "/proc/digits.png"], "cannot create a file in '/proc'"),
    (["uvit-digits", "--out", "SOMEFILE/digits.png"], "'SOMEFILE' is a file, not a folder"),
    (["uvit-digits", "--out", "SOMEFILE/sub/digits.png"], "'SOMEFILE' is a file, not a folder"),
    (["uvit-digits", "--npz", "SOMEFILE/digits.npz"], "'SOMEFILE' is a file, not a folder"),
    (["uvit-digits", "--out", "."], "is a folder; expected a file name"),
    (["uvit-digits", "--out", "digits.txt"], "expected a file name ending in .png"),
    (["uvit-digits", "--npz", "digits.png"], "expected a file name ending in .npz"),
    (["uvit-digits", "--steps", "0"], "--steps: expected a positive integer"),
    (["uvit-digits", "--steps", "-1"], "--steps: expected a positive integer"),
    (["uvit-digits", "--steps", "1001"], "at most the 1000 training timesteps"),
    (["uvit-digits", "--per-label", "0"], "--per-label: expected a positive integer"),
    (["uvit-digits", "--seed", "-1"], "--seed: expected an integer >= 0"),
    (["uvit-digits", "--guidance", "-3"], "--guidance: expected a finite number >= 0"),
    (["uvit-digits", "--guidance", "nan"], "--guidance: expected a finite number >= 0"),
    (["amused-digits", "--temperature", "-1"], "--temperature: expected a finite number >= 0"),
    (["uvit-digits", "--threads", "0"], "--threads: expected a positive integer"),
    (["uvit-digits", "--labels", "1,12"], "expected digits 0..9"),
    (["uvit-digits", "--temperature", "2"], "--temperature applies to masked-token models"),
    (["amused-digits", "--scheduler", "ddim"], "--scheduler applies to diffusion models"),
    (["amused-digits", "--eta", "0.5"], "--eta applies to diffusion models"),
    (["uvit-digits", "--eta", "0.5"], "--eta is DDIM's noise weight (--scheduler ddim); the "
                                      "sampler here is dpmsolver++"),
    (["uvit-digits", "--scheduler", "ddpm", "--eta", "0"], "the sampler here is ddpm"),
    (["uvit-digits", "--scheduler", "ddim", "--eta", "1.5"], "noise weight in [0, 1]"),
    (["uvit-digit"], "'uvit-digit' is not a shipped model (uvit-digits, amused-digits) nor a "
                     "folder; did you mean 'uvit-digits'?"),
]


@pytest.mark.parametrize("package", ["numpy", "torch"])
@pytest.mark.parametrize("argv, message", BAD_SAMPLE_ARGS,
                         ids=[" ".join(a) for a, _ in BAD_SAMPLE_ARGS])
def test_sample_refuses_a_bad_argument_at_once(workdir, monkeypatch, capsys, package, argv,
                                               message):
    module = SAMPLERS[package]
    refuses_to_load(monkeypatch, module)
    before = files_in(workdir)
    tic = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    assert time.perf_counter() - tic < 5.0
    assert info.value.code == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert line.startswith(f"python -m uvit_{package}.sample: error: ") and message in line, line
    assert captured.out == ""
    assert files_in(workdir) == before                   # nothing written, no probe left behind


def copy_model(name, to):
    shutil.copytree(pretrained.path(name), to)
    return to


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_sample_failures_name_the_folder_or_file(workdir, capsys, package):
    """Folders that exist but hold no usable model: status 1, one line that says what to do."""
    module = SAMPLERS[package]
    copy_model("uvit-digits", workdir / "run" / "model")
    (workdir / "run" / "log.csv").write_text("step,loss\n")
    (workdir / "half-run").mkdir()
    (workdir / "half-run" / "checkpoint.safetensors").write_bytes(b"")
    bad_json = copy_model("uvit-digits", workdir / "bad-json")
    (bad_json / "config.json").write_text('{"_class_name": "UViT",\n  "depth": 6,,\n}')
    truncated = copy_model("uvit-digits", workdir / "truncated")
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (workdir / "empty").mkdir()
    cases = {
        "run": "'run' is a training run's folder: its model is in 'run/model' (pass that)",
        "half-run": "without its model/ yet",
        "bad-json": "'bad-json/config.json' is not valid JSON: Expecting property name enclosed "
                    "in double quotes at line 2, column 14",
        "truncated": f"{str(weights.relative_to(workdir))!r} is damaged or not a safetensors "
                     f"file",
        "empty": "no config.json in 'empty'",
        "SOMEFILE": "'SOMEFILE' is a file; expected a shipped model",
    }
    for folder, message in cases.items():
        before = files_in(workdir)
        assert module.main([folder, "--out", "out.png", "--steps", "2"]) == 1, folder
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith("error: ") and message in line, line
        assert files_in(workdir) == before


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_sample_writes_the_png_warns_in_one_line_and_keeps_the_bar_on_stderr(workdir, capsys,
                                                                             package):
    module = SAMPLERS[package]
    assert module.main(["uvit-digits", "--labels", "3", "--per-label", "2", "--steps", "2",
                        "--guidance", "0", "--out", "sub/digits.png", "--npz",
                        "other/digits.npz"]) == 0
    captured = capsys.readouterr()
    assert (workdir / "sub" / "digits.png").is_file()
    assert np.load(workdir / "other" / "digits.npz")["images"].shape == (2, 28, 28)
    assert captured.out.count("\n") == 1 and captured.out.startswith("2 digits (dpmsolver++")
    assert "step/s" not in captured.out and "|" not in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: --guidance 0 samples unconditionally (the null class): the "
                        "labels are ignored, and the digits are of no class asked for"]
    assert "uvit-digits: " in captured.err and "/2 " in captured.err     # the progress bar
    assert "Traceback" not in captured.err
    assert module.main(["amused-digits", "--labels", "3", "--steps", "2", "--out", "a.png",
                        "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_guidance_below_one_is_said_per_kind_of_model():
    """Diffusion: w < 1 is less than no guidance (w = 0 ignores the labels); masked tokens: w <= 1
    is no guidance at all (aMUSEd guides only above 1)."""
    uvit, amused = np_sample.describe("uvit-digits"), np_sample.describe("amused-digits")

    def said(model, w):
        s = np_sample.settings(model, guidance_scale=w, names=np_sample.OPTIONS)
        return np_sample.settings_warnings(model, s, np_sample.OPTIONS)
    assert said(uvit, 1.0) == said(uvit, 3.0) == said(amused, 1.0) == said(amused, 2.0) == []
    assert "labels are ignored" in said(uvit, 0.0)[0]
    assert "less than no guidance" in said(uvit, 0.5)[0]
    assert "no guidance for masked tokens" in said(amused, 0.0)[0]
    assert "the same as --guidance 1" in said(amused, 0.5)[0]
    with pytest.raises(ValueError, match="guidance_scale: expected a guidance scale >= 0"):
        np_sample.settings(uvit, guidance_scale=-1.0)       # the library names its keywords
    with pytest.raises(ValueError, match="labels: this model knows classes 0 .. 9, got"):
        np_sample.sample_digits(uvit, [3, 10])


# --------------------------------------------------------------------------------------------------
# evaluate, parity, bench
# --------------------------------------------------------------------------------------------------
BAD_EVALUATE_ARGS = [
    (["uvit-digits", "--per-class", "0"], "--per-class: expected a positive integer"),
    (["uvit-digits", "--steps", "0"], "--steps: expected a positive integer"),
    (["uvit-digits", "--guidance", "-1"], "--guidance: expected a finite number >= 0"),
    (["uvit-digits", "--temperature", "1"], "--temperature applies to masked-token models"),
    (["amused-digits", "--scheduler", "ddpm"], "--scheduler applies to diffusion models"),
    (["uvit-digits", "--threads", "0"], "--threads: expected a positive integer"),
    (["uvit-digits", "--json", "SOMEFILE/report.json"], "'SOMEFILE' is a file, not a folder"),
    (["uvit-digits", "--json", "/proc/report.json"], "cannot create a file in '/proc'"),
    (["uvit-digits", "--classifier", "nowhere"], "--classifier: 'nowhere' is not a folder"),
    (["--train-classifier", "SOMEFILE"], "'SOMEFILE' is a file, not a folder"),
    (["amused-digit"], "'amused-digit' is not a shipped model (uvit-digits, amused-digits)"),
    ([], "expected a model"),
]


@pytest.mark.parametrize("argv, message", BAD_EVALUATE_ARGS,
                         ids=[" ".join(a) or "nothing" for a, _ in BAD_EVALUATE_ARGS])
def test_evaluate_refuses_a_bad_argument_at_once(workdir, monkeypatch, capsys, argv, message):
    refuses_to_load(monkeypatch, torch_sample)
    monkeypatch.setattr(evaluate, "train_classifier", never)
    before = files_in(workdir)
    with pytest.raises(SystemExit) as info:
        evaluate.main(argv)
    assert info.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("python -m uvit_torch.evaluate: error: ") and message in line, line
    assert files_in(workdir) == before


BAD_PARITY_ARGS = [
    (["--threads", "0"], "--threads: expected a positive integer"),
    (["--threads", "two"], "--threads: expected a positive integer, got 'two'"),
    (["--config", "amused-1024"], "choose from 'amused-256', 'amused-512', 'tiny'"),
]
BAD_BENCH_ARGS = [
    (["--threads", "0"], "--threads: expected a positive integer"),
    (["--repeats", "0"], "--repeats: expected a positive integer"),
    (["--batch", "0"], "--batch: expected a positive integer"),
    (["--grid", "-2"], "--grid: expected a positive integer"),
    (["--pause", "-1"], "--pause: expected a finite number >= 0"),
    (["--config", "amused-1024"], "choose from 'amused-256', 'amused-512', 'tiny'"),
    (["--config", "tiny", "--grid", "7"], "tiny downsamples the token grid by 2"),
    (["--train", "--grid", "8"], "--grid: for the forward benchmark, not --train"),
]


@pytest.mark.parametrize("command, argv, message",
                         [(parity, a, m) for a, m in BAD_PARITY_ARGS]
                         + [(bench, a, m) for a, m in BAD_BENCH_ARGS],
                         ids=[f"parity {' '.join(a)}" for a, _ in BAD_PARITY_ARGS]
                         + [f"bench {' '.join(a)}" for a, _ in BAD_BENCH_ARGS])
def test_parity_and_bench_refuse_a_bad_argument_at_once(monkeypatch, capsys, command, argv,
                                                        message):
    for name in ("run_case", "run", "run_train"):
        if hasattr(command, name):
            monkeypatch.setattr(command, name, never)
    with pytest.raises(SystemExit) as info:
        command.main(argv)
    assert info.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert message in line, line


# --------------------------------------------------------------------------------------------------
# --threads: in effect during the work, put back after it
# --------------------------------------------------------------------------------------------------
class Seen(Exception):
    """Raised by a spy once it has seen the thread counts (the work itself is tested elsewhere)."""


def spy_threads(monkeypatch, module, name, seen, stop=False):
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), cli.blas_threads()))
        if stop:
            raise Seen
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)


def test_threads_take_effect_in_every_command_and_are_put_back(workdir, monkeypatch, capsys):
    torch.set_num_threads(1)
    blas_before = cli.blas_threads()
    seen = []
    spy_threads(monkeypatch, np_sample, "sample_digits", seen)
    spy_threads(monkeypatch, torch_sample, "sample_digits", seen)
    for module in (np_sample, torch_sample):
        assert module.main(["amused-digits", "--labels", "1", "--steps", "1", "--threads", "2",
                            "--no-progress", "--out", "a.png"]) == 0
    assert seen[0][1] == 2                      # NumPy: its BLAS (torch is not its business)
    assert seen[1] == (2, 2)                    # torch: both
    seen.clear()
    spy_threads(monkeypatch, torch_sample, "sample_digits", seen, stop=True)
    with pytest.raises(Seen):
        evaluate.main(["amused-digits", "--per-class", "1", "--threads", "2", "--no-progress"])
    assert seen == [(2, 2)]
    seen.clear()
    spy_threads(monkeypatch, parity, "run_case", seen)
    assert parity.main(["--only", "Linear", "--dtype", "float64", "--threads", "2"]) == 0
    assert seen and set(seen) == {(2, 2)}
    assert (torch.get_num_threads(), cli.blas_threads()) == (1, blas_before)   # put back
    capsys.readouterr()
    assert bench.main(["--config", "tiny", "--grid", "4", "--text-len", "3", "--repeats", "1",
                       "--no-diffusers", "--no-memory", "--pause", "0", "--threads", "2"]) == 0
    assert "threads: torch 2, NumPy's BLAS 2" in capsys.readouterr().out
    assert (torch.get_num_threads(), cli.blas_threads()) == (1, blas_before)


def test_parity_progress_goes_to_stderr_only(capsys):
    assert parity.main(["--only", "Linear", "--dtype", "float64"]) == 0
    captured = capsys.readouterr()
    assert "parity" in captured.err and "case" in captured.err         # the bar, on stderr
    assert "case/s" not in captured.out and "\r" not in captured.out
    assert parity.main(["--only", "Linear", "--dtype", "float64", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# End to end: exit status and no traceback, as the user sees them
# --------------------------------------------------------------------------------------------------
END_TO_END = [
    (["uvit_numpy.sample", "uvit-digits", "--out", "/proc/digits.png"], 2,
     "cannot create a file in '/proc'"),
    (["uvit_numpy.sample", "run"], 1, "its model is in 'run/model'"),
    (["uvit_torch.sample", "amused-digits", "--scheduler", "ddim"], 2,
     "--scheduler applies to diffusion models"),
]


@pytest.mark.parametrize("argv, status, message", END_TO_END,
                         ids=[" ".join(a) for a, _, _ in END_TO_END])
def test_the_real_command_exits_in_seconds_without_a_traceback(workdir, argv, status, message):
    (workdir / "run" / "model").mkdir(parents=True)
    (workdir / "run" / "model" / "config.json").write_text("{}")
    before = files_in(workdir)
    tic = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                         timeout=120, cwd=workdir, env={**_env(), "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - tic
    assert out.returncode == status, out.stderr
    assert message in one_line_error(out.stderr)
    assert out.stdout == ""
    assert files_in(workdir) == before
    assert seconds < 60, f"{seconds:.0f} s to refuse"   # imports only (torch: ~2-6 s here)


def _env():
    import os
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# --------------------------------------------------------------------------------------------------
# The argument types and the thread helper themselves
# --------------------------------------------------------------------------------------------------
def test_argument_types(workdir):
    assert cli.positive_int("3") == 3 and cli.non_negative_int("0") == 0
    assert cli.non_negative_float("0") == 0.0 and cli.positive_float("1e-4") == 1e-4
    for check, text in ((cli.positive_int, "0"), (cli.positive_int, "1.5"),
                        (cli.positive_float, "0"), (cli.positive_float, "nan"),
                        (cli.non_negative_int, "-1"), (cli.non_negative_float, "-0.1"),
                        (cli.non_negative_float, "inf"), (cli.output_file, ""),
                        (cli.output_folder, "SOMEFILE"), (cli.output_folder, "SOMEFILE/run")):
        with pytest.raises(Exception) as info:
            check(text)
        assert type(info.value).__name__ == "ArgumentTypeError", (check, text)
    assert cli.output_file("new/deeper/x.png") == "new/deeper/x.png"   # made later, not now
    assert cli.output_folder("runs/new") == "runs/new"
    assert files_in(workdir) == ["SOMEFILE"]
    with pytest.raises(ValueError, match="expected a positive integer, got 0"):
        cli.set_threads(0)


# --------------------------------------------------------------------------------------------------
# The NumPy models name a torch tensor (as the torch port names a NumPy array)
# --------------------------------------------------------------------------------------------------
def test_numpy_models_name_a_torch_tensor():
    from uvit_numpy import UViT, UViTText, UVit2DModel
    from uvit_numpy.maskgit import generate
    from uvit_numpy.sampling import sample
    from uvit_numpy.schedulers import DDIMScheduler
    from uvit_torch.uvit import UViT as TorchUViT
    hint = r"expected a NumPy array, got a torch.Tensor \(convert it with .numpy\(\), or use " \
           r"uvit_torch's model for tensors\)"
    x, t, y = np.zeros((2, 1, 8, 8), np.float32), np.array([1, 2]), np.array([0, 1])
    uvit = UViT(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2,
                num_classes=3)
    for args, name in (((torch.from_numpy(x), t, y), "x"), ((x, torch.from_numpy(t), y),
                                                            "timesteps"),
                       ((x, t, torch.from_numpy(y)), "y")):
        with pytest.raises(TypeError, match=f"^UViT: {name}: {hint}$"):
            uvit(*args)
    text = UViTText(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2,
                    clip_dim=4, num_clip_token=2)
    with pytest.raises(TypeError, match=f"^UViTText: context: {hint}$"):
        text(x, t, torch.zeros(2, 2, 4))
    model = UVit2DModel.from_config("tiny")
    c = model.config
    ids = np.zeros((1, 4, 4), np.int64)
    ehs = np.zeros((1, 3, c["encoder_hidden_size"]), np.float32)
    pooled = np.zeros((1, c["cond_embed_dim"]), np.float32)
    micro = np.zeros((1, c["micro_cond_embed_dim"] // c["micro_cond_encode_dim"]), np.float32)
    with pytest.raises(TypeError, match=f"^UVit2DModel: input_ids: {hint}$"):
        model(torch.from_numpy(ids), ehs, pooled, micro)
    with pytest.raises(TypeError, match=f"^UVit2DModel: micro_conds: {hint}$"):
        model(ids, ehs, pooled, torch.from_numpy(micro))
    with pytest.raises(TypeError, match=f"^generate: pooled_text_emb: {hint}$"):
        generate(model, ehs, torch.from_numpy(pooled), micro, 4, 4, num_steps=1)
    with pytest.raises(TypeError, match=f"^sample: labels: {hint}$"):
        sample(uvit, torch.tensor([0, 1]), DDIMScheduler(), 2)
    with pytest.raises(TypeError, match="sample: model: expected a uvit_numpy model, got a torch "
                                        "module uvit_torch.uvit.UViT"):
        sample(TorchUViT(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1,
                         num_heads=2, num_classes=3), np.array([0]), DDIMScheduler(), 2)


# --------------------------------------------------------------------------------------------------
# The README's sample commands write under runs/ (or docs/), never into the repository root
# --------------------------------------------------------------------------------------------------
def test_readme_sample_commands_write_under_runs_or_docs():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"python -m uvit_(?:numpy|torch)\.sample[^\n`]*(?:\\\n[^\n`]*)*",
                          readme)
    outputs = [m for c in commands for m in re.findall(r"--(?:out|npz) (\S+)", c)]
    assert len(outputs) >= 3, commands
    assert all(p.startswith(("runs/", "docs/")) for p in outputs), outputs
