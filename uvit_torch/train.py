"""Train a named config with torch: `python -m uvit_torch.train uvit-digits`.

    python -m uvit_torch.train uvit-digits --out runs/uvit-digits            # a fresh run
    python -m uvit_torch.train uvit-digits --out runs/uvit-digits --resume   # continue it
    python -m uvit_torch.train uvit-digits --out runs/uvit-digits --resume --steps 30000

The run folder holds `checkpoint.safetensors` (weights, EMA, AdamW state, step; rewritten
atomically every `checkpoint_every` steps and at the end), `log.csv` (step, mean loss since the
previous row, learning rate, gradient norm before clipping, seconds) and, at the end, `model/`: the
EMA weights and their config as a model folder that both packages load (`UViT.from_pretrained`).
`--resume` continues from the checkpoint and gives bitwise the weights of an uninterrupted run:
every random number of a step is a function of (seed, step) (`uvit_numpy.training`), and the
initial weights are the NumPy model's for the seed, so `python -m uvit_numpy.train` replays the
same run. A non-finite loss stops the run (exit status 1) and keeps the last good checkpoint.

The optimisation is the U-ViT paper's (AdamW over all parameters, linear warm-up then constant, an
EMA of the weights), with `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_`.
"""

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch

from uvit_numpy import training as T
from uvit_numpy.data import load_digits

from .losses import mse_loss
from .schedulers import add_noise
from .parity.harness import TORCH_DTYPE

DTYPES = {"float32": np.float32, "float64": np.float64}


# --------------------------------------------------------------------------------------------------
# The tasks: which model, which batch, which loss
# --------------------------------------------------------------------------------------------------
class DiffusionTask:
    """U-ViT noise prediction: x_t = add_noise(x0, eps, t), loss = mse(model(x_t, t, y), eps)."""

    def __init__(self, cfg, dtype):
        from uvit_numpy.schedulers import make_betas
        self.cfg, self.dtype = cfg, dtype
        d = cfg["diffusion"]
        betas = make_betas(d["beta_schedule"], d["num_train_timesteps"], d["beta_start"],
                           d["beta_end"])
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        self.images, self.labels = load_digits("train")

    def build(self, seed):
        """The torch model, holding the NumPy reference's initial weights for `seed`."""
        from uvit_numpy import UViT as NumpyUViT

        from .uvit import UViT
        reference = NumpyUViT(**self.cfg["model"], dtype=self.dtype, rng=seed)
        model = UViT(**self.cfg["model"], dtype=TORCH_DTYPE[np.dtype(self.dtype)])
        model.load_state_dict({k: torch.from_numpy(v.copy())
                               for k, v in reference.state_dict().items()})
        return model

    def batch(self, seed, step):
        b = T.diffusion_batch(self.images, self.labels, self.cfg, seed, step, self.dtype)
        return {k: torch.from_numpy(v) for k, v in b.items()}

    def loss(self, model, batch):
        xt = add_noise(batch["x0"], batch["noise"], batch["t"], self.alphas_cumprod)
        return mse_loss(model(xt, batch["t"], batch["y"]), batch["noise"])

    def export(self, folder, ema, cfg, info):
        ema.save_pretrained(folder, training={"config": cfg, **info},
                            sampling=cfg.get("sampling"))


TASKS = {"diffusion": DiffusionTask}


# --------------------------------------------------------------------------------------------------
# Optimizer state <-> named arrays (the checkpoint keys both trainers use)
# --------------------------------------------------------------------------------------------------
def optimizer_arrays(model, optimizer):
    """AdamW's moments as `{optim.exp_avg.<name>: array, ...}` and its step counts by name."""
    arrays, steps = {}, {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if not state:
            continue
        arrays[f"optim.exp_avg.{name}"] = state["exp_avg"].detach().cpu().numpy()
        arrays[f"optim.exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().cpu().numpy()
        steps[name] = float(state["step"])
    return arrays, steps


def load_optimizer_arrays(model, optimizer, arrays, steps):
    """Put the moments and step counts of a checkpoint back into `optimizer` (by name)."""
    saved = optimizer.state_dict()
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    state = {}
    for name, count in steps.items():
        p = dict(model.named_parameters())[name]
        state[index[name]] = {
            "step": torch.tensor(count, dtype=torch.get_default_dtype()),
            "exp_avg": torch.from_numpy(arrays[f"exp_avg.{name}"].copy()).to(p),
            "exp_avg_sq": torch.from_numpy(arrays[f"exp_avg_sq.{name}"].copy()).to(p)}
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * weights (the U-ViT paper's form), every parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p, alpha=1.0 - decay)


def numpy_state(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def torch_state(arrays):
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
def train(cfg, out, resume=False, seed=0, dtype="float32", progress=True):
    """Run (or resume) the training described by `cfg` (from `training.train_config`) into the
    folder `out`. Returns a summary dict (steps, seconds, last logged loss, paths)."""
    np_dtype = DTYPES[dtype]
    if cfg["checkpoint_every"] % cfg["log_every"]:
        raise ValueError(f"train: checkpoint_every ({cfg['checkpoint_every']}) must be a multiple "
                         f"of log_every ({cfg['log_every']}), so a resumed log lines up")
    task = TASKS[cfg["task"]](cfg, np_dtype)
    ckpt_path = os.path.join(out, "checkpoint.safetensors")
    model = task.build(seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                  eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    start, elapsed = 0, 0.0
    if resume:
        arrays, meta = T.load_checkpoint(ckpt_path)
        T.check_resume(meta, cfg, ckpt_path)
        if meta["seed"] != seed or meta["dtype"] != dtype:
            raise ValueError(f"--resume: {ckpt_path!r} was written with seed {meta['seed']} and "
                             f"dtype {meta['dtype']}, not seed {seed} and dtype {dtype}")
        model.load_state_dict(torch_state(T.split_prefix(arrays, "model.")))
        ema.load_state_dict(torch_state(T.split_prefix(arrays, "ema.")))
        load_optimizer_arrays(model, optimizer, T.split_prefix(arrays, "optim."),
                              meta["optimizer_steps"])
        start, elapsed = meta["step"], meta["seconds"]
    os.makedirs(out, exist_ok=True)
    log = T.LossLog(os.path.join(out, "log.csv"), resume_step=start)
    meta = {"config": cfg, "seed": seed, "dtype": dtype, "framework": "torch"}
    last_good, window, row = start, [], None

    def checkpoint(step):
        arrays = {f"model.{k}": v for k, v in numpy_state(model).items()}
        arrays.update({f"ema.{k}": v for k, v in numpy_state(ema).items()})
        opt_arrays, opt_steps = optimizer_arrays(model, optimizer)
        arrays.update(opt_arrays)
        T.save_checkpoint(ckpt_path, arrays, {**meta, "step": step, "seconds": elapsed,
                                              "optimizer_steps": opt_steps})

    bar = _progress(cfg, start, progress)
    model.train()
    for step in range(start + 1, cfg["steps"] + 1):
        tic = time.perf_counter()
        batch = task.batch(seed, step)
        lr = T.warmup_lr(step, cfg["lr"], cfg["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = task.loss(model, batch)
        T.check_finite(loss.item(), step, ckpt_path, last_good)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        ema_update(ema, model, T.ema_decay(step, cfg["ema_decay"]))
        elapsed += time.perf_counter() - tic
        window.append(loss.item())
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            row = dict(step=step, loss=float(np.mean(window)), lr=lr, grad_norm=grad_norm,
                       seconds=round(elapsed, 3))
            log.write(**row)
            window = []
        if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
            checkpoint(step)
            last_good = step
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}",
                            img_s=f"{cfg['batch_size'] / (time.perf_counter() - tic):.0f}")
    if bar is not None:
        bar.close()
    model_dir = os.path.join(out, "model")
    info = {"seed": seed, "steps": cfg["steps"], "seconds": round(elapsed, 1),
            "framework": f"torch {torch.__version__}", "threads": torch.get_num_threads()}
    task.export(model_dir, ema, cfg, info)
    return {"steps": cfg["steps"], "seconds": elapsed, "loss": row["loss"] if row else None,
            "checkpoint": ckpt_path, "model": model_dir}


def _progress(cfg, start, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg["steps"], initial=start, desc=cfg["name"], unit="step",
                dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser(prog="python -m uvit_torch.train"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=sorted(T.TRAIN_CONFIGS),
                        help="named training config (uvit_numpy.training.TRAIN_CONFIGS)")
    parser.add_argument("--out", help="run folder (default runs/CONFIG)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--steps", type=int, help="total steps (extend a finished run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--checkpoint-every", type=int, help="default: the config's")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = T.train_config(args.config, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                         checkpoint_every=args.checkpoint_every)
    out = args.out or os.path.join("runs", args.config)
    try:
        summary = train(cfg, out, resume=args.resume, seed=args.seed, dtype=args.dtype,
                        progress=not args.no_progress)
    except (FloatingPointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                      for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
