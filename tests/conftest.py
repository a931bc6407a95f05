"""Shared test configuration: the pytester fixture runs pytest on generated projects."""

from __future__ import annotations

pytest_plugins = ["pytester"]
