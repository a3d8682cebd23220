"""What runs in a grading child process, and the messages it sends the grader.

The grader (`grading.py`) starts a child per file (forked, from a fork server, or inside the
sandbox's zygote, `sandbox.py`); the child runs `child_main`: it limits itself, loads the file's
code cells, calls the student's functions on the cases it is sent and sends back their outputs as
plain arrays and values. The messages are pickles of builtins only (`_encode`): the grader reads them with
`_SafeUnpickler`, which loads no class or function, and `_decode`. Both sides import this module;
it imports neither of them.
"""

import faulthandler
import io
import os
import pickle
import signal
import sys

import numpy as np

from .catalogue import EXERCISES

OUTPUT_LIMIT = 1 << 16          # bytes of the child's output kept
# What a child starts with, imported once by the process it is forked from (the sandbox's zygote,
# the fork server) rather than in every child: NumPy, SciPy's erf (the exercises allow it), and
# the modules `child_main` runs the file with.
PRELOAD = ("numpy", "scipy.special", "uvit_numpy.exercises.checker",
           "uvit_numpy.exercises.notebooks")


# --------------------------------------------------------------------------------------------------
# The child
# --------------------------------------------------------------------------------------------------
def child_main(conn, workdir, output, memory, processes=None):
    """Run in the child: run the file's code cells the parent sends, then call its functions on
    the cases the parent sends. output: a file name or descriptor; processes: RLIMIT_NPROC."""
    faulthandler.disable()               # a crash is reported by its signal, not a dump
    _limit(memory, processes)
    _redirect(output)
    os.chdir(workdir)
    from .checker import run_student
    from .notebooks import defined_functions, load_namespace

    def send(*msg):
        conn.send_bytes(pickle.dumps(_encode(msg), protocol=4))

    _, path, cells, skip = conn.recv()                   # ("load", ...) from the grader: trusted
    namespace, errors, filenames = load_namespace(path, set(skip), cells=cells,
                                                  on_cell=lambda label: send("cell", label))
    found = defined_functions(namespace, filenames, EXERCISES)
    send("loaded", sorted(found), errors)
    while True:
        request = conn.recv()                            # from the grader: trusted
        if request[0] != "check":
            break
        _, name, cases, counts, sizes, strings = request
        outcomes = run_student(found[name], cases, counts, on_case=lambda i: send("case", i),
                               max_sizes=[max(16 * s, 4096) for s in sizes], strings=strings)
        send("result", [_plain_outcome(o) for o in outcomes])
    sys.stdout.flush()
    os._exit(0)                                          # skip the student's atexit handlers


def _limit(memory, processes=None):
    """The address-space limit (Linux), output files capped so a loop cannot fill the disk, and
    (in the sandbox, where the count is the sandbox's own) the number of processes and threads.
    The kernel does not count the processes of root: that limit holds for any other user."""
    try:
        import resource
    except ImportError:                                  # Windows: the timeout still holds
        return
    if memory is not None and sys.platform.startswith("linux"):
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        # headroom for the math libraries' threads (a stack and a malloc arena each, reserved
        # address space), which start again in a forked child
        spare = 72 * (os.cpu_count() or 1)
        cap = used + (int(memory) + spare) * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a write past the cap fails instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT * 16, OUTPUT_LIMIT * 16))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def _redirect(output):
    """stdin from /dev/null; stdout and stderr (Python's and the file descriptors) to `output`,
    a file name or an open descriptor."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    fd = output if isinstance(output, int) else os.open(output, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 -- the child's stdin until it exits
    sys.stdout = sys.stderr = _CappedWriter(os.fdopen(1, "w", closefd=False))


class _CappedWriter(io.TextIOBase):
    """Writes the first OUTPUT_LIMIT characters through and drops the rest."""

    def __init__(self, stream):
        self.stream, self.left = stream, OUTPUT_LIMIT

    def writable(self):
        return True

    def write(self, text):
        if self.left > 0:
            part = text[:self.left]
            self.left -= len(part)
            try:
                self.stream.write(part)
                self.stream.flush()
            except OSError:
                self.left = 0
        return len(text)


def _plain_outcome(outcome):
    """The outcome with the student's objects turned into arrays and plain values."""
    if outcome["kind"] != "returned":
        return {k: str(v)[:2000] for k, v in outcome.items()}
    return {"kind": "returned", "outputs": [np.array(a, subok=False) for a in outcome["outputs"]],
            "args": [_plain(a) for a in outcome["args"]],
            "kwargs": {str(k): _plain(v) for k, v in outcome["kwargs"].items()}}


def _plain(value, depth=0):
    """Arrays, numbers, strings and containers of them; anything else becomes a string. A dict
    keeps the keys that stay hashable ((left, right) pairs of strings, say) and names the rest."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufcU":
            return np.array(value, subok=False)
        return f"<array of dtype {value.dtype}>"
    if type(value) in (bool, int, float, complex, type(None)):     # exactly these, no subclass
        return value
    if type(value) is str:
        return value[:2000]
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return value.item()
    if depth < 4 and isinstance(value, dict):
        return {_plain_key(k, depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, (list, tuple)):
        return type(value)(_plain(v, depth + 1) for v in value) if type(value) in (list, tuple) \
            else [_plain(v, depth + 1) for v in value]
    return f"<{type(value).__name__}>"


def _plain_key(key, depth):
    plain = _plain(key, depth)
    try:
        hash(plain)
    except TypeError:                                    # a list or an array: not a key
        return str(key)
    return plain


# --------------------------------------------------------------------------------------------------
# Messages from the child: builtins and arrays only
# --------------------------------------------------------------------------------------------------
_ARRAY = "__ndarray__"


def _encode(value):
    """Arrays as {_ARRAY: (dtype string, shape, bytes)}, so the pickle names no class at all."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        return {_ARRAY: (value.dtype.str, value.shape, value.tobytes())}   # C order, any ndim
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            dtype, shape, data = value[_ARRAY]
            dt = np.dtype(dtype)
            if dt.kind not in "biufcU" or dt.fields is not None or dt.itemsize == 0:
                raise ValueError(f"dtype {dtype!r}")               # U: fixed-width text, no objects
            return np.frombuffer(data, dtype=dt).reshape(shape).copy()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles builtins (numbers, strings, bytes, lists, tuples, dicts) and nothing else: a
    message can name no class or function, so reading it runs none of the child's code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the grader does not load {module}.{name}")
