"""The U-ViT paper's ablations at digit scale: the variants, the base run, the seeds, and what the
paper found. Data and small helpers only (torch-free); `python -m uvit_torch.ablate` trains and
evaluates the runs and writes the table.

The paper ("All are Worth Words: A ViT Backbone for Diffusion Models", Bao et al., CVPR 2023,
arXiv 2209.12152) settles its design in Section 3.1 by ablations on CIFAR-10, plotted in its
Figure 2: (a) how a long skip joins the main branch, (b) how the time is fed, (c) where the extra
3x3 convolution goes, (d) the patch embedding, (e) the position embedding. Each variant here is the
shipped `uvit-digits` run (its model, v-prediction, AdamW at lr 5e-4, batch 64, EMA 0.999) with one
of those choices changed through `UViT`'s options, trained for `STEPS` steps (not the shipped
model's 40,000) with each seed of `SEEDS`, and evaluated as the shipped model is: 100 samples per
class with its sampling defaults (DPM-Solver++, 20 steps, w = 1.25), class accuracy and Frechet
ratio (`uvit_torch.evaluate`).

The full protocol (`STEPS` x `SEEDS`, about 40 hours on one core of this project's 2-core machine)
has not been run here. The table the book shows (book/data/08_ablations.json and .csv, chapter 8)
is what one sitting allows: every variant for 1,500 steps with seed 0, and the paper's variant
also with seed 1 to show the seed-to-seed spread, each row with the command that made it
(`python -m uvit_torch.ablate --steps 1500 --seeds 0 --threads 1`).

`PAPER_FINDINGS` paraphrases the paper's text on each group (its Section 3.1). The paper gives its
numbers only as the plots of Figure 2; those could not be read as text here, so no FID is quoted.
"""

import csv
import json
import math
import os

from . import training

STEPS = 10_000
"""Training steps of every ablation run (a quarter of the shipped model's 40,000)."""
SEEDS = (0, 1)
"""The seeds of every variant (the training run's randomness and initial weights)."""
EVAL_PER_CLASS = 100
EVAL_SEED = 1234
"""The evaluation of `uvit_torch.evaluate` with its defaults: 1,000 samples, sampling seed 1234."""

BASES = {
    "uvit-digits": dict(config="uvit-digits", steps=STEPS, model={}),
    # a smoke run of a few seconds: uvit-tiny with a power-of-2 patch (the conv stem needs one)
    "tiny": dict(config="uvit-tiny", steps=20, model={"patch_size": 4}),
}
"""The runs the variants change: a training config of `training.TRAIN_CONFIGS`, its default
number of steps and model overrides. The ablations use "uvit-digits"; "tiny" is for tests."""

GROUPS = {
    "a": "how the long skip joins the main branch (h_m: the main branch, h_s: the skip)",
    "b": "how the time is fed to the network",
    "c": "where the extra 3x3 convolution goes",
    "d": "the patch embedding",
    "e": "the position embedding",
}
"""The paper's groups of ablations, by the panel of its Figure 2."""

VARIANTS = {
    "paper": dict(group="", model={}, description=(
        "the paper's U-ViT: Linear(Concat(h_m, h_s)) long skips, time as a token, 3x3 conv after "
        "the linear to patches, linear patch embedding, learned 1-D positions")),
    "skip-none": dict(group="a", model={"skip": False}, description="no long skips"),
    "skip-add": dict(group="a", model={"skip_mode": "add"}, description="h_m + h_s"),
    "skip-project-skip": dict(group="a", model={"skip_mode": "project_skip"},
                              description="h_m + Linear(h_s)"),
    "skip-project-sum": dict(group="a", model={"skip_mode": "project_sum"},
                             description="Linear(h_m + h_s)"),
    "time-adaln": dict(group="b", model={"time_mode": "adaln"}, description=(
        "no time token; adaptive LayerNorm y_s LayerNorm(h) + y_b in every block's two norms")),
    "conv-before": dict(group="c", model={"conv_position": "before"}, description=(
        "the 3x3 conv on the tokens as a 2-D grid, before the linear to patches")),
    "conv-none": dict(group="c", model={"conv": False}, description="no extra 3x3 conv"),
    "patch-conv": dict(group="d", model={"patch_embed_type": "conv"}, description=(
        "convolutional stem: 3x3 stride-2 convs with ReLU, then a 1x1 conv")),
    "pos-sincos2d": dict(group="e", model={"pos_embed_type": "sincos2d"}, description=(
        "fixed 2-D sinusoidal positions (row and column sinusoids concatenated)")),
}
"""name -> the panel of Figure 2 it belongs to ("" for the baseline every group compares with),
the `UViT` options it changes and one line on what it is."""

PAPER_FINDINGS = {
    "a": dict(best="paper", worst="skip-none, skip-add", text=(
        "Linear(Concat(h_m, h_s)) is best. Adding h_m + h_s directly gives no benefit over no "
        "long skip: a transformer block already adds its input to its output, so h_m holds h_s "
        "linearly and the sum only raises its coefficient. The two ways that project h_s "
        "linearly (h_m + Linear(h_s), Linear(h_m + h_s)) improve on no long skip, less than "
        "concatenation.")),
    "b": dict(best="paper", worst="time-adaln", text=(
        "Time as a token performs better than adaptive layer normalisation (AdaLN).")),
    "c": dict(best="paper", worst="", text=(
        "The 3x3 conv after the linear projection to patches is slightly better than the conv "
        "before it and than no conv.")),
    "d": dict(best="paper", worst="patch-conv", text=(
        "The original linear patch embedding performs better than the convolutional stem.")),
    "e": dict(best="paper", worst="pos-sincos2d", text=(
        "The learned 1-D position embedding performs better than the 2-D sinusoidal one; with "
        "no position embedding at all the model fails to generate meaningful images (not a "
        "variant here).")),
}
"""The paper's own ranking in each group of Section 3.1 / Figure 2 (CIFAR-10, FID), paraphrased:
the variant it found best, the ones it found worst ("" where its text names none), and its
words. No FID is quoted: the paper gives them only as the plots of Figure 2."""


def check_names(variants, base):
    """ValueError naming the known variants or bases for an unknown one."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; expected names of "
                         f"{list(VARIANTS)}")
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; expected one of {list(BASES)}")


def variant_config(variant, base="uvit-digits", steps=None):
    """The training config of one variant: `training.train_config` of the base with the base's
    and the variant's model overrides applied and `name` set to the variant's name. `steps`
    defaults to the base's (`STEPS` for uvit-digits)."""
    check_names([variant], base)
    b = BASES[base]
    cfg = training.train_config(b["config"], steps=steps or b["steps"])
    cfg["model"].update(b["model"])
    cfg["model"].update(VARIANTS[variant]["model"])
    cfg["name"] = variant
    return cfg


def run_folder(out, variant, seed):
    """Where a (variant, seed) run lives: OUT/VARIANT/seedSEED."""
    return os.path.join(out, variant, f"seed{seed}")


def final_loss(log, steps, share=0.1):
    """The mean training loss over the last `share` of the run (the log rows with step above
    (1 - share) * steps; at least the last row). log: `training.read_log`'s dict of arrays."""
    late = log["step"] > (1.0 - share) * steps
    if not late.any():
        late = log["step"] == log["step"].max()
    return float(log["loss"][late].mean())


def summarize(rows):
    """Per variant, the mean and the sample standard deviation over its seeds of final_loss,
    class_accuracy and frechet_ratio (std None for one seed), in the order of `VARIANTS`."""
    out = []
    for name in VARIANTS:
        runs = [r for r in rows if r["variant"] == name]
        if not runs:
            continue
        entry = {"variant": name, "group": VARIANTS[name]["group"], "seeds": [r["seed"] for r in
                                                                              runs],
                 "params": runs[0]["params"]}
        for key in ("final_loss", "class_accuracy", "frechet_ratio"):
            values = [r[key] for r in runs]
            mean = sum(values) / len(values)
            std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                   if len(values) > 1 else None)
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean, std
        out.append(entry)
    return out


CSV_FIELDS = ("variant", "group", "description", "overrides", "seed", "steps", "params",
              "final_loss", "class_accuracy", "frechet_ratio", "frechet_distance",
              "frechet_real_vs_real", "train_seconds", "seconds_per_step", "threads",
              "eval_seconds", "train_command", "evaluate_command")


def write_table(stem, table):
    """Write `table` (a dict with a "runs" list of rows) to STEM.json, and its rows to STEM.csv
    (the columns of `CSV_FIELDS`; overrides as JSON). Returns the two paths."""
    folder = os.path.dirname(os.path.abspath(stem))
    os.makedirs(folder, exist_ok=True)
    paths = (f"{stem}.json", f"{stem}.csv")
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    with open(paths[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in table["runs"]:
            writer.writerow({**row, "overrides": json.dumps(row["overrides"], sort_keys=True)})
    return paths
