"""`python -m uvit_torch.parity`: the parity report (see the package's docstring)."""

import sys

from . import main

sys.exit(main())
