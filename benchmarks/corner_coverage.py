"""Count how often strategies.conv_cases() and invalid_conv_calls() reach each corner of conv2d.

Draws N cases (default 3000) for an implementation that supports everything
and prints, for each corner, how many drawn cases are in it. A corner with a
count of 0 is never searched.

    python benchmarks/corner_coverage.py [--examples 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Callable

import hypothesis
from hypothesis import HealthCheck, Phase, given

from difftest.case import DTYPES, LAYOUTS, PADDING_MODES, VALUE_KINDS, ConvCase, explicit_padding
from difftest.invalid import REASONS
from difftest.registry import Supports
from strategies import conv_cases, invalid_conv_calls


def _same_with_uneven_padding(case: ConvCase) -> bool:
    top, bottom, left, right = explicit_padding(case.padding, case.kernel, case.dilation)
    return case.padding == "same" and (top != bottom or left != right)


# Each corner, as a test on a drawn case.
CORNERS: dict[str, Callable[[ConvCase], bool]] = {
    "batch above 1": lambda case: case.batch > 1,
    "unbatched (3-D input)": lambda case: case.unbatched,
    "groups above 1": lambda case: case.groups > 1,
    "depthwise (groups = in_channels > 1)": lambda case: case.groups > 1 and case.groups == case.in_channels,
    "channel multiplier (out per group > 1, groups > 1)":
        lambda case: case.groups > 1 and case.out_channels // case.groups > 1,
    "non-square kernel": lambda case: case.kernel_height != case.kernel_width,
    "non-square input": lambda case: case.height != case.width,
    "1x1 kernel": lambda case: case.kernel == (1, 1),
    "stride above 1": lambda case: max(case.stride) > 1,
    "per-axis stride": lambda case: case.stride[0] != case.stride[1],
    "dilation above 1": lambda case: max(case.dilation) > 1,
    "per-axis dilation": lambda case: case.dilation[0] != case.dilation[1],
    "padding int": lambda case: not isinstance(case.padding, str) and case.padding[0] == case.padding[1] > 0,
    "padding pair": lambda case: not isinstance(case.padding, str) and case.padding[0] != case.padding[1],
    "padding 'valid'": lambda case: case.padding == "valid",
    "padding 'same'": lambda case: case.padding == "same",
    "'same' with uneven padding (even dilated kernel)": _same_with_uneven_padding,
    "output of one row or column": lambda case: min(case.output_hw) == 1,
    "kernel spans the padded input": lambda case: case.output_hw == (1, 1),
    "bias": lambda case: case.bias,
    "odd reduction length": lambda case: case.reduction_length % 2 == 1 and case.reduction_length > 1,
    "long reduction (>= 1000 terms)": lambda case: case.reduction_length >= 1000,
    **{f"padding_mode {mode}": (lambda mode: lambda case: case.padding_mode == mode)(mode)
       for mode in PADDING_MODES if mode != "zeros"},
    **{f"dtype {dtype}": (lambda dtype: lambda case: case.dtype == dtype)(dtype) for dtype in DTYPES},
    **{f"input layout {layout}": (lambda layout: lambda case: case.input_layout == layout)(layout)
       for layout in LAYOUTS},
    **{f"weight layout {layout}": (lambda layout: lambda case: case.weight_layout == layout)(layout)
       for layout in LAYOUTS},
    **{f"values {kind}": (lambda kind: lambda case: case.values == kind)(kind) for kind in VALUE_KINDS},
}


def count_corners(examples: int, seed: int) -> collections.Counter:
    """Return how many of ``examples`` drawn cases fall in each corner."""
    counts: collections.Counter = collections.Counter()
    supports = Supports(padding_modes=set(PADDING_MODES))

    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(conv_cases(supports=supports))
    def draw(case: ConvCase) -> None:
        counts["(cases)"] += 1
        for name, test in CORNERS.items():
            counts[name] += test(case)

    draw()
    return counts


def count_reasons(examples: int, seed: int) -> collections.Counter:
    """Return how many of ``examples`` drawn invalid calls have each reason."""
    counts: collections.Counter = collections.Counter()

    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(invalid_conv_calls())
    def draw(call) -> None:
        counts["(calls)"] += 1
        counts[call.why] += 1

    draw()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=3000, metavar="N", help="cases to draw (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    arguments = parser.parse_args()

    corners = count_corners(arguments.examples, arguments.seed)
    print(f"conv_cases(): {corners['(cases)']} cases")
    for name in CORNERS:
        print(f"  {corners[name]:>6}  {name}")
    reasons = count_reasons(arguments.examples, arguments.seed)
    print(f"invalid_conv_calls(): {reasons['(calls)']} calls")
    for reason in REASONS:
        print(f"  {reasons[reason]:>6}  {reason}")
    never = [name for name in CORNERS if corners[name] == 0]
    return 1 if never else 0


if __name__ == "__main__":
    sys.exit(main())
