"""The standalone reproduction script written beside each JSON report."""

from __future__ import annotations

import json
import pprint
from typing import Any

__all__ = ["render_script"]

_TEMPLATE = '''#!/usr/bin/env python3
"""Reproduce a difftest failure: {name} gave {verdict} on {descriptor}.

Rebuilds the exact inputs from the case below (no Hypothesis involved), runs
the implementation and torch.nn.functional.conv2d, prints the comparison with
the float64 truth, and exits with status 1 while the failure persists and 0
once it is fixed. Needs difftest, torch and the implementation importable;
exits with status 2 and one line naming the bad field when the report below
cannot be replayed.
"""

import sys

# The report this script was written from, verbatim.
REPORT = {report}


def main() -> int:
    try:
        from difftest.errors import DifftestError
        from difftest.replay import replay_data
        from difftest.text import format_report
    except ImportError as error:
        # Status 1 would read as "the failure persists".
        print(f"error: cannot import difftest ({{error}}); run this script with the Python "
              f"environment where difftest is installed", file=sys.stderr)
        return 2

    try:
        outcome, data = replay_data(REPORT, __file__)
    except DifftestError as error:
        print(f"error: {{error}}", file=sys.stderr)
        return 2
    print(format_report(data))
    if outcome.passed:
        print("fixed: the implementation now agrees with the float64 truth")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
'''


def render_script(data: dict[str, Any]) -> str:
    """Return the source of a script that reproduces the failure in ``data``."""
    from difftest.reports import plain

    # plain() writes NaN and infinities as strings: pprint would write them as names Python does not define.
    report = pprint.pformat(json.loads(json.dumps(plain(data), default=str)), indent=1, width=100,
                            sort_dicts=True)
    return _TEMPLATE.format(
        name=data["implementation"]["name"],
        verdict=data["verdict"],
        descriptor=data.get("case_descriptor", ""),
        report=report,
    )
