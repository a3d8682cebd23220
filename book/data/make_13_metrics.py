"""The measurements chapter 13 shows, made once: `python book/data/make_13_metrics.py`.

    python book/data/make_13_metrics.py                     # writes book/data/13_maskgit_metrics.json
    python book/data/make_13_metrics.py --per-class 5 --out /tmp/quick.json     # a quick look

The shipped `amused-digits` model (torch, one thread) makes 50 digits of every class (500 per
setting) with the settings of one study at a time, each a change of one knob from the model's
defaults (cosine schedule, 12 steps, guidance 2, temperature 4 annealed to 0):

* temperature: 0.5, 2, 4, 8, 16, with two sampling seeds;
* mask schedule: cubic, square, cosine, linear, square root (the fraction of the grid still masked
  once a fraction r of the steps is done: 1 - r^3, 1 - r^2, cos(pi r / 2), 1 - r, 1 - sqrt(r));
* steps: 1, 2, 4, 8, 12 with the cosine schedule, and 64 steps with the linear one (exactly
  one token per step on the 8x8 grid: no two tokens are ever drawn independently of each other);
* guidance: 1 (none), 2, 3, 6.

Every setting is judged by the functions of `uvit_torch.evaluate` (class accuracy by the shipped
digit classifier; the Frechet distance in its feature space against the held-out digits, as a ratio
to real-vs-real at the same size), and by three numbers about the strokes:

* ink fraction: the share of pixels brighter than 0.5 (images in [0, 1]), averaged over samples;
* within-class distance: the mean pixel L2 distance between two samples of the same class
  (every pair), averaged over the classes: how varied the samples are;
* blank share: the share of the 64 codes that are the blank patch (the most frequent code of the
  training digits).

The same numbers for the 500 real held-out digits and for their tokenizer reconstructions are the
reference; and the class accuracy and Frechet ratio of the tokenizer alone: the real training digits
that make the ratio's real-vs-real reference, encoded and decoded (at 500 and at 1,000 digits). Sampling is `uvit_torch.sample.sample_digits`' decoding, batch by batch with its seeds
(a torch.Generator seeded seed * 100003 + batch); the script's loop `decode` is
`uvit_torch.maskgit.generate` with the number of tokens left masked after each step given as a
table, so that schedules the package does not name can be run through the package's own
`masked_decoding_step` (checked: with the cosine table it makes the same digits as
`sample_digits`). Rows already in the output file are kept (resume after an interruption).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from uvit_numpy.data import load_digits, to_unit
from uvit_numpy.maskgit import decoding_temperatures, masked_count
from uvit_numpy.sample import maskgit_conditions, settings
from uvit_torch import evaluate
from uvit_torch.maskgit import masked_decoding_step
from uvit_torch.sample import load_digit_model, sample_digits

OUT = ROOT / "book" / "data" / "13_maskgit_metrics.json"
COMMAND = "python book/data/make_13_metrics.py"
BATCH = 250                     # sample_digits' batch size (the seeds are per batch)
PER_CLASS = 50                  # 500 samples per setting

# fraction of the grid still masked once a fraction r of the steps is done
SCHEDULES = {
    "cubic": lambda r: 1.0 - r ** 3,
    "square": lambda r: 1.0 - r ** 2,
    "cosine": lambda r: math.cos(math.pi * r / 2),
    "linear": lambda r: 1.0 - r,
    "sqrt": lambda r: 1.0 - math.sqrt(r),
}


def masked_counts(schedule, num_steps, num_tokens=64):
    """Tokens left masked after each step but the last: the package's float32 count for "cosine"
    and "linear" (as diffusers' AmusedScheduler), floor(L * gamma(r)) for the others."""
    if schedule in ("cosine", "linear"):
        return [masked_count(num_tokens, k, num_steps, schedule) for k in range(num_steps - 1)]
    return [math.floor(num_tokens * SCHEDULES[schedule]((k + 1) / num_steps))
            for k in range(num_steps - 1)]


def ratio_for(count, step, num_steps, num_tokens):
    """The `starting_mask_ratio` s that makes the package's linear count floor(L s (1 - r)) equal
    `count` (aimed at count + 1/2, far from float32 rounding)."""
    return (count + 0.5) / (num_tokens * (1.0 - (step + 1) / num_steps))


@torch.no_grad()
def decode(model, ehs, pooled, micro, neg_ehs, neg_pooled, grid, counts, temperature,
           guidance_scale, generator):
    """`uvit_torch.maskgit.generate`, with `counts[k]` tokens left masked after step k."""
    B = ehs.shape[0]
    num_steps = len(counts) + 1
    mask_id = model.config["vocab_size"] - 1
    temps = decoding_temperatures(temperature, num_steps)
    guided = guidance_scale > 1.0
    if guided:
        ehs2, pooled2 = torch.cat([neg_ehs, ehs]), torch.cat([neg_pooled, pooled])
        micro2 = torch.cat([micro, micro])
    tokens = torch.full((B, grid, grid), mask_id, dtype=torch.long)
    for step in range(num_steps):
        if guided:
            logits = model(torch.cat([tokens, tokens]), ehs2, pooled2, micro2)
            uncond, cond = logits[:B], logits[B:]
            logits = uncond + guidance_scale * (cond - uncond)
        else:
            logits = model(tokens, ehs, pooled, micro)
        ratio = (ratio_for(counts[step], step, num_steps, grid * grid)
                 if step < num_steps - 1 else 1.0)
        tokens, _ = masked_decoding_step(logits, tokens, step, num_steps, mask_id,
                                         temperature=float(temps[step]), generator=generator,
                                         schedule="linear", starting_mask_ratio=ratio)
    return tokens


def sample(digit_model, labels, seed, steps, guidance_scale, temperature, schedule="cosine"):
    """(images (N, 28, 28) in [0, 1], codes (N, 8, 8)) with sample_digits' batches and seeds."""
    s = settings(digit_model, steps=steps, guidance_scale=guidance_scale, temperature=temperature)
    cfg = digit_model.training["config"]
    g = digit_model.tokenizer.grid
    counts = masked_counts(schedule, s["steps"], g * g)
    images, codes = [], []
    for b, start in enumerate(range(0, len(labels), BATCH)):
        part = labels[start:start + BATCH]
        conds = maskgit_conditions(part, cfg["num_classes"], cfg["micro_conds"], np.float32)
        ehs, pooled, neg_ehs, neg_pooled, micro = (torch.from_numpy(c) for c in conds)
        generator = torch.Generator().manual_seed(seed * 100003 + b)
        c = decode(digit_model.model, ehs, pooled, micro, neg_ehs, neg_pooled, g, counts,
                   tuple(s["temperature"]), s["guidance_scale"], generator).numpy()
        codes.append(c)
        images.append(to_unit(digit_model.tokenizer.decode(c)))
    return np.concatenate(images).astype(np.float32), np.concatenate(codes)


# --------------------------------------------------------------------------------------------------
# The stroke numbers
# --------------------------------------------------------------------------------------------------
def ink_fraction(images):
    """Mean share of pixels brighter than 0.5: images (N, 28, 28) in [0, 1]."""
    return float(np.mean(images > 0.5))


def within_class_distance(images, labels):
    """Mean pixel L2 distance between two different images of the same class, every pair, averaged
    over the classes."""
    per_class = []
    for c in range(10):
        x = images[labels == c].reshape(-1, 28 * 28).astype(np.float64)   # (n, 784)
        sq = np.sum(x * x, 1)
        d = np.sqrt(np.maximum(sq[:, None] - 2.0 * x @ x.T + sq[None, :], 0.0))
        n = len(x)
        per_class.append(d[np.triu_indices(n, 1)].mean())
    return float(np.mean(per_class))


def stroke_numbers(images, labels, codes, blank):
    return {"ink_fraction": ink_fraction(images),
            "within_class_distance": within_class_distance(images, labels),
            "blank_share": float(np.mean(codes == blank))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    digit_model = load_digit_model("amused-digits")
    tok = digit_model.tokenizer
    classifier = evaluate.load_classifier()
    train_x, train_y = load_digits("train")
    blank = int(np.argmax(np.bincount(tok.encode(train_x).ravel(), minlength=tok.codebook_size)))
    labels = np.repeat(np.arange(10), args.per_class)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    if result.get("per_class") not in (None, args.per_class):
        raise SystemExit(f"{out} holds a run with {result['per_class']} per class; "
                         f"expected {args.per_class}: choose another --out")
    defaults = settings(digit_model)
    result.update({
        "command": COMMAND + ("" if args.per_class == PER_CLASS
                              else f" --per-class {args.per_class}"),
        "model": "amused-digits", "backend": "torch", "threads": 1,
        "framework": f"torch {torch.__version__}", "per_class": args.per_class,
        "samples_per_setting": len(labels),
        "defaults": {"schedule": "cosine", "steps": defaults["steps"],
                     "guidance_scale": defaults["guidance_scale"],
                     "temperature": list(defaults["temperature"])},
        "definitions": {
            "class_accuracy": "uvit_torch.evaluate: share of samples the shipped digit "
                              "classifier names as the intended class",
            "frechet_ratio": "uvit_torch.evaluate: Frechet distance to the held-out digits in the "
                             "classifier's features / the same for as many real training digits",
            "ink_fraction": "mean share of pixels > 0.5 (images in [0, 1])",
            "within_class_distance": "mean pixel L2 distance between two samples of one class "
                                     "(every pair), averaged over the 10 classes",
            "blank_share": "share of the 64 codes that are the blank patch (code "
                           f"{blank}, the most frequent in the training digits)",
            "temperature": "the Gumbel temperature of the first step, annealed linearly to 0",
        },
        "blank_code": blank,
    })
    rows = result.setdefault("rows", {})

    # the reference: real held-out digits and their reconstructions by the tokenizer
    held_x, held_y = load_digits("held_out")
    held_codes = tok.encode(held_x)
    result["reference"] = {
        "held_out": {"samples": len(held_x), **stroke_numbers(
            to_unit(held_x), held_y, held_codes, blank)},
        "held_out_reconstructed": {"samples": len(held_x), **stroke_numbers(
            to_unit(tok.decode(held_codes)), held_y, held_codes, blank)},
    }
    # the tokenizer's own cost: the real digits the Frechet ratio's reference is made of (a
    # balanced subset of the training digits, as many as the samples), encoded and decoded; at
    # this script's size and at the 1,000 of the shipped model's own report
    result["reference"]["tokenizer_alone"] = {}
    for per_class in sorted({args.per_class, 100}):
        ref_x, ref_y = evaluate.balanced_subset(train_x, train_y, per_class)
        report = evaluate.evaluate_images(
            to_unit(tok.decode(tok.encode(ref_x))).astype(np.float32), ref_y, classifier)
        result["reference"]["tokenizer_alone"][str(len(ref_x))] = {
            k: report[k] for k in ("class_accuracy", "frechet_distance", "frechet_real_vs_real",
                                   "frechet_ratio")}

    # the script's decoding loop is sample_digits' (same digits with the cosine table)
    check = np.arange(10).repeat(2)
    ours, _ = sample(digit_model, check, 7, None, None, None)
    theirs = sample_digits(digit_model, check, 7)
    if not np.array_equal(ours, theirs):
        raise SystemExit("the script's decode differs from uvit_torch.sample.sample_digits")
    result["decode_equals_sample_digits"] = True

    temperatures = (0.5, 2.0, 4.0, 8.0, 16.0)
    studies = [("temperature", {"temperature": t}, 1234) for t in temperatures]
    studies += [("steps", {"steps": n}, 1234) for n in (1, 2, 4, 8, 12)]
    studies += [("schedule", {"schedule": name}, 1234) for name in SCHEDULES]
    studies += [("guidance", {"guidance_scale": w}, 1234) for w in (1.0, 2.0, 3.0, 6.0)]
    studies += [("temperature", {"temperature": t}, 1235) for t in temperatures]
    studies += [("steps", {"steps": 64, "schedule": "linear"}, 1234)]  # one token per step

    for study, change, seed in studies:
        s = {"schedule": "cosine", **{k: v for k, v in result["defaults"].items()}}
        s.update(change)
        if isinstance(s["temperature"], float):
            s["temperature"] = [s["temperature"], 0.0]
        key = (f"schedule={s['schedule']} steps={s['steps']} guidance={s['guidance_scale']} "
               f"temperature={s['temperature'][0]} seed={seed}")
        if key in rows:
            rows[key].setdefault("studies", [])
            if study not in rows[key]["studies"]:
                rows[key]["studies"].append(study)
            continue
        tic = time.perf_counter()
        images, codes = sample(digit_model, labels, seed, s["steps"], s["guidance_scale"],
                               s["temperature"][0], s["schedule"])
        seconds = time.perf_counter() - tic
        report = evaluate.evaluate_images(images, labels, classifier)
        rows[key] = {
            "studies": [study], "seed": seed, **s, "samples": len(labels),
            "class_accuracy": report["class_accuracy"],
            "frechet_distance": report["frechet_distance"],
            "frechet_real_vs_real": report["frechet_real_vs_real"],
            "frechet_ratio": report["frechet_ratio"],
            **stroke_numbers(images, labels, codes, blank),
            "sampling_seconds": round(seconds, 1),
        }
        r = rows[key]
        print(f"{key}: class acc {r['class_accuracy']:.3f}, FD ratio {r['frechet_ratio']:.2f}, "
              f"ink {r['ink_fraction']:.4f}, within-class {r['within_class_distance']:.3f}, "
              f"blank {r['blank_share']:.3f} ({seconds:.0f} s)", flush=True)
        out.write_text(json.dumps(result, indent=1) + "\n")        # resumable
    result["rows"] = {k: rows[k] for k in sorted(rows)}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
