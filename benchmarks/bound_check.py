"""Check the error bound against torch's own conv2d and the correct built-ins on a fixed grid.

Runs every dtype and value kind on shapes from a 3x3 kernel over three
channels up to reductions of almost ten thousand terms. The shapes include
groups, stride, dilation, bias and non-zeros padding modes. For each
implementation and dtype it prints the greatest error over the bound. It
then lists every case that failed, and every case on which torch itself broke
the bound or the NaN and infinity rule. A correct implementation stays below
1 everywhere.

    python benchmarks/bound_check.py [--seeds 3] [--impl NAME ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections import defaultdict

from difftest.case import DTYPES, VALUE_KINDS, ConvCase
from difftest.registry import get
from difftest.runner import CaseContext, evaluate

# (batch, in_channels, out_channels, height, width, kernel, groups, stride, dilation, padding, padding_mode)
SHAPES = [
    (2, 3, 4, 9, 9, 3, 1, 1, 1, (1, 1), "zeros"),
    (1, 96, 4, 9, 9, 7, 1, 1, 1, (0, 0), "zeros"),
    (1, 200, 2, 8, 8, 7, 1, 1, 1, (0, 0), "zeros"),
    (1, 512, 4, 5, 5, 3, 1, 1, 1, "same", "zeros"),
    (2, 96, 8, 9, 9, 7, 4, 1, 1, (1, 2), "reflect"),
    (2, 16, 16, 9, 9, 3, 16, 1, 1, (1, 1), "circular"),
    (2, 48, 4, 12, 12, 5, 1, 2, 2, (2, 2), "replicate"),
    (1, 64, 4, 6, 6, 1, 1, 1, 1, (0, 0), "zeros"),
]


def _cases(seeds: int):
    for dtype in DTYPES:
        for shape in SHAPES:
            batch, cin, cout, h, w, k, groups, stride, dilation, padding, mode = shape
            for values in VALUE_KINDS:
                for seed in range(seeds):
                    yield ConvCase(batch=batch, in_channels=cin, out_channels=cout, height=h, width=w,
                                   kernel_height=k, kernel_width=k, groups=groups, stride=stride,
                                   dilation=dilation, padding=padding, padding_mode=mode, bias=seed % 2 == 0,
                                   dtype=dtype, values=values, seed=seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per grid point (default 3)")
    parser.add_argument("--impl", action="append", default=None, help="built-in to check (repeatable; default all "
                        "correct ones except torch_compile)")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore")

    from difftest import builtins

    names = arguments.impl or [name for name in builtins.CORRECT if name != "torch_compile"]
    implementations = [get(name) for name in names]
    worst: dict[tuple[str, str], float] = defaultdict(float)
    worst_kind: dict[tuple[str, str], float] = defaultdict(float)
    failures: list[str] = []
    suspects: dict[str, str] = {}
    cases = 0
    started = time.perf_counter()

    for case in _cases(arguments.seeds):
        if not case.is_valid():
            continue
        cases += 1
        context = CaseContext(case)
        for implementation in implementations:
            if implementation.supports.rejects(case):
                continue
            outcome = evaluate(implementation, case, context)
            ratio = outcome.implementation_error.get("max_error_over_bound", 0.0)
            if not math.isnan(ratio):
                worst[implementation.name, case.dtype] = max(worst[implementation.name, case.dtype], ratio)
                worst_kind[implementation.name, case.values] = max(worst_kind[implementation.name, case.values],
                                                                   ratio)
            if not outcome.passed:
                failures.append(f"{implementation.name}: {outcome.verdict} on {case.describe()}: {outcome.detail}"
                                + (f" [{outcome.reference_suspect}]" if outcome.reference_suspect else ""))
            if outcome.reference_suspect:
                suspects[case.describe()] = outcome.reference_suspect

    print(f"{cases} cases, {time.perf_counter() - started:.0f} s")
    print(f"{'implementation':<22}" + "".join(f"{dtype:>10}" for dtype in DTYPES))
    for implementation in implementations:
        cells = [worst.get((implementation.name, dtype)) for dtype in DTYPES]
        print(f"{implementation.name:<22}" + "".join(f"{'-' if c is None else format(c, '.3g'):>10}" for c in cells))
    print("\ngreatest error over the bound per value kind")
    print(f"{'implementation':<22}" + "".join(f"{kind[:9]:>10}" for kind in VALUE_KINDS))
    for implementation in implementations:
        cells = [worst_kind.get((implementation.name, kind)) for kind in VALUE_KINDS]
        print(f"{implementation.name:<22}" + "".join(f"{'-' if c is None else format(c, '.3g'):>10}" for c in cells))
    print(f"\n{len(failures)} failures")
    for line in failures:
        print("  " + line)
    print(f"\n{len(suspects)} cases on which torch itself is suspect")
    for descriptor, reason in sorted(suspects.items()):
        print(f"  {descriptor}: {reason}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
