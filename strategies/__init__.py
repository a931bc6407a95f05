"""Hypothesis strategies that draw conv2d cases for differential testing.

>>> from strategies import conv_cases
>>> from hypothesis import given
>>> @given(conv_cases(dtypes={"float64"}, allow_groups=False))
... def test_my_conv(case):
...     assert case.is_valid()
"""

from __future__ import annotations

from strategies._cases import available_devices, check_narrowing, conv_cases, value_kinds
from strategies._invalid import invalid_conv_calls

__all__ = ["available_devices", "check_narrowing", "conv_cases", "invalid_conv_calls", "value_kinds"]
