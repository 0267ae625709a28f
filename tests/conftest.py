"""Shared pytest fixtures.  Keep each group of fixtures under its own heading."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

# --------------------------------------------------------------------------- network namespaces
# Hosts for integration tests; see tests/netns.py.  Tests using them are marked
# @pytest.mark.netns and skip without root/netns (or fail, when $CI is set).

from netns import Netns, require_netns  # noqa: E402


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], Netns]]:
    """Yield `make()`, which returns a new namespace host; all are deleted at teardown."""
    require_netns()
    hosts: list[Netns] = []

    def make() -> Netns:
        host = Netns()
        hosts.append(host)
        return host

    try:
        yield make
    finally:
        for host in reversed(hosts):
            host.close()


# --------------------------------------------------------------------------- the built wheel
# One `python -m build` per session (about a minute): the Python packaging tests and the
# OpenWrt package's install test both use its wheel.

from pkgtest import Built, build_wheel  # noqa: E402


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


# --------------------------------------------------------------------------- config tests


@pytest.fixture
def unprivileged_dir():
    """A directory an unprivileged user may traverse (pytest's tmp_path is 0700 root's)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="vpncrypt-config-test-")
    os.chmod(path, 0o755)
    try:
        yield __import__("pathlib").Path(path)
    finally:
        shutil.rmtree(path)
