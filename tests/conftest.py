"""Shared fixtures: the ``backend`` fixture that runs a conformance test on every backend, and the
Hypothesis profiles.

Hypothesis profiles: ``ci`` (the default: few examples, no deadline, so the suite stays fast and
does not flake on a slow machine or a Numba compile) and ``thorough`` (for a local deep run:
``HYPOTHESIS_PROFILE=thorough pytest``).
"""

from __future__ import annotations

import functools
import importlib
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import xent

# The reference computations are tiny: with more than one intra-op thread, PyTorch spends tens of
# times longer synchronising its thread pool than computing (about 2 ms against 0.05 ms for a
# (5, 4) cross-entropy and its backward on a 2-core machine).
torch.set_num_threads(1)

# The `backend` fixture is function-scoped but constant over a test's examples, so Hypothesis'
# warning about function-scoped fixtures does not apply to it.
_SUPPRESSED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=_SUPPRESSED)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=_SUPPRESSED
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ["numpy", "numba"]


@functools.cache
def _numba_unavailable_reason() -> str | None:
    """Why the Numba backend cannot run here, or None when it can."""
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba cannot be imported ({exc})"
    try:
        importlib.import_module("xent._kernels")
    except ImportError as exc:  # a broken install of the kernels
        return f"xent._kernels cannot be imported: {exc}"
    return None


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test inside ``xent.use_backend(name)`` for each backend; skip the missing ones."""
    name = request.param
    if name == "numba":
        reason = _numba_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    with xent.use_backend(name):
        yield name


# `python3 tasks.py test-fast` (-m "not slow") keeps the NumPy backend's conformance suite, the
# torch drop-ins and the tutorials' numbers. Slow: whole files (subprocesses of the command line,
# torch.distributed, scikit-learn's estimator checks, PyTorch's OpInfo sweep, the kernels' own
# sweeps and the cross-product of options and entry points) and every test run on the numba
# backend (first compiles, then the same assertions as on numpy). Single slow tests elsewhere
# carry @pytest.mark.slow themselves.
_SLOW_FILES = ("test_cli_", "test_torch_parallel", "test_sklearn", "test_opinfo", "test_kernels",
               "test_vexp", "test_core_options", "test_core_properties")


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(item, "callspec", None)
        numba = params is not None and params.params.get("backend") == "numba"
        if numba or item.path.name.startswith(_SLOW_FILES):
            item.add_marker(pytest.mark.slow)
