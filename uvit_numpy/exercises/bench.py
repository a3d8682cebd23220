"""`python -m uvit_numpy.exercises.bench`: what the sandbox costs a grading run.

Grades a class of FILES one-exercise `.py` files (an honest `rms_norm`) and FILES copies of the
solution notebook 02 (five exercises each), each with `--sandbox off` and `--sandbox require`,
as a teacher runs it (`python -m uvit_numpy.exercises grade FOLDER`, a fresh process each time,
one thread for the math libraries), and prints the fastest of RUNS runs and the ratio (the
project's target: sandbox / no sandbox <= 1.5). Run it on an idle machine: the sandbox starts
its own Python beside the grader's, on another core.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .notebooks import default_source_dir
from .sandbox import find_bwrap

TARGET = 1.5
NOTEBOOK = "02_norms_and_activations.ipynb"
HONEST_RMS = '''import numpy as np


def rms_norm(x, weight, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight
'''


def make_class(folder, files, notebook):
    """FILES `.py` files in folder/py and FILES copies of `notebook` in folder/nb; the kinds
    made ({"py": folder/py, "nb": folder/nb}, without "nb" when there is no notebook)."""
    kinds = {"py": folder / "py"}
    kinds["py"].mkdir()
    for i in range(files):
        (kinds["py"] / f"student{i:02d}.py").write_text(HONEST_RMS)
    if notebook.is_file():
        kinds["nb"] = folder / "nb"
        kinds["nb"].mkdir()
        for i in range(files):
            shutil.copy(notebook, kinds["nb"] / f"student{i:02d}.ipynb")
    return kinds


def time_grade(folder, sandbox):
    """Seconds of wall clock for one `grade` of `folder`; RuntimeError if it did not pass."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "uvit_numpy.exercises", "grade", "-q",
                           "--sandbox", sandbox, str(folder)],
                          capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"grade --sandbox {sandbox} {folder} exited with status "
                           f"{done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}")
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m uvit_numpy.exercises.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30, help="files in the class (default 30)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each, the fastest counts")
    args = parser.parse_args(argv)
    if args.files < 1 or args.runs < 1:
        parser.error(f"--files and --runs must be at least 1, not {args.files} and {args.runs}")
    if find_bwrap() is None:
        print("bench: bwrap not found (apt-get install bubblewrap): nothing to compare",
              file=sys.stderr)
        return 2
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {find_bwrap()}")
    with tempfile.TemporaryDirectory(prefix="uvit_grade_bench_") as tmp:
        kinds = make_class(Path(tmp), args.files, default_source_dir() / NOTEBOOK)
        worst = 0.0
        for kind, folder in kinds.items():
            best = {}
            for _ in range(args.runs):                    # interleaved: drift hits both alike
                for mode in ("off", "require"):
                    try:
                        seconds = time_grade(folder, mode)
                    except RuntimeError as exc:            # no sandbox here, say
                        print(f"bench: {exc}", file=sys.stderr)
                        return 2
                    best[mode] = min(best.get(mode, seconds), seconds)
            ratio = best["require"] / best["off"]
            worst = max(worst, ratio)
            what = (f"{args.files} one-exercise .py files" if kind == "py"
                    else f"{args.files} copies of {NOTEBOOK}")
            print(f"{what}: without the sandbox {best['off']:.2f} s, with it "
                  f"{best['require']:.2f} s: {ratio:.2f}x "
                  f"({'met' if ratio <= TARGET else 'NOT met'}: target <= {TARGET})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
