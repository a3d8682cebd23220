"""The catalogue of exercises: what each one asks for, the cases it is checked on, and the mistakes
its checker knows how to recognise.

An `Exercise` bundles

* `reference`: the answer, written from the package's own functions (`uvit_numpy.functional`), so
  the exercises teach exactly what the package implements;
* `make_cases`: a function returning a fresh list of `Case`s (random inputs from a fixed seed, plus
  the edge cases where the usual mistakes show: batch 1, odd sizes, large logits, near-zero
  variance);
* `mistakes`: `Mistake`s, each the reference with one typical error made on purpose. When a
  student's output is wrong, the checker runs every mistake on the failing case and names the one
  the student's output matches.

A solution is written with NumPy (and SciPy's erf); where a notebook lets students call the
package's own functions, the exercise lists them in `allowed` (see `functional_names`), and the
grader reports a solution that calls anything else of `uvit_numpy` or `uvit_torch` as "uses the
reference" (the exercise's own function is never allowed).

The theme modules (`tokens`, `norms_and_activations`, `attention`, `convolutions`, `amused`,
`backward`, `diffusion`, `maskgit`, `amused_systems`) `register` their exercises here. The course order is by
notebook, then by order of registration.
"""

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Mistake:
    """A wrong variant of the reference and what to tell a student whose output matches it.

    key: a short identifier (`"eps_outside_sqrt"`), stable for tests and teachers.
    hint: one or two sentences in the student's terms: what is wrong and what is right.
    fn: the reference with the mistake made on purpose (same signature as the exercise).
    """

    key: str
    hint: str
    fn: Callable


@dataclass
class Case:
    """One call of the student's function: a label saying what it tests, and the arguments."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function to write, how to check it, and the mistakes to diagnose."""

    name: str                 # the function name the student defines
    summary: str              # one line for `python -m uvit_numpy.exercises list`
    notebook: str             # the notebook in book/exercises that holds it
    reference: Callable       # the correct answer
    make_cases: Callable      # () -> list[Case], fresh arrays every call
    mistakes: tuple = ()      # Mistake, ..., most specific first
    exact: bool = False       # integer outputs: compare for equality, not within a tolerance
    allowed: tuple = ()       # package functions a solution may call ("uvit_numpy.functional.gelu")
    strings: bool = False     # the answer is one list of strings (BPE's symbols), compared exactly

    @property
    def signature(self):
        """The reference's call signature, e.g. `rms_norm(x, weight, eps=1e-06)`."""
        import inspect
        return f"{self.name}{inspect.signature(self.reference)}"


EXERCISES = {}


def functional_names(*names):
    """("uvit_numpy.functional.linear", ...) for `allowed`: functions a notebook lets you call."""
    return tuple(f"uvit_numpy.functional.{n}" for n in names)


def register(exercise):
    """Add `exercise` to the catalogue (names are unique) and return it."""
    if exercise.name in EXERCISES:
        raise ValueError(f"register: an exercise named {exercise.name!r} already exists")
    keys = [m.key for m in exercise.mistakes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"register: {exercise.name}: mistake keys repeat: {keys}")
    EXERCISES[exercise.name] = exercise
    # the course order: by notebook (they are numbered), then in the order of registration
    ordered = sorted(EXERCISES.values(), key=lambda e: e.notebook)
    EXERCISES.clear()
    EXERCISES.update((e.name, e) for e in ordered)
    return exercise


def get_exercise(name):
    """The exercise called `name`; a ValueError lists the known names (and a close match)."""
    if name in EXERCISES:
        return EXERCISES[name]
    import difflib
    close = difflib.get_close_matches(name, list(EXERCISES), n=1)
    guess = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown exercise {name!r}.{guess} Known exercises: "
                     f"{', '.join(EXERCISES)}")


def rng_for(name):
    """A Generator seeded from the exercise name: the same cases on every run and machine."""
    return np.random.default_rng(zlib.crc32(name.encode()))


# The theme modules register their exercises when they are imported. Importing them here, after
# every name above is defined (they import those), means whoever imports the catalogue sees all
# of its exercises.
from . import (  # noqa: E402,F401
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
