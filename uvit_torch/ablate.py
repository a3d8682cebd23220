"""Train and evaluate the U-ViT paper's ablations at digit scale: `python -m uvit_torch.ablate`.

    python -m uvit_torch.ablate --threads 1                       # every variant, seeds 0 and 1
    python -m uvit_torch.ablate --variants paper skip-add --seeds 0 --threads 1
    python -m uvit_torch.ablate --resume --threads 1              # go on after an interruption
    python -m uvit_torch.ablate --list                            # the variants and the paper
    python -m uvit_torch.ablate --time 10 --threads 1             # seconds per training step

The variants, the base run (the shipped uvit-digits config at `ablations.STEPS` steps) and the seeds
are `uvit_numpy.ablations`. Each (variant, seed) is trained by the torch trainer
(`uvit_torch.train.train`) into OUT/VARIANT/seedSEED (checkpoint, log.csv and, at the end,
`model/`), then its model is evaluated by `python -m uvit_torch.evaluate` (class accuracy and
Frechet ratio, 100 samples per class, the model's own sampling defaults) into `evaluation.json`
there, and its loss on the held-out digits at fixed timesteps and noise is measured into
`held_out.json` (`held_out_losses`). A finished run and a finished evaluation are not redone; an
unfinished run continues with `--resume` only (a run folder is never overwritten). At the end the
table of every finished run under OUT (this base and number of steps) is written to TABLE.json and
TABLE.csv: the commands that made each run, its steps, seed, parameters, final loss, class
accuracy, Frechet ratio, times, held-out losses and loss curve, beside the paper's own ranking.
Processes with disjoint `--variants` may run side by side (one thread each on a small machine);
each writes the table of every run finished so far.

`--grid PNG` also samples one digit of each class from every run of the table (the EMA weights,
the model's sampling defaults, `--grid-seed`) into one picture, a row per run.

`--time K` only measures: K training steps of each variant (no files), and prints the median
seconds per step after a warm-up step, the figure to budget the runs with.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from uvit_numpy import ablations as A
from uvit_numpy import training as T

COMPARED = ("steps", "sampling", "checkpoint_every")   # what a finished run may differ in
HELD_OUT_FILE = "held_out.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m uvit_torch.ablate",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(A.VARIANTS),
                        help="variants to run (default: all of uvit_numpy.ablations.VARIANTS)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(A.SEEDS),
                        help=f"training seeds (default: {' '.join(map(str, A.SEEDS))})")
    parser.add_argument("--steps", type=int, help="training steps (default: the base's, "
                        f"{A.STEPS} for uvit-digits)")
    parser.add_argument("--base", default="uvit-digits", help=f"one of {list(A.BASES)} "
                        "(tiny: a few-second smoke run)")
    parser.add_argument("--out", default=os.path.join("runs", "ablations"),
                        help="the runs' folder: OUT/VARIANT/seedSEED (default runs/ablations)")
    parser.add_argument("--table", default=os.path.join("docs", "ablations"),
                        help="writes TABLE.json and TABLE.csv (a .json or .csv ending is dropped)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue unfinished runs from their checkpoints")
    parser.add_argument("--per-class", type=int, default=A.EVAL_PER_CLASS,
                        help="evaluation samples per class")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--time", type=int, metavar="K",
                        help="only time K training steps of each variant (no files written)")
    parser.add_argument("--grid", metavar="PNG",
                        help="also draw one digit of each class from every finished run of the "
                             "table (seed --grid-seed) and save the grid, a row per run, as PNG")
    parser.add_argument("--grid-seed", type=int, default=0,
                        help="the sampling seed of --grid (default 0)")
    args = parser.parse_args(argv)
    try:
        A.check_names(args.variants, args.base)
    except ValueError as err:
        parser.error(str(err))
    for name, value in (("--steps", args.steps), ("--per-class", args.per_class),
                        ("--time", args.time), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{name}: expected a positive number, got {value}")
    if args.time is not None and args.time < 2:
        parser.error("--time: expected at least 2 steps (the first is a warm-up)")
    if args.grid is not None and not args.grid.lower().endswith(".png"):
        parser.error(f"--grid: expected a .png path, got {args.grid!r}")
    for suffix in (".json", ".csv"):
        if args.table.endswith(suffix):
            args.table = args.table[:-len(suffix)]
    return args


# --------------------------------------------------------------------------------------------------
# The state of a run folder
# --------------------------------------------------------------------------------------------------
def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def trained_config(folder):
    """The `_training` record of the run's exported model, or None before it finished."""
    path = os.path.join(folder, "model", "config.json")
    return read_json(path).get("_training") if os.path.isfile(path) else None


def same_run(recorded, cfg):
    """True when a recorded training config is `cfg`, apart from what resuming may change."""
    def kept(c):
        return {k: v for k, v in json.loads(json.dumps(c)).items() if k not in COMPARED}
    return kept(recorded) == kept(cfg)


def plan_run(cfg, folder, seed, resume):
    """What to do with one run folder: "done", "train" (a fresh run) or "resume"; a ValueError
    for a folder that holds another run, or an unfinished one without --resume."""
    record = trained_config(folder)
    ckpt = os.path.join(folder, "checkpoint.safetensors")
    if record is not None:
        if not same_run(record["config"], cfg) or record["seed"] != seed:
            raise ValueError(f"{folder} holds a run of another config or seed; move it away or "
                             f"pass another --out")
        if record["steps"] == cfg["steps"]:
            return "done"
    if os.path.isfile(ckpt):
        if not resume:
            raise ValueError(f"{folder} holds an unfinished run (or one of other --steps); pass "
                             f"--resume to continue it")
        return "resume"
    return "train"


def evaluation_done(folder, per_class):
    """True when evaluation.json was made from this run's model with these settings."""
    path = os.path.join(folder, "evaluation.json")
    if not os.path.isfile(path):
        return False
    report, record = read_json(path), trained_config(folder)
    return (report["samples"] == 10 * per_class and report["seed"] == A.EVAL_SEED
            and report.get("trained") == {k: record[k] for k in ("steps", "seconds")})


# --------------------------------------------------------------------------------------------------
# Training, evaluating, timing
# --------------------------------------------------------------------------------------------------
def commands(args, variant, seed, folder):
    """The commands that reproduce one run and its evaluation."""
    train = (f"python -m uvit_torch.ablate --base {args.base} --variants {variant} --seeds {seed} "
             f"--steps {args.steps_resolved} --out {args.out} --per-class {args.per_class}"
             + (f" --threads {args.threads}" if args.threads else ""))
    evaluate = [os.path.join(folder, "model"), "--per-class", str(args.per_class), "--seed",
                str(A.EVAL_SEED), "--json", os.path.join(folder, "evaluation.json")]
    return train, evaluate


def train_run(cfg, folder, seed, action, command, progress):
    from .train import train
    print(f"== {cfg['name']} seed {seed}: {action} ({cfg['steps']} steps) in {folder}",
          flush=True)
    return train(cfg, folder, resume=action == "resume", seed=seed, progress=progress,
                 command=command)


def evaluate_run(folder, evaluate_args):
    """`python -m uvit_torch.evaluate` on the run's model; the report also records its command
    and the steps and seconds of the training it judged (a later, longer run is judged anew)."""
    from . import evaluate
    if evaluate.main(evaluate_args) != 0:
        raise RuntimeError(f"the evaluation of {folder} failed")
    path = os.path.join(folder, "evaluation.json")
    report = read_json(path)
    record = trained_config(folder)
    report["trained"] = {k: record[k] for k in ("steps", "seconds")}
    report["command"] = "python -m uvit_torch.evaluate " + " ".join(evaluate_args)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


HELD_OUT_T = (1, 50, 100, 250, 500, 750, 900, 999)
"""The timesteps at which `held_out_losses` measures each run (of the 1,000-step schedule)."""
HELD_OUT_NOISE_SEED = 0


@torch.no_grad()
def held_out_losses(folder, timesteps=HELD_OUT_T, seed=HELD_OUT_NOISE_SEED):
    """The training loss of the run's exported (EMA) model on the 500 held-out digits, at each of
    `timesteps` in turn: the mean squared error to the run's target (epsilon or v) with the true
    labels and no label dropping, the same noise (drawn from `seed`) at every timestep and for
    every run. Unlike a training loss (a few noisy batches at random timesteps) or a sample metric
    (a long chain of predictions), it compares two models on identical inputs and says at which
    noise level one predicts better. Returns {"t": [...], "loss": [...], "digits": 500, ...}."""
    from uvit_numpy import schedulers as S
    from uvit_numpy.data import load_digits

    from .sample import load_digit_model
    cfg = trained_config(folder)["config"]
    d = cfg["diffusion"]
    abar = np.cumprod(1.0 - S.make_betas(d["beta_schedule"], d["num_train_timesteps"],
                                         d["beta_start"], d["beta_end"]))
    x0, y = load_digits("held_out")
    x0 = x0[:, None]                                                     # (500, 1, 28, 28)
    noise = np.random.default_rng(seed).standard_normal(x0.shape).astype(np.float32)
    model = load_digit_model(os.path.join(folder, "model")).model.eval()
    losses = []
    for t in timesteps:
        tt = np.full(len(x0), t, dtype=np.int64)
        xt = S.add_noise(x0, noise, tt, abar)                            # (500, 1, 28, 28) float32
        target = S.training_target(x0, noise, tt, abar, d["prediction_type"])
        pred = model(torch.from_numpy(xt), torch.from_numpy(tt), torch.from_numpy(y)).numpy()
        losses.append(float(np.mean((pred.astype(np.float64) - target) ** 2)))
    return {"t": list(timesteps), "loss": losses, "digits": len(x0), "noise_seed": seed,
            "prediction_type": d["prediction_type"]}


def held_out_run(folder):
    """`held_out_losses` of a finished run, written once to HELD_OUT_FILE in its folder (made
    anew when the run's model changed: it records the training's steps and seconds)."""
    path = os.path.join(folder, HELD_OUT_FILE)
    record = trained_config(folder)
    trained = {k: record[k] for k in ("steps", "seconds")}
    if os.path.isfile(path):
        report = read_json(path)
        if report.get("trained") == trained:
            return report
    report = {**held_out_losses(folder), "trained": trained}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def time_steps(cfgs, steps, seed=0):
    """Seconds of one training step (forward, backward, clipping, AdamW, EMA) of runs of each
    config in `cfgs` that write nothing. The runs take their steps in turn (step n of every run,
    then step n + 1), so that a machine whose load changes slows them alike. Returns, per config
    name and over steps 2..K (step 1 is a warm-up), the median wall-clock time, the median CPU
    time of this process (with one thread, closer to what an idle machine would take) and the
    shortest wall-clock time: {name: (wall, cpu, fastest)}."""
    from .train import TorchBackend
    backends, tasks = {}, {}
    for cfg in cfgs:
        tasks[cfg["name"]] = T.TASKS[cfg["task"]](cfg, T.DTYPES["float32"])
        backends[cfg["name"]] = TorchBackend()
        backends[cfg["name"]].setup(tasks[cfg["name"]], seed)
    wall = {name: [] for name in backends}
    cpu = {name: [] for name in backends}
    for step in range(1, steps + 1):
        for cfg in cfgs:
            backend, task = backends[cfg["name"]], tasks[cfg["name"]]
            batch = task.batch(seed, step)
            tic, tic_cpu = time.perf_counter(), time.process_time()
            backend.forward_backward(batch)
            backend.optimizer_step(T.warmup_lr(step, cfg["lr"], cfg["warmup_steps"]),
                                   T.ema_decay(step, cfg["ema_decay"]))
            wall[cfg["name"]].append(time.perf_counter() - tic)
            cpu[cfg["name"]].append(time.process_time() - tic_cpu)
    return {name: (statistics.median(wall[name][1:]), statistics.median(cpu[name][1:]),
                   min(wall[name][1:])) for name in backends}


def count_parameters(cfg):
    from .uvit import UViT
    return sum(p.numel() for p in UViT(**cfg["model"]).parameters())


def sample_grid(rows, path, seed=0):
    """One digit of each class, 0 to 9, from the EMA model of every run in `rows` (table rows),
    sampled with the model's own defaults and `seed`; saved as a PNG grid at `path`, a row per
    run labelled with its variant and seed. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sample import load_digit_model, sample_digits
    if not rows:
        raise ValueError("--grid: the table has no finished and evaluated run to sample from")
    labels = list(range(10))
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.0, 0.7 * len(rows) + 0.3), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        images = sample_digits(load_digit_model(os.path.join(row["folder"], "model")), labels,
                               seed=seed)
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([14 + 28 * i for i in labels], labels if row is rows[-1] else [],
                      fontsize=8)
        ax.tick_params(length=0)
        ax.set_yticks([])
        ax.set_ylabel(f"{row['variant']}\nseed {row['seed']}", rotation=0, ha="right",
                      va="center", fontsize=8)
    fig.suptitle(f"one digit per class (0-9), {rows[0]['steps']} training steps, sampling seed "
                 f"{seed}", fontsize=9)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def table_row(args, variant, seed, folder):
    """One finished and evaluated run as a row of the table, or None if it is not both."""
    record = trained_config(folder)
    eval_path = os.path.join(folder, "evaluation.json")
    if record is None or not os.path.isfile(eval_path):
        return None
    cfg = A.variant_config(variant, args.base, args.steps_resolved)
    if record["steps"] != cfg["steps"] or not same_run(record["config"], cfg):
        return None
    report = read_json(eval_path)
    held_out = held_out_run(folder)
    log = T.read_log(os.path.join(folder, "log.csv"))
    return {
        "variant": variant, "group": A.VARIANTS[variant]["group"],
        "description": A.VARIANTS[variant]["description"],
        "overrides": A.VARIANTS[variant]["model"], "seed": seed, "steps": record["steps"],
        "params": count_parameters(cfg), "final_loss": A.final_loss(log, record["steps"]),
        "class_accuracy": report["class_accuracy"], "frechet_ratio": report["frechet_ratio"],
        "frechet_distance": report["frechet_distance"],
        "frechet_real_vs_real": report["frechet_real_vs_real"],
        "train_seconds": record["seconds"],
        "seconds_per_step": record["seconds"] / record["steps"],
        "threads": record.get("threads"), "eval_seconds": report["sampling_seconds"],
        "sampling": report["settings"], "folder": folder,
        "train_command": record.get("command"), "evaluate_command": report.get("command"),
        "held_out_loss": {"t": held_out["t"], "loss": held_out["loss"]},
        "loss_curve": {"step": [int(v) for v in log["step"]],
                       "loss": [float(v) for v in log["loss"]]},
    }


def build_table(args):
    """Every finished, evaluated run under --out of this base and number of steps, with the
    setup and the paper's findings."""
    rows = []
    for variant in A.VARIANTS:
        base = os.path.join(args.out, variant)
        seeds = sorted(int(d[4:]) for d in os.listdir(base)
                       if d.startswith("seed") and d[4:].isdigit()) if os.path.isdir(base) else []
        for seed in seeds:
            row = table_row(args, variant, seed, A.run_folder(args.out, variant, seed))
            if row is not None:
                rows.append(row)
    base_cfg = A.variant_config("paper", args.base, args.steps_resolved)
    return {
        "what": "The U-ViT paper's ablations (Sec. 3.1, Fig. 2) at digit scale: each variant "
                "changes one design choice of the base run; final_loss is the mean training "
                "loss over the last 10% of the steps; class accuracy and Frechet ratio from "
                "python -m uvit_torch.evaluate (samples from the EMA weights).",
        "paper": "Bao et al., All are Worth Words: A ViT Backbone for Diffusion Models, CVPR "
                 "2023 (arXiv 2209.12152), Section 3.1 and Figure 2 (CIFAR-10, FID)",
        "base": args.base, "base_config": base_cfg, "steps": args.steps_resolved,
        "evaluation": {"per_class": args.per_class, "seed": A.EVAL_SEED,
                       "sampling": base_cfg["sampling"]},
        "groups": A.GROUPS, "paper_findings": A.PAPER_FINDINGS, "variants": A.VARIANTS,
        "runs": rows, "summary": A.summarize(rows),
    }


def print_list():
    for group, title in [("", "the baseline"), *A.GROUPS.items()]:
        print(f"({group}) {title}" if group else title)
        for name, v in A.VARIANTS.items():
            if v["group"] == group:
                print(f"    {name:18s} {json.dumps(v['model']):34s} {v['description']}")
        if group:
            f = A.PAPER_FINDINGS[group]
            print(f"    paper (Fig. 2{group}): {f['text']}")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        print_list()
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.steps_resolved = args.steps or A.BASES[args.base]["steps"]
    if args.time:
        cfgs = [A.variant_config(v, args.base, args.steps_resolved) for v in args.variants]
        times = time_steps(cfgs, args.time)
        for variant, cfg in zip(args.variants, cfgs):
            wall, cpu, fastest = times[variant]
            print(f"{variant:18s} {count_parameters(cfg):>9,d} parameters, one step (batch "
                  f"{cfg['batch_size']}, {torch.get_num_threads()} threads): median {wall:.3f} s "
                  f"wall, {cpu:.3f} s CPU, fastest {fastest:.3f} s; {cfg['steps']} steps: "
                  f"{wall * cfg['steps'] / 3600:.2f} h", flush=True)
        return 0
    runs = []
    try:                                             # every folder is checked before any work
        for variant in args.variants:
            for seed in args.seeds:
                cfg = A.variant_config(variant, args.base, args.steps_resolved)
                folder = A.run_folder(args.out, variant, seed)
                runs.append((variant, seed, cfg, folder, plan_run(cfg, folder, seed,
                                                                  args.resume)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for variant, seed, cfg, folder, action in runs:
        train_command, evaluate_args = commands(args, variant, seed, folder)
        if action != "done":
            train_run(cfg, folder, seed, action, train_command, not args.no_progress)
        if not evaluation_done(folder, args.per_class):
            evaluate_run(folder, evaluate_args)
        held_out_run(folder)
    table = build_table(args)
    paths = A.write_table(args.table, table)
    print(f"table: {paths[0]}, {paths[1]}")
    if args.grid:
        print(f"grid: {sample_grid(table['runs'], args.grid, args.grid_seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
