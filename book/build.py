"""Build the book's website: `python book/build.py` writes a static site to book/_build/html/.

Open book/_build/html/index.html in a browser (or serve the folder: `python -m http.server -d
book/_build/html`); nothing on it needs the internet. The site is made of

- the repository README as the landing page (its images, docs/*.png, come along);
- book/README.md (the reading order) and the chapters (book/NN_*.ipynb), with the outputs
  committed in them: the site is built from the executed notebooks and never executes them
  (refresh the outputs with `python book/execute.py`);
- the exercises in their student version only, made by the package's own release
  (`python -m uvit_numpy.exercises release`): every solution is replaced by `raise
  NotImplementedError`, and this build stops if a solution marker is still there;
- navigation between the pages (the sidebar, previous / next), a search page, and the
  mathematics typeset by MathJax 3 served from the site itself (`_static/mathjax/`).

Nothing else of book/ is laid out: in particular not book/teacher/, the worked answers to the
chapters' questions, which are for teachers only (`tests/test_book_questions.py` checks the
sources, `tests/test_book_site.py` the built site).

The sources are laid out in book/_build/source/ as they are in the repository (README.md becomes
index.md), so every relative link written for the code host (`docs/uvit-digits.png`,
`exercises/README.md`, `02_tokens.ipynb`) works on the site unchanged. A file is only rewritten
when its content changed, so a second build is incremental. Sphinx runs with warnings as errors:
a broken cross-reference or an unreadable notebook fails the build.

Why Sphinx with MyST-NB and sphinx-book-theme. It is the Executable Books project's stack, the
one Jupyter Book 1.x wraps: MyST-NB reads notebooks with their outputs (figures, printouts,
`text/latex`) and Markdown, the book theme gives the chapter navigation and search that
readers of Jupyter Book sites know, and it is all Python, installed by pip with the `dev` extra.
Using it directly rather than through Jupyter Book 1.x leaves out a layer that translates YAML
into this same Sphinx configuration and pins older Sphinx releases (Jupyter Book 1 is in
maintenance, its successor 2.x is a Node.js program, mystmd, which fetches its page theme from
the internet on the first build). The mathematics: Sphinx's MathJax support points at a file
under `_static/`, and the PyPI package `sphinx-mathjax-offline` ships the MathJax 3.2.2
distribution (the same files as npm's `mathjax@3.2.2`: the TeX-to-HTML component, its fonts and
extensions) and copies it there; no page loads anything from a CDN.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
BUILD = BOOK / "_build"
SOURCE = BUILD / "source"       # the site's sources, laid out as in the repository
HTML = BUILD / "html"           # the site: index.html at its root
DOCTREES = BUILD / "doctrees"   # Sphinx's cache between builds

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def chapters():
    """The executed chapters, book/NN_*.ipynb, in reading order."""
    return sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def student_exercises():
    """{file name: bytes} of the student version of every exercise notebook, and its README."""
    sys.path.insert(0, str(ROOT))            # this checkout's package, installed or not
    from uvit_numpy.exercises.notebooks import release

    with tempfile.TemporaryDirectory(prefix="uvit-handout-") as tmp:
        release(BOOK / "exercises", tmp)
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir())}
    for name, data in files.items():
        text = data.decode("utf-8")
        if any(marker in text for marker in SOLUTION_MARKERS):
            raise SystemExit(f"build.py: the student version of {name} still holds a solution "
                             f"marker; the site must never show a solution")
    return files


def toctree(caption, documents):
    """A hidden MyST toctree: the sidebar's section `caption` with `documents` (paths without
    their suffix, or "Title <path>")."""
    lines = ["```{toctree}", ":hidden:", f":caption: {caption}", ""] + documents + ["```", ""]
    return "\n".join(lines)


def landing_page():
    """README.md with the site's navigation (hidden toctrees) appended."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    book = ["Reading order <book/README>"] + [f"book/{p.stem}" for p in chapters()]
    exercises = [f"book/exercises/{p.stem}" for p in sorted((BOOK / "exercises").glob("*.ipynb"))]
    return "\n".join([readme.rstrip(), "", toctree("The book", book),
                      toctree("Exercises (student version)",
                              ["Exercises <book/exercises/README>"] + exercises)])


def sources():
    """{path under SOURCE: bytes} of every file of the site's sources."""
    files = {"index.md": landing_page().encode("utf-8")}
    for png in sorted((ROOT / "docs").glob("*.png")):
        files[f"docs/{png.name}"] = png.read_bytes()
    files["book/README.md"] = (BOOK / "README.md").read_bytes()
    for path in chapters():
        files[f"book/{path.name}"] = path.read_bytes()
    for name, data in student_exercises().items():
        files[f"book/exercises/{name}"] = data
    return files


def lay_out(files):
    """Write `files` under SOURCE, touching only what changed (Sphinx rebuilds by modification
    time), and remove whatever an earlier build left there that is no longer a source."""
    for rel, data in files.items():
        path = SOURCE / rel
        if not path.exists() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    for path in sorted(SOURCE.rglob("*"), reverse=True):
        rel = path.relative_to(SOURCE).as_posix()
        if path.is_file() and rel not in files:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def build(clean=False, quiet=True):
    """Lay out the sources and run Sphinx; return Sphinx's exit status (0: built, no warning)."""
    from sphinx.cmd.build import build_main

    if clean:
        shutil.rmtree(BUILD, ignore_errors=True)
    lay_out(sources())
    args = ["-b", "html", "-c", str(BOOK), "-d", str(DOCTREES), "-W", "--keep-going",
            str(SOURCE), str(HTML)]
    return build_main((["-q"] if quiet else []) + args)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Build the book's website into book/_build/html/ from the executed "
                    "chapters (no execution).")
    parser.add_argument("--clean", action="store_true",
                        help="remove book/_build first and build everything again")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    status = build(clean=args.clean, quiet=not args.verbose)
    if status == 0:
        print(f"built {HTML.relative_to(ROOT)}/index.html in {time.perf_counter() - start:.1f} s")
    else:
        print(f"build.py: Sphinx failed (exit status {status}); see its messages above",
              file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
