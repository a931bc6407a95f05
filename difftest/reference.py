"""The reference (torch's conv2d), the float64 truth and the magnitude of the terms summed."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from difftest.case import ConvCase, explicit_padding
from difftest.values import Inputs

__all__ = ["conv2d_as_module", "reference", "truth", "magnitude"]


@contextlib.contextmanager
def quiet_same_padding() -> Iterator[None]:
    """Silence torch's warning that 'same' padding with an even kernel copies the input: harmless here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same'")
        yield


def conv2d_as_module(
    conv: Callable[..., torch.Tensor],
    case: ConvCase,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """Apply ``conv`` to the case as ``torch.nn.Conv2d`` would, padding mode included.

    For a padding mode other than zeros, nn.Conv2d pads the input with F.pad
    (extra pixel of 'same' at the bottom and right) and convolves without
    padding; this does the same.
    """
    if case.padding_mode == "zeros":
        with quiet_same_padding():
            return conv(input, weight, bias, case.stride, case.padding_argument, case.dilation, case.groups)
    top, bottom, left, right = explicit_padding(case.padding, case.kernel, case.dilation)
    padded = F.pad(input, (left, right, top, bottom), mode=case.padding_mode)
    return conv(padded, weight, bias, case.stride, 0, case.dilation, case.groups)


def mkldnn_flags(enabled: bool) -> Any:
    """Return a context in which torch's oneDNN (mkldnn) backend is enabled or disabled."""
    # flags() resets the other oneDNN settings to its own defaults (and warns
    # about TF32 on a CPU build), so pass their current values through.
    mkldnn = torch.backends.mkldnn
    return mkldnn.flags(enabled=enabled, deterministic=mkldnn.deterministic,
                        allow_tf32=mkldnn.allow_tf32, fp32_precision=mkldnn.fp32_precision)


def reference(case: ConvCase, inputs: Inputs) -> torch.Tensor:
    """Return torch.nn.functional.conv2d on the case's own inputs, dtype, layout and device.

    bfloat16 on the CPU runs with oneDNN disabled: torch 2.13's oneDNN
    bfloat16 kernels crash the process on some shapes on AMX CPUs (see
    docs/tolerance.md), and the reference runs in difftest's own process.
    The torch_mkldnn built-in still tests that path.
    """
    with crash_free_backend(case.dtype, case.device):
        return conv2d_as_module(F.conv2d, case, inputs.input, inputs.weight, inputs.bias)


def crash_free_backend(dtype: str, device: str) -> Any:
    """Return a context for running torch's conv2d in this process: oneDNN off for bfloat16 on the CPU."""
    if dtype == "bfloat16" and device.split(":")[0] == "cpu":
        return mkldnn_flags(False)
    return contextlib.nullcontext()


def truth(case: ConvCase, inputs64: Inputs) -> torch.Tensor:
    """Return the conv computed in float64 on the CPU from the same (already rounded) input values."""
    return conv2d_as_module(F.conv2d, case, inputs64.input, inputs64.weight, inputs64.bias)


def magnitude(case: ConvCase, inputs64: Inputs) -> torch.Tensor:
    """Return conv(|x|, |w|) + |b|: the magnitude of the terms each output element sums."""
    absolute_bias = None if inputs64.bias is None else inputs64.bias.abs()
    return conv2d_as_module(F.conv2d, case, inputs64.input.abs(), inputs64.weight.abs(), absolute_bias)


def describe_reference() -> dict[str, Any]:
    """Return what the reference ran on, for reports."""
    return {"torch": torch.__version__, "mkldnn": bool(torch.backends.mkldnn.is_available())}
