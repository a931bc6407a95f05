"""Regions of the conv2d parameter space, so that one campaign splits into many independent searches.

pytest-xdist hands whole test items to its workers, never single Hypothesis
examples, so a campaign that should keep every worker busy is split into one
item per implementation, dtype and region. A region is a set of keyword
arguments for :func:`strategies.conv_cases` that turns one group of features
on and keeps the others plain, so each search concentrates on one corner.

Regions overlap: all of them shrink toward the same plain case, and
``conv_cases`` has no lower bound on groups or dilation, so the 'grouped'
search also draws groups=1. The 'mixed' region leaves everything on, for the
bugs that need two features at once.
"""

from __future__ import annotations

from typing import Any, Optional

from difftest.errors import UsageError
from difftest.registry import Supports

__all__ = ["REGIONS", "region_names", "region_strategy"]

# Keyword arguments that switch every optional feature off.
_PLAIN: dict[str, Any] = dict(
    allow_groups=False,
    allow_stride=False,
    allow_dilation=False,
    allow_long_reductions=False,
    padding_forms=("int", "pair", "valid"),
    padding_modes=("zeros",),
    layouts=("contiguous",),
)

# Region name -> (description, conv_cases keyword arguments laid over _PLAIN).
# A value of None removes the restriction, so the implementation's Supports decides.
REGIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("no groups, stride, dilation or long reductions; zeros padding; contiguous tensors", {}),
    "grouped": ("groups up to 3, everything else plain", dict(allow_groups=True)),
    "dilated_strided": ("stride and dilation together", dict(allow_stride=True, allow_dilation=True)),
    "padding": ("every padding form ('same', 'valid', per-axis pairs) and padding mode",
                dict(padding_forms=None, padding_modes=None)),
    "layouts": ("channels_last, sliced, transposed and expanded input and weight",
                dict(layouts=None)),
    "long_reductions": ("one case in eight has up to 96 in-channels and a 7x7 kernel",
                        dict(allow_long_reductions=True)),
    "mixed": ("every feature on at once", dict(allow_groups=True, allow_stride=True, allow_dilation=True,
                                                allow_long_reductions=True, padding_forms=None,
                                                padding_modes=None, layouts=None)),
}

# Regions that exist for one feature, with the Supports test for whether an implementation has it.
_NEEDS = {
    "grouped": lambda s: s.groups,
    "dilated_strided": lambda s: s.stride or s.dilation,
    "padding": lambda s: bool(s.padding_modes - {"zeros"}) or bool(s.padding_forms & {"same", "valid", "pair"}),
    "layouts": lambda s: bool(s.layouts - {"contiguous"}),
}


def region_names() -> tuple[str, ...]:
    return tuple(REGIONS)


def region_strategy(name: str, supports: Optional[Supports] = None) -> Optional[dict[str, Any]]:
    """Return the conv_cases keyword arguments of region ``name`` for an implementation.

    Returns None when the implementation lacks the region's feature, so the
    search would only repeat the 'plain' region. Raises UsageError for an
    unknown region name.
    """
    if name not in REGIONS:
        raise UsageError("region", name, "unknown region", f"choose from {', '.join(REGIONS)}")
    supports = supports or Supports()
    need = _NEEDS.get(name)
    if need is not None and not need(supports):
        return None

    arguments = {**_PLAIN, **REGIONS[name][1]}
    allowed = {"padding_forms": supports.padding_forms, "padding_modes": supports.padding_modes,
               "layouts": supports.layouts}
    for key, permitted in allowed.items():
        if arguments[key] is None:
            del arguments[key]
            continue
        # Keep only values the implementation supports; conv_cases rejects an empty choice.
        chosen = tuple(value for value in arguments[key] if value in permitted)
        if not chosen:
            return None
        arguments[key] = chosen
    return arguments
