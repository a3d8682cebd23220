"""`python -m uvit_numpy.exercises list | check NAME FILE | grade FILE_OR_DIR | release OUTDIR`.

list     the exercises: name, notebook and a one-line description
check    run one exercise's checker on the function NAME defined in FILE (.py or .ipynb)
grade    every exercise defined in FILE, or in the .py/.ipynb files under DIR: a score table, then
         what failed and why (unless --quiet)
release  write the student notebooks (solutions replaced by `raise NotImplementedError`)

`check` and `grade` run each file in a child process of its own, inside a sandbox (--sandbox:
auto, the default, uses bubblewrap where it works and says so where it does not; require refuses
to grade without it; off), with a time limit (--timeout) and a memory limit (--memory), and judge
what it returns in this one (see `grading` and `sandbox`); the table's
status is passed, failed, not attempted, bad output, timed out, exited, crashed, uses the
reference or syntax error. They exit with status 0 only when everything they ran passed (1
otherwise, 2 for a usage error such as a missing file). `release` refuses to overwrite notebooks
already in OUTDIR unless --force.
"""

import argparse
import sys
from pathlib import Path

# Light imports only: `check` and `grade` start the sandbox (`sandbox.prestart`) before they
# import the grader, NumPy and the exercises, so its start overlaps theirs.
from .notebooks import default_source_dir, release, student_files
from .sandbox import DEFAULT_MEMORY, DEFAULT_TIMEOUT, SandboxUnavailable, prestart


def cmd_list(args):
    from .catalogue import EXERCISES

    width = max(len(name) for name in EXERCISES)
    notebook = None
    for name, ex in EXERCISES.items():
        if ex.notebook != notebook:
            notebook = ex.notebook
            print(f"\n{notebook}")
        print(f"  {name:<{width}}  {ex.summary}")
    print(f"\n{len(EXERCISES)} exercises.")
    if args.verbose:
        print("\nsignatures:")
        for ex in EXERCISES.values():
            print(f"  {ex.signature}")
    return 0


def cmd_check(args):
    path = Path(args.file)
    if path.is_file():
        prestart(args.sandbox)
    from .catalogue import get_exercise
    from .grading import grade_file
    try:
        exercise = get_exercise(args.name)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"check: no such file {path}", file=sys.stderr)
        return 2
    if not _start(args):
        return 2
    report = grade_file(path, [exercise.name], timeout=args.timeout, memory=_memory(args),
                        sandbox=args.sandbox)
    _print_notes(path, report.notes)
    result = report.results.get(exercise.name)
    if result is None:
        print(f"check: {path} does not define a function named {exercise.name!r}",
              file=sys.stderr)
        return 1
    print(_printable(result.report()))
    return 0 if result else 1


def cmd_grade(args):
    try:
        files = student_files(args.path)
    except ValueError as exc:
        print(f"grade: {exc}", file=sys.stderr)
        return 2
    prestart(args.sandbox)
    from .catalogue import EXERCISES
    from .grading import grade_file
    if not _start(args):
        return 2
    rows, failures = [], []
    for path in files:
        report = grade_file(path, timeout=args.timeout, memory=_memory(args),
                            sandbox=args.sandbox)
        if not args.quiet:
            _print_notes(path, report.notes)
        for name, result in report.results.items():
            rows.append((str(path), name, _cases(result), result.status))
            if result.status not in ("passed", "not attempted"):
                failures.append((path, result))
        if not report.results and (report.unreadable
                                   or any("SyntaxError" in n for n in report.notes)):
            rows.append((str(path), "-", "-", "syntax error"))
    if not rows:
        print(f"grade: no exercise functions found in {args.path} (looked for: "
              f"{', '.join(EXERCISES)})")
        return 1
    _print_table(("file", "exercise", "cases", "status"), rows)
    passed = sum(r[3] == "passed" for r in rows)
    print(f"\nscore: {passed}/{len(rows)} exercises passed")
    if failures and not args.quiet:
        print("\nwhat failed:")
        for path, result in failures:
            print(_printable(f"\n[{path}]\n{result.report()}"))
    return 0 if passed == len(rows) else 1


def _cases(result):
    """'3/4' when the cases ran, '-' when the grader could not run them."""
    return f"{result.passed}/{result.total}" if result.cases else "-"


def _start(args):
    """Start the sandbox (or what the children come from without one) before any work; False
    when --sandbox require cannot be met (said on stderr)."""
    from .grading import start_server
    try:
        warning = start_server(args.sandbox)
    except SandboxUnavailable as exc:
        print(f"{args.command}: --sandbox require: no sandbox can be made here: {exc}",
              file=sys.stderr)
        return False
    if warning:
        print(warning, file=sys.stderr)
    return True


def _memory(args):
    return None if args.memory <= 0 else args.memory


def cmd_release(args):
    source = Path(args.source) if args.source else default_source_dir()
    try:
        written = release(source, args.outdir, force=args.force)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    readme = Path(args.outdir) / "README.md"
    if readme.exists():
        print(f"wrote {readme} (the students' README)")
    print(f"{len(written)} student notebooks in {args.outdir} (solutions removed, outputs "
          "cleared)")
    return 0


# Control characters (escape sequences, C1 codes) shown as \x1b, say: what a student's code
# raised or printed, or wrote in a file name, never drives the teacher's terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)] if chr(c) not in "\n\t"}


def _printable(text):
    return text.translate(_CONTROL)


def _print_notes(path, notes):
    for note in notes:
        print(_printable(f"note: {path}: {note}"), file=sys.stderr)


def _print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(_printable("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()))


def _limits(p):
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds of wall clock for each file's process (default "
                        f"{DEFAULT_TIMEOUT:g}); a file stopped early goes on in a fresh one")
    p.add_argument("--memory", type=int, default=DEFAULT_MEMORY,
                   help=f"MB a file's code may allocate, on Linux (default {DEFAULT_MEMORY}; "
                        "0: no limit)")
    p.add_argument("--sandbox", choices=("auto", "require", "off"), default="auto",
                   help="run each file inside a bubblewrap sandbox: auto (default: when it "
                        "works here, else without, with a warning), require (refuse to grade "
                        "without), off")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m uvit_numpy.exercises",
                                     description="Coursework exercises and their checker.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="names and one-line descriptions")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the signatures")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("check", help="check one exercise in a .py or .ipynb file")
    p.add_argument("name")
    p.add_argument("file")
    _limits(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("grade", help="grade every exercise in a file or folder")
    p.add_argument("path")
    p.add_argument("-q", "--quiet", action="store_true", help="the score table only")
    _limits(p)
    p.set_defaults(func=cmd_grade)
    p = sub.add_parser("release", help="write the student notebooks")
    p.add_argument("outdir")
    p.add_argument("--source", help="folder of the solution notebooks (default: book/exercises)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the notebooks (and README.md) already in OUTDIR")
    p.set_defaults(func=cmd_release)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
