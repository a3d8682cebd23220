"""`python -m uvit_numpy.exercises list | check NAME FILE | grade FILE_OR_DIR | release OUTDIR`.

list     the exercises: name, notebook and a one-line description
check    run one exercise's checker on the function NAME defined in FILE (.py or .ipynb)
grade    every exercise defined in FILE, or in the .py/.ipynb files under DIR: a score table, then
         what failed and why (unless --quiet)
release  write the student notebooks (solutions replaced by `raise NotImplementedError`)

`check` and `grade` exit with status 0 only when everything they ran passed (1 otherwise, 2 for a
usage error such as a missing file).
"""

import argparse
import sys
from pathlib import Path

from .catalogue import EXERCISES, get_exercise
from .checker import run_checks
from .notebooks import default_source_dir, defined_functions, load_namespace, release, student_files


def cmd_list(args):
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
    try:
        exercise = get_exercise(args.name)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"check: no such file {path}", file=sys.stderr)
        return 2
    namespace, errors, filenames = load_namespace(path)
    _print_load_errors(path, errors)
    found = defined_functions(namespace, filenames, [exercise.name])
    if not found:
        print(f"check: {path} does not define a function named {exercise.name!r}",
              file=sys.stderr)
        return 1
    result = run_checks(exercise, found[exercise.name])
    print(result.report())
    return 0 if result else 1


def cmd_grade(args):
    try:
        files = student_files(args.path)
    except ValueError as exc:
        print(f"grade: {exc}", file=sys.stderr)
        return 2
    rows, failures = [], []
    for path in files:
        namespace, errors, filenames = load_namespace(path)
        if not args.quiet:
            _print_load_errors(path, errors)
        for name, fn in defined_functions(namespace, filenames, EXERCISES).items():
            result = run_checks(EXERCISES[name], fn)
            rows.append((str(path), name, f"{result.passed}/{result.total}", result.status))
            if result.status == "failed":
                failures.append((path, result))
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
            print(f"\n[{path}]\n{result.report()}")
    return 0 if passed == len(rows) else 1


def cmd_release(args):
    source = Path(args.source) if args.source else default_source_dir()
    try:
        written = release(source, args.outdir)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} student notebooks in {args.outdir} (solutions removed, outputs "
          "cleared)")
    return 0


def _print_load_errors(path, errors):
    for err in errors:
        print(f"note: {path}: {err}", file=sys.stderr)


def _print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


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
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("grade", help="grade every exercise in a file or folder")
    p.add_argument("path")
    p.add_argument("-q", "--quiet", action="store_true", help="the score table only")
    p.set_defaults(func=cmd_grade)
    p = sub.add_parser("release", help="write the student notebooks")
    p.add_argument("outdir")
    p.add_argument("--source", help="folder of the solution notebooks (default: book/exercises)")
    p.set_defaults(func=cmd_release)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
