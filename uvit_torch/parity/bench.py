"""Time the forward pass of UVit2DModel in NumPy, in the torch port and in diffusers, and one
training step of the two digit models in NumPy and in torch.

    python -m uvit_torch.bench            # amused-256, float32, B=1, 16x16 tokens, 77 text tokens
    python -m uvit_torch.bench --threads 2 --repeats 7
    python -m uvit_torch.bench --config tiny --grid 8 --no-diffusers
    python -m uvit_torch.bench --train    # one training step, NumPy vs torch (target <= 1.5)
    python -m uvit_torch.bench --pipeline imagenet256_uvit_huge   # a whole picture (PIPELINES)

A figure over its target is marked MISSED in the report (the exit status stays 0: this is a
measurement, not a test); the first lines name the machine, since the ratios depend on the CPU.

One process holds one copy of the weights (random, torch's default init): the NumPy model owns the
arrays and the torch port and diffusers' model take them as their parameters (built on the meta
device, loaded with `assign=True`), so three models cost the memory of one. After a warm-up run of
each, the three forwards are *interleaved* for `--repeats` rounds, the order rotating from round to
round, so that machine load hits them alike; the report gives each one's median (and minimum) and
the ratios NumPy / torch port and torch port / diffusers. Torch runs under `torch.inference_mode()`.
A pause (`--pause`, 0.25 s) separates consecutive forwards: OpenBLAS's and OpenMP's worker threads
busy-wait for a while after their last job, and without the pause one library's spinning threads
would be charged to whichever model runs next.

Threads: `--threads N` sets both torch's intra-op threads and OpenBLAS's (NumPy's BLAS, through
its `set_num_threads` entry point); the default leaves both at their defaults (all cores).

Memory: after the timings, one more NumPy forward runs under `tracemalloc`, which sees every NumPy
allocation; its peak is the memory the forward adds on top of the weights (activations and
temporaries; BLAS's internal buffers are not NumPy allocations and are not counted). The report
gives (weights + that peak) / weights. When Linux allows it, the peak resident set size during
the same forward (after resetting the high-water mark) is printed as a cross-check.

Targets: NumPy <= 1.1 x torch port, torch port <= 1.0 x diffusers, NumPy peak memory <= 1.5 x the
weights; for a training step (`--train`), NumPy <= 1.5 x torch.
"""

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch

import uvit_numpy.uvit2d as N

from .. import uvit2d as T
from .uvit2d import model_inputs
from .harness import TORCH_DTYPE, compare, to_torch


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------
def _openblas_function(name):
    """`openblas_<name>` of the OpenBLAS that NumPy loaded (its symbol prefix and suffix vary with
    the build), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas_", "openblas_"):
                for suffix in ("64_", ""):
                    if hasattr(lib, prefix + name + suffix):
                        return getattr(lib, prefix + name + suffix)
    return None


def set_threads(n):
    """Use n threads in torch and in NumPy's OpenBLAS (when its entry point can be found)."""
    torch.set_num_threads(n)
    setter = _openblas_function("set_num_threads")
    if setter is not None:
        setter(ctypes.c_int(n))


def blas_threads():
    getter = _openblas_function("get_num_threads")
    return int(getter()) if getter is not None else None


# --------------------------------------------------------------------------------------------------
# Models sharing one copy of the weights
# --------------------------------------------------------------------------------------------------
def build_models(config, dtype=np.float32, with_diffusers=True, seed=0):
    """(numpy_model, torch_port, diffusers_model or None), all in eval mode, sharing weights."""
    ours = N.UVit2DModel.from_config(config, dtype=dtype, rng=seed).eval()
    shared = {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}
    tdt = TORCH_DTYPE[np.dtype(dtype)]
    with torch.device("meta"):
        port = T.UVit2DModel.from_config(config, dtype=tdt)
    port.load_state_dict(shared, assign=True)
    theirs = None
    if with_diffusers:
        from diffusers import UVit2DModel as DiffusersUVit2DModel
        with torch.device("meta"):
            theirs = DiffusersUVit2DModel(**N.resolve_config(config))
        theirs.load_state_dict(shared, assign=True)
        theirs.eval()
    return ours, port.eval(), theirs


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------
def _read_status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def numpy_forward_memory(model, inputs):
    """(tracemalloc peak of the forward in bytes, peak-RSS growth in bytes or None)."""
    rss0 = _read_status("VmRSS")
    can_reset = _reset_peak_rss()
    tracemalloc.start()
    tracemalloc.reset_peak()
    model(*inputs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _read_status("VmHWM") if can_reset else None
    return peak, (hwm - rss0 if hwm is not None and rss0 is not None else None)


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(config="amused-256", threads=None, repeats=5, batch=1, grid=16, text_len=77,
        with_diffusers=True, memory=True, seed=0, pause=0.25, out=None):
    """Run the benchmark and print the report (to `out`, standard output by default); returns a dict
    of the figures."""
    out = sys.stdout if out is None else out
    if threads:
        set_threads(threads)
    if with_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed: timing NumPy and the torch port only", file=out)
            with_diffusers = False
    cfg = N.resolve_config(config)
    start = time.perf_counter()
    ours, port, theirs = build_models(config, np.float32, with_diffusers, seed)
    weight_bytes = sum(p.nbytes for p in ours.parameters())
    inputs = model_inputs(cfg, np.random.default_rng(seed), batch, np.float32, (grid, grid),
                          text_len)
    t_inputs = [to_torch(x) for x in inputs]
    print(f"UVit2DModel {config}: {ours.num_parameters():,} parameters "
          f"({weight_bytes / 2**30:.2f} GiB float32), built in {time.perf_counter() - start:.1f} s",
          file=out)
    print(f"input: batch {batch}, {grid}x{grid} tokens, {text_len} text tokens", file=out)
    print(machine(), file=out)

    runners = {"numpy": lambda: ours(*inputs)}
    with torch.inference_mode():
        runners["torch port"] = lambda: port(*t_inputs)
        if theirs is not None:
            runners["diffusers"] = lambda: theirs(*t_inputs)
        outputs = {name: fn() for name, fn in runners.items()}     # warm-up
        times = {name: [] for name in runners}
        names = list(runners)
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotating order
                time.sleep(pause)
                times[name].append(_timed(runners[name])[1])

    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\nforward times over {repeats} interleaved rounds (after one warm-up each, "
          f"{pause} s pause before each):", file=out)
    for name, ts in times.items():
        print(f"  {name:<11} median {med[name]:7.3f} s   min {min(ts):7.3f} s   runs "
              + " ".join(f"{t:.3f}" for t in ts), file=out)
    res = {"median_" + k.replace(" ", "_"): v for k, v in med.items()}
    res["numpy_over_torch"] = med["numpy"] / med["torch port"]
    print(f"\n  NumPy / torch port     {res['numpy_over_torch']:.3f}   "
          f"{verdict(res['numpy_over_torch'], 1.1)}", file=out)
    if "diffusers" in med:
        res["torch_over_diffusers"] = med["torch port"] / med["diffusers"]
        print(f"  torch port / diffusers {res['torch_over_diffusers']:.3f}   "
              f"{verdict(res['torch_over_diffusers'], 1.0)}", file=out)
    out_np = outputs["numpy"]
    print(f"  output dtype {out_np.dtype}; NumPy vs torch port: "
          f"{compare('', out_np, outputs['torch port']).max_rel:.1e} relative", file=out)
    if "diffusers" in outputs:
        print(f"  torch port vs diffusers: "
              f"{compare('', outputs['torch port'], outputs['diffusers']).max_rel:.1e} relative",
              file=out)
    if memory:
        peak, rss_growth = numpy_forward_memory(ours, inputs)
        res["numpy_peak_over_weights"] = (weight_bytes + peak) / weight_bytes
        print(f"\nNumPy forward memory: weights {weight_bytes / 2**20:,.0f} MiB + peak of the "
              f"forward's own allocations (tracemalloc) {peak / 2**20:,.1f} MiB = "
              f"{res['numpy_peak_over_weights']:.3f} x the weights   "
              f"{verdict(res['numpy_peak_over_weights'], 1.5)}", file=out)
        if rss_growth is not None:
            print(f"  cross-check: peak resident set grew by {rss_growth / 2**20:,.1f} MiB during "
                  f"that forward", file=out)
    return res


# --------------------------------------------------------------------------------------------------
# The machine, and targets
# --------------------------------------------------------------------------------------------------
def machine():
    """A line naming the CPU, NumPy's BLAS and the thread counts: figures from different machines
    (an AVX-512 Xeon and an AMD EPYC measure different NumPy / torch ratios) can be told apart."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            info = f.read()
        flags = " AVX-512" if "avx512f" in info else (" AVX2" if "avx2" in info else "")
    return (f"machine: {cpu}{flags}, {os.cpu_count()} cores; NumPy {np.__version__} with "
            f"{blas.get('name', '?')} {blas.get('version', '')}; torch {torch.__version__}; "
            f"threads: torch {torch.get_num_threads()}, OpenBLAS {blas_threads()}")


def verdict(value, limit):
    """'(target <= limit)' or, when the figure is over it, a line a reader cannot miss."""
    return (f"(target <= {limit})" if value <= limit
            else f"(target <= {limit})   <-- MISSED: over the target by {value / limit - 1:.0%}")


# --------------------------------------------------------------------------------------------------
# One training step: forward, backward, AdamW
# --------------------------------------------------------------------------------------------------
def _uvit_step_pair(batch, seed=0):
    """(numpy step, torch step) of the digit-sized U-ViT: noise-prediction MSE, AdamW."""
    import uvit_numpy as NP
    import uvit_numpy.optim as NO
    from uvit_numpy import losses as NLoss
    from uvit_numpy.training import TRAIN_CONFIGS

    from .. import uvit as TU
    kw = {**TRAIN_CONFIGS["uvit-digits"]["model"], "patch_size": 4, "embed_dim": 96, "depth": 6}
    ours = NP.UViT(**kw, rng=seed).train()
    port = TU.UViT(**kw)
    port.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    t, y = rng.integers(0, 1000, batch), rng.integers(0, 11, batch)
    opt, topt = NO.AdamW(ours, lr=1e-4), torch.optim.AdamW(port.parameters(), lr=1e-4)
    tx, tn, tt, ty = (torch.from_numpy(v) for v in (x, noise, t, y))

    def numpy_step():
        ours.zero_grad()
        loss, cache = NLoss.mse_loss(ours(x, t, y), noise, return_cache=True)
        ours.backward(NLoss.mse_loss_backward(1.0, cache))
        opt.step()

    def torch_step():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(port(tx, tt, ty), tn).backward()
        topt.step()
    return ours, numpy_step, torch_step, f"U-ViT digits (28x28, patch 4, D 96, depth 6), B={batch}"


def _uvit2d_step_pair(batch, seed=0):
    """(numpy step, torch step) of the amused-digits UVit2DModel on 8x8 codes: masked CE, AdamW."""
    import uvit_numpy.optim as NO
    from uvit_numpy import losses as NLoss
    from uvit_numpy.training import TRAIN_CONFIGS, class_condition, mask_tokens
    cfg = TRAIN_CONFIGS["amused-digits"]
    ours = N.UVit2DModel(**cfg["model"], rng=seed).train()
    with torch.device("meta"):
        port = T.UVit2DModel(**cfg["model"])
    port.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()},
                         assign=True)
    rng = np.random.default_rng(seed)
    ids, labels = mask_tokens(rng.integers(0, 256, (batch, 8, 8)), rng, 256)
    ehs, pooled = class_condition(rng.integers(0, 11, batch), 10)
    micro = np.tile(np.float32(cfg["micro_conds"]), (batch, 1))
    opt, topt = NO.AdamW(ours, lr=1e-4), torch.optim.AdamW(port.parameters(), lr=1e-4)
    targs = [torch.from_numpy(v) for v in (ids, ehs, pooled, micro, labels)]

    def numpy_step():
        ours.zero_grad()
        loss, cache = NLoss.cross_entropy(ours(ids, ehs, pooled, micro), labels,
                                          label_smoothing=0.1, return_cache=True)
        ours.backward(NLoss.cross_entropy_backward(1.0, cache))
        opt.step()

    def torch_step():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(port(*targs[:4]), targs[4],
                                          label_smoothing=0.1).backward()
        topt.step()
    return ours, numpy_step, torch_step, f"UVit2DModel amused-digits (8x8 codes), B={batch}"


def step_memory(step):
    """The tracemalloc peak (bytes) of one NumPy training step."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def run_train(threads=None, repeats=7, batch=64, pause=0.25, out=None):
    """Time one training step of each model, NumPy against torch, interleaved; print the report
    (to `out`, standard output by default) and return
    {model: {"numpy": median s, "torch": median s, "ratio": ..., "peak": bytes}}."""
    out = sys.stdout if out is None else out
    if threads:
        set_threads(threads)
    print(machine(), file=out)
    results = {}
    for make in (_uvit_step_pair, _uvit2d_step_pair):
        ours, numpy_step, torch_step, label = make(batch)
        weights = sum(p.nbytes for p in ours.parameters())
        runners = {"numpy": numpy_step, "torch": torch_step}
        for fn in runners.values():                     # warm-up
            fn()
        times = {name: [] for name in runners}
        names = list(runners)
        for r in range(repeats):
            for name in names[r % 2:] + names[:r % 2]:
                time.sleep(pause)
                times[name].append(_timed(runners[name])[1])
        med = {name: statistics.median(ts) for name, ts in times.items()}
        ratio = med["numpy"] / med["torch"]
        peak = step_memory(numpy_step)
        results[label] = {**med, "ratio": ratio, "peak": peak, "weights": weights}
        print(f"\n{label}: {ours.num_parameters():,} parameters, float32", file=out)
        for name, ts in times.items():
            print(f"  {name:<6} median {med[name]:7.3f} s   min {min(ts):7.3f} s   runs "
                  + " ".join(f"{t:.3f}" for t in ts), file=out)
        print(f"  NumPy / torch {ratio:.2f}   {verdict(ratio, 1.5)}", file=out)
        print(f"  NumPy step memory: peak of its allocations {peak / 2**20:,.1f} MiB "
              f"(weights {weights / 2**20:,.1f} MiB)", file=out)
    return results


# --------------------------------------------------------------------------------------------------
# Pipeline benchmarks (`--pipeline NAME`): whole pictures, stage by stage, NumPy against torch
# --------------------------------------------------------------------------------------------------
def _uvit_pipeline(name):
    def run(args):
        from .bench_uvit_pipeline import run_from_args
        return run_from_args(name, args)
    return run


PIPELINES = {
    "imagenet256_uvit_huge": _uvit_pipeline("imagenet256_uvit_huge"),  # bench_uvit_pipeline.py
}
"""`--pipeline NAME` -> a function of the parsed arguments that runs it and prints its report."""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m uvit_torch.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="amused-256", help="named config (default amused-256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and OpenBLAS (default: leave both as they are)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--grid", type=int, default=16, help="token grid side (default 16)")
    parser.add_argument("--text-len", type=int, default=77)
    parser.add_argument("--no-diffusers", action="store_true", help="leave diffusers out")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--pause", type=float, default=0.25,
                        help="seconds of idle before each timed forward (default 0.25)")
    parser.add_argument("--train", action="store_true",
                        help="time one training step (forward, backward, AdamW) of the digit "
                             "U-ViT and the amused-digits UVit2DModel instead (batch 64)")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES),
                        help="time a whole pipeline instead, stage by stage (see PIPELINES)")
    parser.add_argument("--steps", type=int, default=None,
                        help="--pipeline: sampling steps (default: the pipeline's own)")
    args = parser.parse_args(argv)
    if args.pipeline:
        PIPELINES[args.pipeline](args)
        return 0
    if args.train:
        run_train(args.threads, max(args.repeats, 3), 64 if args.batch == 1 else args.batch,
                  args.pause)
        return 0
    run(args.config, args.threads, args.repeats, args.batch, args.grid, args.text_len,
        not args.no_diffusers, not args.no_memory, pause=args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
