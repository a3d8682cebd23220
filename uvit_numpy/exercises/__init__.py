"""Coursework: exercises on the blocks of U-ViT and aMUSEd, and a checker that explains mistakes.

From a notebook:

    from uvit_numpy.exercises import check
    assert check("rms_norm", rms_norm)      # prints what failed, with hints; truthy if all passed

From the shell:

    python -m uvit_numpy.exercises list                  # names and one-line descriptions
    python -m uvit_numpy.exercises check NAME FILE       # FILE: a .py or .ipynb defining NAME
    python -m uvit_numpy.exercises grade FILE_OR_DIR     # every exercise found, a score table
    python -m uvit_numpy.exercises release OUTDIR        # the student notebooks, no solutions

`check` and `grade` run each file in a child process with limits, inside a bubblewrap sandbox
where one can be made (`sandbox`), and judge in their own (`grading`); `check(...)` in a
notebook runs in the notebook's kernel.

The exercise notebooks live in book/exercises; `catalogue.EXERCISES` lists the exercises in course
order, each with its reference, its cases and the mistakes its checker recognises.
"""

from .. import lazy_names

# module -> the names this package gives from it, each imported on first use (PEP 562): so
# `python -m uvit_numpy.exercises grade` starts its sandbox before NumPy & co. load. The
# catalogue imports the theme modules, which register the exercises.
_EXPORTS = {
    "catalogue": ("EXERCISES", "Case", "Exercise", "Mistake", "get_exercise"),
    "checker": ("CheckResult", "check", "run_checks"),
}

__all__ = sorted(n for names in _EXPORTS.values() for n in names)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
