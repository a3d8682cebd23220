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

import copy
import os
import sys

import numpy as np
import torch

from uvit_numpy import training as T
from uvit_numpy.data import load_digits
from uvit_numpy.tokenizer import TOKENIZER_NAME

from .losses import cross_entropy, mse_loss
from .schedulers import add_noise, training_target

DTYPES = {"float32": np.float32, "float64": np.float64}
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


# --------------------------------------------------------------------------------------------------
# The tasks: which model, which batch, which loss
# --------------------------------------------------------------------------------------------------
class DiffusionTask:
    """U-ViT diffusion: x_t = add_noise(x0, eps, t), loss = mse(model(x_t, t, y), target) with
    the target eps or v (the config's prediction_type)."""

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
        target = training_target(batch["x0"], batch["noise"], batch["t"], self.alphas_cumprod,
                                 self.cfg["diffusion"].get("prediction_type", "epsilon"))
        return mse_loss(model(xt, batch["t"], batch["y"]), target)

    def export(self, folder, ema, cfg, info):
        ema.save_pretrained(folder, training={"config": cfg, **info},
                            sampling=cfg.get("sampling"))


class MaskGITTask:
    """UVit2DModel masked-token prediction on the k-means codes of the digits: cross-entropy with
    label smoothing over the masked positions only (targets -100 elsewhere)."""

    def __init__(self, cfg, dtype):
        self.cfg, self.dtype = cfg, dtype
        self.images, self.labels = load_digits("train")
        self.tokenizer = None

    def build(self, seed):
        """The torch model, holding the NumPy reference's initial weights for `seed`; the
        tokenizer is fitted here, once, by the same NumPy code as the NumPy trainer's."""
        from uvit_numpy import UVit2DModel as NumpyUVit2DModel

        from .uvit2d import UVit2DModel
        if self.tokenizer is None:
            self.tokenizer = T.fit_tokenizer(self.cfg, self.images, seed)
            self.codes = self.tokenizer.encode(self.images)
        reference = NumpyUVit2DModel(**self.cfg["model"], dtype=self.dtype, rng=seed)
        model = UVit2DModel(**self.cfg["model"], dtype=TORCH_DTYPE[np.dtype(self.dtype)])
        model.load_state_dict({k: torch.from_numpy(v.copy())
                               for k, v in reference.state_dict().items()})
        return model

    def batch(self, seed, step):
        b = T.maskgit_batch(self.codes, self.labels, self.cfg, seed, step, self.dtype)
        return {k: torch.from_numpy(v) for k, v in b.items()}

    def loss(self, model, batch):
        logits = model(batch["input_ids"], batch["encoder_hidden_states"],
                       batch["pooled_text_emb"], batch["micro_conds"])
        return cross_entropy(logits, batch["targets"],
                             label_smoothing=self.cfg["label_smoothing"])

    def export(self, folder, ema, cfg, info):
        ema.save_pretrained(folder, training={"config": cfg, **info},
                            sampling=cfg.get("sampling"))
        self.tokenizer.save(os.path.join(folder, TOKENIZER_NAME))


TASKS = {"diffusion": DiffusionTask, "maskgit": MaskGITTask}


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
    params = dict(model.named_parameters())
    index = {name: i for i, name in enumerate(params)}
    state = {}
    for name, count in steps.items():
        p = params[name]
        state[index[name]] = {
            "step": torch.tensor(count, dtype=torch.get_default_dtype()),
            "exp_avg": torch.from_numpy(arrays[f"exp_avg.{name}"].copy()).to(p),
            "exp_avg_sq": torch.from_numpy(arrays[f"exp_avg_sq.{name}"].copy()).to(p)}
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


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
# The backend of the shared loop (`uvit_numpy.training.run`)
# --------------------------------------------------------------------------------------------------
class TorchBackend:
    """The model, its EMA and `torch.optim.AdamW`; one step is torch autograd, then
    `clip_grad_norm_`, AdamW at the scheduled learning rate, the EMA update."""

    name = f"torch {torch.__version__}"

    def setup(self, cfg, seed, dtype):
        self.cfg, self.seed = cfg, seed
        self.task = TASKS[cfg["task"]](cfg, DTYPES[dtype])
        self.model = self.task.build(seed).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"],
                                           betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                           weight_decay=cfg["weight_decay"])

    def forward_backward(self, step):
        loss = self.task.loss(self.model, self.task.batch(self.seed, step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg["grad_clip"] or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return loss.item(), float(grad_norm)

    def optimizer_step(self, step, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        ema_update(self.ema, self.model, T.ema_decay(step, self.cfg["ema_decay"]))

    def arrays(self):
        arrays = {f"model.{k}": v for k, v in numpy_state(self.model).items()}
        arrays.update({f"ema.{k}": v for k, v in numpy_state(self.ema).items()})
        opt_arrays, steps = optimizer_arrays(self.model, self.optimizer)
        arrays.update(opt_arrays)
        return arrays, steps

    def load(self, arrays, optimizer_steps):
        self.model.load_state_dict(torch_state(T.split_prefix(arrays, "model.")))
        self.ema.load_state_dict(torch_state(T.split_prefix(arrays, "ema.")))
        load_optimizer_arrays(self.model, self.optimizer, T.split_prefix(arrays, "optim."),
                              optimizer_steps)

    def export(self, folder, info):
        self.task.export(folder, self.ema, self.cfg,
                         {**info, "threads": torch.get_num_threads()})


def train(cfg, out, resume=False, seed=0, dtype="float32", progress=True):
    """Run (or resume) `cfg` (from `training.train_config`) into the folder `out` with torch.
    Returns the summary of `uvit_numpy.training.run`."""
    return T.run(cfg, out, TorchBackend(), resume, seed, dtype, progress)


def main(argv=None):
    parser = T.build_parser("python -m uvit_torch.train", __doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    words = sys.argv[1:] if argv is None else list(argv)
    return T.main(TorchBackend(), args, " ".join(["python -m uvit_torch.train", *words]))


if __name__ == "__main__":
    sys.exit(main())
