"""Execute the book's chapters in place, with their outputs: `python book/execute.py [CHAPTER ...]`.

With no argument every chapter (`book/NN_*.ipynb`) is executed; a chapter may be named by its
path, its file name or its number (`python book/execute.py 03 book/12_diffusion.ipynb`). The
exercise notebooks are not chapters: they stay committed without outputs.

The chapters are committed with their outputs, so that the code host shows every figure, listing
and printout, and the website (`python book/build.py`) is built from them without re-executing.
`tests/test_book.py` executes each chapter again with the same function and fails when a text
output or the number of figures of a cell differs from the committed one. For that, and for
diffs a reader can review, the execution is made deterministic here rather than normalised
away in the test:

- one thread for BLAS, OpenMP and torch (floating-point sums can depend on the thread count);
- `PYTHONHASHSEED=0` (the order of a printed set of strings);
- `TQDM_DISABLE=1` (no progress bars: they print timings), and no warning from `tqdm.auto` that
  the notebook's progress bar widget (ipywidgets) is missing: it depends on what is installed;
- the checkout's own packages first on `PYTHONPATH` (the shown code is this repository's);
- a fresh IPython directory and a matplotlib rc file of our own (no personal settings), inline
  figures as PNG at 100 dpi, cropped to their content;
- after execution, consecutive pieces of one stream (stdout or stderr) are joined into one output
  (the kernel flushes a stream on a timer, so the split is timing), and no execution timestamps
  are recorded.

The chapters fix their own seeds. `volatile_text` names what must never appear in an output
(memory addresses, absolute paths, carriage returns of progress bars, timings): this command
refuses to write a chapter that shows any of it, and the test checks the committed chapters too.
"""

import argparse
import copy
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
REFRESH = "python book/execute.py"      # the command that refreshes the committed outputs
FIGURE_DPI = 100
TIMEOUT = 600                           # seconds for one cell

MATPLOTLIBRC = f"""\
figure.dpi: {FIGURE_DPI}
savefig.dpi: figure
figure.facecolor: white
savefig.facecolor: white
"""
KERNEL_CONFIG = """\
c.IPKernelApp.log_level = "ERROR"          # not its notice that a local kernel talks over TCP
c.InlineBackend.figure_formats = {"png"}
c.InlineBackend.print_figure_kwargs = {"bbox_inches": "tight"}
"""


def chapters():
    """The chapters of the book, in reading order: book/NN_*.ipynb."""
    return sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def find_chapter(name):
    """A chapter named by its path, its file name or its number ("3", "03"); SystemExit for
    anything else (an exercise notebook is not a chapter: it is committed without outputs)."""
    known = chapters()
    path = Path(name)
    hits = [p for p in known if path.suffix == ".ipynb" and
            (p.name == name or (path.exists() and p.samefile(path)))]
    if name.isdigit():
        hits = [p for p in known if p.name.startswith(f"{int(name):02d}_")]
    if len(hits) == 1:
        return hits[0]
    raise SystemExit(f"no chapter {name!r}: expected a path, a file name or a number of one of "
                     f"{', '.join(p.name for p in known)}")


def kernel_environment(scratch):
    """The kernel's environment: this process's, made deterministic (see the module docstring).

    `scratch` is an empty folder that holds the IPython directory and the matplotlib rc file.
    """
    scratch = Path(scratch)
    (scratch / "ipython" / "profile_default").mkdir(parents=True)
    (scratch / "ipython" / "profile_default" / "ipython_kernel_config.py").write_text(
        KERNEL_CONFIG)
    (scratch / "matplotlibrc").write_text(MATPLOTLIBRC)
    env = dict(os.environ)
    path = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    warnings = [w for w in env.get("PYTHONWARNINGS", "").split(",") if w]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        TQDM_DISABLE="1",
        PYTHONWARNINGS=",".join(warnings + ["ignore:IProgress not found"]),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        MATPLOTLIBRC=str(scratch / "matplotlibrc"),
        IPYTHONDIR=str(scratch / "ipython"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",     # debugpy's warning about frozen modules
    )
    return env


def merge_streams(outputs):
    """Join consecutive stream outputs of the same name (stdout or stderr) into one output."""
    merged = []
    for out in outputs:
        if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                and merged[-1].name == out.name):
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def execute(nb, timeout=TIMEOUT):
    """Execute a copy of the notebook `nb` from book/ in a fresh kernel; return the copy.

    A cell that raises stops the execution with nbclient's `CellExecutionError`, which names the
    cell and carries the traceback.
    """
    nb = copy.deepcopy(nb)
    metadata = copy.deepcopy(nb.metadata)     # as committed: not the kernel's Python version
    with tempfile.TemporaryDirectory(prefix="uvit-book-") as scratch:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(BOOK)}})
        client.execute(env=kernel_environment(scratch))
    nb.metadata = metadata
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
            steady_widget_ids(cell)
    return nb


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def steady_widget_ids(cell):
    """Give each widget shown in `cell` an id made from the cell's id, not the kernel's random
    one: a widget's live state is not saved with the chapter, so the id points at nothing, and a
    random one would change the committed notebook at every execution."""
    shown = [out.data[WIDGET_VIEW] for out in cell.outputs if WIDGET_VIEW in out.get("data", {})]
    for n, view in enumerate(shown):
        view["model_id"] = hashlib.md5(f"{cell.get('id', '')}:{n}".encode()).hexdigest()


# --- what an output must never show -------------------------------------------------------------

VOLATILE = [
    (re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "a memory address"),
    (re.compile(r"\r"), "a carriage return (a progress bar?)"),
    (re.compile(r"\d+(\.\d+)?\s?(it/s|s/it)\b"), "a progress rate"),
    (re.compile(r"(?i)\b(wall|cpu) time\b|\b\d+(\.\d+)?\s?(ms|µs|us) per loop\b"), "a timing"),
    (re.compile(r"(?<![\w.])/(home|root|tmp|work|usr|opt|var|Users)/"), "an absolute path"),
    (re.compile(r"[A-Za-z]:\\\\"), "an absolute path"),
]


def output_text(out):
    """The text a reader sees of one output: stream text, every text/* form, or the traceback."""
    if out.output_type == "stream":
        return out.text
    if out.output_type == "error":
        return "\n".join(out.traceback)
    return "\n".join(v if isinstance(v, str) else "".join(v)
                     for k, v in out.get("data", {}).items() if k.startswith("text/"))


def volatile_text(nb, name="notebook"):
    """Problems that make an output differ between runs or machines, one line each."""
    problems = []
    roots = {str(ROOT), str(Path.home())}
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.get("outputs", []):
            text = output_text(out)
            found = [(m.group(), why) for rx, why in VOLATILE for m in [rx.search(text)] if m]
            found += [(r, "an absolute path") for r in roots if r in text and len(r) > 1]
            for what, why in found:
                line = next(line for line in text.splitlines() or [text] if what in line)
                problems.append(f"{name}, code cell {i + 1}: {why}, {what!r}, in: "
                                f"{line.strip()[:120]!r}")
        if "execution" in cell.metadata:
            problems.append(f"{name}, code cell {i + 1}: execution timestamps in its metadata")
    return problems


# --- comparing a fresh execution with the committed outputs ---------------------------------------

def summary(cell):
    """What the test compares of a code cell: its execution count, the text of each stream (all of
    a stream's pieces joined), and its other outputs in order, each as its type, its MIME types and
    every text form, images counted but not compared byte for byte."""
    streams = {}
    rich = []
    for out in cell.outputs:
        if out.output_type == "stream":
            streams[out.name] = streams.get(out.name, "") + out.text
        elif out.output_type == "error":
            rich.append(("error", out.ename, out.evalue))
        else:
            data = out.get("data", {})
            texts = tuple((k, data[k]) for k in sorted(data) if k.startswith("text/"))
            rich.append((out.output_type, tuple(sorted(data)), texts))
    return {"execution_count": cell.execution_count, "streams": streams, "outputs": rich}


def figures(cell):
    """The number of images among a code cell's outputs."""
    return sum(any(k.startswith("image/") for k in out.get("data", {}))
               for out in cell.get("outputs", []))


def first_difference(a, b):
    """The first line where texts a and b differ, as a short readable note."""
    la, lb = a.splitlines(), b.splitlines()
    for n, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {n + 1}: committed {x[:100]!r}, now {y[:100]!r}"
    if len(la) != len(lb):
        return f"committed {len(la)} lines, now {len(lb)}"
    return "they differ in whitespace at the end of a line or of the text"


def differences(committed, fresh, name="notebook"):
    """How the outputs of `fresh` (a new execution) differ from `committed`, one line per cell."""
    problems = []
    old = [c for c in committed.cells if c.cell_type == "code"]
    new = [c for c in fresh.cells if c.cell_type == "code"]
    if [c.source for c in old] != [c.source for c in new]:
        return [f"{name}: the code cells differ from the committed ones"]
    for i, (a, b) in enumerate(zip(old, new)):
        where = f"{name}, code cell {i + 1} ({a.source.strip().splitlines()[0][:60]!r}...)" \
            if a.source.strip() else f"{name}, code cell {i + 1}"
        sa, sb = summary(a), summary(b)
        if figures(a) != figures(b):
            problems.append(f"{where}: committed {figures(a)} figures, now {figures(b)}")
        if sa["execution_count"] != sb["execution_count"]:
            problems.append(f"{where}: execution count {sa['execution_count']}, now "
                            f"{sb['execution_count']} (not saved by {REFRESH}?)")
        for stream in sorted(set(sa["streams"]) | set(sb["streams"])):
            x, y = sa["streams"].get(stream, ""), sb["streams"].get(stream, "")
            if x != y:
                problems.append(f"{where}: {stream} differs, {first_difference(x, y)}")
        if sa["outputs"] != sb["outputs"]:
            problems.append(f"{where}: its displayed outputs differ: committed "
                            f"{short(sa['outputs'])}, now {short(sb['outputs'])}")
    return problems


def short(outputs, width=300):
    text = repr(outputs)
    return text if len(text) <= width else text[:width] + "..."


# --- the command ----------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Execute the book's chapters in place and write their outputs "
                    "(deterministically: one thread, fixed hash seed, no progress bars).")
    parser.add_argument("chapters", nargs="*", help="paths, file names or numbers of chapters "
                        "(default: every chapter)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds for one cell")
    args = parser.parse_args(argv)
    paths = [find_chapter(c) for c in args.chapters] if args.chapters else chapters()
    failed = []
    for path in paths:
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        fresh = execute(nb, timeout=args.timeout)
        problems = volatile_text(fresh, path.name)
        if problems:
            failed.append(path.name)
            print(f"{path.name}: NOT written; its outputs show what changes from run to run:",
                  *problems, sep="\n  ", file=sys.stderr)
            continue
        nbformat.validate(fresh)
        nbformat.write(fresh, path)
        n = sum(figures(c) for c in fresh.cells if c.cell_type == "code")
        print(f"{path.relative_to(ROOT)}: {time.perf_counter() - start:.1f} s, {n} figures, "
              f"{path.stat().st_size / 1024:.0f} KiB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
