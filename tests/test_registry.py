"""The implementation registry: the calling convention, signature inference and declaration checks.

The calling-convention tests call real functions that record the arguments
they receive and then compute torch's conv2d, so a test fails both when an
argument is dropped and when the result is wrong.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch.nn.functional as F

from difftest import registry
from difftest.case import ConvCase
from difftest.cli import main
from difftest.errors import DifftestError, SupportsError, UnsupportedCaseError, UsageError
from difftest.registry import Supports, load, register, unregister
from difftest.runner import evaluate

# Every conv2d option away from its default, so a dropped argument changes the output.
CASE = ConvCase(batch=1, in_channels=4, out_channels=2, height=7, width=8, kernel_height=2, kernel_width=3,
                stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=True)
OPTIONS = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}


@pytest.fixture
def names():
    """Names registered by a test, unregistered afterwards."""
    registered: list[str] = []
    yield registered
    for name in registered:
        unregister(name)


def _register(names, name, function, **supports):
    names.append(name)
    return register(name, function, **supports)


# The calling convention ------------------------------------------------------------


def test_keyword_only_options_are_passed(names):
    received = []

    def conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
        received.append({"stride": stride, "padding": padding, "dilation": dilation, "groups": groups})
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    implementation = _register(names, "keyword_only_conv", conv)
    outcome = evaluate(implementation, CASE)

    assert received == [OPTIONS]
    assert outcome.verdict == "pass", outcome.detail


def test_keyword_only_options_are_supported(names):
    def conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    supports = _register(names, "keyword_only_conv", conv).supports
    assert supports.bias
    assert supports.stride
    assert supports.dilation
    assert supports.groups
    assert supports.padding_forms == {"int", "pair", "valid", "same"}


def test_var_keyword_receives_options(names):
    received = []

    def conv(input, weight, **options):
        received.append(options)
        return F.conv2d(input, weight, **options)

    implementation = _register(names, "var_keyword_conv", conv)
    outcome = evaluate(implementation, CASE)

    [options] = received
    assert options.pop("bias") is not None
    assert options == OPTIONS
    assert outcome.verdict == "pass", outcome.detail
    assert implementation.supports.groups


def test_positional_convention_unchanged(names):
    received = []

    def conv(x, w, b=None, s=1, p=0, d=1, g=1):
        received.append((s, p, d, g))
        return F.conv2d(x, w, b, s, p, d, g)

    implementation = _register(names, "positional_conv", conv)
    outcome = evaluate(implementation, CASE)

    assert received == [tuple(OPTIONS.values())]
    assert outcome.verdict == "pass", outcome.detail


def test_missing_keyword_option_inferred_unsupported(names):
    received = []

    def conv(x, w, *, stride=1):
        received.append(stride)
        return F.conv2d(x, w, None, stride)

    implementation = _register(names, "stride_only_conv", conv)
    supports = implementation.supports
    assert supports.stride
    assert not supports.bias
    assert not supports.dilation
    assert not supports.groups
    assert supports.padding_forms == {"valid"}

    case = ConvCase(height=5, width=5, stride=(2, 2), padding="valid", bias=False)
    assert evaluate(implementation, case).verdict == "pass"
    assert received == [(2, 2)]


def test_var_positional_then_keyword_only(names):
    received = []

    def conv(x, w, *rest, groups=1):
        received.append((rest, groups))
        return F.conv2d(x, w, *rest, groups=groups)

    implementation = _register(names, "rest_then_groups_conv", conv)
    outcome = evaluate(implementation, CASE)

    [(rest, groups)] = received
    assert rest[1:] == ((2, 1), (1, 0), (1, 2))
    assert groups == 2
    assert outcome.verdict == "pass", outcome.detail


def test_padding_mode_reaches_keyword_only(names):
    received = []

    def conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
        received.append(padding_mode)
        if padding_mode != "zeros":
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode=padding_mode)
            padding = 0
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    implementation = _register(names, "padding_mode_conv", conv, padding_modes={"zeros", "reflect"},
                               padding_forms={"pair"})
    case = ConvCase(height=6, width=6, padding=(1, 2), padding_mode="reflect")
    assert evaluate(implementation, case).verdict == "pass"
    assert received == ["reflect"]


def test_builtin_without_signature_gets_all_positional(names):
    implementation = _register(names, "torch_builtin_conv", F.conv2d)
    assert implementation._plan.positional == 7
    assert implementation._plan.keywords == ()
    assert evaluate(implementation, CASE).verdict == "pass"


def test_call_plan_inspected_once(names, monkeypatch):
    def conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    implementation = _register(names, "cached_plan_conv", conv)
    inspected = []
    original = registry._call_plan

    def counting(function):
        inspected.append(function)
        return original(function)

    monkeypatch.setattr(registry, "_call_plan", counting)
    for _ in range(3):
        assert evaluate(implementation, CASE).verdict == "pass"
    assert len(inspected) == 1


def test_required_unpassed_parameter_rejected(names):
    def conv(x, w, *, scale):
        return F.conv2d(x, w) * scale

    with pytest.raises(UsageError) as raised:
        _register(names, "scaled_conv", conv)
    assert raised.value.reason == ("requires the parameter 'scale', which the conv2d calling convention does not "
                                   "always pass")


@pytest.mark.parametrize("conv, reason", [
    (lambda input, weight, bias=None, padding=0, stride=1: None,
     "has the parameter 'padding' in position 4, where difftest passes stride"),
    (lambda input, weight, scale, bias=None, stride=1: None,
     "has the parameter 'bias' in position 4, where difftest passes stride"),
    (lambda input, weight, padding_mode="zeros": None,
     "has the parameter 'padding_mode' in position 3, where difftest passes bias"),
])
def test_misplaced_parameter_rejected(names, conv, reason):
    with pytest.raises(UsageError) as raised:
        _register(names, "misordered_conv", conv)
    assert raised.value.reason == reason
    assert "order its parameters as torch.nn.functional.conv2d does" in raised.value.fix


def test_renamed_input_and_weight_accepted(names):
    def conv(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(x, w, bias, stride, padding, dilation, groups)

    assert evaluate(_register(names, "short_names_conv", conv), CASE).verdict == "pass"


def test_declared_option_without_parameter_rejected(names):
    def conv(x, w, b=None, *, padding=0):
        return F.conv2d(x, w, b, 1, padding)

    with pytest.raises(SupportsError) as raised:
        _register(names, "no_stride_conv", conv, stride=True)
    assert str(raised.value) == ("implementation 'no_stride_conv': stride=True is invalid: the function takes no "
                                 "stride parameter. add the parameter or drop stride= from the declaration")


# Declaration checks ------------------------------------------------------------------


def good_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


BAD_DECLARATIONS = [
    ({"groups": "no"}, "groups='no' is invalid: expected a bool, got str. use True or False"),
    ({"bias": 1}, "bias=1 is invalid: expected a bool, got int. use True or False"),
    ({"unbatched": None}, "unbatched=None is invalid: expected a bool, got NoneType. use True or False"),
    ({"dtypes": {"float8"}}, "dtypes='float8' is invalid: unknown name. use names from float32, float64, float16, "
                             "bfloat16"),
    ({"dtypes": ["float32", 32]}, "dtypes=['float32', 32] is invalid: contains 32 of type int, not a name. use "
                                  "names from float32, float64, float16, bfloat16"),
    ({"dtypes": {"float32": True}}, "dtypes={'float32': True} is invalid: expected a list, tuple or set of names, "
                                    "got dict. for example dtypes={'float32'}"),
    ({"dtypes": []}, "dtypes=set() is invalid: expected at least one value. for example dtypes={'float32'}"),
    ({"devices": {"gpu"}}, "devices='gpu' is invalid: unknown name. use names from cpu, cuda, mps"),
    ({"devices": {"gpu", "tpu", "cpu"}}, "devices='gpu' is invalid: unknown name, as is tpu. use names from "
                                         "cpu, cuda, mps"),
    ({"layouts": 3}, "layouts=3 is invalid: expected a list, tuple or set of names, got int. for example "
                     "layouts={'contiguous'}"),
    ({"error_model": "spectral"}, "error_model='spectral' is invalid: expected one of elementwise, normwise. use "
                                  "'elementwise' for direct summation or 'normwise' for FFT or Winograd"),
    ({"tolerance_factor": math.inf}, "tolerance_factor=inf is invalid: expected a finite number of at least 1. a "
                                     "factor widens the bound and never narrows it, so use 1 or more"),
    ({"tolerance_factor": math.nan}, "tolerance_factor=nan is invalid: expected a finite number of at least 1. a "
                                     "factor widens the bound and never narrows it, so use 1 or more"),
    ({"tolerance_factor": 0.5}, "tolerance_factor=0.5 is invalid: expected a finite number of at least 1. a "
                                "factor widens the bound and never narrows it, so use 1 or more"),
    ({"tolerance_factor": True}, "tolerance_factor=True is invalid: expected a finite number of at least 1. a "
                                 "factor widens the bound and never narrows it, so use 1 or more"),
    ({"tolerance_factor": "2"}, "tolerance_factor='2' is invalid: expected a finite number of at least 1. a "
                                "factor widens the bound and never narrows it, so use 1 or more"),
    ({"isolate": "yes"}, "isolate='yes' is invalid: expected a bool, got str. use True or False"),
    ({"expected_to_fail": 0}, "expected_to_fail=0 is invalid: expected a bool, got int. use True or False"),
]


@pytest.mark.parametrize("declaration, message", BAD_DECLARATIONS,
                         ids=[f"{next(iter(declaration))}-{index}" for index, (declaration, _) in
                              enumerate(BAD_DECLARATIONS)])
def test_register_rejects_bad_value(names, declaration, message):
    with pytest.raises(SupportsError) as raised:
        _register(names, "declared_conv", good_conv, **declaration)
    assert str(raised.value) == f"implementation 'declared_conv': {message}"
    assert "declared_conv" not in registry._REGISTRY


def test_register_rejects_unknown_option(names):
    with pytest.raises(SupportsError) as raised:
        _register(names, "declared_conv", good_conv, grouped=True)
    assert str(raised.value).startswith(
        "implementation 'declared_conv': grouped=True is invalid: unknown option. use one of dtypes, devices, ")


def test_register_names_every_unknown_option(names):
    with pytest.raises(SupportsError) as raised:
        _register(names, "declared_conv", good_conv, grouped=True, dtype="float32", paddings={"same"})
    assert str(raised.value).startswith(
        "implementation 'declared_conv': grouped=True is invalid: unknown option, as are dtype, paddings. "
        "use one of dtypes, devices, ")


def test_supports_rejects_bad_value_directly():
    with pytest.raises(UsageError) as raised:
        Supports(groups="no")
    assert not isinstance(raised.value, SupportsError)
    assert str(raised.value) == "groups='no' is invalid: expected a bool, got str. use True or False"


def test_supports_accepts_good_values():
    supports = Supports(dtypes="float32", devices=["cpu"], layouts=("contiguous", "sliced"), groups=False,
                        tolerance_factor=2)
    assert supports.dtypes == {"float32"}
    assert supports.devices == {"cpu"}
    assert supports.layouts == {"contiguous", "sliced"}
    assert supports.tolerance_factor == 2


def test_supports_error_pickles():
    error = SupportsError("conv", "groups", "no", "expected a bool, got str", "use True or False")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, UsageError)
    assert isinstance(copy, DifftestError)
    assert (copy.implementation, copy.name, copy.value, copy.reason, copy.fix) == (
        "conv", "groups", "no", "expected a bool, got str", "use True or False")
    assert str(copy) == str(error)


# Declarations loaded from a file ----------------------------------------------------------

DECLARED = '''
import torch.nn.functional as F


def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def string_groups(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(input, weight, bias, stride, padding, dilation, groups)


def list_declaration(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(input, weight, bias, stride, padding, dilation, groups)


def number_key(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(input, weight, bias, stride, padding, dilation, groups)


def spaced_name(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(input, weight, bias, stride, padding, dilation, groups)


def unknown_key(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(input, weight, bias, stride, padding, dilation, groups)


def string_isolate(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(input, weight, bias, stride, padding, dilation, groups)


def keyword_conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


conv.difftest_supports = {"isolate": False, "dtypes": ["float32"], "name": "declared_conv"}
string_groups.difftest_supports = {"groups": "no"}
list_declaration.difftest_supports = ["float32"]
number_key.difftest_supports = {1: True}
spaced_name.difftest_supports = {"name": "my conv"}
unknown_key.difftest_supports = {"target": "elsewhere:conv"}
string_isolate.difftest_supports = {"isolate": "no"}
keyword_conv.difftest_supports = {"isolate": False}
'''

LOAD_ERRORS = [
    ("string_groups", "implementation 'string_groups': groups='no' is invalid: expected a bool, got str. use True "
                      "or False"),
    ("list_declaration", "implementation 'list_declaration': difftest_supports=['float32'] is invalid: expected a "
                         "dict, got list. for example difftest_supports = {'dtypes': {'float32'}, 'groups': False}"),
    ("number_key", "implementation 'number_key': difftest_supports={1: True} is invalid: has the key 1, which is "
                   "not an option name. for example difftest_supports = {'dtypes': {'float32'}, 'groups': False}"),
    ("spaced_name", "implementation 'spaced_name': name='my conv' is invalid: expected a non-empty name without "
                    "spaces. for example {'name': 'my_conv'}"),
    ("string_isolate", "implementation 'string_isolate': isolate='no' is invalid: expected a bool, got str. use "
                       "True or False"),
]


@pytest.fixture
def declared_file(tmp_path):
    path = tmp_path / "declared.py"
    path.write_text(DECLARED)
    return path


def test_load_accepts_good_declaration(declared_file, names):
    implementation = load(f"{declared_file}:conv")
    names.append(implementation.name)
    assert implementation.name == "declared_conv"
    assert implementation.supports.dtypes == {"float32"}
    assert not implementation.isolate


def test_load_keyword_only_function(declared_file, names):
    implementation = load(f"{declared_file}:keyword_conv")
    names.append(implementation.name)
    assert implementation.supports.groups
    assert evaluate(implementation, CASE).verdict == "pass"


@pytest.mark.parametrize("function, message", LOAD_ERRORS, ids=[function for function, _ in LOAD_ERRORS])
def test_load_rejects_bad_declaration(declared_file, function, message):
    with pytest.raises(SupportsError) as raised:
        load(f"{declared_file}:{function}")
    assert str(raised.value) == message


def test_load_rejects_unknown_key(declared_file):
    with pytest.raises(SupportsError) as raised:
        load(f"{declared_file}:unknown_key")
    message = str(raised.value)
    assert message.startswith("implementation 'unknown_key': target='elsewhere:conv' is invalid: unknown option. "
                              "use one of dtypes, ")
    assert message.endswith(", name, isolate, description, expected_to_fail")


@pytest.mark.parametrize("function, message", LOAD_ERRORS[:2], ids=[function for function, _ in LOAD_ERRORS[:2]])
def test_cli_bad_declaration_one_line(declared_file, tmp_path, capsys, function, message):
    status = main(["fuzz", "--impl", f"{declared_file}:{function}", "--report-dir", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"difftest fuzz: error: {message}\n"


def test_cli_subprocess_bad_declaration(declared_file, tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "difftest.cli", "fuzz", "--impl", f"{declared_file}:list_declaration",
         "--report-dir", str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert process.returncode == 2
    assert process.stderr == f"difftest fuzz: error: {LOAD_ERRORS[1][1]}\n"
    assert "Traceback" not in process.stdout


def test_cli_finds_keyword_only_bug(tmp_path, monkeypatch, capsys):
    # Wrong only for groups > 1, which the fuzzer generates only when the registry passes groups to the function.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keyword.py").write_text(textwrap.dedent('''
        import torch.nn.functional as F

        def conv(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
            output = F.conv2d(x, w, b, stride, padding, dilation, groups)
            return output + 1 if groups > 1 else output

        conv.difftest_supports = {"isolate": False, "dtypes": {"float64"}, "name": "cli_keyword_conv"}
    '''))
    try:
        status = main(["fuzz", "--impl", "keyword.py:conv", "--max-examples", "60", "--seed", "0", "--no-invalid",
                       "--no-replay", "--report-dir", "reports"])
    finally:
        unregister("cli_keyword_conv")
    output = capsys.readouterr().out
    assert status == 1, output
    [report] = (tmp_path / "reports").glob("*.json")
    assert report.name.startswith("cli_keyword_conv--mismatch--")


def test_evaluate_rejects_undeclared_case(names):
    implementation = _register(names, "no_groups_conv", lambda x, w, b=None, stride=1, padding=0, dilation=1, groups=1:
                               F.conv2d(x, w, b, stride, padding, dilation, groups), groups=False)
    case = ConvCase(in_channels=2, out_channels=2, groups=2)
    with pytest.raises(UnsupportedCaseError, match="'no_groups_conv' does not support this case: groups 2 lies "
                                                   "outside what it declared"):
        evaluate(implementation, case)


def test_builtin_name_not_taken(tmp_path):
    module = tmp_path / "named_loop.py"
    module.write_text(textwrap.dedent("""
        import torch.nn.functional as F

        def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
            return F.conv2d(x, w, b, stride, padding, dilation, groups)

        conv.difftest_supports = {"name": "loop"}
    """))
    with pytest.raises(SupportsError, match="name='loop' is invalid: is the name of the built-in implementation "
                                            "difftest.builtins._loop:conv2d"):
        load(f"{module}:conv")
    assert registry.get("loop").target == "difftest.builtins._loop:conv2d"


def test_same_impl_twice_rejected(capsys):
    assert main(["fuzz", "--impl", "loop", "--impl", "loop"]) == 2
    assert capsys.readouterr().err.strip() == (
        "difftest fuzz: error: --impl='loop' is invalid: is given twice. pass each implementation once")
