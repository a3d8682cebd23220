"""Reading a student's work and releasing the student notebooks, with the standard library only.

Notebooks are JSON (nbformat 4): `cells`, each with `cell_type`, `source` (a string or a list of
lines), `metadata` and, for code cells, `outputs` and `execution_count`. We read and write them
with `json`, so neither nbformat nor nbgrader is needed at run time.

* `load_namespace(path)` runs a student's .py file, or the code cells of a notebook, in a fresh
  namespace. Check cells (`check(...)` calls, or cells nbgrader marks as grade cells), IPython
  magics and shell escapes are skipped; a cell that raises is recorded and the next one runs, so
  one broken cell does not hide the other exercises.
* `release(source_dir, out_dir)` writes the student version of every notebook: each region between
  `### BEGIN SOLUTION` and `### END SOLUTION` becomes `raise NotImplementedError`, as nbgrader's
  generate_assignment does, and all outputs are cleared. The hand-out's README.md is the source
  folder's README.student.md (the teacher's README.md stays behind).

Cells are named as a reader finds them: "code cell 3" counts the code cells from 1, as Jupyter's
execution counts do in a notebook run top to bottom, followed by the cell's first line.
"""

import contextlib
import io
import json
import linecache
import os
import re
import shutil
import traceback
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUDENT_README = "README.student.md"      # in the source folder; README.md in the hand-out
PLACEHOLDER = ("# YOUR CODE HERE", "raise NotImplementedError")
_CHECK_LINE = re.compile(r"^\s*(assert\s+)?(\w+\s*=\s*)?check\(")
_MAGIC_LINE = re.compile(r"^\s*([%!]|get_ipython\()")


# --------------------------------------------------------------------------------------------------
# Notebooks as JSON
# --------------------------------------------------------------------------------------------------
def read_notebook(path):
    """The notebook at `path` as a dict; ValueError if it is not a notebook."""
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a notebook (invalid JSON: {exc})") from exc
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path}: not a notebook (no list of cells)")
    return nb


def write_notebook(nb, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


def cell_source(cell):
    """A cell's source as one string (notebooks store either a string or a list of lines)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell, text):
    cell["source"] = text.splitlines(keepends=True)


def is_check_cell(cell):
    """A cell that grades rather than defines: nbgrader's grade cells and `check(...)` calls."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if meta.get("grade") and not meta.get("solution"):
        return True
    return any(_CHECK_LINE.match(line) for line in cell_source(cell).splitlines())


def solution_regions(text):
    """[(first_line, last_line)] of every BEGIN/END SOLUTION region (0-based, inclusive).

    Raises ValueError for a marker without its partner.
    """
    regions, start = [], None
    for i, line in enumerate(text.splitlines()):
        if BEGIN in line:
            if start is not None:
                raise ValueError(f"line {i + 1}: {BEGIN!r} inside another solution region")
            start = i
        elif END in line:
            if start is None:
                raise ValueError(f"line {i + 1}: {END!r} without a {BEGIN!r}")
            regions.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"line {start + 1}: {BEGIN!r} is never closed")
    return regions


def strip_solutions(text):
    """`text` with every solution region replaced by `raise NotImplementedError` at its indent."""
    lines = text.splitlines()
    out, last = [], 0
    for first, end in solution_regions(text):
        indent = lines[first][:len(lines[first]) - len(lines[first].lstrip())]
        out.extend(lines[last:first])
        out.extend(indent + p for p in PLACEHOLDER)
        last = end + 1
    out.extend(lines[last:])
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def student_version(nb, name="notebook"):
    """A copy of the notebook `nb` with solutions stripped and every output cleared."""
    nb = json.loads(json.dumps(nb))
    for number, cell in code_cells(nb):
        try:
            _set_source(cell, strip_solutions(cell_source(cell)))
        except ValueError as exc:
            raise ValueError(f"{name}, {cell_label(number, cell_source(cell))}: {exc}") from exc
        cell["outputs"], cell["execution_count"] = [], None
    return nb


def default_source_dir():
    """book/exercises of this checkout (the package sits in the repository), else of the cwd."""
    here = Path(__file__).resolve().parents[2] / "book" / "exercises"
    return here if here.is_dir() else Path.cwd() / "book" / "exercises"


def release(source_dir, out_dir, force=False):
    """Write the student version of every notebook in `source_dir` to `out_dir`; return paths.

    The source folder's README.student.md goes along as README.md. Refuses to write into
    `source_dir` itself, and into a folder that already holds notebooks (or a README.md it would
    replace) unless `force`.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    notebooks = sorted(source_dir.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"release: no notebooks in {source_dir}")
    if out_dir.resolve() == source_dir.resolve():
        raise ValueError(f"release: {out_dir} is the source folder; choose another output folder "
                         "so the solutions are not overwritten")
    readme = source_dir / STUDENT_README
    if not force and out_dir.is_dir():
        present = sorted(p.name for p in out_dir.glob("*.ipynb"))
        if readme.exists() and (out_dir / "README.md").exists():
            present.append("README.md")
        if present:
            shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
            raise ValueError(f"release: {out_dir} already holds {shown}; they would be "
                             f"overwritten. Choose an empty folder, or pass --force to "
                             f"overwrite them")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        target = out_dir / path.name
        write_notebook(student_version(read_notebook(path), path.name), target)
        written.append(target)
    if readme.exists():
        shutil.copyfile(readme, out_dir / "README.md")
    return written


# --------------------------------------------------------------------------------------------------
# Running a student's file
# --------------------------------------------------------------------------------------------------
def _without_magics(text):
    return "\n".join("pass  # (magic skipped)" if _MAGIC_LINE.match(line) else line
                     for line in text.splitlines())


def cell_label(number, source):
    """How a reader finds a cell: 'code cell 3 (`def layer_norm(x, weight, bias, eps=1e-5):`)'."""
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    if len(first) > 60:
        first = first[:57] + "..."
    return f"code cell {number}" + (f" (`{first}`)" if first else " (empty)")


def code_cells(nb):
    """[(number, cell)] of the notebook's code cells, numbered from 1 in the order they appear."""
    return list(enumerate((c for c in nb["cells"] if c.get("cell_type") == "code"), start=1))


class _CappedText(io.TextIOBase):
    """A text sink that keeps the first `limit` characters written to it and drops the rest, so
    a cell that prints in a loop cannot fill the memory."""

    def __init__(self, limit=1 << 16):
        self.parts, self.left = [], limit

    def writable(self):
        return True

    def write(self, text):
        if self.left > 0:
            self.parts.append(text[:self.left])
            self.left -= len(self.parts[-1])
        return len(text)


_RAN = []          # not empty once this process has run a student's code (see student_code_ran)


def student_code_ran():
    """Has `load_namespace` run a student's code in this process? The grader then starts its
    children from a fork server rather than by forking this process."""
    return bool(_RAN)


def _run(code, filename, namespace, errors, label):
    """Execute `code` in `namespace`, recording (not raising) any exception under `label`."""
    _RAN[:] = [True]
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    try:
        compiled = compile(code, filename, "exec")
    except SyntaxError as exc:
        errors.append(syntax_error_message(exc, label))
        return
    sink = _CappedText()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            exec(compiled, namespace)  # noqa: S102 -- running the student's code is the point
    except Exception as exc:  # noqa: BLE001 -- a broken cell is reported, the others still run
        own = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        where = f", line {own[-1].lineno}" if own else ""
        errors.append(f"{label}{where}: {type(exc).__name__}: {exc}")


def syntax_error_message(exc, label):
    """'code cell 3 (`...`), line 2: SyntaxError: expected ':': `def f(x)`'."""
    text = f": `{exc.text.strip()}`" if exc.text and exc.text.strip() else ""
    line = f", line {exc.lineno}" if exc.lineno else ""
    return f"{label}{line}: {type(exc).__name__}: {exc.msg}{text}"


def load_namespace(path, skip=(), on_cell=None, cells=None):
    """Run the student's file at `path`; return (namespace, errors, filenames).

    `filenames` are the names the code was compiled under ("work.ipynb, code cell 3"), so
    callers can tell functions the file defines from functions it imports. `errors` lists the
    cells (or the file) that raised or did not compile. Cells whose labels are in `skip` are not
    run (the grader skips a cell that ended its process); `on_cell(label)`, if given, is called
    before each cell runs. `cells`: the file's `student_code(path)`, when the caller has read it
    (the grader's child, which cannot see the file).
    """
    path = Path(path)
    namespace = {"__name__": "__student__", "__file__": str(path)}
    errors, filenames = [], set()
    os.environ.setdefault("MPLBACKEND", "Agg")
    for label, filename, code in (student_code(path) if cells is None else cells):
        filenames.add(filename)
        if label in skip:
            continue
        if on_cell is not None:
            on_cell(label)
        _run(code, filename, namespace, errors, label)
    return namespace, errors, filenames


def student_code(path):
    """[(label, filename, code)]: what `load_namespace` runs, in order.

    For a notebook, every code cell that is not a check cell, magics and shell escapes replaced
    by `pass` (so line numbers stay right); for a .py file, the file.
    """
    path = Path(path)
    if path.suffix == ".ipynb":
        nb = read_notebook(path)
        found = []
        for number, cell in code_cells(nb):
            if is_check_cell(cell):
                continue
            source = cell_source(cell)
            found.append((cell_label(number, source), f"{path}, code cell {number}",
                          _without_magics(source)))
        return found
    if path.suffix == ".py":
        return [(path.name, str(path), path.read_text(encoding="utf-8"))]
    raise ValueError(f"{path}: expected a .py or .ipynb file")


def defined_functions(namespace, filenames, names):
    """{name: function} for the `names` that the loaded file itself defines (not imports)."""
    found = {}
    for name in names:
        fn = namespace.get(name)
        code = getattr(fn, "__code__", None)
        if callable(fn) and code is not None and code.co_filename in filenames:
            found[name] = fn
    return found


def student_files(path):
    """The .py and .ipynb files to grade: `path` itself, or those under the folder `path`."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    skip = {".ipynb_checkpoints", "__pycache__"}
    return sorted(p for p in path.rglob("*") if p.suffix in (".py", ".ipynb") and p.is_file()
                  and not skip & set(p.parts))
