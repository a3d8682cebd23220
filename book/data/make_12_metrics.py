"""The sampler and guidance table of chapter 12: `python book/data/make_12_metrics.py`.

Samples the shipped `uvit-digits` model (torch, one thread) with each setting of `SETTINGS`,
50 digits of every class (500) from one seed, and measures them with `uvit_torch.evaluate`'s
own functions: the class accuracy the shipped digit classifier gives them, and the Frechet
distance in its 64 features to the 500 held-out digits, next to real-vs-real (500 balanced
training digits against the same held-out ones, `balanced_subset` seed 1) and their ratio; and
real-vs-real on 20 balanced subsets (seeds 1..20), whose mean the chapter divides by. Writes
book/data/12_sampler_metrics.json: the settings, seeds, sample counts, versions and one row per
setting.

The images are rounded to 8 bits before they are measured (as a PNG stores them), and those of
the shipped default setting are kept in book/data/12_default_samples.npz (uint8), so that the
chapter recomputes that row's Frechet distance step by step. Every setting starts from the same
seeded noise x_T (the same seed), so the rows differ by the sampler alone; one setting is
repeated with another seed to show how much a row moves from seed to seed. Two settings are
repeated with Imagen's dynamic thresholding of the x0 estimate (`thresholding=True`,
`sample_max_value` = THRESHOLD_MAX; diffusers' option, which `uvit_numpy.sample` does not expose,
so those rows run `uvit_torch.sampling.sample` with the same batches and seeds as
`sample_digits`).

A row already in the JSON (same setting and seed) is kept, so an interrupted run continues where
it stopped; `--fresh` recomputes everything. The settings cost 242,500 forward passes of one
digit through the network; on this project's 2-core machine, shared with other jobs, the table
took about 1.5 hours (each row's `sampling_seconds` is in the JSON: 243 to 270 s for the two
thresholded rows at a load average of about 5). Chapter 12 only reads the JSON.

    PYTHONPATH=. python book/data/make_12_metrics.py             # from the repository root
"""

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "12_sampler_metrics.json"
SAMPLES = HERE / "12_default_samples.npz"
COMMAND = "python book/data/make_12_metrics.py"
SEED, REPLICATE_SEED = 1234, 1235
SUBSETS = 20            # real-vs-real is measured on this many balanced subsets (seeds 1, 2, ...)
THRESHOLD_MAX = 1.5     # sample_max_value of the thresholded rows: x0-hat may reach +-1.5 before
                        # it is clipped, and is then divided by its 99.5 % quantile of |x0-hat|
BATCH = 250             # digits per batch, as sample_digits: batch b is seeded with [seed, b]

# (scheduler, steps, guidance_scale w, seed, thresholding): the shipped default first (its images
# are kept), the guidance sweep at DPM-Solver++ 20 steps, the samplers against their steps without
# guidance (w = 1: one network evaluation per step, and the sampler alone decides the result), the
# default again from another seed, and the two strongest guidances again with dynamic
# thresholding.
SETTINGS = [
    ("dpmsolver++", 20, 1.25, SEED, False),
    ("dpmsolver++", 20, 1.0, SEED, False),
    ("dpmsolver++", 20, 1.5, SEED, False),
    ("dpmsolver++", 20, 2.0, SEED, False),
    ("dpmsolver++", 20, 3.0, SEED, False),
    ("dpmsolver++", 5, 1.0, SEED, False),
    ("dpmsolver++", 10, 1.0, SEED, False),
    ("ddim", 5, 1.0, SEED, False),
    ("ddim", 10, 1.0, SEED, False),
    ("ddim", 20, 1.0, SEED, False),
    ("ddim", 50, 1.0, SEED, False),
    ("ddpm", 5, 1.0, SEED, False),
    ("ddpm", 10, 1.0, SEED, False),
    ("ddpm", 20, 1.0, SEED, False),
    ("ddpm", 50, 1.0, SEED, False),
    ("dpmsolver++", 20, 1.25, REPLICATE_SEED, False),
    ("dpmsolver++", 20, 2.0, SEED, True),
    ("dpmsolver++", 20, 3.0, SEED, True),
]


def key(row):
    # rows written before the thresholded settings existed have no "thresholding": they had none
    return (row["scheduler"], row["steps"], row["guidance_scale"], row["seed"],
            row.get("thresholding", False))


def sample_thresholded(digit_model, labels, scheduler, steps, w, seed):
    """`uvit_torch.sample.sample_digits` with dynamic thresholding on: the same scheduler
    arguments (`make_scheduler`) plus `thresholding=True, sample_max_value=THRESHOLD_MAX`, the same
    batches and seeds. Returns images (N, 28, 28) float32 in [0, 1]."""
    from uvit_numpy.data import to_unit
    from uvit_numpy.sample import make_scheduler
    from uvit_torch import schedulers
    from uvit_torch.sampling import sample
    base = make_scheduler(scheduler, digit_model.training["config"]["diffusion"], schedulers)
    cls = type(base)
    args = {k: v for k, v in base.config.items()                     # its constructor's arguments
            if k in inspect.signature(cls.__init__).parameters}
    out = []
    for b, start in enumerate(range(0, len(labels), BATCH)):
        sched = cls(**{**args, "thresholding": True, "sample_max_value": THRESHOLD_MAX})
        x = sample(digit_model.model, labels[start:start + BATCH], sched, steps, w,
                   seed=[seed, b], eta=0.0)                          # (n, 1, 28, 28) in [-1, 1]
        out.append(to_unit(x[:, 0].cpu().numpy()))
    return np.concatenate(out).astype(np.float32)


def measure(digit_model, classifier, scheduler, steps, w, seed, thresholding, per_class,
            save=None):
    """One row: sample 10 x per_class digits with the setting, round them to 8 bits and evaluate
    them; `save`: an .npz path for the uint8 images and their labels."""
    from uvit_torch.evaluate import evaluate_images
    from uvit_torch.sample import sample_digits
    labels = np.repeat(np.arange(10), per_class)
    tic = time.perf_counter()
    if thresholding:
        images = sample_thresholded(digit_model, labels, scheduler, steps, w, seed)
    else:
        images = sample_digits(digit_model, labels, seed=seed, scheduler=scheduler, steps=steps,
                               guidance_scale=w, eta=0.0 if scheduler == "ddim" else None,
                               batch_size=BATCH)
    seconds = time.perf_counter() - tic
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)      # (N, 28, 28)
    if save:
        np.savez_compressed(save, images=pixels, labels=labels)
    images = pixels.astype(np.float32) / 255.0
    report = evaluate_images(images, labels, classifier)
    return {"scheduler": scheduler, "steps": steps, "guidance_scale": w, "eta": 0.0,
            "seed": seed, "thresholding": thresholding,
            "sample_max_value": THRESHOLD_MAX if thresholding else None,
            "network_evaluations_per_digit": steps * (1 if w == 1.0 else 2),
            **report, "sampling_seconds": round(seconds, 1)}


def real_vs_real(classifier, per_class, seeds):
    """The Frechet distance of real training digits (per_class of each class, drawn by
    `balanced_subset` with each seed) to the held-out digits: how far real digits are at this
    sample size, and how much that moves from subset to subset. Returns a list, one per seed."""
    from uvit_numpy.data import load_digits, to_unit
    from uvit_torch.evaluate import balanced_subset, frechet_distance, predict
    train_x, train_y = load_digits("train")
    held_x, _ = load_digits("held_out")
    _, train_feats = predict(classifier, to_unit(train_x))               # (4500, 64)
    _, held_feats = predict(classifier, to_unit(held_x))                 # (500, 64)
    return [frechet_distance(balanced_subset(train_feats, train_y, per_class, seed)[0],
                             held_feats) for seed in seeds]


def write(args, rows, reference):
    """The JSON: how the rows were made, and the rows in the order of SETTINGS (atomically)."""
    order = {s: i for i, s in enumerate(SETTINGS)}
    result = {
        "command": COMMAND, "model": "uvit-digits", "backend": "torch",
        "torch": torch.__version__, "threads": args.threads, "per_class": args.per_class,
        "samples_per_setting": 10 * args.per_class, "seed": SEED,
        "replicate_seed": REPLICATE_SEED, "eta": 0.0,
        "classifier": "uvit_numpy/pretrained/digit-classifier",
        "images": "rounded to 8 bits before they are measured",
        "default_samples": f"book/data/{SAMPLES.name} (the first setting's images)",
        "frechet_reference": "the 500 held-out digits; real-vs-real: per_class balanced "
                             "training digits (uvit_torch.evaluate.balanced_subset, seed 1) "
                             "against the same held-out digits",
        "frechet_real_vs_real_subsets": reference,
        "settings": [list(s) for s in SETTINGS],
        "settings_fields": ["scheduler", "steps", "guidance_scale", "seed", "thresholding"],
        "rows": sorted(rows, key=lambda r: order[key(r)])}
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT), help=f"the JSON file (default {OUT.name})")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class (50)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--fresh", action="store_true", help="recompute every row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from uvit_torch.evaluate import load_classifier
    from uvit_torch.sample import load_digit_model
    digit_model = load_digit_model("uvit-digits")
    classifier = load_classifier()
    seeds = list(range(1, SUBSETS + 1))
    values = real_vs_real(classifier, args.per_class, seeds)
    reference = {"per_class": args.per_class, "seeds": seeds, "values": values,
                 "mean": float(np.mean(values))}
    rows = []
    if os.path.exists(args.out) and not args.fresh:
        with open(args.out, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("per_class") == args.per_class:
            rows = old["rows"]
    for r in rows:                      # rows of the version without thresholded settings
        r.setdefault("thresholding", False)
        r.setdefault("sample_max_value", None)
    order = {s: i for i, s in enumerate(SETTINGS)}
    rows = [r for r in rows if key(r) in order]                 # a setting no longer listed goes
    done = {key(r) for r in rows}
    for setting in SETTINGS:
        if setting in done:
            continue
        scheduler, steps, w, seed, thresholding = setting
        save = str(SAMPLES) if setting == SETTINGS[0] else None
        row = measure(digit_model, classifier, scheduler, steps, w, seed, thresholding,
                      args.per_class, save)
        rows.append(row)
        write(args, rows, reference)
        print(f"{scheduler:<12} {steps:>4} steps  w = {w:<5} seed {seed} thresholding "
              f"{thresholding}: accuracy "
              f"{row['class_accuracy']:.3f}, Frechet ratio {row['frechet_ratio']:.2f} "
              f"({row['sampling_seconds']:.0f} s)", flush=True)
    write(args, rows, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
