"""Grading a class: every student's file runs in a child process with limits, inside a sandbox
when one can be made, and the verdict is made here, in the grader's own process.

`grade_file(path)` does, for one .py or .ipynb file:

1. **Read it without running it** (`analysis.read_file`): the cells that do not parse ("syntax
   error", with the cell and the line) and the exercise functions that call into `uvit_numpy` or
   `uvit_torch` beyond what their notebook allows ("uses the reference"); those are not run.
2. **Run it in a child process** that never ran anyone else's code: a fork of the sandbox's
   zygote (`sandbox`: bubblewrap, no network, no files but the system and Python's, its own
   processes) or, without a sandbox, of a clean grader process (see `_context`). It works in an
   empty temporary directory, with stdin closed, its output captured to a file and capped, a
   wall-clock limit (`timeout` seconds) and, on Linux, a memory limit (`resource.RLIMIT_AS`,
   `memory` MB more than the child has when it starts). The child receives the file's code
   cells from this process and runs them, then, for each exercise, calls the student's function
   on the case inputs this process sends and sends back what it returned (or the exception and
   the student's line that raised it): arrays and plain values only, never pickled objects of
   the student's making.
3. **Judge here** (`checker.judge`): this process computes the references, compares and
   diagnoses. Whatever the student's code does to modules in its own process (patching the
   checker, say) cannot change a result.

A process that runs past its time is killed: the exercise it was on is "timed out" (or, when it
hung in a code cell, the exercises that cell defines), and the rest of the file is graded in a
fresh process that skips the cell that hung. An exit (`sys.exit()`, `os._exit`) is "exited", a
crash (a signal, the memory limit) is "crashed", an output that is not an array "bad output".

Without a sandbox (`sandbox="off"`, or "auto" where bubblewrap cannot work) this is isolation,
not a sandbox: the child can still read and write whatever the teacher's account can, use the
network and signal the grader (README, *Coursework*).
"""

import atexit
import io
import multiprocessing
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import notebooks
from .analysis import read_file
from .catalogue import EXERCISES
from .checker import CheckResult, expected_outputs, judge
from .notebooks import student_code
from .child import OUTPUT_LIMIT, PRELOAD, _decode, _encode, _SafeUnpickler, child_main  # noqa: F401
from .sandbox import (DEFAULT_MEMORY, DEFAULT_TIMEOUT, SandboxedProcess, get_sandbox,
                      untold_reason)

MESSAGE_LIMIT = 64 << 20        # bytes of one message from the child
STATUSES = ("passed", "failed", "not attempted", "bad output", "timed out", "exited", "crashed",
            "uses the reference", "syntax error")


@dataclass
class FileReport:
    """What grading one file found: a CheckResult per exercise, and notes on the cells that
    raised (or did not parse)."""

    path: Path
    results: dict = field(default_factory=dict)      # exercise name -> CheckResult, course order
    notes: list = field(default_factory=list)
    unreadable: bool = False                         # not a notebook at all (invalid JSON, ...)


# --------------------------------------------------------------------------------------------------
# The parent: one file
# --------------------------------------------------------------------------------------------------
def grade_file(path, names=None, timeout=DEFAULT_TIMEOUT, memory=DEFAULT_MEMORY,
               sandbox="auto"):
    """Grade the exercises `names` (default: all) that the file at `path` defines; a FileReport.

    timeout: seconds of wall clock for each child process; memory: MB the student's code may
    allocate (None: no limit); sandbox: "auto" (bubblewrap when it works here, else plain child
    processes, with a RuntimeWarning the first time), "require" (SandboxUnavailable when no
    sandbox can be made) or "off" (see `start_server`).
    """
    path = Path(path)
    wanted = {n: EXERCISES[n] for n in (names or EXERCISES)}
    report = FileReport(path)
    warning = start_server(sandbox)
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
    try:
        cells = student_code(path.resolve())
    except ValueError as exc:                          # not a notebook (invalid JSON, ...)
        report.notes.append(str(exc))
        report.unreadable = True
        return report
    child = _Child(path, cells, (), timeout, memory, sandbox)   # it runs while we read
    try:
        reading = read_file(path, wanted)
        report.notes += reading.syntax_errors
        for name, message in reading.broken.items():
            report.results[name] = CheckResult(name, "syntax error", [], message)
        for name, uses in reading.uses.items():
            report.results[name] = CheckResult(name, "uses the reference", [],
                                               _uses_note(wanted[name], uses))
        _run_rounds(child, report, reading, wanted,
                    lambda skip: _Child(path, cells, skip, timeout, memory, sandbox))
    finally:
        child.close()
        if len(_LINGERING) > 4:
            _reap()
    order = list(EXERCISES)
    report.results = dict(sorted(report.results.items(), key=lambda kv: order.index(kv[0])))
    return report


def _run_rounds(child, report, reading, wanted, new_child):
    """Check what the static reading left open, in as many child processes as it takes: each
    round ends with every exercise checked, or settles the exercise or the cell that stopped
    its process, and the next round (a fresh process, `new_child(cells to skip)`) goes on with
    the rest."""
    cells_of = {}
    for name, label in reading.defined_in.items():
        cells_of.setdefault(label, []).append(name)
    skip, loaded_once = set(), False
    for _ in range(len(wanted) + 4):
        if not [n for n in wanted if n not in report.results]:
            return
        if child is None:
            child = new_child(skip)
        try:
            event = child.load()
            if event.failed:
                if not (event.where and event.where not in skip):
                    for name in reading.defined_in:       # nothing ran: what the file attempts
                        report.results.setdefault(name, CheckResult(name, event.status, [],
                                                                     event.note))
                    return
                skip.add(event.where)                     # the next round skips that cell
                report.notes.append(f"{event.where}: {event.status}: {event.note}")
                for name in cells_of.get(event.where, []):
                    report.results.setdefault(name, CheckResult(
                        name, event.status, [], f"{event.note} in {event.where}"))
                continue
            if not loaded_once:                           # syntax errors are noted already
                report.notes += [e for e in event.errors if e not in report.notes]
            loaded_once = True
            pending = [wanted[n] for n in wanted if n in event.found and n not in report.results]
            if not pending:
                return
            child.check_all(pending, report.results)
            if not child.dead:
                return
        finally:
            child.close()
            child = None
    for name in reading.defined_in:                       # restarted too often: give up
        report.results.setdefault(name, CheckResult(name, "crashed", [], "its file stopped the "
                                                    "grading process too many times"))


def _uses_note(exercise, uses):
    first = uses[0]
    allowed = ""
    if exercise.allowed:
        allowed = (" This notebook lets you call "
                   + ", ".join(f"`{a.rsplit('.', 1)[-1]}`" for a in exercise.allowed
                               if a.rsplit(".", 1)[-1] != exercise.name) + ", nothing else.")
    more = f" (and {len(uses) - 1} more)" if len(uses) > 1 else ""
    return (f"`{exercise.name}` calls the package: {first.describe()}{more}. Write it yourself "
            f"with NumPy.{allowed}")


@dataclass
class _Event:
    failed: bool = False
    status: str = ""
    note: str = ""
    where: str = ""                 # the cell running when the process stopped
    found: tuple = ()
    errors: tuple = ()


class _Child:
    """One child process grading one file, and the pipe to it.

    cells: the file's code cells (`notebooks.student_code`), sent to the child, which runs them
    but those labelled in `skip`; sandbox: "auto", "require" or "off" (`get_sandbox`).
    """

    def __init__(self, path, cells, skip, timeout, memory, sandbox="auto"):
        self.path, self.timeout, self.dead = Path(path).resolve(), timeout, False
        self.tmp = tempfile.TemporaryDirectory(prefix="uvit_grade_")
        self.output = Path(self.tmp.name) / "output.txt"
        self.output.touch()
        box = get_sandbox(sandbox)
        if box is not None:                            # a fork of the sandbox's zygote
            self.conn, child_conn = multiprocessing.Pipe()
            self.proc = box.start(child_conn, self.output, memory)
        else:                                          # a fork of a clean grader process
            work = Path(self.tmp.name) / "work"
            work.mkdir()
            ctx = _context()
            self.conn, child_conn = ctx.Pipe()
            self.proc = ctx.Process(target=child_main, daemon=True, args=(
                child_conn, str(work), str(self.output), memory))
            self.proc.start()
        child_conn.close()
        self.deadline = time.monotonic() + timeout
        self.where, self.loaded, self.closed = "", False, False
        try:
            self.conn.send(("load", str(self.path), cells, sorted(skip)))
        except OSError:                                # the child is gone: _receive says how
            pass

    def close(self):
        """Tell the child it is done (or kill it, when it never finished loading). The exit
        itself is awaited later (`_reap`), while the next file is graded."""
        if self.closed:
            return
        self.closed = True
        if self.proc.is_alive() and self.loaded and not self.dead:
            try:
                self.conn.send(("done",))
            except OSError:
                pass
        else:
            self.proc.kill()
        if isinstance(self.proc, SandboxedProcess):    # the sandbox runs one child at a time
            self._finish(block=True)
        else:
            _LINGERING.append(self)
            _reap(block=False)

    def _finish(self, block):
        """Join the child (killing it after a second's grace); True once it is gone."""
        self.proc.join(1.0 if block else 0)
        if self.proc.is_alive():
            if not block:
                return False
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.tmp.cleanup()
        return True

    # --- messages ------------------------------------------------------------------------------
    def _receive(self):
        """The next message from the child, or an _Event saying how the child stopped."""
        left = self.deadline - time.monotonic()
        if left <= 0 or not self.conn.poll(left):
            self.proc.kill()
            self.proc.join()
            self.dead = True
            return _Event(True, "timed out", f"did not finish within {self.timeout:g} s",
                          self.where)
        try:
            data = self.conn.recv_bytes(MESSAGE_LIMIT)
            msg = _decode(_SafeUnpickler(io.BytesIO(data)).load())
            if not _well_formed(msg):
                raise ValueError("not a message of the grading protocol")
            return msg
        except (EOFError, ConnectionError):
            return self._stopped()
        except Exception as exc:  # noqa: BLE001 -- anything unreadable is the child's fault
            self.proc.kill()
            self.proc.join()
            self.dead = True
            return _Event(True, "crashed", f"sent the grader something it cannot read ({exc})",
                          self.where)

    def _stopped(self):
        self.proc.join(5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.dead = True
        code = self.proc.exitcode
        tail = _tail(self.output)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return _Event(True, "crashed", f"the process was killed by {name}{hint}{tail}",
                          self.where)
        return _Event(True, "exited", f"the code ended the process (exit status {code}: "
                                      f"sys.exit() or os._exit()?){tail}", self.where)

    def load(self):
        """Run the file's cells in the child; an _Event with the exercise functions found."""
        while True:
            msg = self._receive()
            if isinstance(msg, _Event):
                return msg
            if msg[0] == "cell":
                self.where = msg[1]
            elif msg[0] == "loaded":
                self.where, self.loaded = "", True
                return _Event(found=tuple(n for n in msg[1] if n in EXERCISES),
                              errors=tuple(e[:2000] for e in msg[2]))

    def _send(self, exercise):
        """Send one exercise's cases; return (exercise, cases, refs, counts)."""
        cases = exercise.make_cases()
        refs = expected_outputs(exercise, cases)
        counts = [len(r) for r in refs]
        sizes = [sum(a.size for a in r) for r in refs]
        try:
            self.conn.send(("check", exercise.name, cases, counts, sizes, exercise.strings))
        except OSError:                                # the child is gone: _receive says how
            pass
        return exercise, cases, refs, counts

    def check_all(self, exercises, results):
        """Check `exercises` in turn, into `results` {name: CheckResult}, until done or the
        child stops. The next exercise's cases go out before this one is judged, so the child
        computes while this process compares."""
        sent = self._send(exercises[0])
        for i in range(len(exercises)):
            exercise, cases, refs, counts = sent
            outcomes = self._outcomes(cases, counts)
            if isinstance(outcomes, CheckResult):
                outcomes.name = exercise.name
                results[exercise.name] = outcomes
                return
            if i + 1 < len(exercises):
                sent = self._send(exercises[i + 1])
            results[exercise.name] = _verdict(exercise, cases, refs, outcomes)

    def _outcomes(self, cases, counts):
        """The child's outcomes for one exercise, or a CheckResult saying how the child stopped."""
        current = 0
        while True:
            msg = self._receive()
            if isinstance(msg, _Event):
                label = cases[current].label if current < len(cases) else ""
                note = f"{msg.note}, on the case {label!r}" if label else msg.note
                return CheckResult("", msg.status, [], note)
            if msg[0] == "case":
                current = msg[1]
            elif msg[0] == "result":
                outcomes = msg[1]
                if not isinstance(outcomes, list) or len(outcomes) not in (1, len(cases)) \
                        or not all(_valid(o, c) for o, c in zip(outcomes, counts)) \
                        or (len(outcomes) == 1 < len(cases)
                            and outcomes[0]["kind"] != "not attempted"):
                    self.proc.kill()
                    self.dead = True
                    return CheckResult("", "crashed", [],
                                       "the grading process sent back malformed results")
                return outcomes


def _verdict(exercise, cases, refs, outcomes):
    """judge(), with a MemoryError (the memory limit) turned into "crashed"."""
    result = judge(exercise, cases, refs, outcomes)
    memory = [c for c in result.cases if "raised MemoryError" in c.message]
    if memory:
        return CheckResult(exercise.name, "crashed", result.cases,
                           f"ran out of memory, on the case {memory[0].label!r}")
    return result


_LINGERING = []          # children told to finish, not yet joined


def _reap(block=True):
    """Join the children that have exited (all of them, when `block`)."""
    _LINGERING[:] = [c for c in _LINGERING if not c._finish(block)]


atexit.register(_reap)


def _tail(path, lines=4):
    """The last lines the child printed, as ': ...' for a note, or ''."""
    try:
        with open(path, "rb") as f:
            text = f.read(OUTPUT_LIMIT).decode("utf-8", "replace")
    except OSError:
        return ""
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return ("; it printed: " + " | ".join(ln.strip()[:120] for ln in last)) if last else ""


def _well_formed(msg):
    """Is `msg` one of the child's messages: ("cell", label), ("loaded", names, errors),
    ("case", i) or ("result", outcomes)?"""
    if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
        return False
    kind, rest = msg[0], msg[1:]
    if kind == "cell":
        return len(rest) == 1 and isinstance(rest[0], str)
    if kind == "loaded":
        return (len(rest) == 2 and all(isinstance(r, list) for r in rest)
                and all(isinstance(x, str) for r in rest for x in r))
    if kind == "case":
        return len(rest) == 1 and type(rest[0]) is int
    return kind == "result" and len(rest) == 1


def _valid(outcome, count):
    """Is `outcome` (decoded from the child) shaped as `checker.run_student` makes them?"""
    if not isinstance(outcome, dict) or not isinstance(outcome.get("kind"), str):
        return False
    kind = outcome["kind"]
    if kind == "not attempted":
        return True
    if kind == "raised":
        return all(isinstance(outcome.get(k), str) for k in ("error", "message", "where"))
    if kind == "bad output":
        return isinstance(outcome.get("message"), str)
    if kind == "returned":
        outs = outcome.get("outputs")
        return (isinstance(outs, list) and len(outs) == count
                and all(isinstance(a, np.ndarray) for a in outs)
                and isinstance(outcome.get("args"), list) and isinstance(outcome.get("kwargs"),
                                                                         dict))
    return False


# --------------------------------------------------------------------------------------------------
# Starting the child
# --------------------------------------------------------------------------------------------------
def _context():
    """The multiprocessing context a child starts from: always a process that never ran a
    student's code.

    * "fork" of this process, when this process has never run a student's code itself (the
      command line reads the files with `ast` and runs nothing) and has a single thread: a
      child starts in milliseconds, with NumPy and the package already imported;
    * else a fork server: a fresh interpreter (started by spawning, not forked from this
      process) that imports only NumPy, SciPy and this package and never runs a student's
      code; each child is a fork of that clean server;
    * else (Windows) a spawned interpreter for each child.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not notebooks.student_code_ran() \
            and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def start_server(sandbox="auto"):
    """Start what the children will be forked from, now: the sandbox (`sandbox.get_sandbox`)
    or, without one, the fork server if children come from one (it imports NumPy while the
    grader reads the files).

    sandbox: "auto", "require" or "off". Returns, the first time "auto" finds that no sandbox
    can be made, the one line that says so and what it leaves open (None otherwise); raises
    SandboxUnavailable for "require" where no sandbox can be made.
    """
    if get_sandbox(sandbox) is not None:
        return None
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver
        forkserver.ensure_running()
    why = untold_reason() if sandbox == "auto" else None
    if why:
        return (f"warning: grading without a sandbox ({why}): each file runs in a child "
                "process with time and memory limits, but can read and write your files, use "
                "the network and signal the grader")
    return None
