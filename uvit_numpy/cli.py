"""What the command lines of both packages share: argument checks, thread counts, one-line errors.

Every `python -m` command of this project checks all of its arguments before it computes
anything, so that a typo costs a second, not a sampling run that fails at the end. The checks
below are argparse `type=` functions: each returns the parsed value or raises
`argparse.ArgumentTypeError`, which argparse prints as a one-line message and turns into exit
status 2, its convention for a usage error.

    parser.add_argument("--steps", type=positive_int)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", type=output_file, default="runs/digits.png")
    parser.add_argument("--out", type=output_folder)               # a run folder

`ArgumentParser` is argparse's with one change: a usage error is one line (`prog: error: ...`),
not the usage block and then the error; exit status 2 as ever.

    positive_int         1, 2, ... (counts: steps, repeats, batch sizes, threads)
    non_negative_int     0, 1, ... (seeds)
    positive_float       more than 0 (learning rates)
    non_negative_float   0.0 or more (guidance scales, temperatures, pauses)
    output_file          a file the command will write: not a folder, no parent is a file, and its
                         folder (or the nearest one that exists) can be written into
    output_file_with(*suffixes)   the same, and its name must end with one of `suffixes`
    output_folder        a folder the command will write into: not a file, and writable

`check_output_file(path)` and `check_output_folder(path)` are the same checks as plain functions
that raise `ValueError`, for code that is not argparse. Nothing is created: the one write they do
is a probe file in the folder, removed at once (the only test that is true for every user, root
included, on every file system: `/proc` and read-only mounts pass `os.access` for root).

Threads. `set_threads(n)` limits NumPy's BLAS (OpenBLAS, MKL, ...) to n threads at run time
through `threadpoolctl`, and `set_threads(n, torch=True)` also torch's intra-op pool
(`torch.set_num_threads`). It returns a handle: `handle.restore()` (or `with set_threads(n):`)
puts the previous counts back, so a command's `main(argv)` called from Python leaves the caller's
process as it found it. Small work is fastest on one thread: a thread pool only pays when each
operation is large enough, and on a machine whose cores are busy with other jobs torch's and
OpenBLAS's workers wait on each other (the measurements are below, by `THREADS_NOTE`).
`add_threads_argument(parser)` adds the `--threads N` option with that default.

Errors. A command raises `CommandError(message)` for a foreseeable failure (a broken file, a
model that does not load); `run_main(body, ...)` prints it as one line `error: ...` on standard
error and returns exit status 1, and turns Ctrl-C into `interrupted` (status 130), with no
traceback. A traceback then means a bug.
"""

import argparse
import os
import sys
import tempfile

# Why the commands default to one thread. Measured on the project's 2-core machine while other jobs
# kept it busy (load 3-5), medians of 3 runs, the thread count set as `set_threads` does:
#   sampling 40 digits, uvit-digits (DPM-Solver++ 20 steps, guided): NumPy 48 s on 1 thread,
#       87 s on 2; torch 36 s on 1, 72 s on 2
#   sampling 40 digits, amused-digits (12 steps, guided): NumPy 6.1 s on 1, 12.3 s on 2;
#       torch 3.2 s on 1, 35 s on 2
#   the parity report, the 28 rows of `--only "UVit2DModel tiny"`: 3.0-3.8 s on 1, 10.9-15.4 s
#       on 2 (issue 23: one row 4 ms on 1 thread, 381 ms with torch's default)
# On an idle machine a second thread gained 1.2x (NumPy) and 1.5x (torch) on comparable work (the
# README's benchmark of a batch-64 training step; not measured for sampling, as this machine is
# never idle): one thread risks little there and saves much on a busy machine.
# The benchmark (`uvit_torch.bench`) times large models on a machine left idle for it and keeps
# torch's own default there.
THREADS_NOTE = ("1 thread: on a busy 2-core machine sampling was 2x (NumPy) to 11x (torch) faster "
                "than on 2 threads, and the parity report 3-4x")


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------
def _number(text, kind, what):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text):
    """argparse type: an integer >= 1 (a count: steps, repeats, batch size, threads)."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {value}")
    return value


def non_negative_int(text):
    """argparse type: an integer >= 0 (a seed)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0 (a learning rate)."""
    value = _number(text, float, "a number > 0")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text):
    """argparse type: a finite number >= 0 (a guidance scale, a temperature, a pause)."""
    value = _number(text, float, "a number >= 0")
    if not 0.0 <= value < float("inf"):                 # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Paths the command will write
# --------------------------------------------------------------------------------------------------
def _nearest_existing(path):
    """The longest prefix of `path` that exists (where a makedirs would start), as written."""
    path = path or "."
    while not os.path.lexists(path):
        parent = os.path.dirname(path) or "."
        if parent == path:
            break
        path = parent
    return path


def _check_writable_folder(shown, folder):
    """ValueError unless `folder` (which exists) is a folder a file can be created in: a probe
    file is made there and removed at once."""
    if not os.path.isdir(folder):
        raise ValueError(f"{shown!r}: {folder!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as err:
        raise ValueError(f"{shown!r}: cannot create a file in {folder!r} "
                         f"({err.strerror or err})") from None
    os.close(fd)
    os.remove(probe)


def check_output_file(path):
    """ValueError (one line) unless `path` names a file this process can write: not a folder,
    no parent a file, its folder (or the nearest existing parent) writable. Returns `path`."""
    path = os.fspath(path)
    if not path:
        raise ValueError("expected a file name, got an empty string")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder; expected a file name (such as "
                         f"{os.path.join(path, 'digits.png')!r})")
    _check_writable_folder(path, _nearest_existing(os.path.dirname(path)))
    if os.path.isfile(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{path!r} exists and is read-only")
    return path


def check_output_folder(path):
    """ValueError (one line) unless `path` is (or can become) a folder this process can write
    into: not a file, no parent a file, writable. Returns `path`."""
    path = os.fspath(path)
    if not path:
        raise ValueError("expected a folder, got an empty string")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file, not a folder")
    _check_writable_folder(path, _nearest_existing(path))
    return path


def _as_type(check):
    def argparse_type(text):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    argparse_type.__name__ = check.__name__.replace("check_", "")
    argparse_type.__doc__ = f"argparse type: {check.__name__}, as a usage error."
    return argparse_type


output_file = _as_type(check_output_file)
output_folder = _as_type(check_output_folder)


def output_file_with(*suffixes):
    """argparse type: an `output_file` whose name ends with one of `suffixes` (".png", ...)."""
    def argparse_type(text):
        path = output_file(text)
        if not path.lower().endswith(tuple(s.lower() for s in suffixes)):
            raise argparse.ArgumentTypeError(
                f"expected a file name ending in {', '.join(suffixes)}, got {text!r}")
        return path
    argparse_type.__name__ = "output_file"
    return argparse_type


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------
class ThreadLimits:
    """The thread counts `set_threads` set, holding the previous ones: `restore()` (or the end of
    a `with` block) puts them back."""

    def __init__(self, blas_limits, previous_torch):
        self._blas, self._previous_torch = blas_limits, previous_torch

    def restore(self):
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None
        if self._previous_torch is not None:
            import torch
            torch.set_num_threads(self._previous_torch)
            self._previous_torch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def set_threads(n, torch=False):
    """Use `n` threads in NumPy's BLAS (through threadpoolctl) and, if `torch`, in torch's
    intra-op pool. Returns a `ThreadLimits` (`.restore()`, or use it in a `with`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: expected a positive integer, got {n!r}")
    from threadpoolctl import threadpool_limits
    blas = threadpool_limits(limits=n, user_api="blas")
    previous_torch = None
    if torch:
        import torch as _torch
        previous_torch = _torch.get_num_threads()
        _torch.set_num_threads(n)
    return ThreadLimits(blas, previous_torch)


def blas_threads():
    """The thread count of NumPy's BLAS now (the BLAS library in NumPy's folder, else the first
    one threadpoolctl finds), or None if it finds none."""
    from threadpoolctl import threadpool_info
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    blas.sort(key=lambda lib: "numpy" not in lib.get("filepath", ""))   # NumPy's first
    return blas[0]["num_threads"] if blas else None


def add_threads_argument(parser, default=1, torch=True):
    """The `--threads N` option of a command: N >= 1, the default and why in its help."""
    which = "torch and NumPy's BLAS" if torch else "NumPy's BLAS"
    parser.add_argument("--threads", type=positive_int, default=default, metavar="N",
                        help=f"threads for {which} (default {default}: this work is small, and "
                             f"more threads are slower on a busy machine)")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line (`prog: error: ... (see --help)`, exit
    status 2) instead of the usage block followed by the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class CommandError(Exception):
    """A foreseeable failure of a command, printed as one line `error: <message>` (status 1)."""


def run_main(body, *args, **kwargs):
    """Call `body(*args, **kwargs)`; return its exit status, or print a `CommandError` as one
    line (status 1) or a Ctrl-C as `interrupted` (status 130), without a traceback."""
    try:
        return body(*args, **kwargs)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def progress_bar(total, desc, enabled=True, unit="step"):
    """A tqdm bar on standard error (never in the standard output a user or a test reads), or a
    stand-in that does nothing when `enabled` is False."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=False)
