"""`python -m uvit_torch.bench`: the benchmark, which lives in `uvit_torch.parity.bench`."""

import sys

from .parity.bench import main

if __name__ == "__main__":
    sys.exit(main())
