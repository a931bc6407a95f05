"""Each package's __all__ names exactly what it exports, and every name resolves."""

from __future__ import annotations

import doctest
import importlib

import pytest

PACKAGES = ["difftest", "strategies"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve(name):
    module = importlib.import_module(name)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ lists {exported!r}, which is not defined"


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_unique(name):
    exported = importlib.import_module(name).__all__
    assert list(exported) == sorted(set(exported))


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_listed(name):
    module = importlib.import_module(name)
    public = {
        attribute for attribute, value in vars(module).items()
        if not attribute.startswith("_") and getattr(value, "__module__", "").startswith(name)
        and not isinstance(value, type(module))
    }
    assert public <= set(module.__all__), sorted(public - set(module.__all__))


@pytest.mark.parametrize("name", ["difftest", "difftest.registry", "strategies"])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0
