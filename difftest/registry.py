"""The one place to plug in a conv2d implementation.

An implementation is any callable with the calling convention of
``torch.nn.functional.conv2d``::

    conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)

Keyword-only parameters (after ``*``) and ``**kwargs`` receive their
arguments by keyword (see :meth:`Implementation.call`). A function without
one of conv2d's parameters gets only cases where that option has its default.

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
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from difftest.case import DTYPES, LAYOUTS, PADDING_MODES, VALUE_KINDS, ConvCase
from difftest.errors import SupportsError, UsageError

__all__ = [
    "Implementation",
    "Supports",
    "register",
    "unregister",
    "registered",
    "get",
    "load",
    "import_target",
    "declared_supports",
    "DEVICES",
    "PADDING_FORMS",
    "ERROR_MODELS",
]

# Device types an implementation can declare. A case on "cuda:1" counts as "cuda".
DEVICES = ("cpu", "cuda", "mps")

# Ways padding can be passed: one int for both axes, a per-axis pair, or a string.
PADDING_FORMS = ("int", "pair", "valid", "same")

# "elementwise": each output element's error is bounded by the terms it sums
# (direct summation, im2col with a matrix product). "normwise": only the norm
# of the whole output's error is bounded (FFT and Winograd convolution).
ERROR_MODELS = ("elementwise", "normwise")

# The parameters of torch.nn.functional.conv2d, in order.
CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")

# Boolean fields of Supports, each true when non-default values of that option are supported.
_BOOLEAN_OPTIONS = ("stride", "dilation", "groups", "bias", "unbatched")

# Keys a difftest_supports dict may hold besides the fields of Supports.
_DECLARATION_KEYS = ("name", "isolate", "description", "expected_to_fail")


def _also(others: list[str]) -> str:
    """Name the other bad entries after the first, so one error lists them all."""
    if not others:
        return ""
    return f", as {'is' if len(others) == 1 else 'are'} {', '.join(others)}"


def _frozen(name: str, values: Any, allowed: tuple[str, ...]) -> frozenset[str]:
    """Return ``values`` as a set of names from ``allowed``. A single name may also be passed as a string."""
    example = f"for example {name}={{{allowed[0]!r}}}"
    if isinstance(values, str):
        values = (values,)
    if not isinstance(values, (list, tuple, set, frozenset)):
        raise UsageError(name, values, f"expected a list, tuple or set of names, got {type(values).__name__}",
                         example)
    for value in values:
        if not isinstance(value, str):
            raise UsageError(name, values, f"contains {value!r} of type {type(value).__name__}, not a name",
                             f"use names from {', '.join(allowed)}")
    result = frozenset(values)
    unknown = sorted(result - set(allowed))
    if unknown:
        raise UsageError(name, unknown[0], "unknown name" + _also(unknown[1:]), f"use names from {', '.join(allowed)}")
    if not result:
        raise UsageError(name, set(), "expected at least one value", example)
    return result


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(name, value, f"expected a bool, got {type(value).__name__}", "use True or False")


@dataclass(frozen=True)
class Supports:
    """What an implementation supports; generation stays inside it.

    Booleans say whether a non-default value of that option is supported
    (``stride=False`` means only stride 1). ``error_model`` chooses the error
    bound (see difftest.tolerance) and ``tolerance_factor`` widens it by a
    stated factor that reports show.

    Every field is checked on construction, and an invalid one raises
    UsageError: booleans must be ``bool``, name fields a list, tuple or set
    of known names (or one name as a string), and ``tolerance_factor`` a
    finite number of at least 1.
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
        object.__setattr__(self, "devices", _frozen("devices", self.devices, DEVICES))
        for option in _BOOLEAN_OPTIONS:
            _check_bool(option, getattr(self, option))
        object.__setattr__(self, "padding_forms", _frozen("padding_forms", self.padding_forms, PADDING_FORMS))
        object.__setattr__(self, "padding_modes", _frozen("padding_modes", self.padding_modes, PADDING_MODES))
        object.__setattr__(self, "layouts", _frozen("layouts", self.layouts, LAYOUTS))
        object.__setattr__(self, "value_kinds", _frozen("value_kinds", self.value_kinds, VALUE_KINDS))
        if "zeros" not in self.padding_modes:
            raise UsageError("padding_modes", sorted(self.padding_modes), "must include 'zeros'",
                             "add 'zeros', the padding of every implementation")
        if "contiguous" not in self.layouts:
            raise UsageError("layouts", sorted(self.layouts), "must include 'contiguous'",
                             "add 'contiguous', the layout of every implementation")
        if not isinstance(self.error_model, str) or self.error_model not in ERROR_MODELS:
            raise UsageError("error_model", self.error_model, f"expected one of {', '.join(ERROR_MODELS)}",
                             "use 'elementwise' for direct summation or 'normwise' for FFT or Winograd")
        if not _is_factor(self.tolerance_factor):
            raise UsageError("tolerance_factor", self.tolerance_factor, "expected a finite number of at least 1",
                             "a factor widens the bound and never narrows it, so use 1 or more")

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


def _is_factor(value: Any) -> bool:
    """Return whether ``value`` is a finite real number of at least 1 (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and value >= 1


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
    def _plan(self) -> _CallPlan:
        # inspect.signature takes tens of microseconds: pay it once, not on every call.
        return _call_plan(self.function)

    def call(self, input: Any, weight: Any, bias: Any, case: ConvCase) -> Any:
        """Call the implementation on ``case`` with conv2d's calling convention.

        Arguments go by position while the function has positional slots
        for them, then by keyword to its parameters of conv2d's names
        (keyword-only ones among them) or to its ``**kwargs``. An argument
        the function cannot take is left out. ``padding_mode`` goes by
        keyword, and only for a mode other than 'zeros'.
        """
        plan = self._plan
        arguments = (input, weight, bias, case.stride, case.padding_argument, case.dilation, case.groups)
        keywords: dict[str, Any] = {}
        for index, name in plan.keywords:
            keywords[name] = arguments[index]
        if case.padding_mode != "zeros":
            keywords["padding_mode"] = case.padding_mode
        return self.function(*arguments[:plan.positional], **keywords)


@dataclass(frozen=True)
class _CallPlan:
    """The routing of conv2d's arguments to one function.

    The first ``positional`` arguments go by position. ``keywords`` pairs the
    index of each argument passed by keyword with its name.
    ``unpassed_required`` names the function's required parameters that
    some call would leave without a value.
    """

    positional: int
    keywords: tuple[tuple[int, str], ...] = ()
    takes_padding_mode: bool = True
    unpassed_required: tuple[str, ...] = ()

    @property
    def passed(self) -> frozenset[str]:
        """The names of the conv2d parameters that reach the function."""
        return frozenset(CONV2D_PARAMETERS[:self.positional]) | {name for _, name in self.keywords}


def _call_plan(function: Callable[..., Any]) -> _CallPlan:
    """Derive from ``function``'s signature how each of conv2d's arguments reaches it."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        # A builtin without a signature, such as torch's own conv2d, is taken to have conv2d's.
        return _CallPlan(positional=len(CONV2D_PARAMETERS))
    kind = inspect.Parameter
    slots = [p for p in parameters if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind is kind.VAR_POSITIONAL for p in parameters)
    any_keyword = any(p.kind is kind.VAR_KEYWORD for p in parameters)
    keyword_only = {p.name for p in parameters if p.kind is kind.KEYWORD_ONLY}

    # The positional prefix ends at the first argument without a slot. *args
    # is a slot for every argument that is not a keyword-only parameter too.
    positional = 0
    for name in CONV2D_PARAMETERS:
        if positional >= len(slots) and not (variadic and name not in keyword_only):
            break
        positional += 1

    # A slot that received a positional argument cannot take a keyword as well.
    filled = {p.name for p in slots[:positional]}
    named = {p.name for p in parameters if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)} - filled

    def takes(name: str) -> bool:
        return name in named or (any_keyword and name not in filled)

    keywords = tuple((index, name) for index, name in enumerate(CONV2D_PARAMETERS)
                     if index >= positional and takes(name))
    passed = filled | {name for _, name in keywords}
    unpassed_required = tuple(
        p.name for p in parameters
        if p.default is p.empty and p.kind not in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD)
        and p.name not in passed)
    return _CallPlan(positional, keywords, takes("padding_mode"), unpassed_required)


def _signature_problem(function: Any) -> tuple[str, str] | None:
    """Return why ``function`` cannot be called as a conv2d implementation and the fix, or None when it can."""
    name_a_function = "name a function with the calling convention of torch.nn.functional.conv2d"
    if inspect.isclass(function):
        return "is a class, not a function", name_a_function
    if not callable(function):
        kind = type(function).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        return f"is {article} {kind}, not a function", name_a_function
    plan = _call_plan(function)
    if not {"input", "weight"} <= plan.passed:
        count = plan.positional
        plural = "" if count == 1 else "s"
        return (f"takes {count} positional argument{plural}, but an implementation takes at least 2 (input, weight)",
                "give it the signature of torch.nn.functional.conv2d: "
                "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)")
    misplaced = _misplaced_parameter(function, plan.positional)
    if misplaced is not None:
        return misplaced, ("order its parameters as torch.nn.functional.conv2d does: "
                           "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)")
    if plan.unpassed_required:
        return (f"requires the parameter {plan.unpassed_required[0]!r}, which the conv2d calling convention does "
                "not always pass",
                "give it a default value (difftest passes input, weight, bias, stride, padding, dilation and groups, "
                "and padding_mode only for modes other than 'zeros')")
    return None


def _misplaced_parameter(function: Any, positional: int) -> str | None:
    """Return how a parameter named after a conv2d argument would receive another argument, or None.

    difftest passes conv2d's arguments by position, so a parameter named
    'stride' in padding's position would get the padding. input and weight
    are left out: implementations often call them x and w.
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    kind = inspect.Parameter
    slots = [p.name for p in parameters if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    for index, name in enumerate(slots[:positional]):
        # padding_mode always goes by keyword, so no position receives it.
        if name in (*CONV2D_PARAMETERS[2:], "padding_mode") and name != CONV2D_PARAMETERS[index]:
            return (f"has the parameter {name!r} in position {index + 1}, where difftest passes "
                    f"{CONV2D_PARAMETERS[index]}")
    return None


def declared_supports(function: Any, implementation: str) -> dict[str, Any]:
    """Return a copy of ``function``'s ``difftest_supports`` dict, or {} when it has none.

    Raises SupportsError naming ``implementation`` when the attribute is not
    a dict with string keys. The values are checked when the dict is passed
    on to :func:`register`.
    """
    declared = getattr(function, "difftest_supports", None)
    if declared is None:
        return {}
    example = "for example difftest_supports = {'dtypes': {'float32'}, 'groups': False}"
    if not isinstance(declared, Mapping):
        raise SupportsError(implementation, "difftest_supports", declared,
                            f"expected a dict, got {type(declared).__name__}", example)
    for key in declared:
        if not isinstance(key, str):
            raise SupportsError(implementation, "difftest_supports", dict(declared),
                                f"has the key {key!r}, which is not an option name", example)
    return dict(declared)


def _supports(implementation: str, options: dict[str, Any]) -> Supports:
    """Build Supports from ``options``, naming ``implementation`` in any error."""
    try:
        return Supports(**options)
    except SupportsError:
        raise
    except UsageError as error:
        raise SupportsError(implementation, error.name, error.value, error.reason, error.fix) from None


def _check_keys(implementation: str, declared: Mapping[str, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    unknown = [key for key in declared if key not in known]
    if not unknown:
        return
    # Name every unknown key at once, so a user fixes a declaration in one pass.
    first = unknown[0]
    raise SupportsError(implementation, first, declared[first], "unknown option" + _also(unknown[1:]),
                        f"use one of {', '.join(known)}")


def _infer_supports(name: str, function: Callable[..., Any], declared: dict[str, Any]) -> Supports:
    """Build Supports from the declaration, narrowed by the parameters ``function`` takes."""
    problem = _signature_problem(function)
    if problem is not None:
        described = f"{getattr(function, '__module__', '')}:{getattr(function, '__qualname__', '')}"
        raise UsageError("function", described if described != ":" else repr(function), *problem)
    _check_keys(name, declared, (option.name for option in dataclasses.fields(Supports)))
    # Check the declaration on its own first, so a bad value is reported as written.
    checked = _supports(name, declared)

    plan = _call_plan(function)
    inferred: dict[str, Any] = {}
    for option in ("bias", "stride", "dilation", "groups"):
        if option not in plan.passed:
            inferred[option] = False
    if "padding" not in plan.passed:
        # 'valid' is zero padding, the default of a function without the parameter.
        inferred["padding_forms"] = {"valid"}
    if checked.padding_modes != {"zeros"} and not plan.takes_padding_mode:
        raise SupportsError(name, "padding_modes", sorted(checked.padding_modes),
                            "the function takes no padding_mode keyword argument",
                            "add a padding_mode parameter or declare only padding_modes={'zeros'}")
    for key, value in inferred.items():
        if declared.get(key, value) not in (value, False) and key != "padding_forms":
            raise SupportsError(name, key, declared[key], f"the function takes no {key} parameter",
                                f"add the parameter or drop {key}= from the declaration")
    merged = {**inferred, **{k: v for k, v in declared.items() if k not in inferred}}
    return _supports(name, merged)


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
    :class:`Supports`; an unknown one or a value of the wrong type raises
    SupportsError. Used without ``function`` it returns a decorator.
    Registering a name again replaces the earlier entry.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise UsageError("name", name, "expected a non-empty name without spaces", "for example 'my_conv'")
    if function is None:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(name, fn, target=target, isolate=isolate, expected_to_fail=expected_to_fail,
                     description=description, **supports)
            return fn
        return decorator
    for key, value in (("isolate", isolate), ("expected_to_fail", expected_to_fail)):
        if not isinstance(value, bool):
            raise SupportsError(name, key, value, f"expected a bool, got {type(value).__name__}", "use True or False")
    for key, value in (("target", target), ("description", description)):
        if not isinstance(value, str):
            raise SupportsError(name, key, value, f"expected a string, got {type(value).__name__}",
                                f"pass {key} as a str")
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


_BUILT_IN_PREFIX = "difftest.builtins."


def load(spec: str, **supports: Any) -> Implementation:
    """Load ``module:function``, ``path/to/file.py:function`` or a registered name.

    A function may carry its declaration as a ``difftest_supports`` dict
    attribute: fields of :class:`Supports`, plus ``name``, ``isolate``,
    ``description`` and ``expected_to_fail``. Keyword arguments here
    override it. An invalid declaration raises SupportsError. Implementations loaded
    from outside difftest run isolated in a worker process unless the
    declaration says ``isolate=False``.
    """
    if ":" not in spec:
        return get(spec)
    function = import_target(spec)
    module_name, _, attribute = spec.rpartition(":")
    label = attribute.split(".")[-1]
    declared = {**declared_supports(function, label), **supports}
    _check_keys(label, declared, (*(option.name for option in dataclasses.fields(Supports)), *_DECLARATION_KEYS))
    isolate = declared.pop("isolate", True)
    name = declared.pop("name", None)
    if name is None:
        name = label
    elif not isinstance(name, str) or not name or any(character.isspace() for character in name):
        raise SupportsError(label, "name", name, "expected a non-empty name without spaces",
                            "for example {'name': 'my_conv'}")
    if module_name.endswith(".py") or os.sep in module_name:
        target = f"{os.path.abspath(module_name)}:{attribute}"
    else:
        target = spec
    built_in = _REGISTRY.get(name)
    if built_in is not None and built_in.target.startswith(_BUILT_IN_PREFIX) and built_in.target != target:
        # Reports and replays find an implementation by name, so a user's may not replace a built-in's.
        raise SupportsError(label, "name", name, f"is the name of the built-in implementation {built_in.target}",
                            "choose another name, for example {'name': 'my_" + name + "'}")
    return register(name, function, target=target, isolate=isolate, **declared)


def _import(spec: str, module_name: str) -> Any:
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise UsageError("--impl", spec, f"file {module_name} not found", "check the path before the colon")
        unique = "difftest_user_" + os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(unique, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError("--impl", spec, f"file {module_name} cannot be imported as Python",
                             "name a .py file, or a module on the import path")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[unique] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:
            # SystemExit too: a module that calls sys.exit() on import would
            # otherwise end difftest with that status and no message.
            sys.modules.pop(unique, None)
            raise UsageError("--impl", spec, f"importing {module_name} raised {type(error).__name__}: {error}",
                             "fix the error in that file") from None
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError("--impl", spec, f"module {error.name!r} not found",
                         "install the package, add its folder to PYTHONPATH or pass path/to/file.py:FUNCTION") from None
    except (Exception, SystemExit) as error:
        raise UsageError("--impl", spec, f"importing {module_name} raised {type(error).__name__}: {error}",
                         "fix the error in that module") from None
