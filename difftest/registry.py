"""The one place to plug in a conv2d implementation.

An implementation is any callable with the calling convention of
``torch.nn.functional.conv2d``::

    conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)

Register it in Python with :func:`register`, or name it on the command line as
``module:function`` or ``path/to/file.py:function`` (see :func:`load`).
What it supports is declared once, as keyword arguments of :func:`register`,
and the strategies generate only cases inside that space.

>>> import torch
>>> from difftest import register
>>> impl = register("mine", torch.nn.functional.conv2d, dtypes={"float32"}, groups=False)
>>> impl.supports.groups
False
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from difftest.case import DTYPES, LAYOUTS, PADDING_MODES, VALUE_KINDS, ConvCase
from difftest.errors import UsageError

__all__ = [
    "Implementation",
    "Supports",
    "register",
    "unregister",
    "registered",
    "get",
    "load",
    "import_target",
    "PADDING_FORMS",
    "ERROR_MODELS",
]

# Ways padding can be passed: one int for both axes, a per-axis pair, or a string.
PADDING_FORMS = ("int", "pair", "valid", "same")

# "elementwise": each output element's error is bounded by the terms it sums
# (direct summation, im2col with a matrix product). "normwise": only the norm
# of the whole output's error is bounded (FFT and Winograd convolution).
ERROR_MODELS = ("elementwise", "normwise")

# The parameters of torch.nn.functional.conv2d, in order.
CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _frozen(name: str, values: Iterable[str], allowed: tuple[str, ...]) -> frozenset[str]:
    if isinstance(values, str):
        values = {values}
    result = frozenset(values)
    unknown = sorted(result - set(allowed))
    if unknown:
        raise UsageError(name, unknown[0], f"expected values from {', '.join(allowed)}")
    if not result:
        raise UsageError(name, set(), "expected at least one value", f"pass for example {name}={{{allowed[0]!r}}}")
    return result


@dataclass(frozen=True)
class Supports:
    """What an implementation supports; generation stays inside it.

    Booleans say whether a non-default value of that option is supported
    (``stride=False`` means only stride 1). ``error_model`` chooses the error
    bound (see difftest.tolerance) and ``tolerance_factor`` widens it by a
    stated factor that reports show.
    """

    dtypes: frozenset[str] = frozenset(DTYPES)
    devices: frozenset[str] = frozenset({"cpu", "cuda", "mps"})
    stride: bool = True
    dilation: bool = True
    groups: bool = True
    bias: bool = True
    padding_forms: frozenset[str] = frozenset(PADDING_FORMS)
    padding_modes: frozenset[str] = frozenset({"zeros"})
    layouts: frozenset[str] = frozenset(LAYOUTS)
    unbatched: bool = True
    value_kinds: frozenset[str] = frozenset(VALUE_KINDS)
    error_model: str = "elementwise"
    tolerance_factor: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", _frozen("dtypes", self.dtypes, DTYPES))
        object.__setattr__(self, "devices", frozenset({self.devices} if isinstance(self.devices, str) else self.devices))
        object.__setattr__(self, "padding_forms", _frozen("padding_forms", self.padding_forms, PADDING_FORMS))
        object.__setattr__(self, "padding_modes", _frozen("padding_modes", self.padding_modes, PADDING_MODES))
        object.__setattr__(self, "layouts", _frozen("layouts", self.layouts, LAYOUTS))
        object.__setattr__(self, "value_kinds", _frozen("value_kinds", self.value_kinds, VALUE_KINDS))
        if "zeros" not in self.padding_modes:
            raise UsageError("padding_modes", sorted(self.padding_modes), "must include 'zeros'")
        if "contiguous" not in self.layouts:
            raise UsageError("layouts", sorted(self.layouts), "must include 'contiguous'")
        if self.error_model not in ERROR_MODELS:
            raise UsageError("error_model", self.error_model, f"expected one of {', '.join(ERROR_MODELS)}")
        if not isinstance(self.tolerance_factor, (int, float)) or not self.tolerance_factor >= 1:
            raise UsageError("tolerance_factor", self.tolerance_factor, "expected a number of at least 1",
                             "a factor widens the bound; it never narrows it")

    def rejects(self, case: ConvCase) -> str | None:
        """Return why ``case`` lies outside this space, or None when it is inside."""
        checks = [
            (case.dtype in self.dtypes, f"dtype {case.dtype}"),
            (case.device.split(":")[0] in self.devices, f"device {case.device}"),
            (self.stride or case.stride == (1, 1), f"stride {case.stride}"),
            (self.dilation or case.dilation == (1, 1), f"dilation {case.dilation}"),
            (self.groups or case.groups == 1, f"groups {case.groups}"),
            (self.bias or not case.bias, "bias"),
            (_padding_form(case) in self.padding_forms, f"padding {case.padding_argument!r}"),
            (case.padding_mode in self.padding_modes, f"padding_mode {case.padding_mode!r}"),
            (case.input_layout in self.layouts, f"input layout {case.input_layout}"),
            (case.weight_layout in self.layouts, f"weight layout {case.weight_layout}"),
            (self.unbatched or not case.unbatched, "unbatched input"),
            (case.values in self.value_kinds, f"values {case.values}"),
        ]
        for ok, what in checks:
            if not ok:
                return what
        return None

    def replace(self, **changes: Any) -> Supports:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {key: sorted(value) if isinstance(value, frozenset) else value for key, value in data.items()}


def _padding_form(case: ConvCase) -> str:
    argument = case.padding_argument
    if isinstance(argument, str):
        return argument
    if isinstance(argument, int):
        return "int"
    return "pair"


@dataclass(frozen=True)
class Implementation:
    """A registered conv2d implementation.

    ``target`` says how to import it (``module:function`` or
    ``path/to/file.py:function``), so reports and reproduction scripts can
    load it again in a fresh process. ``isolate`` runs each call in a worker
    process, so a crash or a hang becomes a finding instead of ending the run.
    ``expected_to_fail`` marks the deliberately wrong built-in.
    """

    name: str
    function: Callable[..., Any] = field(compare=False, repr=False)
    supports: Supports = Supports()
    target: str = ""
    isolate: bool = False
    expected_to_fail: bool = False
    description: str = ""

    @functools.cached_property
    def _positional_arguments(self) -> int:
        # inspect.signature takes tens of microseconds: pay it once, not on every call.
        return _positional_count(self.function)

    def call(self, input: Any, weight: Any, bias: Any, case: ConvCase) -> Any:
        """Call the implementation on ``case`` with conv2d's calling convention."""
        arguments = (input, weight, bias, case.stride, case.padding_argument, case.dilation, case.groups)
        count = self._positional_arguments
        keywords: dict[str, Any] = {}
        if case.padding_mode != "zeros":
            keywords["padding_mode"] = case.padding_mode
        return self.function(*arguments[:count], **keywords)


def _positional_count(function: Callable[..., Any]) -> int:
    """Return how many of conv2d's positional arguments ``function`` takes.

    NOTE: keyword-only parameters (after ``*``) are not counted and never
    passed, so such a function is called as if it lacked them.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return len(CONV2D_PARAMETERS)
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return len(CONV2D_PARAMETERS)
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return min(count, len(CONV2D_PARAMETERS))


def _signature_problem(function: Any) -> tuple[str, str] | None:
    """Return why ``function`` cannot be called as a conv2d implementation and the fix, or None when it can."""
    name_a_function = "name a function with the calling convention of torch.nn.functional.conv2d"
    if inspect.isclass(function):
        return "is a class, not a function", name_a_function
    if not callable(function):
        kind = type(function).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        return f"is {article} {kind}, not a function", name_a_function
    count = _positional_count(function)
    if count < 2:
        plural = "" if count == 1 else "s"
        return (f"takes {count} positional argument{plural}, but an implementation takes at least 2 (input, weight)",
                "give it the signature of torch.nn.functional.conv2d: "
                "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)")
    return None


def _infer_supports(name: str, function: Callable[..., Any], declared: dict[str, Any]) -> Supports:
    """Build Supports from the declaration, narrowed by the parameters ``function`` takes."""
    problem = _signature_problem(function)
    if problem is not None:
        described = f"{getattr(function, '__module__', '')}:{getattr(function, '__qualname__', '')}"
        raise UsageError("function", described if described != ":" else repr(function), *problem)
    count = _positional_count(function)
    present = set(CONV2D_PARAMETERS[:count])
    inferred: dict[str, Any] = {}
    for option in ("bias", "stride", "dilation", "groups"):
        if option not in present:
            inferred[option] = False
    if "padding" not in present:
        # 'valid' is zero padding, the default of a function without the parameter.
        inferred["padding_forms"] = {"valid"}
    if "padding_modes" in declared and set(declared["padding_modes"]) != {"zeros"}:
        if not _accepts_keyword(function, "padding_mode"):
            raise UsageError("padding_modes", sorted(declared["padding_modes"]),
                             f"{name} takes no padding_mode keyword argument",
                             "add a padding_mode parameter or declare only padding_modes={'zeros'}")
    for key, value in inferred.items():
        if declared.get(key, value) not in (value, False) and key != "padding_forms":
            raise UsageError(key, declared[key], f"{name} takes no {key} parameter",
                             f"add the parameter or drop {key}= from the declaration")
    merged = {**inferred, **{k: v for k, v in declared.items() if k not in inferred}}
    try:
        return Supports(**merged)
    except TypeError as error:
        known = ", ".join(field.name for field in dataclasses.fields(Supports))
        raise UsageError("supports", sorted(declared), f"contains an unknown option ({error})",
                         f"known options: {known}") from None


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


_REGISTRY: dict[str, Implementation] = {}


def register(
    name: str,
    function: Callable[..., Any] | None = None,
    *,
    target: str = "",
    isolate: bool = False,
    expected_to_fail: bool = False,
    description: str = "",
    **supports: Any,
) -> Any:
    """Register ``function`` as a conv2d implementation named ``name``.

    Keyword arguments other than the ones above are fields of
    :class:`Supports`. Used without ``function`` it returns a decorator.
    Registering a name again replaces the earlier entry.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise UsageError("name", name, "expected a non-empty name without spaces")
    if function is None:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(name, fn, target=target, isolate=isolate, expected_to_fail=expected_to_fail,
                     description=description, **supports)
            return fn
        return decorator
    if not target:
        target = f"{getattr(function, '__module__', '')}:{getattr(function, '__qualname__', '')}"
    implementation = Implementation(
        name=name,
        function=function,
        supports=_infer_supports(name, function, supports),
        target=target,
        isolate=isolate,
        expected_to_fail=expected_to_fail,
        description=description or (inspect.getdoc(function) or "").split("\n")[0],
    )
    _REGISTRY[name] = implementation
    return implementation


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Implementation]:
    """Return every registered implementation by name, built-ins and entry points included."""
    from difftest import builtins  # noqa: F401  (registers the built-ins)
    from difftest._entry_points import load_entry_points

    load_entry_points()
    return dict(_REGISTRY)


def get(name: str) -> Implementation:
    implementations = registered()
    if name not in implementations:
        raise UsageError("--impl", name, "no implementation of that name is registered",
                         f"choose from {', '.join(sorted(implementations))} or pass MODULE:FUNCTION")
    return implementations[name]


def import_target(spec: str) -> Callable[..., Any]:
    """Import and return the function named by ``module:function`` or ``path/to/file.py:function``."""
    module_name, separator, attribute = spec.rpartition(":")
    if not separator or not module_name or not attribute:
        raise UsageError("--impl", spec, "expected MODULE:FUNCTION, path/to/file.py:FUNCTION or a registered name",
                         "for example --impl mypackage.conv:conv2d")
    module = _import(spec, module_name)
    function: Any = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise UsageError("--impl", spec, f"{module_name} has no attribute {part!r}",
                             "check the function name after the colon")
        function = getattr(function, part)
    problem = _signature_problem(function)
    if problem is not None:
        raise UsageError("--impl", spec, f"{attribute} {problem[0]}", problem[1])
    return function


def load(spec: str, **supports: Any) -> Implementation:
    """Load ``module:function``, ``path/to/file.py:function`` or a registered name.

    A function may carry its declaration as a ``difftest_supports`` dict
    attribute; keyword arguments here override it. Implementations loaded
    from outside difftest run isolated in a worker process unless the
    declaration says ``isolate=False``.
    """
    if ":" not in spec:
        return get(spec)
    function = import_target(spec)
    module_name, _, attribute = spec.rpartition(":")
    declared = dict(getattr(function, "difftest_supports", {}) or {})
    declared.update(supports)
    isolate = declared.pop("isolate", True)
    name = declared.pop("name", None) or attribute.split(".")[-1]
    if module_name.endswith(".py") or os.sep in module_name:
        target = f"{os.path.abspath(module_name)}:{attribute}"
    else:
        target = spec
    return register(name, function, target=target, isolate=isolate, **declared)


def _import(spec: str, module_name: str) -> Any:
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise UsageError("--impl", spec, f"file {module_name} not found", "check the path before the colon")
        unique = "difftest_user_" + os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(unique, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError("--impl", spec, f"file {module_name} cannot be imported as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[unique] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(unique, None)
            raise UsageError("--impl", spec, f"importing {module_name} raised {type(error).__name__}: {error}",
                             "fix the error in that file") from None
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError("--impl", spec, f"module {error.name!r} not found",
                         "install the package, add its folder to PYTHONPATH or pass path/to/file.py:FUNCTION") from None
    except Exception as error:
        raise UsageError("--impl", spec, f"importing {module_name} raised {type(error).__name__}: {error}",
                         "fix the error in that module") from None
