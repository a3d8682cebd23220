"""Time the forward pass of UVit2DModel in NumPy, in the torch port and in diffusers, and one
training step of the two digit models in NumPy and in torch.

    python -m uvit_torch.bench            # amused-256, float32, B=1, 16x16 tokens, 77 text tokens
    python -m uvit_torch.bench --threads 2 --repeats 7
    python -m uvit_torch.bench --config tiny --grid 8 --no-diffusers
    python -m uvit_torch.bench --train    # one training step, NumPy vs torch (target <= 1.5)
    python -m uvit_torch.bench --pipeline amused-256 --threads 2   # one image, stage by stage
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

Threads: `--threads N` sets both torch's intra-op threads and NumPy's BLAS's (through
threadpoolctl, `uvit_numpy.cli.set_threads`). The default is torch's own choice (the machine's
physical cores), for both libraries, so that both are timed alike: unlike the small work of the
other commands (which default to 1 thread), a full aMUSEd-256 forward is large enough to gain from
every idle core. Run it on an idle machine; on a busy one every thread count measures the load.

Memory: after the timings, one more NumPy forward runs under `tracemalloc`, which sees every NumPy
allocation; its peak is the memory the forward adds on top of the weights (activations and
temporaries; BLAS's internal buffers are not NumPy allocations and are not counted). The report
gives (weights + that peak) / weights. When Linux allows it, the peak resident set size during
the same forward (after resetting the high-water mark) is printed as a cross-check.

Targets: NumPy <= 1.1 x torch port, torch port <= 1.0 x diffusers, NumPy peak memory <= 1.5 x the
weights; for a training step (`--train`), NumPy <= 1.5 x torch.

Whole pipelines (`--pipeline NAME`, the registry `PIPELINES`): one image with the NumPy pipeline,
then with the torch one (each after a one-step warm-up run), on one shared copy of random
weights, with the time of every stage (aMUSEd: text encoder, transformer steps, VQ decode), the
totals, and the peak resident memory of the process during each run. amused-256 targets:
NumPy <= 1.2 x torch, and one NumPy image in under 2 minutes.
"""

import argparse
import contextlib
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import uvit_numpy.uvit2d as N
from uvit_numpy.cli import (
    ArgumentParser,
    non_negative_float,
    positive_int,
    set_threads,
)

from .. import uvit2d as T
from .harness import TORCH_DTYPE, compare, to_torch
from .measure import _read_status, _reset_peak_rss, machine, verdict
from .uvit2d import model_inputs


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------
def thread_limits(threads):
    """`set_threads(threads, torch=True)` (its `restore()` puts the previous counts back), or
    nothing to restore when `threads` is None (the counts are left as they are)."""
    if threads is None:
        return contextlib.nullcontext()
    return set_threads(threads, torch=True)


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
    with thread_limits(threads):
        return _run(config, repeats, batch, grid, text_len, with_diffusers, memory, seed, pause,
                    sys.stdout if out is None else out)


def _run(config, repeats, batch, grid, text_len, with_diffusers, memory, seed, pause, out):
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
    with thread_limits(threads):
        return _run_train(repeats, batch, pause, sys.stdout if out is None else out)


def _run_train(repeats, batch, pause, out):
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


FORWARD_ONLY = {"config": "amused-256", "grid": 16, "text_len": 77, "no_diffusers": False,
                "no_memory": False}                  # options of the forward benchmark only


# --------------------------------------------------------------------------------------------------
# Whole pipelines: one image, NumPy against torch, stage by stage (`--pipeline NAME`)
# --------------------------------------------------------------------------------------------------
@dataclass
class PipelineBenchmark:
    """A registered pipeline benchmark. `build(seed)` returns (numpy_run, torch_run, label):
    each run is a callable `run(quick=False) -> (codes or None, images, stages)`, where `stages`
    is a dict {stage name: seconds, or a list of seconds for a repeated stage such as the steps},
    in the order the stages ran, and `quick=True` is a short warm-up run (one step); `label`
    describes the models in one line."""
    description: str
    build: Callable
    targets: tuple = (1.2, 120.0)      # (NumPy / torch, seconds for one NumPy image)
    run_from_args: Callable = None     # a benchmark with its own report, run from the arguments


def _amused_stand_in_tokenizer(max_length=77, bos=49406, eos=49407):
    """A byte-level CLIP tokenizer with CLIP's special ids (OpenAI's merges may not be on this
    machine; tokenizing takes microseconds either way)."""
    from uvit_numpy import clip_tokenizer as CT
    chars = list(CT.BYTE_TO_CHAR.values())
    vocab = {t: i for i, t in enumerate(dict.fromkeys(chars + [c + CT.END_OF_WORD
                                                               for c in chars]))}
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    return vocab, []


def _amused_pipelines(seed, text="clip-vit-large-patch14", transformer="amused-256",
                      vq="amused"):
    """(NumPy AmusedPipeline, torch AmusedPipeline) on one copy of random float32 weights at the
    named sizes: the NumPy models own the arrays, the torch twins (built on the meta device)
    take them as their parameters."""
    import uvit_numpy.amused_pipeline as NP
    import uvit_numpy.clip as NC
    import uvit_numpy.vq_model as NQ

    from .. import amused_pipeline as TP
    from .. import clip as TC
    from .. import vq_model as TQ
    from ..clip_tokenizer import CLIPTokenizer
    n_text = NC.CLIPTextModelWithProjection(text, rng=seed).eval()
    n_transformer = N.UVit2DModel.from_config(transformer, rng=seed + 1).eval()
    n_vq = NQ.VQModel.from_config(vq, rng=seed + 2).eval()
    config = n_text.config
    vocab, merges = _amused_stand_in_tokenizer(config.max_position_embeddings,
                                               config.bos_token_id, config.eos_token_id)
    scheduler = NP.AmusedScheduler(n_transformer.config["vocab_size"] - 1)
    ours = NP.AmusedPipeline(n_vq, CLIPTokenizer(vocab, merges, model_max_length=77),
                             n_text, n_transformer, scheduler)

    def twin(numpy_model, make):
        with torch.device("meta"):
            model = make()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in
                               numpy_model.state_dict().items()}, assign=True)
        return model.eval()
    theirs = TP.AmusedPipeline(
        twin(n_vq, lambda: TQ.VQModel.from_config(vq)),
        CLIPTokenizer(vocab, merges, model_max_length=77),
        twin(n_text, lambda: TC.CLIPTextModelWithProjection(text)),
        twin(n_transformer, lambda: T.UVit2DModel.from_config(transformer)), scheduler)
    return ours, theirs


def _amused_runs(ours, theirs, seed, steps=12, guidance=10.0,
                 prompt="a photo of a cat wearing a hat"):
    """The two runs of an aMUSEd pipeline benchmark: one image, the same seed."""
    def runner(pipe):
        def run(quick=False):
            timings, codes = {}, []
            with torch.inference_mode():
                images = pipe(prompt, seed=seed,
                              num_inference_steps=1 if quick else steps, guidance_scale=guidance,
                              timings=timings,
                              callback=lambda step, c: codes.append(np.asarray(c))).images
            stages = {"text": timings["text"], "transformer steps": timings["steps"],
                      "VQ decode": timings["decode"]}
            return codes[-1], images, stages
        return run
    return runner(ours), runner(theirs)


def _uvit_pipeline(name):
    def run(args):
        from .bench_uvit_pipeline import run_from_args
        return run_from_args(name, args)
    return run


def _build_amused_256(seed):
    ours, theirs = _amused_pipelines(seed)
    n = sum(sum(p.size for p in m.parameters())
            for m in (ours.text_encoder, ours.transformer, ours.vqvae))
    label = (f"aMUSEd-256 on random weights: CLIP-L/14 text tower with projection, UVit2DModel "
             f"amused-256, VQModel 'amused' ({n:,} parameters, float32); one 256x256 image, "
             f"12 steps, guidance 10")
    return (*_amused_runs(ours, theirs, seed), label)


def _build_amused_tiny(seed):
    from .amused import pipeline_pair
    ours, theirs = pipeline_pair("text2img", np.float32, seed)
    return (*_amused_runs(ours, theirs, seed, steps=3, guidance=3.0, prompt="a cat"),
            "aMUSEd tiny parts (tests): one 16x16 image, 3 steps")


# name -> benchmark; another pipeline registers here with its own build(seed)
PIPELINES = {
    "amused-256": PipelineBenchmark("aMUSEd 256x256 at the real sizes, random weights",
                                    _build_amused_256),
    "amused-tiny": PipelineBenchmark("aMUSEd's tiny test parts (a smoke test of this code)",
                                     _build_amused_tiny),
    "imagenet256_uvit_huge": PipelineBenchmark(
        "the U-ViT paper's ImageNet 256x256 picture (U-ViT-H/2, DPM-Solver++, guidance, the "
        "autoencoder's decode), random weights", build=None,
        run_from_args=_uvit_pipeline("imagenet256_uvit_huge")),   # bench_uvit_pipeline.py
}


def _run_with_peak_memory(run):
    """(run's result, peak resident set in bytes during it or None, resident set before, CPU
    seconds of the process during it)."""
    rss0 = _read_status("VmRSS")
    can_reset = _reset_peak_rss()
    cpu0 = time.process_time()
    result = run()
    cpu = time.process_time() - cpu0
    hwm = _read_status("VmHWM") if can_reset else None
    return result, hwm, rss0, cpu


def _stage_seconds(value):
    return sum(value) if isinstance(value, list) else value


def run_pipeline(name, threads=None, seed=0, warmup=True, out=None):
    """One image per package with the registered pipeline `name`, NumPy first, then torch (each
    after a one-step warm-up run when `warmup`); print each stage's time, the totals, the ratio
    and the peak memory. Returns {"numpy": {stage: s, "total": s, "peak": bytes}, "torch": {...},
    "ratio": ..., "codes_equal": bool, "max_rel": ...}. The process's CPU time of each run is
    printed too: on a busy machine the wall times depend on the other jobs, the CPU time less."""
    out = sys.stdout if out is None else out
    if name not in PIPELINES:
        raise ValueError(f"--pipeline: expected one of {sorted(PIPELINES)}, got {name!r}")
    if threads:
        set_threads(threads)
    bench = PIPELINES[name]
    start = time.perf_counter()
    numpy_run, torch_run, label = bench.build(seed)
    print(label, file=out)
    print(f"built in {time.perf_counter() - start:.1f} s", file=out)
    print(machine(), file=out)
    results, outputs = {}, {}
    for package, run in (("numpy", numpy_run), ("torch", torch_run)):
        if warmup:
            print(f"{package}: warm-up (one step) ...", file=out, flush=True)
            run(quick=True)
        print(f"{package}: one image ...", file=out, flush=True)
        (codes, images, stages), peak, rss0, cpu = _run_with_peak_memory(run)
        outputs[package] = (codes, images)
        row = {stage: _stage_seconds(v) for stage, v in stages.items()}
        row["total"] = sum(row.values())
        print(f"{package}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items())
              + f"; CPU time {cpu:.1f} s", file=out, flush=True)  # in case the rest never comes
        row["peak"], row["rss_before"], row["cpu"] = peak, rss0, cpu
        row["steps"] = next((len(v) for v in stages.values() if isinstance(v, list)), None)
        results[package] = row
    extras = ("total", "peak", "rss_before", "steps", "cpu")
    stages = [s for s in results["numpy"] if s not in extras]
    print(f"\n{'stage':<20} {'NumPy s':>9} {'torch s':>9} {'NumPy / torch':>14}", file=out)
    for stage in stages + ["total"]:
        a, b = results["numpy"][stage], results["torch"][stage]
        extra = ""
        if stage != "total" and results["numpy"]["steps"] and stage == "transformer steps":
            n = results["numpy"]["steps"]
            extra = f"   ({n} steps: {a / n:.2f} s and {b / n:.2f} s per step)"
        print(f"{stage:<20} {a:9.2f} {b:9.2f} {a / b:14.2f}{extra}", file=out)
    a, b = results["numpy"]["cpu"], results["torch"]["cpu"]
    print(f"{'CPU time (process)':<20} {a:9.1f} {b:9.1f} {a / b:14.2f}   (all threads; busy-"
          f"waiting BLAS/OpenMP threads count too)", file=out)
    ratio = results["numpy"]["total"] / results["torch"]["total"]
    limit_ratio, limit_seconds = bench.targets
    print(f"\nNumPy / torch, one image: {ratio:.2f}   {verdict(ratio, limit_ratio)}", file=out)
    print(f"NumPy, one image: {results['numpy']['total']:.1f} s   "
          f"{verdict(results['numpy']['total'], limit_seconds)}", file=out)
    for package in ("numpy", "torch"):
        peak, rss0 = results[package]["peak"], results[package]["rss_before"]
        if peak is None:
            print(f"peak memory ({package}): not measurable here (no /proc/self/clear_refs)",
                  file=out)
        else:
            print(f"peak memory ({package} run): {peak / 2**30:.2f} GiB resident (the process, "
                  f"one shared copy of the weights included), {(peak - rss0) / 2**30:.2f} GiB "
                  f"over its start", file=out)
    (codes_a, images_a), (codes_b, images_b) = outputs["numpy"], outputs["torch"]
    codes_equal = codes_a is not None and np.array_equal(codes_a, codes_b)
    max_rel = compare("", images_a, images_b).max_rel
    print(f"NumPy vs torch: codes {'identical' if codes_equal else 'DIFFERENT'}, images "
          f"{max_rel:.1e} relative", file=out)
    return {**results, "ratio": ratio, "codes_equal": codes_equal, "max_rel": max_rel}


def main(argv=None):
    parser = ArgumentParser(prog="python -m uvit_torch.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(N.CONFIGS),
                        help="named config (default amused-256)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help=f"threads for torch and NumPy's BLAS (default torch's own choice, "
                             f"{torch.get_num_threads()} here, for both)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="interleaved rounds (default 5; at least 3 with --train)")
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="batch size (default 1; 64 with --train)")
    parser.add_argument("--grid", type=positive_int, help="token grid side (default 16)")
    parser.add_argument("--text-len", type=positive_int, help="text tokens (default 77)")
    parser.add_argument("--no-diffusers", action="store_true", default=None,
                        help="leave diffusers out")
    parser.add_argument("--no-memory", action="store_true", default=None,
                        help="skip the memory measurement")
    parser.add_argument("--pause", type=non_negative_float, default=0.25,
                        help="seconds of idle before each timed forward (default 0.25)")
    parser.add_argument("--pipeline", metavar="NAME", default=None, choices=sorted(PIPELINES),
                        help=f"time one image with a whole pipeline, NumPy against torch, stage "
                             f"by stage ({', '.join(sorted(PIPELINES))})")
    parser.add_argument("--no-warmup", action="store_true",
                        help="--pipeline: no one-step warm-up run before each timed run")
    parser.add_argument("--train", action="store_true",
                        help="time one training step (forward, backward, AdamW) of the digit "
                             "U-ViT and the amused-digits UVit2DModel instead (batch 64)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="--pipeline imagenet256_uvit_huge: sampling steps (default the paper's)")
    args = parser.parse_args(argv)
    if args.pipeline:
        if PIPELINES[args.pipeline].run_from_args is not None:
            PIPELINES[args.pipeline].run_from_args(args)
        else:
            run_pipeline(args.pipeline, args.threads, warmup=not args.no_warmup)
        return 0
    threads = args.threads or torch.get_num_threads()
    if args.train:
        given = [f"--{k.replace('_', '-')}" for k in FORWARD_ONLY if getattr(args, k) is not None]
        if given:
            parser.error(f"{', '.join(given)}: for the forward benchmark, not --train (which "
                         f"times the digit models' training steps and takes --threads, "
                         f"--repeats, --batch, --pause)")
        run_train(threads, max(args.repeats, 3), args.batch or 64, args.pause)
        return 0
    opts = {k: v if (v := getattr(args, k)) is not None else d for k, d in FORWARD_ONLY.items()}
    cfg = N.resolve_config(opts["config"])
    if cfg["downsample"] and opts["grid"] % 2:
        parser.error(f"--grid: {opts['config']} downsamples the token grid by 2, so its side "
                     f"must be even, got {opts['grid']}")
    run(opts["config"], threads, args.repeats, args.batch or 1, opts["grid"], opts["text_len"],
        not opts["no_diffusers"], not opts["no_memory"], pause=args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
