"""Benchmarks of difftest: throughput, the harness's overhead, time to find a known bug, and xdist speed-up.

Run from the repository root::

    .venv/bin/python benchmarks/bench.py                 # everything, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --examples 100 --skip-xdist
    .venv/bin/python benchmarks/bench.py --only xdist --xdist-examples 300

Four measurements, printed with the machine they ran on:

1. Examples per second of each built-in: one seeded search of ``--examples``
   cases, no reports written, invalid-call search off.
2. The harness's overhead: the same seeded search through
   :func:`difftest.fuzz`, against a bare Hypothesis loop that draws the same
   cases and makes the same conv calls (the implementation, torch's conv2d
   and the float64 truth), for three built-ins alone and for two of them in
   one shared search. Both use the same strategy and
   seed, and the script checks that the case lists are equal. The ratio is
   harness time over bare time, each the lowest of ``--repeats``
   interleaved runs, in CPU time and in wall time.
3. Time for difftest to find and shrink the known-bad built-in
   ``unfold_transposed``, over several seeds.
4. Wall time of a pytest-xdist campaign (the plugin, a fixed budget) with
   one and with two workers.

torch's intra-op threads are set to ``--threads`` (default 1) in this
process and in each xdist worker: several processes with a thread per core
each oversubscribe the cores, and small convolutions then get slower, not
faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import hypothesis
import torch
from hypothesis import HealthCheck, given, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from difftest import FuzzOptions, fuzz, fuzz_implementation, get  # noqa: E402
from difftest.builtins import DEFAULT  # noqa: E402
from difftest.reference import reference, truth  # noqa: E402
from difftest.values import make_inputs  # noqa: E402
from strategies import conv_cases  # noqa: E402

# Built-ins whose own work is small, so the harness's share of the time is largest.
OVERHEAD_IMPLEMENTATIONS = ("torch_no_mkldnn", "unfold", "im2col")
# Two of them that declare the same space, timed as one shared search.
SHARED_OVERHEAD = ("unfold", "im2col")

KNOWN_BAD = "unfold_transposed"

SECTIONS = ("throughput", "overhead", "known-bad", "xdist")


def machine() -> dict[str, str]:
    """Return the CPU model, core count and library versions."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "load average (1 min) at start": f"{load:.2f}",
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "hypothesis": hypothesis.__version__,
        "python": platform.python_version(),
    }


def _options(examples: int, seed: int, **changes: Any) -> FuzzOptions:
    return FuzzOptions(max_examples=examples, seed=seed, write_reports=False, check_invalid=False, **changes)


def throughput(names: tuple[str, ...], examples: int, seed: int) -> list[tuple[str, int, int, float, str]]:
    """Return (name, examples, shrink steps, seconds, verdict) of one seeded search per implementation."""
    rows = []
    for name in names:
        result = fuzz_implementation(get(name), _options(examples, seed))
        rows.append((name, result.examples, result.shrink_steps, result.seconds, result.verdict))
    return rows


def _bare_loop(names: tuple[str, ...], examples: int, seed: int, drawn: list[Any]) -> Callable[[], None]:
    """Return a Hypothesis test over the harness's strategy that only makes the conv calls.

    Each case's inputs, torch's conv2d and the truth are computed once, and
    every implementation in ``names`` is called on them, as in a shared search.
    """
    implementations = [get(name) for name in names]

    @hypothesis.seed(seed)
    @settings(max_examples=examples, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(conv_cases(supports=implementations[0].supports))
    def bare(case: Any) -> None:
        drawn.append(case)
        inputs = make_inputs(case)
        for implementation in implementations:
            implementation.call(inputs.input, inputs.weight, inputs.bias, case)
        reference(case, inputs)
        truth(case, inputs.float64())

    return bare


def _timed(run: Callable[[], Any]) -> tuple[Any, float, float]:
    """Return run()'s value, its wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = run()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def overhead(names: tuple[str, ...], examples: int, seed: int, repeats: int) -> dict[str, Any]:
    """Time the harness and the bare loop on the same cases, alternating, and keep the fastest of each.

    With several ``names`` (implementations of the same space) the harness
    is one shared search over them all. CPU time is the figure to trust on a
    shared machine, with torch on one thread: other processes stretch wall
    time but not this process's CPU time.
    """
    harness_cases: list[Any] = []
    bare_cases: list[Any] = []
    timings: dict[str, list[tuple[float, float]]] = {"harness": [], "bare": []}

    def record(outcome: Any) -> None:
        # A shared search reports each case once per implementation.
        if outcome.implementation == names[0]:
            harness_cases.append(outcome.case)

    for _ in range(repeats):
        harness_cases.clear()
        bare_cases.clear()
        options = _options(examples, seed, on_example=record)
        results, wall, cpu = _timed(lambda: fuzz([get(name) for name in names], options))
        timings["harness"].append((wall, cpu))
        _, wall, cpu = _timed(_bare_loop(names, examples, seed, bare_cases))
        timings["bare"].append((wall, cpu))
    best = {key: (min(t[0] for t in values), min(t[1] for t in values)) for key, values in timings.items()}
    verdicts = sorted({result.verdict for result in results})
    return {"name": " + ".join(names), "examples": len(harness_cases), "verdict": ", ".join(verdicts),
            "same_cases": harness_cases == bare_cases, "bare_wall": best["bare"][0], "bare_cpu": best["bare"][1],
            "harness_wall": best["harness"][0], "harness_cpu": best["harness"][1],
            "ratio_wall": best["harness"][0] / best["bare"][0], "ratio_cpu": best["harness"][1] / best["bare"][1]}


def find_known_bad(seeds: range, examples: int) -> list[tuple[int, int, int, float, str]]:
    """Return (seed, examples, shrink steps, seconds, shrunk case) of the search that finds and shrinks KNOWN_BAD."""
    rows = []
    for seed in seeds:
        result = fuzz_implementation(get(KNOWN_BAD), _options(examples, seed, analyse=False))
        case = result.outcome.case.describe() if result.outcome else "(not found)"
        rows.append((seed, result.examples, result.shrink_steps, result.seconds, case))
    return rows


_XDIST_PROJECT = """\
[pytest]
difftest_impl =
    unfold
    im2col
    einsum_strided
difftest_dtype = float32
difftest_seed = 0
difftest_no_replay = true
"""


def xdist_campaign(workers: int, examples: int, threads: int) -> float:
    """Return the wall time of a plugin campaign (3 built-ins x 7 regions) with ``workers`` xdist workers."""
    with tempfile.TemporaryDirectory(prefix="difftest-bench-") as folder:
        with open(os.path.join(folder, "pytest.ini"), "w", encoding="utf-8") as stream:
            stream.write(_XDIST_PROJECT)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--difftest-max-examples", str(examples), "--difftest-threads", str(threads)]
        command += ["-n", str(workers)] if workers else ["-p", "no:xdist"]
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if completed.returncode not in (0, 1):
            raise RuntimeError(f"pytest exited with {completed.returncode}:\n{completed.stdout}\n{completed.stderr}")
        return seconds


def _print_throughput(arguments: argparse.Namespace) -> None:
    print(f"\n## Throughput ({arguments.examples} examples, seed {arguments.seed})")
    # The rate counts every case run, shrinking steps included, because the seconds include them.
    print(f"{'implementation':<22} {'examples':>8} {'shrinks':>8} {'seconds':>8} {'cases/s':>8}  verdict")
    for name, examples, shrinks, seconds, verdict in throughput(DEFAULT, arguments.examples, arguments.seed):
        rate = (examples + shrinks) / seconds
        print(f"{name:<22} {examples:>8} {shrinks:>8} {seconds:>8.2f} {rate:>8.1f}  {verdict}")


def _print_overhead(arguments: argparse.Namespace) -> None:
    print(f"\n## Harness overhead (best of {arguments.repeats}, same cases, same conv calls; seconds)")
    print(f"{'implementation':<18} {'bare cpu':>8} {'harness cpu':>11} {'ratio':>6}   {'bare wall':>9} "
          f"{'harness wall':>12} {'ratio':>6}  same cases")
    for names in [(name,) for name in OVERHEAD_IMPLEMENTATIONS] + [SHARED_OVERHEAD]:
        row = overhead(names, arguments.examples, arguments.seed, arguments.repeats)
        print(f"{row['name']:<18} {row['bare_cpu']:>8.2f} {row['harness_cpu']:>11.2f} {row['ratio_cpu']:>6.2f}   "
              f"{row['bare_wall']:>9.2f} {row['harness_wall']:>12.2f} {row['ratio_wall']:>6.2f}  "
              f"{'yes' if row['same_cases'] else 'NO'} ({row['examples']} cases, {row['verdict']})")


def _print_known_bad(arguments: argparse.Namespace) -> None:
    print(f"\n## Finding and shrinking {KNOWN_BAD} (up to {arguments.examples} examples)")
    rows = find_known_bad(range(5), arguments.examples)
    for seed, examples, shrinks, seconds, case in rows:
        print(f"seed {seed}: {seconds:6.2f} s, {examples:>4} examples, {shrinks:>4} shrink steps, shrunk to {case}")
    print(f"median {statistics.median(row[3] for row in rows):.2f} s")


def _print_xdist(arguments: argparse.Namespace) -> None:
    print(f"\n## pytest-xdist campaign (3 built-ins x 7 regions, float32, {arguments.xdist_examples} "
          "examples per item; wall seconds)")
    timings = {workers: xdist_campaign(workers, arguments.xdist_examples, arguments.threads)
               for workers in (0, 1, 2)}
    print(f"no xdist {timings[0]:.1f} s, -n 1 {timings[1]:.1f} s, -n 2 {timings[2]:.1f} s; "
          f"speed-up from 1 to 2 workers {timings[1] / timings[2]:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per search (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each overhead timing (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="Hypothesis seed of every search (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--xdist-examples", type=int, default=60,
                        help="examples per item in the xdist campaign (default 60)")
    parser.add_argument("--skip-xdist", action="store_true", help="skip the xdist campaign")
    parser.add_argument("--only", action="append", choices=SECTIONS, default=None, metavar="SECTION",
                        help=f"run only this section: {', '.join(SECTIONS)} (repeatable)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)

    print("## Machine")
    for key, value in machine().items():
        print(f"{key:<32} {value}")

    # Warm up torch and Hypothesis, so that the first timing does not carry one-time costs.
    fuzz_implementation(get("unfold"), _options(10, 0))

    chosen = arguments.only or [name for name in SECTIONS if not (name == "xdist" and arguments.skip_xdist)]
    printers = {"throughput": _print_throughput, "overhead": _print_overhead, "known-bad": _print_known_bad,
                "xdist": _print_xdist}
    for name in SECTIONS:
        if name in chosen:
            printers[name](arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
