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
alike):

    guided evaluation   one model evaluation: the conditional and the null-class forward and the
                        guidance, the unit of sampling (median of `--repeats` rounds)
    sampling            the whole solver loop over `--steps` evaluations (once per package)
    decode              latents -> picture through the autoencoder's decoder (median of rounds)

The total is sampling + decode. With fewer than 50 steps the report also extrapolates the 50-step
total as decode + (50 / steps) x sampling, and says so: every evaluation costs the same (the
same shapes), so this is a rescaling, not a guess.

Memory: for each package and stage, the growth of the process's peak resident set during the
stage (the high-water mark is reset before it, where Linux allows), on top of the shared weights;
and for NumPy the peak of its own allocations (tracemalloc) during one guided evaluation and one
decode, measured in extra runs that are not timed.

Target: NumPy <= 1.2 x torch for the whole picture.
"""

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
from .bench import _read_status, _reset_peak_rss, machine, set_threads, verdict
from .harness import compare

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
    """Run the benchmark, print the report (to `out`, standard output by default) and return
    its figures: per stage and package the seconds ("numpy"/"torch" dicts), the ratios, the
    totals (and the 50-step extrapolation), the memory and the parity of the two pictures."""
    out = sys.stdout if out is None else out
    if threads:
        set_threads(threads)
    tic = time.perf_counter()
    ours, theirs = build_pipelines(name, nnet_config, ddconfig, seed)
    built = time.perf_counter() - tic
    n_params = ours.nnet.num_parameters()
    ae_params = ours.autoencoder.num_parameters()
    weight_bytes = sum(p.nbytes for p in ours.nnet.parameters()) + \
        sum(p.nbytes for p in ours.autoencoder.parameters())
    C, h, w = ours.latent_shape
    scale = ours.guidance_scale
    print(f"U-ViT pipeline {name}: U-ViT {n_params:,} + autoencoder {ae_params:,} parameters "
          f"({weight_bytes / 2**30:.2f} GiB float32, one copy shared by both packages), random "
          f"weights, built in {built:.0f} s", file=out)
    print(f"one picture of class {label}: latents {C}x{h}x{w}, guidance s = {scale} (two "
          f"forwards per evaluation), DPM-Solver++ fast, {steps} steps", file=out)
    print(machine(), file=out)

    labels = np.array([label])
    z = NP.initial_latents(seed, 1, ours.latent_shape)                 # (1, C, h, w) float32
    t_labels, t_z = torch.from_numpy(labels), torch.from_numpy(z)
    t_half = torch.full((1,), 500.0)
    n_eval = NP.discrete_model_fn(NP.class_cfg_nnet(ours.nnet, labels, scale))
    with torch.inference_mode():
        t_eval = NP.discrete_model_fn(TP.class_cfg_nnet(theirs.nnet, t_labels, scale))
    stages = {
        "guided evaluation": {"numpy": lambda: n_eval(z, np.full(1, 0.5, np.float32)),
                              "torch": lambda: _inference(t_eval, t_z, t_half / 1000)},
    }
    times = {stage: {"numpy": [], "torch": []} for stage in ("guided evaluation", "sampling",
                                                             "decode")}
    growth = {}
    for pkg, fn in stages["guided evaluation"].items():                 # warm-up
        fn()
    for r in range(repeats):
        for pkg in _order(r):
            time.sleep(pause)
            times["guided evaluation"][pkg].append(_timed(stages["guided evaluation"][pkg])[1])
    latents = {}
    samplers = {"numpy": lambda: ours.sample(labels, z_init=z, steps=steps),
                "torch": lambda: theirs.sample(t_labels, z_init=t_z.clone(), steps=steps)}
    for pkg in _order(0):
        time.sleep(pause)
        latents[pkg], seconds, growth[pkg, "sampling"] = _rss_growth(samplers[pkg])
        times["sampling"][pkg].append(seconds)
    decoders = {"numpy": lambda: ours.decode(latents["numpy"]),
                "torch": lambda: theirs.decode(latents["torch"])}
    images, decode_growth = {}, {"numpy": [], "torch": []}
    for r in range(max(1, repeats - 1)):
        for pkg in _order(r + 1):
            time.sleep(pause)
            images[pkg], seconds, g = _rss_growth(decoders[pkg])
            times["decode"][pkg].append(seconds)
            decode_growth[pkg].append(g)
    for pkg, gs in decode_growth.items():
        growth[pkg, "decode"] = None if None in gs else max(gs)

    med = {stage: {pkg: statistics.median(ts) for pkg, ts in by.items()}
           for stage, by in times.items()}
    res = {"stages": med, "built_seconds": built, "steps": steps, "threads": threads,
           "weight_bytes": weight_bytes}
    print(f"\n  {'stage':<26}{'NumPy':>10}{'torch':>10}   NumPy / torch", file=out)
    for stage, by in med.items():
        ratio = by["numpy"] / by["torch"]
        res[f"{stage} ratio"] = ratio
        note = {"guided evaluation": f"median of {repeats}", "sampling": f"{steps} evaluations",
                "decode": f"median of {len(times['decode']['numpy'])}"}[stage]
        print(f"  {stage:<26}{by['numpy']:9.2f}s{by['torch']:9.2f}s   {ratio:.3f}   ({note})",
              file=out)
    total = {pkg: med["sampling"][pkg] + med["decode"][pkg] for pkg in ("numpy", "torch")}
    res["total"], res["total ratio"] = total, total["numpy"] / total["torch"]
    print(f"  {'total (sampling + decode)':<26}{total['numpy']:9.2f}s{total['torch']:9.2f}s   "
          f"{res['total ratio']:.3f}   {verdict(res['total ratio'], TARGET)}", file=out)
    if steps != PAPER_STEPS:
        factor = PAPER_STEPS / steps
        paper = {pkg: med["decode"][pkg] + factor * med["sampling"][pkg]
                 for pkg in ("numpy", "torch")}
        res["total at 50 steps (extrapolated)"] = paper
        res["total at 50 steps ratio"] = paper["numpy"] / paper["torch"]
        print(f"  {'50 steps, extrapolated':<26}{paper['numpy']:9.1f}s{paper['torch']:9.1f}s   "
              f"{res['total at 50 steps ratio']:.3f}   (decode + {factor:.3g} x the sampling "
              f"measured over {steps} steps)", file=out)

    if memory:
        res["peak growth"] = {f"{pkg} {stage}": g for (pkg, stage), g in growth.items()}
        print(f"\nmemory: weights {weight_bytes / 2**20:,.0f} MiB (one copy, shared)", file=out)
        if all(g is not None for g in growth.values()):
            print("  peak resident set growth during the stage, on top of the weights: "
                  + ", ".join(f"{pkg} {stage} {g / 2**20:,.0f} MiB"
                              for (pkg, stage), g in growth.items()), file=out)
        res["numpy evaluation peak"] = _numpy_peak(stages["guided evaluation"]["numpy"])
        res["numpy decode peak"] = _numpy_peak(decoders["numpy"])
        print(f"  NumPy's own allocations at their peak (tracemalloc): one guided evaluation "
              f"{res['numpy evaluation peak'] / 2**20:,.1f} MiB, decode "
              f"{res['numpy decode peak'] / 2**20:,.1f} MiB", file=out)

    res["latents rel error"] = compare("latents", latents["numpy"], latents["torch"]).max_rel
    res["images rel error"] = compare("images", images["numpy"], images["torch"]).max_rel
    print(f"\nparity (float32): latents {res['latents rel error']:.1e}, picture "
          f"{res['images rel error']:.1e} relative, NumPy against torch", file=out)
    return res


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
