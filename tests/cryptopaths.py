"""Both crypto paths for parametrized tests. The native one must be present in CI."""

import os

import pytest

from vpncrypt.protocol import aead


def context_class(path: str):
    if path == "reference":
        return aead.ReferenceSivContext
    native = aead.native_context()
    if native is None:
        if os.environ.get("CI"):
            pytest.fail("the native extension vpncrypt._fast is not built (CI must exercise it)")
        pytest.skip("native extension not built (python setup.py build_ext --inplace)")
    return native


PATHS = ["native", "reference"]
