"""What the benchmarks share (`bench.py`, `bench_uvit_pipeline.py`): the machine's line, the
targets' verdicts and the process's memory as Linux reports it."""

import contextlib
import os

import numpy as np
import torch

from uvit_numpy.cli import blas_threads, set_threads  # noqa: F401 -- the benchmarks' thread setter


def _read_status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine():
    """A line naming the CPU, NumPy's BLAS and the thread counts: figures from different machines
    (an AVX-512 Xeon and an AMD EPYC measure different NumPy / torch ratios) can be told apart."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            info = f.read()
        flags = " AVX-512" if "avx512f" in info else (" AVX2" if "avx2" in info else "")
    return (f"machine: {cpu}{flags}, {os.cpu_count()} cores; NumPy {np.__version__} with "
            f"{blas.get('name', '?')} {blas.get('version', '')}; torch {torch.__version__}; "
            f"threads: torch {torch.get_num_threads()}, NumPy's BLAS {blas_threads()}")


def verdict(value, limit):
    """'(target <= limit)' or, when the figure is over it, a line a reader cannot miss."""
    return (f"(target <= {limit})" if value <= limit
            else f"(target <= {limit})   <-- MISSED: over the target by {value / limit - 1:.0%}")
