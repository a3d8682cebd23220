"""The U-ViT paper's latent pipeline, NumPy against torch, stage by stage:
`python -m uvit_torch.bench --pipeline imagenet256_uvit_huge` (an entry of `bench.PIPELINES`).

    python -m uvit_torch.bench --pipeline imagenet256_uvit_huge --threads 2
    python -m uvit_torch.bench --pipeline imagenet256_uvit_huge --threads 2 --steps 10  # quicker

What runs: the config's U-ViT (U-ViT-H/2: 501M parameters) and the paper's autoencoder (84M),
random weights (the paper's initialisation for the U-ViT, torch's defaults for the autoencoder),
float32, one 256x256 picture of class 207, guidance on (the config's s = 0.4: two forwards per
model evaluation), DPM-Solver++ "fast" with `--steps` model evaluations (default 50, the paper's).
Both packages share one copy of the weights (the torch modules are built on the meta device and
take the NumPy arrays as their parameters), so two pipelines cost the memory of one.

The stages, each timed in both packages in turn (the order alternating from round to round, a
pause before each run, as `bench.run` does, so that machine load and idle BLAS threads hit both
alike; the first round counts, the median absorbs it):

    guided evaluation   one model evaluation: the conditional and the null-class forward and the
                        guidance, the unit of sampling (median of `--repeats` rounds, at n = 500)
    sampling            the whole solver loop over `--steps` evaluations (once per package)
    decode              latents -> picture through the autoencoder's decoder (median of
                        `--repeats` - 1 rounds, at least one)

The total is sampling + decode. With fewer than 50 steps the report also extrapolates the 50-step
total as decode + (50 / steps) x sampling, and says so: every evaluation costs the same (the
same shapes), so this is a rescaling, not a guess.

Memory: for each package and stage, the growth of the process's peak resident set during the
stage (the high-water mark is reset before it, where Linux allows), on top of the shared weights;
and for NumPy the peak of its own allocations (tracemalloc) during one guided evaluation and one
decode, measured in extra runs that are not timed.

Target: NumPy <= 1.2 x torch for the whole picture.
"""

import os
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch

from uvit_numpy import autoencoder as NA
from uvit_numpy import uvit as NU
from uvit_numpy import uvit_pipeline as NP
from uvit_numpy.configs import UVIT_CONFIGS

from .. import autoencoder as TA
from .. import uvit as TU
from .. import uvit_pipeline as TP
from .harness import compare
from .measure import _read_status, _reset_peak_rss, machine, set_threads, verdict

PAPER_STEPS = 50
TARGET = 1.2


def build_pipelines(name, nnet_config=None, ddconfig=None, seed=0):
    """(NumPy pipeline, torch pipeline) for the class-conditional config `name` with random
    weights held once: the NumPy arrays are the torch parameters. nnet_config / ddconfig
    replace the config's U-ViT and the paper's autoencoder (tests use tiny ones)."""
    settings = NP.PIPELINE_CONFIGS[name]
    if settings["task"] != "class":
        raise ValueError(f"the pipeline benchmark runs the class-conditional configs, not "
                         f"{name!r} (a text config would need CLIP's weights)")
    nnet_config = UVIT_CONFIGS[name] if nnet_config is None else nnet_config
    ddconfig = NA.PAPER_DDCONFIG if ddconfig is None else ddconfig
    scale = settings["scale_factor"]
    n_net = NU.UViT(**nnet_config, rng=seed).eval()
    n_ae = NA.FrozenAutoencoderKL(ddconfig, NA.PAPER_EMBED_DIM, scale, rng=seed + 1)
    with torch.device("meta"):
        t_net = TU.UViT(**nnet_config)
        t_ae = TA.FrozenAutoencoderKL(ddconfig, NA.PAPER_EMBED_DIM, scale)
    t_net.load_state_dict(shared(n_net.state_dict()), assign=True)
    t_ae.load_state_dict(shared(n_ae.state_dict()), assign=True)
    guidance = settings["guidance_scale"]
    return (NP.UViTPipeline(n_net, n_ae, guidance),
            TP.UViTPipeline(t_net.eval(), t_ae.eval(), guidance))


def shared(state_dict):
    """NumPy arrays as tensors sharing their memory."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _rss_growth(fn):
    """(fn's result, seconds, growth of the peak resident set during it in bytes or None)."""
    rss0 = _read_status("VmRSS")
    can_reset = _reset_peak_rss()
    out, seconds = _timed(fn)
    hwm = _read_status("VmHWM") if can_reset else None
    growth = hwm - rss0 if hwm is not None and rss0 is not None else None
    return out, seconds, growth


def _numpy_peak(fn):
    """The tracemalloc peak (bytes) of NumPy's allocations during fn()."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def run_pipeline(name="imagenet256_uvit_huge", threads=None, steps=PAPER_STEPS, repeats=3,
                 label=207, seed=0, pause=0.25, memory=True, nnet_config=None, ddconfig=None,
                 out=None):
    """Run the benchmark, print the report (to `out`, standard output by default; each stage's
    line as soon as it is measured) and return its figures: per stage and package the median
    seconds, the ratios, the totals (and the 50-step extrapolation), the memory and the parity
    of the two pictures."""
    out = sys.stdout if out is None else out

    def say(text=""):
        print(text, file=out, flush=True)

    if threads:
        set_threads(threads)
    tic = time.perf_counter()
    ours, theirs = build_pipelines(name, nnet_config, ddconfig, seed)
    weight_bytes = sum(p.nbytes for p in ours.nnet.parameters()) + \
        sum(p.nbytes for p in ours.autoencoder.parameters())
    C, h, w = ours.latent_shape
    scale = ours.guidance_scale
    say(f"U-ViT pipeline {name}: U-ViT {ours.nnet.num_parameters():,} + autoencoder "
        f"{ours.autoencoder.num_parameters():,} parameters ({weight_bytes / 2**30:.2f} GiB "
        f"float32, one copy shared by both packages), random weights, built in "
        f"{time.perf_counter() - tic:.0f} s")
    say(f"one picture of class {label}: latents {C}x{h}x{w}, guidance s = {scale} (two forwards "
        f"per evaluation), DPM-Solver++ fast, {steps} steps")
    say(machine())
    say(f"load average at the start: {_load()} (other processes compete for the cores)")
    say(f"\n  {'stage':<26}{'NumPy':>10}{'torch':>10}   NumPy / torch")

    labels, z = np.array([label]), NP.initial_latents(seed, 1, ours.latent_shape)  # (1, C, h, w)
    t_labels, t_z = torch.from_numpy(labels), torch.from_numpy(z)
    n_eval = NP.discrete_model_fn(NP.class_cfg_nnet(ours.nnet, labels, scale))
    t_eval = NP.discrete_model_fn(TP.class_cfg_nnet(theirs.nnet, t_labels, scale))
    half = np.full(1, 0.5, np.float32)                                  # t = 1/2: n = 500
    results = {"numpy": {}, "torch": {}}                                # stage -> output
    runs = {
        "guided evaluation": {"numpy": lambda: n_eval(z, half),
                              "torch": lambda: _inference(t_eval, t_z, torch.from_numpy(half))},
        "sampling": {"numpy": lambda: ours.sample(labels, z_init=z, steps=steps),
                     "torch": lambda: theirs.sample(t_labels, z_init=t_z.clone(), steps=steps)},
        "decode": {"numpy": lambda: ours.decode(results["numpy"]["sampling"]),
                   "torch": lambda: theirs.decode(results["torch"]["sampling"])},
    }
    rounds = {"guided evaluation": repeats, "sampling": 1, "decode": max(1, repeats - 1)}
    notes = {"guided evaluation": f"median of {repeats}", "sampling": f"{steps} evaluations",
             "decode": f"median of {rounds['decode']}"}
    med, growth, res = {}, {}, {"steps": steps, "threads": threads, "weight_bytes": weight_bytes}
    for stage, by in runs.items():
        times = {"numpy": [], "torch": []}
        for r in range(rounds[stage]):
            for pkg in _order(r):
                time.sleep(pause)
                results[pkg][stage], seconds, g = _rss_growth(by[pkg])
                times[pkg].append(seconds)
                growth[pkg, stage] = g if r == 0 or g is None else max(g, growth[pkg, stage])
        med[stage] = {pkg: statistics.median(ts) for pkg, ts in times.items()}
        res[f"{stage} ratio"] = med[stage]["numpy"] / med[stage]["torch"]
        say(f"  {stage:<26}{med[stage]['numpy']:9.2f}s{med[stage]['torch']:9.2f}s   "
            f"{res[stage + ' ratio']:.3f}   ({notes[stage]})")
    res["stages"] = med
    total = {pkg: med["sampling"][pkg] + med["decode"][pkg] for pkg in ("numpy", "torch")}
    res["total"], res["total ratio"] = total, total["numpy"] / total["torch"]
    say(f"  {'total (sampling + decode)':<26}{total['numpy']:9.2f}s{total['torch']:9.2f}s   "
        f"{res['total ratio']:.3f}   {verdict(res['total ratio'], TARGET)}")
    if steps != PAPER_STEPS:
        factor = PAPER_STEPS / steps
        paper = {pkg: med["decode"][pkg] + factor * med["sampling"][pkg]
                 for pkg in ("numpy", "torch")}
        res["total at 50 steps (extrapolated)"] = paper
        ratio = res["total at 50 steps ratio"] = paper["numpy"] / paper["torch"]
        say(f"  {'50 steps, extrapolated':<26}{paper['numpy']:9.1f}s{paper['torch']:9.1f}s   "
            f"{ratio:.3f}   {verdict(ratio, TARGET)}\n  (extrapolated: decode + {factor:.3g} x "
            f"the sampling measured over {steps} steps; every evaluation has the same shapes)")

    res["latents rel error"] = compare("", results["numpy"]["sampling"],
                                       results["torch"]["sampling"]).max_rel
    res["images rel error"] = compare("", results["numpy"]["decode"],
                                      results["torch"]["decode"]).max_rel
    say(f"\nparity (float32), NumPy against torch: latents {res['latents rel error']:.1e}, "
        f"picture {res['images rel error']:.1e} relative")
    if memory:
        res["peak growth"] = {f"{pkg} {stage}": g for (pkg, stage), g in growth.items()}
        say(f"\nmemory: weights {weight_bytes / 2**20:,.0f} MiB (one copy, shared)")
        if all(g is not None for g in growth.values()):
            for pkg in ("numpy", "torch"):
                say(f"  {pkg}: peak resident set growth during each stage, on top of the "
                    f"weights: " + ", ".join(f"{stage} {growth[pkg, stage] / 2**20:,.0f} MiB"
                                             for stage in runs))
        res["numpy evaluation peak"] = _numpy_peak(runs["guided evaluation"]["numpy"])
        res["numpy decode peak"] = _numpy_peak(runs["decode"]["numpy"])
        say(f"  NumPy's own allocations at their peak (tracemalloc, extra untimed runs): one "
            f"guided evaluation {res['numpy evaluation peak'] / 2**20:,.1f} MiB, decode "
            f"{res['numpy decode peak'] / 2**20:,.1f} MiB")
    say(f"load average at the end: {_load()}")
    return res


def _load():
    """The 1-minute load average and the number of cores, as a phrase."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def _inference(fn, *args):
    with torch.inference_mode():
        return fn(*args)


def _order(r):
    """The two packages in turn, the first one alternating with the round."""
    return ("numpy", "torch") if r % 2 == 0 else ("torch", "numpy")


def run_from_args(name, args):
    """The `bench.PIPELINES` entry: `python -m uvit_torch.bench --pipeline NAME`."""
    return run_pipeline(name, threads=args.threads,
                        steps=PAPER_STEPS if args.steps is None else args.steps,
                        repeats=args.repeats, pause=args.pause, memory=not args.no_memory)
