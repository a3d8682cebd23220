"""Execute a notebook top to bottom with nbclient, in its own folder, and time it; and load the
book's own execution command (book/execute.py), which the book's tests use.

Shared by the tests of the book and of the exercise notebooks. A cell that raises fails the test
with nbclient's report of the cell and the traceback.
"""

import importlib.util
import os
import time
from functools import cache
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute_notebook(path, timeout=120):
    """Run every cell of the notebook at `path`; return the wall time in seconds."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # one BLAS thread per kernel: the book's arrays are small, and on a busy 2-core machine
    # OpenBLAS's spinning worker threads made NumPy several times slower than one thread
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def notebooks_under(folder):
    """The .ipynb files directly in `folder` (relative to the repository root), sorted."""
    return sorted((ROOT / folder).glob("*.ipynb"))


@cache
def book_module(name):
    """book/<name>.py loaded as a module (book/ is a folder of commands, not a package)."""
    spec = importlib.util.spec_from_file_location(f"book_{name}", ROOT / "book" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
