"""Estimate the memory a case needs in this process, and refuse cases over a budget before building them."""

from __future__ import annotations

import math
import os
from typing import Optional

from difftest.case import ConvCase, explicit_padding
from difftest.errors import MemoryBudgetError

__all__ = ["estimate_case_bytes", "check_memory_budget", "default_memory_budget", "ELEMENT_BYTES"]

ELEMENT_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
_FLOAT64 = 8


def _stored_elements(shape: tuple[int, ...], layout: str) -> int:
    # A sliced tensor is every other element of one twice as wide; an expanded
    # one stores a single slice along its first axis.
    count = math.prod(shape)
    if layout == "sliced":
        return 2 * count
    if layout == "expanded":
        return count // shape[0]
    return count


def estimate_case_bytes(case: ConvCase) -> int:
    """Return an estimate of the peak bytes a case needs while difftest judges it in this process.

    It counts the inputs in the case's dtype (with their layout's storage) and
    the snapshot the contract checks copy. It adds the float64 copies, truth
    and magnitude, the error bound, torch's reference output, the
    implementation's output and the comparison's float64 temporaries. The
    largest transient is the column buffer of a CPU convolution: batch x
    in_channels x kernel area x output area elements, as torch's non-MKLDNN
    CPU conv2d unfolds its input. An implementation's own workspace is not
    counted.
    """
    element = ELEMENT_BYTES[case.dtype]
    input_elements = math.prod(case.input_shape)
    weight_elements = math.prod(case.weight_shape)
    bias_elements = case.out_channels if case.bias else 0
    output_elements = math.prod(case.output_shape)
    stored = (_stored_elements(case.input_shape, case.input_layout)
              + _stored_elements(case.weight_shape, case.weight_layout) + bias_elements)
    logical = input_elements + weight_elements + bias_elements

    # Inputs, then the snapshot: a copy of the bytes of their storage.
    inputs = 2 * element * stored
    # inputs64, and the absolute values the magnitude convolves.
    widened = 2 * _FLOAT64 * logical
    # Truth, magnitude, bound values, and about three float64 temporaries while comparing.
    outputs64 = 6 * _FLOAT64 * output_elements
    # torch's reference and the implementation's output, in the case's dtype.
    outputs = 2 * element * output_elements

    output_area = case.output_hw[0] * case.output_hw[1]
    columns = case.batch * case.in_channels * case.kernel_height * case.kernel_width * output_area
    padded = 0
    if case.padding_mode != "zeros":
        top, bottom, left, right = explicit_padding(case.padding, case.kernel, case.dilation)
        padded = case.batch * case.in_channels * (case.height + top + bottom) * (case.width + left + right)
    transient = _FLOAT64 * (columns + padded)
    return inputs + widened + outputs64 + outputs + transient


def check_memory_budget(case: ConvCase, budget: Optional[int]) -> None:
    """Raise MemoryBudgetError when ``case`` is estimated to need more than ``budget`` bytes; None means no budget."""
    if budget is None:
        return
    needed = estimate_case_bytes(case)
    if needed > budget:
        raise MemoryBudgetError(case.describe(), needed, budget)


def default_memory_budget() -> Optional[int]:
    """Return half of this machine's physical memory in bytes, or None where the platform does not report it."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return pages * page_size // 2

