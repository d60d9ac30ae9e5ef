"""Root pytest configuration: what `--doctest-modules` may collect on this machine.

The Numba kernels' modules import numba at import time; where Numba is not installed (the
library is correct without it) their doctests are not collected, and the kernel tests skip.
Likewise xent.torch and xent.cli without PyTorch.
"""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("numba") is None:
    collect_ignore_glob.append("src/xent/_kernels/*")
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob += ["src/xent/torch/*", "src/xent/cli/*"]
