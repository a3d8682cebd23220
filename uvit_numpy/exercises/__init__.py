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

# Importing the theme modules registers their exercises (the catalogue orders them by notebook).
from . import (  # noqa: F401
    amused,
    amused_systems,
    attention,
    backward,
    convolutions,
    diffusion,
    maskgit,
    norms_and_activations,
    tokens,
)
from .catalogue import EXERCISES, Case, Exercise, Mistake, get_exercise
from .checker import CheckResult, check, run_checks

__all__ = ["EXERCISES", "Case", "CheckResult", "Exercise", "Mistake", "check", "get_exercise",
           "run_checks"]
