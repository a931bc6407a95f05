"""Checks that a call kept conv2d's contract: its inputs unchanged and an output of its own.

The runner applies them to in-process calls and the isolation worker to calls
in its own process, where only the worker's copies of the inputs can change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from difftest.values import Inputs

__all__ = ["Snapshot", "snapshot", "contract_violation", "tensor_bits", "storage_bytes", "shares_memory"]

TENSOR_NAMES = ("input", "weight", "bias")


@dataclass(frozen=True)
class Snapshot:
    """Copies of a call's inputs taken before the call.

    ``memory`` contains every byte of the storage behind each tensor (so a
    write between the elements of a sliced tensor also shows) and ``layouts``
    its shape, strides, offset and storage address (so ``resize_``, ``set_``
    or ``as_strided_`` on the caller's tensor also shows). The elements
    themselves are not copied: with the layout unchanged they live in that
    storage, so they changed only if it did.
    """

    memory: dict[str, torch.Tensor]
    layouts: dict[str, tuple[Any, ...]]


def snapshot(inputs: Inputs) -> Snapshot:
    """Copy what a call must leave unchanged."""
    memory: dict[str, torch.Tensor] = {}
    layouts: dict[str, tuple[Any, ...]] = {}
    for name in TENSOR_NAMES:
        tensor = getattr(inputs, name)
        if tensor is None:
            continue
        memory[name] = storage_bytes(tensor).clone()
        layouts[name] = _layout(tensor)
    return Snapshot(memory, layouts)


def contract_violation(inputs: Inputs, before: Snapshot, output: Any) -> Optional[tuple[str, str]]:
    """Return (verdict, detail) when the call changed an input or returned a tensor sharing memory with one.

    Aliasing is reported first: an output written into an input's memory also
    changes that input, and the alias is the more specific finding.
    """
    changed = _changed_input(inputs, before)
    if isinstance(output, torch.Tensor):
        for name in TENSOR_NAMES:
            tensor = getattr(inputs, name)
            if tensor is not None and shares_memory(output, tensor):
                detail = f"the output shares memory with {name}"
                if changed is not None:
                    detail += f", and {changed}"
                return "output_aliases_input", detail
    if changed is not None:
        return "mutates_input", changed
    return None


def _changed_input(inputs: Inputs, before: Snapshot) -> Optional[str]:
    for name in TENSOR_NAMES:
        tensor = getattr(inputs, name)
        if tensor is None:
            continue
        if _layout(tensor) != before.layouts[name]:
            return f"{name}'s shape, strides or storage were changed in place"
        if torch.equal(storage_bytes(tensor), before.memory[name]):
            continue
        # The storage changed. Read the former elements through the same
        # layout on the copy to tell a changed element from a write beside them.
        former = _elements_in(before.memory[name], tensor)
        if not torch.equal(tensor_bits(tensor), tensor_bits(former)):
            return f"{name} was modified in place"
        return f"memory behind {name}, outside its elements, was modified in place"
    return None


def _elements_in(memory: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return the tensor that ``like``'s dtype, shape, strides and offset describe inside the bytes ``memory``."""
    view = torch.empty(0, dtype=like.dtype, device=memory.device)
    return view.set_(memory.untyped_storage(), like.storage_offset(), like.shape, like.stride())


def _layout(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(tensor.shape), tensor.stride(), tensor.storage_offset(), tensor.dtype, tensor.device,
            tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())


def tensor_bits(tensor: torch.Tensor) -> torch.Tensor:
    """Return the elements as integers of the same width, so NaN equals NaN and -0.0 differs from 0.0."""
    view_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().contiguous().view(view_dtype)


def storage_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Return a uint8 view of the whole storage behind ``tensor`` (not a copy)."""
    return torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(tensor.untyped_storage())


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Return whether the storages behind ``a`` and ``b`` overlap."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    try:
        a_start = a.untyped_storage().data_ptr()
        b_start = b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return False
    a_end = a_start + a.untyped_storage().nbytes()
    b_end = b_start + b.untyped_storage().nbytes()
    return a_start < b_end and b_start < a_end
