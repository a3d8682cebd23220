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

At scale (the paper's CIFAR-10 recipe, `cifar10_uvit_small`, on GPUs):

    torchrun --nproc_per_node 4 -m uvit_torch.train cifar10_uvit_small --data cifar10.npz \\
        --device cuda --mixed-precision bf16 --out runs/cifar10

The same command runs under torchrun unchanged: `torch.nn.parallel.DistributedDataParallel` over
torchrun's process group (`uvit_torch.distributed`: nccl on GPUs, gloo on CPUs). Each process draws
the whole global batch of the step from the seeded plan and keeps its own rows; its loss is its
rows' share of the global mean (their sum / the global count, times the number of processes,
because DDP averages the gradients), so the averaged gradient is that of the global batch's mean.
The same clipping, AdamW step and EMA update on every process keep all copies equal. Only rank 0
writes the log, the checkpoints (atomically) and `model/`, and a checkpoint resumes on any number
of processes. `--grad-accum A` splits each process's rows into A micro-batches (`DDP.no_sync` until
the last); `--mixed-precision bf16 | fp16` runs the forward under `torch.autocast` (fp16 with a
`torch.amp.GradScaler`, whose state the checkpoint keeps); `--gradient-checkpointing` turns on the
U-ViT blocks' `use_checkpoint` (activations recomputed in the backward pass). One process with one
micro-batch runs the step it always ran, bit for bit.
"""

import contextlib
import copy
import sys

import numpy as np
import torch
import torch.nn.functional as F

import uvit_numpy as N
from uvit_numpy import training as T
from uvit_numpy.cli import positive_int, set_threads

from . import distributed, schedulers
from .losses import cross_entropy, mse_loss, vq_autoencoder_loss
from .uvit import UViT, UViTText
from .uvit2d import UVit2DModel
from .vq_model import VQModel

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
TWINS = {N.UViT: UViT, N.UViTText: UViTText, N.UVit2DModel: UVit2DModel, N.VQModel: VQModel}
"""The torch class of each NumPy model a task builds."""


# --------------------------------------------------------------------------------------------------
# The task's loss on tensors: its mean, and (for data parallelism) its sum
# --------------------------------------------------------------------------------------------------
LOSSES = {"mse": mse_loss, "cross_entropy": cross_entropy,
          "vq_autoencoder": vq_autoencoder_loss}
"""The task's loss by name (`uvit_torch.losses`, the twins of `uvit_numpy.train.LOSSES`)."""


def _vq_autoencoder_loss_sum(output, target, **options):
    # its terms are the images: the reconstruction's and the quantiser's means are each over
    # a number of elements proportional to the images, so mean x images adds up over shards
    return vq_autoencoder_loss(output, target, **options) * target.shape[0]


LOSS_SUMS = {
    "mse": lambda output, target: F.mse_loss(output, target, reduction="sum"),
    "cross_entropy": lambda output, target, **options: F.cross_entropy(
        output, target, ignore_index=-100, reduction="sum", **options),
    "vq_autoencoder": _vq_autoencoder_loss_sum}
"""The sum of the terms of the task's loss by name (its mean times `task.count`)."""


def task_loss(task, output, target):
    """The mean the task's loss takes."""
    return LOSSES[task.loss](output, target, **task.loss_options)


def task_loss_sum(task, output, target):
    """The sum of the terms of the task's loss (its mean times `task.count`)."""
    return LOSS_SUMS[task.loss](output, target, **task.loss_options)


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
# Gradient checkpointing and mixed precision
# --------------------------------------------------------------------------------------------------
MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def enable_checkpointing(model):
    """Turn on the paper's gradient checkpointing (`use_checkpoint`) in every U-ViT `Block`: the
    block's activations are recomputed in the backward pass instead of kept, memory for time.
    Set on the built model, so its config (and the exported config.json) is left as it was."""
    from .uvit import Block
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"--gradient-checkpointing is U-ViT's use_checkpoint; "
                         f"{type(model).__name__} has no U-ViT blocks")
    for block in blocks:
        block.use_checkpoint = True
    return len(blocks)


# --------------------------------------------------------------------------------------------------
# The backend of the shared loop (`uvit_numpy.training.run`)
# --------------------------------------------------------------------------------------------------
class TorchBackend(T.Backend):
    """The model, its EMA and `torch.optim.AdamW`; one step is torch autograd, then
    `clip_grad_norm_`, AdamW at the scheduled learning rate, the EMA update.

    device: where the model runs ("cpu", "cuda", ...; under torchrun the caller passes each
    process's own). mixed_precision: "no", "bf16" or "fp16" (`torch.autocast` around the forward
    and the loss; fp16 adds a `torch.amp.GradScaler`). gradient_checkpointing: U-ViT's
    `use_checkpoint`. grad_accum: micro-batches per process and step. threads:
    `torch.set_num_threads` (None: leave it). In a torch.distributed process group (torchrun) the
    model is wrapped in DistributedDataParallel and each process takes its rows of every global
    batch (module docstring). The defaults are the one-process trainer as it always was.
    """

    def __init__(self, device="cpu", mixed_precision="no", gradient_checkpointing=False,
                 grad_accum=1, threads=None):
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed-precision: expected one of {sorted(MIXED_PRECISION)}, got "
                             f"{mixed_precision!r}")
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision
        self.gradient_checkpointing = gradient_checkpointing
        self.grad_accum = grad_accum
        self.threads = threads
        self.rank, self.world = distributed.current()
        self.is_main = self.rank == 0                   # the process that writes files
        self.skips_overflow = mixed_precision == "fp16"
        self.name = self.describe()

    def describe(self):
        """The framework and the settings that differ from one process on the CPU (what the
        checkpoint and the exported model record)."""
        parts = []
        if self.world > 1:
            import torch.distributed as dist
            parts.append(f"{self.world} processes ({dist.get_backend()})")
        if self.device.type != "cpu":
            parts.append(str(self.device.type))
        if self.mixed_precision != "no":
            parts.append(f"{self.mixed_precision} autocast")
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        if self.grad_accum != 1:
            parts.append(f"{self.grad_accum} micro-batches")
        return ", ".join([f"torch {torch.__version__}", *parts])

    def setup(self, task, seed):
        cfg = task.cfg
        if self.mixed_precision != "no" and task.dtype != np.float32:
            raise ValueError(f"--mixed-precision {self.mixed_precision} autocasts a float32 "
                             f"model; got --dtype {task.dtype.name}")
        distributed.check_split(cfg["batch_size"], self.world, self.grad_accum)
        if self.threads is not None:
            set_threads(self.threads, torch=True)
        self.task, self.cfg = task, cfg
        reference = task.build(seed)                    # the NumPy model: the run's start
        model = TWINS[type(reference)](**reference.config, dtype=TORCH_DTYPE[task.dtype])
        model.load_state_dict({k: torch.from_numpy(v.copy())
                               for k, v in reference.state_dict().items()})
        if self.gradient_checkpointing:
            enable_checkpointing(model)
        self.model = model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"],
                                           betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                           weight_decay=cfg["weight_decay"])
        self.net = self.model                           # what the forward runs through
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.mixed_precision == "fp16" else None)

    def _autocast(self):
        dtype = MIXED_PRECISION[self.mixed_precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _outputs(self, net, batch):
        """(network output, target) of a batch of tensors on the device."""
        inputs, target = self.task.inputs_and_target(
            {k: v.to(self.device) for k, v in batch.items()}, schedulers)
        return net(*inputs), target

    def _backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def forward_backward(self, batch):
        batch = {k: torch.from_numpy(v) for k, v in batch.items()}  # the whole global batch
        if self.world == 1 and self.grad_accum == 1:   # the one-process step, as it always was
            with self._autocast():
                loss = task_loss(self.task, *self._outputs(self.model, batch))
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(loss)
            loss = loss.item()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._sharded_forward_backward(batch)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)       # clip the true gradients, not scaled ones
        max_norm = self.cfg["grad_clip"] or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return loss, float(grad_norm)

    def _sharded_forward_backward(self, batch):
        """This process's micro-batches of the global batch: each backpropagates
        sum(its terms) / (global count) x world, so that DDP's average over the processes is the
        gradient of the global mean (exactly, shard sizes aside: the scale world / count is
        2 / count for two processes, and DDP's division by 2 undoes the 2 without rounding).
        Returns the global batch's mean loss (the processes' sums, all-reduced)."""
        total = self.task.count(batch)                 # the terms of the global batch's mean
        scale = self.world / total
        parts = distributed.shard_rows(batch, self.rank, self.world, self.grad_accum)
        local = 0.0
        for a, part in enumerate(parts):
            last = a == len(parts) - 1
            hold = self.world > 1 and not last        # all-reduce once, after the last part
            with self.net.no_sync() if hold else contextlib.nullcontext():
                with self._autocast():
                    part_sum = task_loss_sum(self.task, *self._outputs(self.net, part))
                self._backward(part_sum * scale)
            local += part_sum.item()
        return distributed.all_reduce_sum(local, self.device) / total

    def optimizer_step(self, lr, ema_decay):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is None:
            self.optimizer.step()
        else:
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)           # skipped if a gradient overflowed ...
            self.scaler.update()
            if self.scaler.get_scale() < before:       # ... which lowers the scale
                return                                 # no update, so no EMA step either
        ema_update(self.ema, self.model, ema_decay)

    def state(self):
        arrays = {f"model.{k}": v for k, v in numpy_state(self.model).items()}
        arrays.update({f"ema.{k}": v for k, v in numpy_state(self.ema).items()})
        opt_arrays, steps = optimizer_arrays(self.model, self.optimizer)
        arrays.update(opt_arrays)
        if self.scaler is not None:                    # fp16 only: the loss scale goes on
            state = self.scaler.state_dict()
            arrays["scaler.scale"] = np.array([state["scale"]], dtype=np.float64)
            arrays["scaler.growth_tracker"] = np.array([state["_growth_tracker"]], np.int64)
        return arrays, steps

    def load_state(self, arrays, optimizer_steps):
        self.model.load_state_dict(torch_state(T.split_prefix(arrays, "model.")))
        self.ema.load_state_dict(torch_state(T.split_prefix(arrays, "ema.")))
        load_optimizer_arrays(self.model, self.optimizer, T.split_prefix(arrays, "optim."),
                              optimizer_steps)
        if self.scaler is not None and "scaler.scale" in arrays:
            state = self.scaler.state_dict()
            state.update(scale=float(arrays["scaler.scale"][0]),
                         _growth_tracker=int(arrays["scaler.growth_tracker"][0]))
            self.scaler.load_state_dict(state)

    def ema_state_dict(self):
        return numpy_state(self.ema)

    def settings(self):
        return {"threads": torch.get_num_threads(), "device": str(self.device)}


def train(cfg, out, resume=False, seed=0, dtype="float32", progress=True, data=None,
          overwrite=False, command=None, **options):
    """Run (or resume) `cfg` (from `training.train_config`) into the folder `out` with torch;
    `options` are `TorchBackend`'s; `command`, if given, is recorded with the exported model.
    Returns the summary of `uvit_numpy.training.run`."""
    return T.run(cfg, out, TorchBackend(**options), resume, seed, dtype, progress, data=data,
                 overwrite=overwrite, command=command, hint="python -m uvit_torch.train CONFIG")


def build_parser():
    """The shared trainers' command line plus the torch trainer's own options."""
    parser = T.build_parser("python -m uvit_torch.train", __doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda (under torchrun: each process the GPU of its "
                             "LOCAL_RANK) or cuda:K for one process")
    parser.add_argument("--mixed-precision", choices=sorted(MIXED_PRECISION), default="no",
                        help="autocast the forward to bf16 or fp16 (fp16 with a gradient "
                             "scaler); the weights, AdamW and the EMA stay float32")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each U-ViT block's activations in the backward pass "
                             "(the paper's use_checkpoint): less memory for a second forward pass")
    parser.add_argument("--grad-accum", type=positive_int, default=1,
                        help="micro-batches per process and step (the batch size stays the "
                             "global batch; it must divide by processes x micro-batches)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    T.check_args(parser, args)
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        context = distributed.init(args.device)     # torchrun's process group, if started by it
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = 1
    try:
        backend = TorchBackend(context.device, args.mixed_precision, args.gradient_checkpointing,
                               args.grad_accum, threads=args.threads)
        status = T.main(backend, args, " ".join(["python -m uvit_torch.train", *words]),
                        hint="python -m uvit_torch.train")
    finally:
        distributed.close(barrier=status == 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
