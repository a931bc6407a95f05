"""difftest: property-based differential testing of conv2d implementations against torch.

>>> import torch
>>> import difftest
>>> impl = difftest.register("torch_itself", torch.nn.functional.conv2d)
>>> outcome = difftest.evaluate(impl, difftest.ConvCase(in_channels=2, height=4, width=4))
>>> outcome.verdict
'pass'
"""

from __future__ import annotations

__version__ = "0.1.0"

from difftest.case import ConvCase
from difftest.errors import DifftestError, ReportError, UnsupportedCaseError, UsageError
from difftest.fuzz import FuzzOptions, ImplementationResult, fuzz, fuzz_implementation
from difftest.registry import Implementation, Supports, get, load, register, registered, unregister
from difftest.runner import CaseContext, Outcome, evaluate

__all__ = [
    "CaseContext",
    "ConvCase",
    "DifftestError",
    "FuzzOptions",
    "Implementation",
    "ImplementationResult",
    "Outcome",
    "ReportError",
    "Supports",
    "UnsupportedCaseError",
    "UsageError",
    "evaluate",
    "fuzz",
    "fuzz_implementation",
    "get",
    "load",
    "register",
    "registered",
    "unregister",
]
