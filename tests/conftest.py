"""The optional peers' markers (registered in pyproject.toml) and the fixtures several test folders share.

A test that needs torch, matplotlib, scikit-learn, mlxtend or chromium carries the peer's marker: it is skipped, with
the reason, where the peer is missing (`pip install -e ".[test]" && pytest` on a bare machine), and CI runs the marked
tests again once the peers are installed. `@pytest.mark.torch(optional=True)`: the test runs without the peer too and
checks more with it.
"""

from __future__ import annotations

import pytest

from helpers import PEERS, have, optional


def pytest_runtest_setup(item):
    for marker in item.iter_markers():
        if marker.name in PEERS and not marker.kwargs.get("optional") and not have(marker.name):
            pytest.skip(f"needs {marker.name}, an optional peer that is not installed here ({PEERS[marker.name]})")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips for want of a peer without carrying its marker fails: CI's run of the marked tests, the
    only one with the peers installed, would never run it."""
    report = yield
    if report.skipped and call.excinfo is not None:
        reason = str(call.excinfo.value)
        for peer in PEERS:
            if f"could not import '{peer}'" in reason and item.get_closest_marker(peer) is None:
                report.outcome = "failed"
                report.longrepr = f"{item.nodeid}: skipped ({reason}) but not marked @pytest.mark.{peer}"
    return report


@pytest.fixture
def one_thread():
    """Tiny matrices run fastest on one BLAS (and torch) thread, and many times faster than on two when another job
    busies a core of a 2-core machine; limit the threads for the training-loop tests, where available."""
    threadpoolctl = optional("threadpoolctl")  # installed with scikit-learn; without it the tests only run slower
    torch = optional("torch")
    threads = torch.get_num_threads() if torch else None
    limits = threadpoolctl.threadpool_limits(1) if threadpoolctl else None
    if torch:
        torch.set_num_threads(1)
    yield
    if torch:
        torch.set_num_threads(threads)
    if limits:
        limits.restore_original_limits()


@pytest.fixture(params=("small path", "one-chunk path", "large path"))
def path(request, monkeypatch):
    """The paths of a generated module: as the test's inputs are (inputs up to the module's SMALL elements take the
    small path), the NumPy small path's passes over the input as one chunk (the Numba modules have no such path and
    take their small one) and the large path, each forced as `symbn check` forces it (symbn.codegen.check.paths).
    Returns what prepares a module for the current one."""
    from symbn.codegen.check import paths

    def prepare(module):
        for label, name, value in paths(module):
            if label == request.param:
                monkeypatch.setattr(module, name, value)
        return module

    return prepare
