"""The ablation driver: `uvit_numpy.ablations` (the variants, the base run, the paper's findings)
and `python -m uvit_torch.ablate`, smoke-tested on a few steps of the tiny base; and the committed
table of the real runs (book/data/08_ablations.json and .csv, read by chapter 8), checked against
the configs, the parameter counts and its own loss curves."""

import csv

import json
import os

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from uvit_numpy import ablations as A
from uvit_numpy import training
from uvit_numpy import uvit as NU
from uvit_torch import ablate

COMMITTED = os.path.join(os.path.dirname(__file__), "..", "book", "data", "08_ablations")


def test_every_variant_changes_one_design_choice_of_the_shipped_run():
    shipped = training.TRAIN_CONFIGS["uvit-digits"]
    for name, variant in A.VARIANTS.items():
        cfg = A.variant_config(name)
        assert cfg["name"] == name and cfg["steps"] == A.STEPS == 10_000
        for key in ("lr", "batch_size", "ema_decay", "warmup_steps", "weight_decay", "diffusion",
                    "p_uncond", "sampling", "grad_clip"):
            assert json.dumps(cfg[key]) == json.dumps(shipped[key]), (name, key)
        assert cfg["model"] == {**shipped["model"], **variant["model"]}
        assert len(variant["model"]) == (0 if name == "paper" else 1)
        assert set(variant["model"]) <= set(NU.ABLATION_DEFAULTS) | {"skip", "conv"}
        model = NU.UViT(**cfg["model"])                  # each builds at the uvit-digits size
        assert {k: getattr(model, k) for k in variant["model"]} == variant["model"]
        assert variant["group"] in ("", *A.GROUPS) and variant["description"]
    assert set(A.PAPER_FINDINGS) == set(A.GROUPS)
    for group, finding in A.PAPER_FINDINGS.items():
        members = {n for n, v in A.VARIANTS.items() if v["group"] == group} | {"paper"}
        named = {finding["best"], *filter(None, finding["worst"].split(", "))}
        assert named <= members and finding["text"], group
    assert A.SEEDS == (0, 1)


def test_final_loss_and_summary():
    log = {"step": np.array([25.0, 50, 75, 100]), "loss": np.array([4.0, 3.0, 2.0, 1.0])}
    assert A.final_loss(log, 100) == 1.0                 # the last 10 %: step 100 only
    assert A.final_loss(log, 100, share=0.5) == 1.5      # steps 75 and 100
    rows = [dict(variant="skip-add", seed=s, params=7, final_loss=f, class_accuracy=a,
                 frechet_ratio=r) for s, f, a, r in ((0, 1.0, 0.5, 2.0), (1, 3.0, 0.7, 4.0))]
    (entry,) = A.summarize(rows)
    assert entry["final_loss_mean"] == 2.0 and entry["final_loss_std"] == pytest.approx(2 ** 0.5)
    assert entry["class_accuracy_mean"] == pytest.approx(0.6) and entry["seeds"] == [0, 1]
    assert A.summarize(rows[:1])[0]["frechet_ratio_std"] is None


def numpy_held_out_losses(folder, timesteps):
    """`ablate.held_out_losses` written again with the NumPy model and NumPy's own arithmetic."""
    from uvit_numpy.data import load_digits
    from uvit_numpy.sample import load_digit_model
    model = load_digit_model(os.path.join(folder, "model"), np.float64).model
    d = json.load(open(os.path.join(folder, "model", "config.json")))["_training"]["config"][
        "diffusion"]
    betas = np.linspace(d["beta_start"], d["beta_end"], d["num_train_timesteps"])
    abar = np.cumprod(1.0 - betas)                                 # the linear schedule
    x0, y = load_digits("held_out", dtype=np.float64)
    x0 = x0[:, None]
    eps = np.random.default_rng(ablate.HELD_OUT_NOISE_SEED).standard_normal(x0.shape)
    eps = eps.astype(np.float32).astype(np.float64)
    losses = []
    for t in timesteps:
        a, s = np.sqrt(abar[t]), np.sqrt(1.0 - abar[t])
        target = eps if d["prediction_type"] == "epsilon" else a * eps - s * x0
        pred = model(a * x0 + s * eps, np.full(len(x0), t), y)
        losses.append(float(np.mean((pred - target) ** 2)))
    return losses


def test_time_measures_steps_of_each_variant_and_writes_nothing(tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ablate.main(["--base", "tiny", "--variants", "paper", "skip-none", "--time", "3",
                        "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["paper", "skip-none"]
    for line in lines:
        wall = float(line.split("median ")[1].split(" s wall")[0])
        assert 0 < wall < 10 and "20 steps:" in line
    assert os.listdir(tmp_path) == []


def test_list_and_bad_names(capsys):
    assert ablate.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in A.VARIANTS) and "Fig. 2e" in out
    with pytest.raises(SystemExit):
        ablate.main(["--variants", "skip-mul"])
    assert "unknown ablation variant(s) ['skip-mul']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.main(["--grid", "samples.jpg"])
    assert "--grid: expected a .png path, got 'samples.jpg'" in capsys.readouterr().err


def test_smoke_run_trains_evaluates_tabulates_and_skips_finished_runs(tmp_path, capsys):
    out, table = str(tmp_path / "runs"), str(tmp_path / "docs" / "ablations")
    argv = ["--base", "tiny", "--variants", "paper", "time-adaln", "--seeds", "0", "--steps",
            "4", "--out", out, "--table", table + ".json", "--per-class", "1", "--threads", "1",
            "--no-progress"]
    grid = str(tmp_path / "grid.png")
    assert ablate.main([*argv, "--grid", grid]) == 0
    rows = json.load(open(table + ".json", encoding="utf-8"))["runs"]
    image = plt.imread(grid)                             # a row of ten digits per run
    assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.05
    for row in rows:                                     # the whole log, as the run wrote it
        log = training.read_log(os.path.join(row["folder"], "log.csv"))
        assert row["loss_curve"]["step"] == [int(s) for s in log["step"]] and \
            row["loss_curve"]["loss"] == pytest.approx(log["loss"].tolist())
        assert row["final_loss"] == pytest.approx(row["loss_curve"]["loss"][-1])
    assert [(r["variant"], r["seed"], r["steps"]) for r in rows] == [("paper", 0, 4),
                                                                     ("time-adaln", 0, 4)]
    adaln = rows[1]
    assert adaln["overrides"] == {"time_mode": "adaln"} and adaln["params"] > rows[0]["params"]
    assert adaln["train_command"].startswith(
        "python -m uvit_torch.ablate --base tiny --variants time-adaln --seeds 0 --steps 4")
    assert adaln["evaluate_command"].startswith("python -m uvit_torch.evaluate ")
    for key in ("final_loss", "class_accuracy", "frechet_ratio", "train_seconds"):
        assert np.isfinite(adaln[key]), key
    folder = A.run_folder(out, "time-adaln", 0)
    config = json.load(open(os.path.join(folder, "model", "config.json"), encoding="utf-8"))
    assert config["time_mode"] == "adaln" and config["_training"]["config"]["name"] == "time-adaln"
    with open(table + ".csv", encoding="utf-8") as f:
        assert f.readline().strip() == ",".join(A.CSV_FIELDS) and len(f.readlines()) == 2
    # the held-out losses: the torch model against the NumPy model on the same inputs
    held = json.load(open(os.path.join(folder, "held_out.json"), encoding="utf-8"))
    assert held["t"] == list(ablate.HELD_OUT_T) == adaln["held_out_loss"]["t"]
    assert adaln["held_out_loss"]["loss"] == held["loss"]
    assert numpy_held_out_losses(folder, held["t"]) == pytest.approx(held["loss"], rel=1e-5)
    # again: nothing is trained or evaluated anew
    stamps = {p: os.path.getmtime(os.path.join(folder, p))
              for p in ("checkpoint.safetensors", "evaluation.json", "held_out.json")}
    capsys.readouterr()
    assert ablate.main(argv) == 0
    assert "==" not in capsys.readouterr().out
    assert stamps == {p: os.path.getmtime(os.path.join(folder, p)) for p in stamps}
    # more steps only with --resume
    assert ablate.main([*argv[:8], "6", *argv[9:]]) == 1
    assert "pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize("options", [
    dict(skip_mode="add", time_mode="adaln", mlp_time_embed=True, pos_embed_type="sincos2d"),
    dict(skip_mode="project_skip", conv_position="before", patch_embed_type="conv"),
], ids=["add+adaln+time-mlp+sincos", "project_skip+before+stem"])
def test_numpy_and_torch_trainers_replay_a_variant_run(tmp_path, options):
    """float64, 6 steps of the tiny base with several variants at once: the same initial weights,
    batches and noise in both trainers, so the NumPy backward passes of the variants must give
    torch's AdamW trajectory."""
    from uvit_numpy import train as np_train
    from uvit_torch import train as torch_train
    cfg = A.variant_config("paper", "tiny", steps=6)
    cfg["model"].update(options)
    weights = {}
    for name, backend in (("torch", torch_train.TorchBackend()),
                          ("numpy", np_train.NumpyBackend())):
        training.run(cfg, str(tmp_path / name), backend, dtype="float64", progress=False)
        weights[name], _ = training.load_checkpoint(str(tmp_path / name /
                                                        "checkpoint.safetensors"))
    a, b = weights["torch"], weights["numpy"]
    worst = max(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30)
                for k in a if k.startswith(("model.", "ema.")))
    assert worst <= 1e-10, f"{options}: torch and NumPy runs differ by {worst:.2e}"


def test_the_committed_table_is_what_its_commands_make():
    """Every variant ran with seed 0 at the table's budget; each row's config, command, parameter
    count and final loss agree with the code and with the row's own loss curve; the CSV holds the
    JSON's rows; the sample grid beside it exists."""
    table = json.load(open(COMMITTED + ".json", encoding="utf-8"))
    rows = table["runs"]
    assert table["base"] == "uvit-digits" and table["evaluation"]["per_class"] == A.EVAL_PER_CLASS
    assert {r["variant"] for r in rows if r["seed"] == 0} == set(A.VARIANTS)
    assert table["base_config"] == json.loads(json.dumps(
        A.variant_config("paper", "uvit-digits", table["steps"])))
    for r in rows:
        cfg = A.variant_config(r["variant"], "uvit-digits", table["steps"])
        assert r["steps"] == table["steps"] and r["overrides"] == A.VARIANTS[r["variant"]]["model"]
        assert r["params"] == ablate.count_parameters(cfg), r["variant"]
        assert r["train_command"] == (
            f"python -m uvit_torch.ablate --base uvit-digits --variants {r['variant']} --seeds "
            f"{r['seed']} --steps {table['steps']} --out runs/ablations --per-class "
            f"{A.EVAL_PER_CLASS} --threads 1"), r["variant"]
        assert f"--seed {A.EVAL_SEED}" in r["evaluate_command"]
        curve = r["loss_curve"]
        assert curve["step"] == list(range(cfg["log_every"], table["steps"] + 1, cfg["log_every"]))
        log = {k: np.asarray(v, dtype=float) for k, v in curve.items()}
        assert r["final_loss"] == pytest.approx(A.final_loss(log, table["steps"]), rel=1e-12)
        assert 0.0 <= r["class_accuracy"] <= 1.0 and r["frechet_ratio"] == pytest.approx(
            r["frechet_distance"] / r["frechet_real_vs_real"], rel=1e-9)
    with open(COMMITTED + ".csv", newline="", encoding="utf-8") as f:
        from_csv = list(csv.DictReader(f))
    assert [(c["variant"], int(c["seed"]), float(c["final_loss"])) for c in from_csv] == \
        [(r["variant"], r["seed"], pytest.approx(r["final_loss"], rel=1e-12)) for r in rows]
    grid = plt.imread(os.path.join(os.path.dirname(COMMITTED), "08_ablation_samples.png"))
    assert grid.shape[0] > 60 * len(rows)                 # a row of digits per run


def test_the_readme_figures_are_the_committed_table():
    table = json.load(open(COMMITTED + ".json", encoding="utf-8"))
    runs = {(r["variant"], r["seed"]): r for r in table["runs"]}
    rest = [r for (name, _), r in runs.items() if name not in ("patch-conv", "pos-sincos2d")]
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"),
                  encoding="utf-8").read()
    section = readme.split("### The paper's ablations at digit scale")[1].split("\n## ")[0]
    section = " ".join(section.split())
    assert f"{table['steps']:,} steps per variant" in section
    assert (f"final loss {runs['paper', 0]['final_loss']:.3f} and "
            f"{runs['paper', 1]['final_loss']:.3f}") in section
    assert f"accuracy {runs['patch-conv', 0]['class_accuracy']:.3f}" in section
    assert f"panel e, {runs['pos-sincos2d', 0]['class_accuracy']:.3f}" in section
    assert f"at most {max(r['class_accuracy'] for r in rest):.3f}" in section
