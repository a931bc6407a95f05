"""The built-in conv2d implementations, registered on import.

Each is a small module with one way to compute a convolution; all take
``torch.nn.functional.conv2d``'s arguments plus nn.Conv2d's ``padding_mode``.
``unfold_transposed`` is wrong on purpose (it swaps the output's spatial
axes) and registered with ``expected_to_fail=True``. The ``torch_*`` entries
run torch's own code paths, so torch itself can be checked against the
float64 truth.

loop, unfold, im2col and einsum_strided compute in the input's dtype and
declare float32 and float64 only. On float16 and bfloat16 they exceed the
bound of float32 accumulation that difftest allows for half dtypes, as
measured with torch 2.13 on CPU. loop rounds each product to the half dtype,
and the matrix-product ones round the sum before adding the bias.
half_fp32_accumulate, fft and winograd cover half dtypes in float32.
"""

from __future__ import annotations

from difftest.builtins._einsum import conv2d as conv2d_einsum_strided
from difftest.builtins._fft import conv2d as conv2d_fft
from difftest.builtins._half import conv2d as conv2d_half_fp32_accumulate
from difftest.builtins._im2col import conv2d as conv2d_im2col
from difftest.builtins._loop import conv2d as conv2d_loop
from difftest.builtins._torch_paths import (
    conv2d_channels_last as conv2d_torch_channels_last,
    conv2d_compiled as conv2d_torch_compile,
    conv2d_half as conv2d_torch_half,
    conv2d_mkldnn as conv2d_torch_mkldnn,
    conv2d_no_mkldnn as conv2d_torch_no_mkldnn,
)
from difftest.builtins._unfold import conv2d as conv2d_unfold, conv2d_transposed as conv2d_unfold_transposed
from difftest.builtins._winograd import conv2d as conv2d_winograd
from difftest.case import VALUE_KINDS
from difftest.registry import register

__all__ = [
    "CORE",
    "CORRECT",
    "DEFAULT",
    "conv2d_einsum_strided",
    "conv2d_fft",
    "conv2d_half_fp32_accumulate",
    "conv2d_im2col",
    "conv2d_loop",
    "conv2d_torch_channels_last",
    "conv2d_torch_compile",
    "conv2d_torch_half",
    "conv2d_torch_mkldnn",
    "conv2d_torch_no_mkldnn",
    "conv2d_unfold",
    "conv2d_unfold_transposed",
    "conv2d_winograd",
]

# The four classic built-ins.
CORE = ("loop", "unfold_transposed", "unfold", "im2col")

# NOTE: only CPU runs have been checked. The built-ins other than torch_mkldnn
# and torch_no_mkldnn keep the default device list, since they use only
# device-generic torch operations, but none has run on CUDA or MPS.
ALL_PADDING_MODES = {"zeros", "reflect", "replicate", "circular"}
FULL_PRECISION = {"float32", "float64"}
HALF = {"float16", "bfloat16"}
# FFT and Winograd mix every input of a transform into every output, so one
# infinity becomes NaN across its whole plane or tile (inf - inf in the
# transforms) where direct summation yields inf. Special values are excluded.
FINITE_VALUE_KINDS = set(VALUE_KINDS) - {"special"}

register("loop", conv2d_loop, target="difftest.builtins._loop:conv2d",
         description="direct summation, one output position at a time",
         dtypes=FULL_PRECISION, padding_modes=ALL_PADDING_MODES)
register("unfold_transposed", conv2d_unfold_transposed, target="difftest.builtins._unfold:conv2d_transposed",
         expected_to_fail=True,
         description="known-bad: Tensor.unfold patches read back with the output's spatial axes swapped",
         dtypes=FULL_PRECISION, padding_modes=ALL_PADDING_MODES)
register("unfold", conv2d_unfold, target="difftest.builtins._unfold:conv2d",
         description="Tensor.unfold patches in row-major order times the flattened weight",
         dtypes=FULL_PRECISION, padding_modes=ALL_PADDING_MODES)
register("im2col", conv2d_im2col, target="difftest.builtins._im2col:conv2d",
         description="torch.nn.functional.unfold columns times the weight matrix",
         dtypes=FULL_PRECISION, padding_modes=ALL_PADDING_MODES)
register("fft", conv2d_fft, target="difftest.builtins._fft:conv2d",
         description="rfft2 of input and dilated kernel, pointwise product, irfft2 (half dtypes in float32)",
         padding_modes=ALL_PADDING_MODES, error_model="normwise", value_kinds=FINITE_VALUE_KINDS)
register("winograd", conv2d_winograd, target="difftest.builtins._winograd:conv2d",
         description="Winograd F(2x2, 3x3) for 3x3 kernels at stride 1 and dilation 1, else im2col "
                     "(half dtypes in float32)",
         padding_modes=ALL_PADDING_MODES, error_model="normwise", value_kinds=FINITE_VALUE_KINDS)
register("einsum_strided", conv2d_einsum_strided, target="difftest.builtins._einsum:conv2d",
         description="torch.einsum over an as_strided window view of the padded input",
         dtypes=FULL_PRECISION, padding_modes=ALL_PADDING_MODES)
register("half_fp32_accumulate", conv2d_half_fp32_accumulate, target="difftest.builtins._half:conv2d",
         description="float16 and bfloat16 upcast to float32, im2col there, one rounding at the end",
         dtypes=HALF, padding_modes=ALL_PADDING_MODES)
# torch 2.13's oneDNN bfloat16 kernels crash the process on some shapes on
# AMX CPUs (docs/tolerance.md), so the paths that reach them run isolated.
register("torch_mkldnn", conv2d_torch_mkldnn, target="difftest.builtins._torch_paths:conv2d_mkldnn",
         isolate=True, description="torch's conv2d with the oneDNN backend enabled",
         devices={"cpu"}, padding_modes=ALL_PADDING_MODES)
register("torch_no_mkldnn", conv2d_torch_no_mkldnn, target="difftest.builtins._torch_paths:conv2d_no_mkldnn",
         description="torch's conv2d with the oneDNN backend disabled",
         devices={"cpu"}, padding_modes=ALL_PADDING_MODES)
register("torch_channels_last", conv2d_torch_channels_last,
         target="difftest.builtins._torch_paths:conv2d_channels_last", isolate=True,
         description="torch's conv2d on channels_last input and weight",
         padding_modes=ALL_PADDING_MODES)
register("torch_half", conv2d_torch_half, target="difftest.builtins._torch_paths:conv2d_half", isolate=True,
         description="torch's conv2d on float16 and bfloat16 operands",
         dtypes=HALF, padding_modes=ALL_PADDING_MODES)
register("torch_compile", conv2d_torch_compile, target="difftest.builtins._torch_paths:conv2d_compiled",
         description="torch.compile(F.conv2d), compiled on the first call",
         padding_modes=ALL_PADDING_MODES)

# Every built-in that should agree with torch within the error bound.
CORRECT = ("loop", "unfold", "im2col", "fft", "winograd", "einsum_strided", "half_fp32_accumulate",
           "torch_mkldnn", "torch_no_mkldnn", "torch_channels_last", "torch_half", "torch_compile")

# The implementations `difftest fuzz` runs with no --impl: those written here.
# The torch_* paths test torch itself and are named with --impl: on CPU,
# torch 2.13's bfloat16 convolution is outside the float32-accumulation
# bound on about 1% of cases (measured with benchmarks/long_run.py), and
# torch_compile spends seconds compiling each new combination of options.
DEFAULT = CORE + tuple(name for name in CORRECT if name not in CORE and not name.startswith("torch_"))
