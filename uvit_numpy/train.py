"""Train a named config in pure NumPy: `python -m uvit_numpy.train uvit-digits`.

    python -m uvit_numpy.train uvit-tiny --out runs/np-tiny
    python -m uvit_numpy.train uvit-digits --out runs/np-digits --steps 300

The same loop, run folder, log, checkpoints and `--resume` as `python -m uvit_torch.train`
(`uvit_numpy.training.run`), with the hand-written backward passes and `uvit_numpy.optim`
instead of autograd and `torch.optim`. The initial weights, the batches and the noise are the
same as the torch trainer's for the same seed, so the two runs retrace each other up to float
rounding; the checkpoints have the same layout, so either package can resume the other's.
"""

import os
import sys

import numpy as np

from . import training as T
from .data import load_digits
from .losses import cross_entropy, cross_entropy_backward, mse_loss, mse_loss_backward
from .optim import EMA, AdamW, clip_grad_norm
from .schedulers import add_noise, make_betas, training_target
from .tokenizer import TOKENIZER_NAME

DTYPES = {"float32": np.float32, "float64": np.float64}


class DiffusionTask:
    """U-ViT diffusion: x_t = add_noise(x0, eps, t); loss = mse(model(x_t, t, y), target), the
    target eps or v (the config's prediction_type), differentiated by `model.backward`."""

    def __init__(self, cfg, dtype):
        from .uvit import UViT
        self.cfg, self.dtype, self.model_cls = cfg, dtype, UViT
        d = cfg["diffusion"]
        self.alphas_cumprod = np.cumprod(1.0 - make_betas(
            d["beta_schedule"], d["num_train_timesteps"], d["beta_start"], d["beta_end"]))
        self.images, self.labels = load_digits("train")

    def build(self, seed):
        return self.model_cls(**self.cfg["model"], dtype=self.dtype, rng=seed)

    def loss_and_backward(self, model, seed, step):
        b = T.diffusion_batch(self.images, self.labels, self.cfg, seed, step, self.dtype)
        xt = add_noise(b["x0"], b["noise"], b["t"], self.alphas_cumprod)
        target = training_target(b["x0"], b["noise"], b["t"], self.alphas_cumprod,
                                 self.cfg["diffusion"].get("prediction_type", "epsilon"))
        loss, cache = mse_loss(model(xt, b["t"], b["y"]), target, return_cache=True)
        model.backward(mse_loss_backward(1.0, cache))
        return float(loss)

    def export(self, folder, ema_model, cfg, info):
        ema_model.save_pretrained(folder, training={"config": cfg, **info},
                                  sampling=cfg.get("sampling"))


class MaskGITTask:
    """UVit2DModel masked-token prediction on k-means codes: the cross-entropy (label smoothing)
    over the masked positions only, differentiated by `model.backward`."""

    def __init__(self, cfg, dtype):
        from .uvit2d import UVit2DModel
        self.cfg, self.dtype, self.model_cls = cfg, dtype, UVit2DModel
        images, self.labels = load_digits("train")
        self.tokenizer = None
        self.images = images

    def build(self, seed):
        if self.tokenizer is None:                        # fitted once, from the run's seed
            self.tokenizer = T.fit_tokenizer(self.cfg, self.images, seed)
            self.codes = self.tokenizer.encode(self.images)
        return self.model_cls(**self.cfg["model"], dtype=self.dtype, rng=seed)

    def loss_and_backward(self, model, seed, step):
        b = T.maskgit_batch(self.codes, self.labels, self.cfg, seed, step, self.dtype)
        logits = model(b["input_ids"], b["encoder_hidden_states"], b["pooled_text_emb"],
                       b["micro_conds"])
        loss, cache = cross_entropy(logits, b["targets"],
                                    label_smoothing=self.cfg["label_smoothing"],
                                    return_cache=True)
        model.backward(cross_entropy_backward(1.0, cache))
        return float(loss)

    def export(self, folder, ema_model, cfg, info):
        ema_model.save_pretrained(folder, training={"config": cfg, **info},
                                  sampling=cfg.get("sampling"))
        self.tokenizer.save(os.path.join(folder, TOKENIZER_NAME))


TASKS = {"diffusion": DiffusionTask, "maskgit": MaskGITTask}


class NumpyBackend:
    """The model, its EMA and `uvit_numpy.optim.AdamW`; one step is the model's own backward,
    then `clip_grad_norm`, AdamW at the scheduled learning rate, the EMA update."""

    name = f"numpy {np.__version__}"

    def setup(self, cfg, seed, dtype):
        self.cfg, self.seed = cfg, seed
        self.task = TASKS[cfg["task"]](cfg, DTYPES[dtype])
        self.model = self.task.build(seed).train()
        self.ema = EMA(self.model)
        self.optimizer = AdamW(self.model, lr=cfg["lr"], betas=tuple(cfg["betas"]),
                               eps=cfg["eps"], weight_decay=cfg["weight_decay"])

    def forward_backward(self, step):
        self.model.zero_grad()
        loss = self.task.loss_and_backward(self.model, self.seed, step)
        grad_norm = clip_grad_norm(self.model, self.cfg["grad_clip"] or float("inf"))
        return loss, grad_norm

    def optimizer_step(self, step, lr):
        self.optimizer.lr = lr
        self.optimizer.step()
        self.ema.update(T.ema_decay(step, self.cfg["ema_decay"]))

    def arrays(self):
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        steps = {}
        for name, state in self.optimizer.state.items():
            arrays[f"optim.exp_avg.{name}"] = state["exp_avg"]
            arrays[f"optim.exp_avg_sq.{name}"] = state["exp_avg_sq"]
            steps[name] = float(state["step"])
        return arrays, steps

    def load(self, arrays, optimizer_steps):
        self.model.load_state_dict(T.split_prefix(arrays, "model."))
        self.ema.load_state_dict(T.split_prefix(arrays, "ema."))
        moments = T.split_prefix(arrays, "optim.")
        self.optimizer.load_state_dict({"lr": self.cfg["lr"], "state": {
            name: {"step": int(count), "exp_avg": moments[f"exp_avg.{name}"],
                   "exp_avg_sq": moments[f"exp_avg_sq.{name}"]}
            for name, count in optimizer_steps.items()}})

    def export(self, folder, info):
        ema_model = self.task.build(self.seed)
        ema_model.load_state_dict(self.ema.state_dict())
        self.task.export(folder, ema_model, self.cfg, info)


def train(cfg, out, resume=False, seed=0, dtype="float32", progress=True):
    """Run (or resume) `cfg` into the folder `out` in NumPy; see `training.run`."""
    return T.run(cfg, out, NumpyBackend(), resume, seed, dtype, progress)


def main(argv=None):
    parser = T.build_parser("python -m uvit_numpy.train", __doc__.split("\n\n")[0])
    words = sys.argv[1:] if argv is None else list(argv)
    return T.main(NumpyBackend(), parser.parse_args(argv),
                  " ".join(["python -m uvit_numpy.train", *words]))


if __name__ == "__main__":
    sys.exit(main())
