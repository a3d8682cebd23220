"""Train a named config in pure NumPy: `python -m uvit_numpy.train uvit-digits`.

    python -m uvit_numpy.train uvit-tiny --out runs/np-tiny
    python -m uvit_numpy.train uvit-digits --out runs/np-digits --steps 300

The same loop, run folder, log, checkpoints and `--resume` as `python -m uvit_torch.train`
(`uvit_numpy.training.run`), with the hand-written backward passes and `uvit_numpy.optim`
instead of autograd and `torch.optim`. The initial weights, the batches and the noise are the
same as the torch trainer's for the same seed, so the two runs retrace each other up to float
rounding; the checkpoints have the same layout, so either package can resume the other's.
"""

import sys

import numpy as np

from . import losses, schedulers
from . import training as T
from .cli import blas_threads, set_threads
from .optim import EMA, AdamW, clip_grad_norm

# The task's loss by name: (forward with return_cache, backward(1.0, cache)). A backward returns
# the gradient of the model's output, or a tuple with one per output when the model returns
# several (the VQ autoencoder's image and quantiser loss), which go to `model.backward` in order.
LOSSES = {"mse": (losses.mse_loss, losses.mse_loss_backward),
          "cross_entropy": (losses.cross_entropy, losses.cross_entropy_backward),
          "vq_autoencoder": (losses.vq_autoencoder_loss, losses.vq_autoencoder_loss_backward)}


class NumpyBackend(T.Backend):
    """The model, its EMA and `uvit_numpy.optim.AdamW`: one step is the task's loss, the model's
    own backward, `clip_grad_norm`, AdamW at the scheduled learning rate, the EMA update.
    threads: BLAS threads (threadpoolctl), None to leave them as they are."""

    name = f"numpy {np.__version__}"

    def __init__(self, threads=None):
        self.threads = threads

    def setup(self, task, seed):
        if self.threads is not None:
            set_threads(self.threads)
        self.task, self.cfg = task, task.cfg
        self.model = task.build(seed).train()
        self.ema = EMA(self.model)
        self.optimizer = AdamW(self.model, lr=self.cfg["lr"], betas=tuple(self.cfg["betas"]),
                               eps=self.cfg["eps"], weight_decay=self.cfg["weight_decay"])

    def forward_backward(self, batch):
        self.model.zero_grad()
        inputs, target = self.task.inputs_and_target(batch, schedulers)
        loss_fn, loss_backward = LOSSES[self.task.loss]
        loss, cache = loss_fn(self.model(*inputs), target, return_cache=True,
                              **self.task.loss_options)
        grads = loss_backward(1.0, cache)
        self.model.backward(*(grads if isinstance(grads, tuple) else (grads,)))
        grad_norm = clip_grad_norm(self.model, self.cfg["grad_clip"] or float("inf"))
        return float(loss), grad_norm

    def optimizer_step(self, lr, ema_decay):
        self.optimizer.lr = lr
        self.optimizer.step()
        self.ema.update(ema_decay)

    def state(self):
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        steps = {}
        for name, state in self.optimizer.state.items():
            arrays[f"optim.exp_avg.{name}"] = state["exp_avg"]
            arrays[f"optim.exp_avg_sq.{name}"] = state["exp_avg_sq"]
            steps[name] = float(state["step"])
        return arrays, steps

    def load_state(self, arrays, optimizer_steps):
        self.model.load_state_dict(T.split_prefix(arrays, "model."))
        self.ema.load_state_dict(T.split_prefix(arrays, "ema."))
        moments = T.split_prefix(arrays, "optim.")
        self.optimizer.load_state_dict({"lr": self.cfg["lr"], "state": {
            name: {"step": int(count), "exp_avg": moments[f"exp_avg.{name}"],
                   "exp_avg_sq": moments[f"exp_avg_sq.{name}"]}
            for name, count in optimizer_steps.items()}})

    def ema_state_dict(self):
        return self.ema.state_dict()

    def settings(self):
        return {"threads": self.threads or blas_threads(), "device": "cpu"}


def train(cfg, out, resume=False, seed=0, dtype="float32", progress=True, **options):
    """Run (or resume) `cfg` into the folder `out` in NumPy; see `training.run` (`options`:
    its other arguments, e.g. overwrite=True)."""
    return T.run(cfg, out, NumpyBackend(), resume, seed, dtype, progress,
                 hint="python -m uvit_numpy.train CONFIG", **options)


def main(argv=None):
    parser = T.build_parser("python -m uvit_numpy.train", __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    T.check_args(parser, args)
    words = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m uvit_numpy.train", *words])
    return T.main(NumpyBackend(threads=args.threads), args, command,
                  hint="python -m uvit_numpy.train")


if __name__ == "__main__":
    sys.exit(main())
