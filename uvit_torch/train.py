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
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from uvit_numpy import training as T
from uvit_numpy.data import load_digits
from uvit_numpy.tokenizer import TOKENIZER_NAME

from . import distributed
from .losses import cross_entropy, mse_loss
from .schedulers import add_noise, training_target

DTYPES = {"float32": np.float32, "float64": np.float64}
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


# --------------------------------------------------------------------------------------------------
# The tasks: which model, which batch, which loss
# --------------------------------------------------------------------------------------------------
class DiffusionTask:
    """U-ViT diffusion: x_t = add_noise(x0, eps, t), loss = mse(model(x_t, t, y), target) with
    the target eps or v (the config's prediction_type). The images are the digits, or CIFAR-10
    read from `data` (a path, see `uvit_torch.cifar10`) for a config with `data="cifar10"`; an
    unconditional model (num_classes <= 0) is given no labels.

    `loss` is the batch's mean; `loss_sum` and `count` are its numerator and denominator, for a
    part of a batch whose share of the whole batch's mean is wanted (data parallelism)."""

    def __init__(self, cfg, dtype, data=None):
        from uvit_numpy.schedulers import make_betas
        self.cfg, self.dtype = cfg, dtype
        d = cfg["diffusion"]
        betas = make_betas(d["beta_schedule"], d["num_train_timesteps"], d["beta_start"],
                           d["beta_end"])
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        if cfg.get("data") == "cifar10":
            from .cifar10 import ImageView, load_cifar10
            images, self.labels = load_cifar10(data)
            self.images = ImageView(images)                 # uint8 NHWC -> [-1, 1] NCHW rows
        else:
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

    def predict(self, model, batch):
        """(model output, target), both (B, C, H, W)."""
        xt = add_noise(batch["x0"], batch["noise"], batch["t"], self.alphas_cumprod)
        target = training_target(batch["x0"], batch["noise"], batch["t"], self.alphas_cumprod,
                                 self.cfg["diffusion"].get("prediction_type", "epsilon"))
        y = batch["y"] if self.cfg["model"]["num_classes"] > 0 else None
        return model(xt, batch["t"], y), target

    def loss(self, model, batch):
        return mse_loss(*self.predict(model, batch))

    def loss_sum(self, model, batch):
        """The sum of the squared errors over every element of `batch`."""
        return F.mse_loss(*self.predict(model, batch), reduction="sum")

    def count(self, batch):
        """The number of terms `loss` averages over: every element of the target."""
        return batch["x0"].numel()

    def export(self, folder, ema, cfg, info):
        ema.save_pretrained(folder, training={"config": cfg, **info},
                            sampling=cfg.get("sampling"))


class MaskGITTask:
    """UVit2DModel masked-token prediction on the k-means codes of the digits: cross-entropy with
    label smoothing over the masked positions only (targets -100 elsewhere)."""

    def __init__(self, cfg, dtype, data=None):
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

    def loss_sum(self, model, batch):
        """The sum of the masked positions' cross-entropies (label smoothing included)."""
        logits = model(batch["input_ids"], batch["encoder_hidden_states"],
                       batch["pooled_text_emb"], batch["micro_conds"])
        return F.cross_entropy(logits, batch["targets"], ignore_index=-100,
                               label_smoothing=self.cfg["label_smoothing"], reduction="sum")

    def count(self, batch):
        """The number of terms `loss` averages over: the masked positions, whose number differs
        from image to image (so a shard's own mean is not its share of the batch's mean)."""
        return int((batch["targets"] != -100).sum())

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
class TorchBackend:
    """The model, its EMA and `torch.optim.AdamW`; one step is torch autograd, then
    `clip_grad_norm_`, AdamW at the scheduled learning rate, the EMA update.

    device: where the model runs ("cpu", "cuda", ...; under torchrun the caller passes each
    process's own). mixed_precision: "no", "bf16" or "fp16" (`torch.autocast` around the forward
    and the loss; fp16 adds a `torch.amp.GradScaler`). gradient_checkpointing: U-ViT's
    `use_checkpoint`. grad_accum: micro-batches per process and step. data: the path CIFAR-10 is
    read from (configs with `data="cifar10"`). In a torch.distributed process group (torchrun) the
    model is wrapped in DistributedDataParallel and each process takes its rows of every global
    batch (module docstring). The defaults are the one-process trainer as it always was.
    """

    name = f"torch {torch.__version__}"
    datasets = ("cifar10",)                # besides the digits (`uvit_numpy.training.DATASETS`)

    def __init__(self, device="cpu", mixed_precision="no", gradient_checkpointing=False,
                 grad_accum=1, data=None):
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision
        self.gradient_checkpointing = gradient_checkpointing
        self.grad_accum = grad_accum
        self.data = data
        self.rank, self.world = distributed.current()
        self.is_main = self.rank == 0                   # the process that writes files
        self.scales_gradients = mixed_precision == "fp16"
        self.name = self.describe()

    def describe(self):
        """`name` plus the settings that differ from one process on the CPU (what the checkpoint
        and the exported model record as the framework)."""
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
        return ", ".join([type(self).name, *parts])

    def setup(self, cfg, seed, dtype):
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed-precision: expected one of {sorted(MIXED_PRECISION)}, got "
                             f"{self.mixed_precision!r}")
        if self.mixed_precision != "no" and dtype != "float32":
            raise ValueError(f"--mixed-precision {self.mixed_precision} autocasts a float32 "
                             f"model; got --dtype {dtype}")
        distributed.check_split(cfg["batch_size"], self.world, self.grad_accum)
        self.cfg, self.seed = cfg, seed
        self.task = TASKS[cfg["task"]](cfg, DTYPES[dtype], data=self.data)
        model = self.task.build(seed)
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

    def _to_device(self, batch):
        return {k: v.to(self.device) for k, v in batch.items()}

    def _backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def forward_backward(self, step):
        batch = self.task.batch(self.seed, step)       # the global batch: every process draws it
        if self.world == 1 and self.grad_accum == 1:   # the one-process step, as it always was
            with self._autocast():
                loss = self.task.loss(self.model, self._to_device(batch))
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
                    part_sum = self.task.loss_sum(self.net, self._to_device(part))
                self._backward(part_sum * scale)
            local += part_sum.item()
        return distributed.all_reduce_sum(local, self.device) / total

    def optimizer_step(self, step, lr):
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
        ema_update(self.ema, self.model, T.ema_decay(step, self.cfg["ema_decay"]))

    def arrays(self):
        arrays = {f"model.{k}": v for k, v in numpy_state(self.model).items()}
        arrays.update({f"ema.{k}": v for k, v in numpy_state(self.ema).items()})
        opt_arrays, steps = optimizer_arrays(self.model, self.optimizer)
        arrays.update(opt_arrays)
        if self.scaler is not None:                    # fp16 only: the loss scale goes on
            state = self.scaler.state_dict()
            arrays["scaler.scale"] = np.array([state["scale"]], dtype=np.float64)
            arrays["scaler.growth_tracker"] = np.array([state["_growth_tracker"]], np.int64)
        return arrays, steps

    def load(self, arrays, optimizer_steps):
        self.model.load_state_dict(torch_state(T.split_prefix(arrays, "model.")))
        self.ema.load_state_dict(torch_state(T.split_prefix(arrays, "ema.")))
        load_optimizer_arrays(self.model, self.optimizer, T.split_prefix(arrays, "optim."),
                              optimizer_steps)
        if self.scaler is not None and "scaler.scale" in arrays:
            state = self.scaler.state_dict()
            state.update(scale=float(arrays["scaler.scale"][0]),
                         _growth_tracker=int(arrays["scaler.growth_tracker"][0]))
            self.scaler.load_state_dict(state)

    def export(self, folder, info):
        ema = self.ema if self.device.type == "cpu" else copy.deepcopy(self.ema).cpu()
        self.task.export(folder, ema, self.cfg, {**info, "threads": torch.get_num_threads()})


def train(cfg, out, resume=False, seed=0, dtype="float32", progress=True, command=None,
          **options):
    """Run (or resume) `cfg` (from `training.train_config`) into the folder `out` with torch;
    `options` are `TorchBackend`'s; `command`, if given, is recorded with the exported model.
    Returns the summary of `uvit_numpy.training.run`."""
    return T.run(cfg, out, TorchBackend(**options), resume, seed, dtype, progress,
                 command=command)


def build_parser():
    """The shared trainers' command line plus the torch trainer's own options."""
    parser = T.build_parser("python -m uvit_torch.train", __doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda (under torchrun: each process the GPU of its "
                             "LOCAL_RANK) or cuda:K for one process")
    parser.add_argument("--mixed-precision", choices=sorted(MIXED_PRECISION), default="no",
                        help="autocast the forward to bf16 or fp16 (fp16 with a gradient "
                             "scaler); the weights, AdamW and the EMA stay float32")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each U-ViT block's activations in the backward pass "
                             "(the paper's use_checkpoint): less memory for a second forward pass")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="micro-batches per process and step (the batch size stays the "
                             "global batch; it must divide by processes x micro-batches)")
    parser.add_argument("--data",
                        help="CIFAR-10 for cifar10_uvit_small: an .npz with images "
                             "(N, 32, 32, 3) uint8 and labels, or the folder of its python "
                             "batches data_batch_1..5 (nothing is downloaded)")
    parser.add_argument("--log-every", type=int, help="default: the config's")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        context = distributed.init(args.device)     # torchrun's process group, if started by it
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = 1
    try:
        backend = TorchBackend(context.device, args.mixed_precision, args.gradient_checkpointing,
                               args.grad_accum, args.data)
        status = T.main(backend, args, " ".join(["python -m uvit_torch.train", *words]))
    finally:
        distributed.close(barrier=status == 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
