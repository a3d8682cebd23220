"""The parity report: every op and model, computed by `uvit_numpy` and by `uvit_torch`, compared.

    python -m uvit_torch.parity                 # every case, float64 and float32, batch 1 and 3
    python -m uvit_torch.parity --only conv     # cases whose name contains "conv"
    python -m uvit_torch.parity --dtype float64
    python -m uvit_torch.parity --against-diffusers            # torch port vs diffusers (float32)
                                                               # and CLIP vs transformers
    python -m uvit_torch.parity --config amused-256 --only Conv  # blocks at aMUSEd's sizes

Prints a table (name, input and output shapes, max abs and rel error, pass/fail, time in each) and
exits 1 if any case fails its tolerance (`harness.TOLERANCE`: 1e-10 in float64, 1e-5 in float32).
A progress bar (one tick per case, dtype and batch) goes to standard error (`--no-progress`: none).
`--threads N` (default 1) sets torch's threads and NumPy's BLAS's: the cases are small, and one
thread is the fastest for them (a row of the report took 4 ms on one thread against 381 ms with
torch's default two threads on a busy 2-core machine; see `uvit_numpy.cli`).
A case is a `Case(name, build)`; `build(dtype, batch)` returns `(ours, theirs, inputs)`: two
callables and the NumPy inputs that both receive (torch gets them as tensors). The test suite
runs the very same cases.
"""

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from uvit_numpy.cli import ArgumentParser, add_threads_argument, progress_bar, set_threads
from uvit_numpy.module import Module

from .case import Case  # noqa: F401 (the type of every case, re-exported)
from .harness import TOLERANCE, compare, to_torch


@dataclass
class Row:
    name: str
    dtype: str
    batch: int
    in_shapes: str
    out_shape: tuple
    max_abs: float
    max_rel: float
    passed: bool
    t_ours: float
    t_theirs: float
    detail: str = field(default="")


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run_case(case, dtype, batch):
    """Build the case, run both sides on the same inputs, compare. Returns a `Row`."""
    dtype = np.dtype(dtype)
    ours, theirs, inputs = case.build(dtype, batch)
    if isinstance(ours, Module) and not case.module:     # its backward would go unchecked
        raise TypeError(f"parity case {case.name!r}: module=False, but its NumPy side is a "
                        f"Module ({type(ours).__name__})")
    ours_out, t_ours = _timed(ours, *inputs)
    with torch.no_grad():
        theirs_out, t_theirs = _timed(theirs, *[to_torch(x) for x in inputs])
    result = compare(case.name, ours_out, theirs_out)
    tol = TOLERANCE[dtype]
    shapes = " ".join("x".join(map(str, x.shape)) for x in inputs if isinstance(x, np.ndarray))
    return Row(case.name, dtype.name, batch, shapes, result.shape, result.max_abs,
               result.max_rel, result.passed(tol), t_ours, t_theirs, result.report())


def all_cases(against_diffusers=False, config=None):
    """Every registered case: the core ops first, then the models.

    against_diffusers: instead, the cases of the modules that define `diffusers_cases()` (our torch
    port vs diffusers' own classes). config: a named model config, passed to the modules whose
    `cases` / `diffusers_cases` take one (the core ops and the other models are left out).
    """
    import inspect

    from . import core
    cases = [] if against_diffusers or config else list(core.cases())
    for module_name in PARITY_MODULES:
        module = __import__(f"{__name__}.{module_name}", fromlist=["cases"])
        make = getattr(module, "diffusers_cases", None) if against_diffusers else module.cases
        if make is None:
            continue
        if config is None:
            cases.extend(make())
        elif "config" in inspect.signature(make).parameters:
            cases.extend(make(config=config))
    return cases


# Modules that add cases (each defines `cases()`); the models register here.
PARITY_MODULES = ["uvit", "uvit2d", "schedulers", "clip", "vae", "amused"]


def format_table(rows, labels=("numpy ms", "torch ms"), timings=True):
    """The forward report, within 100 columns: case, dtype, batch, output shape, errors, verdict,
    time on each side in milliseconds (the inputs' shapes are in each case's failure detail).
    `timings=False` leaves the two time columns out: a printout that is the same on every run (the
    book's chapters are committed with their outputs)."""
    names = [r.name.removesuffix(" vs diffusers").removesuffix(" vs transformers")
             for r in rows]                                # the labels say who is who
    w = min(42, max([20] + [len(n) for n in names]))
    head = (f"{'case':<{w}} {'dt':<3} {'B':>1} {'output':<11} {'max abs':>8} {'max rel':>8} "
            f"{'ok':<4}" + (f" {labels[0]:>8} {labels[1]:>8}" if timings else "")).rstrip()
    lines = [head, "-" * len(head)]
    for name, r in zip(names, rows):
        out = "x".join(map(str, r.out_shape))
        lines.append(
            f"{name[:w]:<{w}} {_short(r.dtype):<3} {r.batch:>1} {out[:11]:<11} {r.max_abs:>8.1e} "
            f"{r.max_rel:>8.1e} {'PASS' if r.passed else 'FAIL':<4}"
            + (f" {1e3 * r.t_ours:>8.2f} {1e3 * r.t_theirs:>8.2f}" if timings else ""))
    return "\n".join(lines)


def _short(dtype):
    """float64 -> f64, float32 -> f32: the report's dtype column."""
    return dtype.replace("float", "f")


def quiet_diffusers():
    """Silence diffusers' warnings (once), such as the one repeated for every model built in
    float64 ("There are modules in UVit2DModel that should be kept in float32..."): noise to a
    reader of the report, which explains its float32 islands itself."""
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        return
    diffusers_logging.set_verbosity_error()


def main(argv=None):
    from uvit_numpy.uvit2d import CONFIGS
    parser = ArgumentParser(prog="python -m uvit_torch.parity", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run cases whose name contains this text")
    parser.add_argument("--dtype", choices=["float64", "float32"], action="append",
                        help="restrict to one dtype (repeatable)")
    parser.add_argument("--all", action="store_true", help="include slow cases")
    parser.add_argument("--against-diffusers", action="store_true",
                        help="compare the torch port with diffusers' own classes (float32; needs "
                             "diffusers), and CLIP's text encoder with transformers' (if "
                             "installed), instead of with the NumPy reference")
    parser.add_argument("--config", metavar="NAME", default=None, choices=sorted(CONFIGS),
                        help=f"run the UVit2DModel cases at a named config "
                             f"({', '.join(sorted(CONFIGS))})")
    parser.add_argument("--grads", action="store_true",
                        help="compare the NumPy backward passes with torch autograd instead "
                             "(float64 <= 1e-10, float32 <= 1e-4)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    with set_threads(args.threads, torch=True):
        return report(args)


def report(args):
    """Run the cases the parsed arguments select, print the table; the exit status."""
    if args.against_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("error: --against-diffusers needs diffusers: pip install -e '.[dev]'",
                  file=sys.stderr)
            return 1
        quiet_diffusers()
    torch.manual_seed(0)
    if args.grads:
        from .grads import format_grad_table, run_grads
        rows = run_grads(args.only, args.dtype, progress=not args.no_progress)
        table = format_grad_table(rows)
    else:
        flags = args.against_diffusers or args.config is not None
        cases = all_cases(args.against_diffusers, args.config) if flags else all_cases()
        jobs = [(case, dtype, batch) for case in cases
                if args.only in case.name and (args.all or not case.slow)
                for dtype in case.dtypes if not args.dtype or dtype in args.dtype
                for batch in case.batches]
        rows = []
        with progress_bar(len(jobs), "parity", enabled=not args.no_progress and bool(jobs),
                          unit="case") as bar:
            for case, dtype, batch in jobs:
                bar.set_postfix_str(case.name[:40], refresh=False)
                rows.append(run_case(case, dtype, batch))
                bar.update(1)
        table = format_table(rows, ("torch ms", "diffs ms") if args.against_diffusers else
                             ("numpy ms", "torch ms"))
    if not rows:
        what = f" whose name contains {args.only!r}" if args.only else ""
        print(f"no case{what} to run; `--only` matches part of a case name (case-sensitive), "
              f"e.g. --only Linear", file=sys.stderr)
        return 1
    print(table)
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    for r in failed:
        print("FAIL", r.dtype, f"B={r.batch}", r.detail)
    return 1 if failed else 0
