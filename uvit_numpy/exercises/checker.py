"""The checker: run a student's function against the reference and explain what is wrong.

`check("rms_norm", my_rms_norm)` calls both functions on every case of the exercise (fresh copies of
the inputs for each), compares the outputs relative to the size of the expected output, and
returns a `CheckResult`, truthy only when every case passed. For a failing case it looks for the
cause in this order:

1. the exercise's known mistakes: each is the reference with one typical error made on purpose,
   evaluated on the same inputs; if the student's output matches one (and the reference does not),
   its hint is reported;
2. generic causes: a wrong output shape, axes in the wrong order (some transpose of the student's
   output equals the expected one), float32 output from float64 input, NaN or inf where the
   answer is finite, a constant factor; for a list of strings, symbols that no longer spell the
   word.

A function that raises `NotImplementedError` on the first case is "not attempted"; any other
exception is reported with its message and the line that raised it, never crashing the checker.
An output that is not an array (None, a string, a tuple of the wrong length) is a "bad output".
An exercise whose answer is a list of strings (`Exercise.strings`: BPE's symbols) is compared
exactly, the list as a whole: it is right or it is not.

The work is split in two so that the grader can keep the verdict out of the student's process:
`run_student` calls the student's function and records what came back (plain data), `judge`
compares that with the reference's outputs and diagnoses. `check` and `run_checks` do both here,
in the caller's process (a notebook's self-check); `grading.grade_file` runs `run_student` in a
child process and `judge` in its own.
"""

import inspect
import itertools
import os
import sysconfig
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

from .catalogue import get_exercise

TOLERANCE = 1e-10        # float64 cases: max abs error / max |expected|, as the parity tests
MATCH_TOLERANCE = 1e-8   # how close to a mistaken variant counts as "made that mistake"
_LIBRARY_PREFIXES = tuple(
    os.path.join(p, "") for p in                                  # folders, with a trailing /
    {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}   # uvit_numpy itself
    | {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    """The outcome of one case: "passed", "failed", "error", "bad output" or "not attempted"."""

    label: str
    status: str
    message: str = ""
    diagnoses: list = field(default_factory=list)   # [(key, hint)], most likely first

    @property
    def passed(self):
        return self.status == "passed"


@dataclass
class CheckResult:
    """What `check` found: truthy only when every case passed.

    status: "passed", "failed", "bad output" (some case returned something that is not an
    array) or "not attempted"; the grader adds the statuses of a process that failed ("timed
    out", "exited", "crashed") and of code it did not run ("uses the reference", "syntax error"),
    explained in `note`. `cases` holds one `CaseResult` per case run; `diagnoses` the keys of the
    mistakes recognised (e.g. {"eps_outside_sqrt"}); `hints` their texts, each once.
    """

    name: str
    status: str
    cases: list
    note: str = ""

    def __bool__(self):
        return self.status == "passed"

    @property
    def passed(self):
        return sum(c.passed for c in self.cases)

    @property
    def total(self):
        return len(self.cases)

    @property
    def diagnoses(self):
        return {key for c in self.cases for key, _ in c.diagnoses}

    @property
    def hints(self):
        return [hint for _, hint in _unique_diagnoses(self.cases)]

    def summary(self):
        """One line: the name, the status and the count of cases passed."""
        if self.status == "not attempted":
            return f"{self.name}: not attempted (the function raises NotImplementedError)"
        if self.status == "passed":
            return f"{self.name}: passed all {self.total} cases"
        if self.status in ("failed", "bad output"):
            return f"{self.name}: {self.status}, {self.passed} of {self.total} cases passed"
        return f"{self.name}: {self.status}" + (f": {self.note}" if self.note else "")

    def report(self):
        """The summary and, when something failed, every case with what went wrong and hints."""
        lines = [self.summary()]
        if self.status in ("passed", "not attempted") or not self.cases:
            return lines[0]
        for c in self.cases:
            mark = "ok  " if c.passed else "fail"
            lines.append(f"  {mark}  {c.label}")
            if not c.passed:
                lines.extend(_indent(c.message, 8))
        if self.hints:
            lines.append("  hints:")
            for key, hint in _unique_diagnoses(self.cases):
                lines.extend(_indent(f"- [{key}] {hint}", 4))
        return "\n".join(lines)

    def __repr__(self):
        return f"<CheckResult {self.summary()}>"


def _unique_diagnoses(cases):
    seen = {}
    for c in cases:
        for key, hint in c.diagnoses:
            seen.setdefault(key, hint)
    return list(seen.items())


def _indent(text, n):
    return [" " * n + line for line in text.splitlines()]


# --------------------------------------------------------------------------------------------------
# Comparing outputs
# --------------------------------------------------------------------------------------------------
class BadOutput(Exception):
    """The student's function returned something that is not an array (or tuple of arrays)."""


def as_outputs(out, expected_count, strings=False):
    """The outputs as a list of float or integer arrays; BadOutput says what was wrong.

    strings: the answer is one list (or tuple) of strings, returned as [a 1-D array of str].
    """
    if out is None:
        raise BadOutput("returned None: is a `return` statement missing?")
    if strings:
        return [_as_strings(out)]
    items = list(out) if isinstance(out, tuple) else [out]
    if len(items) != expected_count:
        raise BadOutput(f"expected {_count(expected_count)}, got "
                        f"{_count(len(items)) if isinstance(out, tuple) else 'a single value'}")
    arrays = []
    for item in items:
        try:
            a = np.asarray(item)
        except Exception as exc:  # noqa: BLE001 -- any failure to convert is the student's
            raise BadOutput(f"returned a {type(item).__name__}, which is not an array ({exc})")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise BadOutput(f"returned a {type(item).__name__} of dtype {a.dtype}, "
                            "expected a numeric array")
        arrays.append(a)
    return arrays


def _count(n):
    return "a single array" if n == 1 else f"a tuple of {n} arrays"


def _as_strings(out):
    """A list or tuple of str as a 1-D array of str; BadOutput for anything else."""
    if isinstance(out, str):
        raise BadOutput(f"returned one string ({out[:40]!r}), expected a list of strings, one "
                        "per symbol")
    if not isinstance(out, (list, tuple)):
        raise BadOutput(f"returned a {type(out).__name__}, expected a list of strings")
    for item in out:
        if not isinstance(item, str):
            raise BadOutput(f"returned a list holding a {type(item).__name__} "
                            f"({repr(item)[:40]}), expected strings only")
    return np.array([str(item) for item in out], dtype=str)          # (n,), dtype <U...


@dataclass
class Diff:
    """How far `ours` is from `ref`: `rel` is inf when shapes or NaN/inf patterns differ."""

    same_shape: bool
    rel: float
    detail: str


def compare(ours, ref, exact=False):
    """Compare two lists of arrays; the worst output decides."""
    worst = Diff(True, 0.0, "")
    for i, (a, b) in enumerate(zip(ours, ref)):
        d = _compare_one(a, b, exact)
        if len(ref) > 1 and d.detail:
            d.detail = f"output {i}: {d.detail}"
        if not d.same_shape or d.rel > worst.rel:
            worst = d
        if not d.same_shape:
            break
    return worst


def _compare_one(a, b, exact):
    if a.dtype.kind == "U" or b.dtype.kind == "U":
        return _compare_strings(a, b)
    if a.shape != b.shape:
        return Diff(False, np.inf, f"wrong output shape: expected {b.shape}, got {a.shape}")
    if a.size == 0:
        return Diff(True, 0.0, "")
    af, bf = a.astype(np.float64), b.astype(np.float64)
    fin_a, fin_b = np.isfinite(af), np.isfinite(bf)
    bad = (fin_a != fin_b) | (~fin_a & ~fin_b & (af != bf) & ~(np.isnan(af) & np.isnan(bf)))
    if bad.any():
        idx = _index(np.argwhere(bad)[0])
        return Diff(True, np.inf,
                    f"{int(bad.sum())} entries are NaN or inf where the expected output is "
                    f"{'finite' if fin_b[idx] else 'not'}; first at index {idx}: yours "
                    f"{float(af[idx]):.8g}, expected {float(bf[idx]):.8g}")
    both = fin_a & fin_b
    err = np.where(both, np.abs(af - bf), 0.0)
    scale = float(np.max(np.abs(np.where(both, bf, 0.0)), initial=0.0))
    max_err = float(err.max())
    if exact:
        wrong = int(np.count_nonzero(err))
        if not wrong:
            return Diff(True, 0.0, "")
        idx = _index(np.argwhere(err > 0)[0])
        return Diff(True, np.inf, f"{wrong} of {a.size} entries differ; first at index {idx}: "
                                  f"yours {a[idx]}, expected {b[idx]}")
    rel = max_err / scale if scale > 0 else (np.inf if max_err > 0 else 0.0)
    idx = _index(np.unravel_index(int(np.argmax(err)), err.shape))
    return Diff(True, rel, f"max abs error {max_err:.3g} at index {idx}: yours {af[idx]:.10g}, "
                           f"expected {bf[idx]:.10g} (relative error {rel:.3g}, "
                           f"tolerance {TOLERANCE:g})")


def _compare_strings(a, b):
    """Two lists of strings (1-D arrays of str): equal, or wrong as a whole (rel = inf). The
    shape counts as the same either way, so that a list of another length can still match a
    known mistake."""
    if b.dtype.kind != "U":
        return Diff(True, np.inf, f"returned strings ({a.dtype}) where numbers are expected")
    if a.dtype.kind != "U":
        return Diff(True, np.inf, f"returned an array of {a.dtype}, expected a list of strings")
    ours, ref = a.tolist(), b.tolist()
    if ours == ref:
        return Diff(True, 0.0, "")
    first = next((i for i, (x, y) in enumerate(zip(ours, ref)) if x != y),
                 min(len(ours), len(ref)))
    return Diff(True, np.inf, f"yours {_shown(ours)}, expected {_shown(ref)} (they differ "
                              f"from position {first} on)")


def _shown(items, limit=200):
    text = repr(items)
    return text if len(text) <= limit else text[:limit - 5] + " ...]"


def _index(idx):
    return tuple(int(i) for i in idx)


# --------------------------------------------------------------------------------------------------
# Running a function on a case
# --------------------------------------------------------------------------------------------------
def call_quietly(fn, case):
    """fn(*case.args, **case.kwargs) on fresh copies, with NumPy's overflow warnings silenced."""
    args = [_copy(a) for a in case.args]
    kwargs = {k: _copy(v) for k, v in case.kwargs.items()}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs), args, kwargs


def _copy(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def _same(a, b):
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b,
                                                                                  equal_nan=True)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return True


def _where_raised(exc):
    """' (line N of FILE: CODE)' for the last frame in the student's code, or ''.

    Frames in this package, in NumPy or SciPy and in the standard library are skipped, so the
    line shown is the student's own line that made the failing call.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(_LIBRARY_PREFIXES)]
    if not own:
        return ""
    f = own[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" (line {f.lineno} of {f.filename}:{code})"


def _argument_names(exercise, case):
    sig = inspect.signature(exercise.reference)
    bound = sig.bind(*case.args, **case.kwargs)
    return list(bound.arguments)


# --------------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------------
def diagnose(exercise, case, ours, ref, diff):
    """[(key, hint)] for a wrong output: a known mistake it matches, else generic causes."""
    best = None
    for mistake in exercise.mistakes:
        try:
            out, _, _ = call_quietly(mistake.fn, case)
            variant = as_outputs(out, len(ref), exercise.strings)
        except Exception:  # noqa: BLE001, S112 -- a variant that fails here says nothing
            continue
        if compare(variant, ref, exercise.exact).rel <= TOLERANCE:
            continue                                   # the mistake does not show on this case
        d = compare(ours, variant, exercise.exact)
        if not d.same_shape:
            continue
        close = d.rel <= (0.0 if exercise.exact else MATCH_TOLERANCE)
        much_closer = not exercise.exact and np.isfinite(diff.rel) and d.rel <= 1e-3 * diff.rel
        if (close or much_closer) and (best is None or d.rel < best[0]):
            best = (d.rel, mistake)
    if best is not None:
        return [(best[1].key, best[1].hint)]
    return _generic_diagnosis(ours, ref, exercise.exact)


def _generic_diagnosis(ours, ref, exact):
    found = []
    for a, b in zip(ours, ref):
        if a.dtype.kind == "U" or b.dtype.kind == "U":
            found += _string_diagnosis(a, b)
            continue
        perm = _matching_transpose(a, b, exact)
        if perm is not None:
            found.append(("transposed_axes",
                          (f"the numbers are right but the axes are in the wrong order: "
                           f"np.transpose(yours, {perm}) equals the expected output. "
                           f"Check the order of your transposes and of the output layout.")))
            continue
        if a.shape != b.shape:
            if a.size == b.size and _close(a.reshape(b.shape), b, exact):
                found.append(("wrong_shape", (f"the numbers are right but the shape is not: "
                                              f"expected {b.shape}, got {a.shape}.")))
            else:
                found.append(("wrong_shape", (f"the output shape is wrong: expected {b.shape}, "
                                              f"got {a.shape}. Work out the shape of every "
                                              f"intermediate with the docstring.")))
            continue
        if not exact and a.dtype == np.float32 and b.dtype == np.float64:
            found.append(("float32_precision",
                          ("your output is float32 but the inputs are float64, so it carries only "
                           "about 7 digits: keep the computation in the inputs' dtype (no "
                           "np.float32 arrays or astype(np.float32) along the way).")))
            continue
        if not exact and np.isfinite(b).all() and not np.isfinite(a).all():
            found.append(("non_finite", ("NaN or inf appear where the answer is finite: an "
                                         "overflow (exp of a large number?) or a division by "
                                         "zero.")))
            continue
        k = _constant_factor(a, b) if not exact else None
        if k is not None:
            found.append(("constant_factor", (f"your output is {k:.6g} times the expected one: "
                                              f"a constant factor (a scale, a 0.5, a sqrt) is "
                                              f"missing or extra.")))
    return found[:1]


def _string_diagnosis(a, b):
    """BPE only joins neighbours: the symbols, joined, always spell the word and its `</w>`."""
    if a.dtype.kind == "U" and b.dtype.kind == "U" and "".join(a.tolist()) != "".join(b.tolist()):
        return [("symbols_do_not_spell_the_word",
                 (f"your symbols, joined, spell {''.join(a.tolist())!r}, not "
                  f"{''.join(b.tolist())!r}: a merge joins two neighbouring symbols into one and "
                  f"never drops, repeats or reorders a character."))]
    return []


def _close(a, b, exact):
    d = _compare_one(a, b, exact)
    return d.same_shape and d.rel <= (0.0 if exact else TOLERANCE)


def _matching_transpose(a, b, exact):
    """A permutation `perm` with np.transpose(a, perm) equal to b (not the identity), or None."""
    if a.ndim != b.ndim or a.size != b.size or a.ndim > 6 or a.ndim < 2:
        return None
    for perm in itertools.permutations(range(a.ndim)):
        if perm == tuple(range(a.ndim)):
            continue
        if tuple(a.shape[p] for p in perm) != b.shape:
            continue
        if _close(np.transpose(a, perm), b, exact):
            return perm
    return None


def _constant_factor(a, b):
    """k if a == k b for one constant k != 1 (within rounding), else None."""
    big = np.abs(b) > 1e-3 * np.max(np.abs(b), initial=0.0)
    if not big.any() or not np.isfinite(a).all():
        return None
    k = float(np.median(a[big] / b[big]))
    if not np.isfinite(k) or abs(k - 1.0) < 1e-6 or k == 0.0:
        return None
    return k if _close(a, k * b, False) else None


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------
def expected_outputs(exercise, cases):
    """The reference's outputs on every case, each a list of arrays."""
    refs = []
    for case in cases:
        out, _, _ = call_quietly(exercise.reference, case)
        count = len(out) if isinstance(out, tuple) and not exercise.strings else 1
        refs.append(as_outputs(out, count, exercise.strings))
    return refs


def run_student(fn, cases, counts, on_case=None, max_sizes=None, strings=False):
    """Call the student's `fn` on every case; a list of outcomes, plain dicts (no verdict yet).

    counts[i] is how many arrays case i must return. Each outcome is one of
    {"kind": "returned", "outputs": [arrays], "args": [...], "kwargs": {...}} (the arguments
    as they are after the call, to see whether the function wrote into them),
    {"kind": "bad output", "message": ...}, {"kind": "raised", "error": type name, "message": ...,
    "where": the student's line} or, alone, {"kind": "not attempted"} (NotImplementedError on the
    first case). The grader runs this in the student's own process and `judge` in its own;
    it passes `on_case(i)`, called before case i, and `max_sizes[i]`, the most elements an
    output of case i may have before it is a bad output rather than data to send back.
    strings: the exercise's answer is a list of strings (`Exercise.strings`).
    """
    outcomes = []
    for i, (case, count) in enumerate(zip(cases, counts)):
        if on_case is not None:
            on_case(i)
        try:
            out, args, kwargs = call_quietly(fn, case)
        except NotImplementedError as exc:
            if i == 0:
                return [{"kind": "not attempted"}]
            outcomes.append({"kind": "raised", "error": "NotImplementedError", "message": "",
                             "where": _where_raised(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 -- report the student's error, never crash
            outcomes.append({"kind": "raised", "error": type(exc).__name__, "message": str(exc),
                             "where": _where_raised(exc)})
            continue
        try:
            arrays = as_outputs(out, count, strings)
        except BadOutput as exc:
            outcomes.append({"kind": "bad output", "message": str(exc)})
            continue
        big = [a.shape for a in arrays if max_sizes is not None and a.size > max_sizes[i]]
        if big:
            outcomes.append({"kind": "bad output", "message": f"returned an array of shape "
                             f"{big[0]}, far larger than the expected output"})
            continue
        outcomes.append({"kind": "returned", "outputs": arrays, "args": args, "kwargs": kwargs})
    return outcomes


def judge(exercise, cases, refs, outcomes):
    """The verdict on the student's outcomes (`run_student`) against the reference's outputs
    `refs` (`expected_outputs`): a CheckResult with a diagnosis for every wrong output."""
    if outcomes and outcomes[0]["kind"] == "not attempted":
        return CheckResult(exercise.name, "not attempted",
                           [CaseResult(c.label, "not attempted") for c in cases])
    results = []
    for case, ref, outcome in zip(cases, refs, outcomes):
        kind = outcome["kind"]
        if kind == "raised":
            message = f": {outcome['message']}" if outcome["message"] else ""
            results.append(CaseResult(case.label, "error",
                                      f"raised {outcome['error']}{message}{outcome['where']}"))
            continue
        if kind == "bad output":
            results.append(CaseResult(case.label, "bad output", outcome["message"]))
            continue
        ours = outcome["outputs"]
        diff = compare(ours, ref, exercise.exact)
        if diff.same_shape and diff.rel <= TOLERANCE:
            changed = _changed_inputs(exercise, case, outcome["args"], outcome["kwargs"])
            if changed:
                results.append(CaseResult(
                    case.label, "failed", f"the output is right, but the function changed its "
                    f"input {', '.join(changed)} in place",
                    [("modified_input", ("do not write into the arguments (`x -= ...`, "
                                         "`x[...] = ...`): the caller still needs them; work "
                                         "on a copy or build new arrays."))]))
            else:
                results.append(CaseResult(case.label, "passed"))
            continue
        results.append(CaseResult(case.label, "failed", diff.detail,
                                  diagnose(exercise, case, ours, ref, diff)))
    if all(r.passed for r in results):
        status = "passed"
    elif any(r.status == "bad output" for r in results):
        status = "bad output"
    else:
        status = "failed"
    return CheckResult(exercise.name, status, results)


def run_checks(exercise, fn):
    """Every case of `exercise` on `fn`, in this process; a CheckResult (no printing)."""
    cases = exercise.make_cases()
    refs = expected_outputs(exercise, cases)
    outcomes = run_student(fn, cases, [len(r) for r in refs], strings=exercise.strings)
    return judge(exercise, cases, refs, outcomes)


def _changed_inputs(exercise, case, args, kwargs):
    names = _argument_names(exercise, case)
    changed = []
    for name, before, after in zip(names, case.args, args):
        if not _same(before, after):
            changed.append(f"`{name}`")
    for name, before in case.kwargs.items():
        if not _same(before, kwargs[name]):
            changed.append(f"`{name}`")
    return changed


def check(name, fn, verbose=True):
    """Check the function `fn` you wrote for the exercise `name`.

    Runs the reference and `fn` on random cases and edge cases, prints what failed with hints
    about the likely mistake (or one line when everything passed), and returns a CheckResult that
    is truthy only when every case passed: `assert check("rms_norm", rms_norm)`.
    """
    exercise = get_exercise(name)
    if not callable(fn):
        raise TypeError(f"check: expected the function you wrote for {name!r}, "
                        f"got {type(fn).__name__}")
    result = run_checks(exercise, fn)
    if verbose:
        print(result.report())
    return result
