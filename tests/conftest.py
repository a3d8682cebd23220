"""Test-session settings.

torch uses one intra-op thread in the tests: their models are tiny, and when the machine is busy
(another job on one of two cores) torch's thread pool stalls on small ops, turning a one-second
autograd check into minutes. The trainers' and benchmarks' own commands keep torch's default.
"""

import torch

torch.set_num_threads(1)
