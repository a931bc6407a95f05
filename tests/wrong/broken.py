"""Wrong conv2d implementations that break the harness's contracts.

They crash, hang, exhaust memory, write to their input, return their input,
return random results or raise. Importing this module is harmless, but calling
``segfault_when_batched``, ``hang_when_tall`` or ``allocate_when_wide`` on
their trigger cases must only happen in a process one can lose, under a
timeout and a memory limit.
"""

from __future__ import annotations

import ctypes
import os
import random
import time

import torch

from tests.wrong._common import PLAIN_3X3, batched, declare, reference_conv2d

__all__ = [
    "segfault_when_batched",
    "hang_when_tall",
    "allocate_when_wide",
    "mutates_input",
    "output_aliases_input",
    "random_answers",
    "groups_not_implemented",
    "same_even_kernel_rejected",
    "IMPLEMENTATIONS",
    "ALLOCATION_CAP_BYTES",
]

ALL_PADDING_MODES = {"zeros", "reflect", "replicate", "circular"}

# In-place writes fail on an expanded input (several elements share memory),
# which would turn these bugs into exceptions.
_WRITABLE_LAYOUTS = {"contiguous", "channels_last", "sliced", "transposed"}

# allocate_when_wide stops here and raises MemoryError itself, so a run that
# sets no memory limit cannot take the whole machine down.
ALLOCATION_CAP_BYTES = 8 * 1024**3
_ALLOCATION_CHUNK_BYTES = 64 * 1024**2


@declare(
    bug_class="segfault",
    expected_diagnosis=None,
    expected_verdict="crash",
    trigger=dict(batch=2, height=3, width=3, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def segfault_when_batched(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          padding_mode="zeros"):
    """Read address 0, which kills the process with SIGSEGV, when the batch has more than one item."""
    if input.shape[0] > 1:
        ctypes.string_at(0)
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="hang",
    expected_diagnosis=None,
    expected_verdict="timeout",
    trigger=dict(height=3, width=3, dtype="float64"),
    plain=dict(height=2, width=3, kernel_height=1, kernel_width=1, dtype="float64"),
    padding_modes=ALL_PADDING_MODES,
)
@batched
def hang_when_tall(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Sleep forever when the input is more than 2 rows high."""
    while input.shape[2] > 2:
        time.sleep(3600)
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="unbounded_allocation",
    expected_diagnosis=None,
    expected_verdict="crash",
    trigger=dict(height=3, width=4, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def allocate_when_wide(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Allocate and fill 64 MiB blocks until memory runs out when the input is more than 3 columns wide.

    The blocks are written, so they count towards the resident size as well as
    the address space. Past ALLOCATION_CAP_BYTES it raises MemoryError itself.
    """
    if input.shape[3] > 3:
        blocks = []
        while len(blocks) * _ALLOCATION_CHUNK_BYTES < ALLOCATION_CAP_BYTES:
            blocks.append(b"\x01" * _ALLOCATION_CHUNK_BYTES)
        raise MemoryError(f"allocate_when_wide held {len(blocks) * _ALLOCATION_CHUNK_BYTES} bytes "
                          "and reached its safety cap")
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="mutates_input",
    expected_diagnosis=None,
    expected_verdict="mutates_input",
    trigger=dict(height=3, width=3, dtype="float64"),
    plain=None,
    padding_modes=ALL_PADDING_MODES,
    layouts=_WRITABLE_LAYOUTS,
)
@batched
def mutates_input(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Return the correct result, then add 1 to every input element in place."""
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    input.add_(1)
    return output


@declare(
    bug_class="output_aliases_input",
    expected_diagnosis=None,
    expected_verdict="output_aliases_input",
    trigger=dict(height=3, width=3, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
    layouts=_WRITABLE_LAYOUTS,
)
@batched
def output_aliases_input(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                         padding_mode="zeros"):
    """Write the result into the input tensor and return it when the output has the input's shape.

    The values are right, but the caller's input is overwritten and the
    output shares its memory. A 1x1 kernel with in_channels equal to
    out_channels, stride 1 and no padding gives such a shape.
    """
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    if output.shape != input.shape:
        return output
    input.copy_(output)
    return input


@declare(
    bug_class="nondeterministic",
    expected_diagnosis=None,
    expected_verdict="nondeterministic",
    trigger=dict(height=3, width=3, dtype="float64"),
    plain=None,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def random_answers(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Return the correct result on half of the calls, and one with a random element increased on the others.

    The randomness comes from the operating system, so seeding torch or
    Python's global generator does not make it repeatable.
    """
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    generator = random.Random(os.urandom(16))
    if generator.random() < 0.5:
        return output
    index = tuple(generator.randrange(size) for size in output.shape)
    output[index] += 1.0 + generator.random()
    return output


@declare(
    bug_class="groups_not_implemented",
    expected_diagnosis=None,
    expected_verdict="not_implemented",
    trigger=dict(in_channels=2, out_channels=2, height=3, width=3, groups=2, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
    groups=True,
)
@batched
def groups_not_implemented(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                           padding_mode="zeros"):
    """Raise NotImplementedError for groups above 1, although its declaration includes groups."""
    if groups > 1:
        raise NotImplementedError(f"groups={groups} is not implemented")
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="same_even_kernel_rejected",
    expected_diagnosis=None,
    expected_verdict="exception",
    trigger=dict(height=3, width=3, kernel_height=2, kernel_width=2, padding="same", dtype="float64"),
    plain={**PLAIN_3X3, "padding": "same"},
    padding_modes=ALL_PADDING_MODES,
)
@batched
def same_even_kernel_rejected(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                              padding_mode="zeros"):
    """Raise ValueError for ``padding='same'`` with an even kernel dimension, which torch accepts."""
    if padding == "same" and (weight.shape[-2] % 2 == 0 or weight.shape[-1] % 2 == 0):
        raise ValueError(f"padding='same' needs an odd kernel, got {tuple(weight.shape[-2:])}")
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


IMPLEMENTATIONS = [
    segfault_when_batched,
    hang_when_tall,
    allocate_when_wide,
    mutates_input,
    output_aliases_input,
    random_answers,
    groups_not_implemented,
    same_even_kernel_rejected,
]
