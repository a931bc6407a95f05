"""Run implementation calls in a worker process, so a crash, a hang or a runaway allocation becomes a finding.

>>> from difftest.isolation import isolated_caller
>>> caller = isolated_caller(timeout=5)   # pass it to difftest.evaluate(..., caller=caller)
>>> caller.close()

Each caller owns one persistent worker, started from the 'forkserver'
multiprocessing context, or 'spawn' where there is none. It never uses 'fork',
because forking a process whose OpenMP threads are running is unsafe. The
server imports torch once, so a worker restarted after a crash or a timeout is
ready in well under a second. The worker imports the implementation from its
``target`` and receives the inputs pickled with plain ``pickle``, which keeps
each tensor's size, strides and storage offset, so channels_last, sliced,
transposed and expanded (stride 0) inputs arrive as they are. The contract
checks run in the worker, on the worker's copies, because the parent's copies
never change.

A caller raises, with attribute ``difftest_verdict`` for difftest.runner.evaluate:

- :class:`WorkerCrashed` ('crash') when the worker dies (a signal, an exit,
  the out-of-memory killer);
- :class:`WorkerTimeout` ('timeout') when a call is not answered in time (the
  worker is killed);
- :class:`ContractViolation` ('mutates_input', 'output_aliases_input',
  'wrong_type') when the call broke the contract.

An exception the implementation raised comes back as the same type where it
pickles, else as a RuntimeError naming the original type. After a crash or a
timeout the next call starts a fresh worker, so the same case gives the same
verdict again, as Hypothesis needs when it shrinks.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Iterator, Optional

from difftest.errors import UsageError

__all__ = [
    "isolated_caller",
    "IsolatedCaller",
    "WorkerCrashed",
    "WorkerTimeout",
    "ContractViolation",
    "MemoryLimitExceeded",
    "require_importable",
    "MAX_TIMEOUT",
    "close_all",
]

# Seconds a fresh worker may take to start and import an implementation's
# module. Imports are not part of a call, so the call's time limit does not
# apply to them.
START_TIMEOUT = 300.0

# Seconds between the worker's checks that the process that started it is alive.
_PARENT_POLL_SECONDS = 0.5

# The largest time limit per call, in seconds. The wait for a worker's reply
# (multiprocessing.connection.wait) hands poll(2) its timeout in milliseconds
# as a C int on Linux, and raises OverflowError above 2**31 - 1 ms (about 24.8 days).
MAX_TIMEOUT = (2**31 - 1) // 1000

_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


class WorkerCrashed(RuntimeError):
    """The worker process died during a call."""

    difftest_verdict = "crash"


class WorkerTimeout(TimeoutError):
    """The worker gave no result within the time limit and was killed."""

    difftest_verdict = "timeout"


class MemoryLimitExceeded(RuntimeError):
    """An allocation that failed at the worker's memory limit.

    The limit is the memory budget. Either the implementation allocates
    without bound or the budget is too small for it, so the message names
    the limit for the user to tell which.
    """

    # Running out of memory is a crash the worker survived, because the
    # limit turned it into a failed allocation.
    difftest_verdict = "crash"

    def __init__(self, limit: int, raised: str) -> None:
        self.limit = limit
        # What the implementation raised, shown as the report's exception.
        self.difftest_exception = raised
        super().__init__(f"ran out of memory at the worker's limit of {_mib(limit)} more per call ({raised}). "
                         "If it needs that much on this case, raise the memory budget "
                         "(--memory-budget, or --difftest-memory-budget under pytest)")

    def __reduce__(self) -> Any:
        return (MemoryLimitExceeded, (self.limit, self.difftest_exception))


def _mib(size: int) -> str:
    return f"{size / 2**20:.4g} MiB"


# torch's CPU allocator reports a failed allocation as a RuntimeError with this text.
_TORCH_ALLOCATION_FAILED = "can't allocate memory"


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError)
                                              and _TORCH_ALLOCATION_FAILED in str(error))


class ContractViolation(RuntimeError):
    """The implementation broke conv2d's contract in the worker (``verdict`` names how)."""

    def __init__(self, verdict: str, detail: str) -> None:
        self.difftest_verdict = verdict
        self.detail = detail
        super().__init__(detail)

    def __reduce__(self) -> Any:
        return (ContractViolation, (self.difftest_verdict, self.detail))


def isolated_caller(timeout: Optional[float] = None, memory_limit: Optional[int] = None) -> IsolatedCaller:
    """Return a caller ``caller(implementation, case, inputs) -> output`` that runs each call in a worker.

    ``timeout`` is the limit in seconds per call (None: no limit).
    ``memory_limit`` is how many bytes a call may add to the worker's address
    space (RLIMIT_AS, Linux only, None: no limit). Past it an allocation
    fails, which Python reports as MemoryError and torch as RuntimeError.
    """
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise UsageError("timeout", timeout, f"expected seconds above 0 and at most {MAX_TIMEOUT} (about 24 days)",
                         "pass a shorter time limit, or None for no limit")
    return IsolatedCaller(timeout=timeout, memory_limit=memory_limit)


def require_importable(implementation: Any) -> None:
    """Raise UsageError when a fresh process cannot import ``implementation`` from its target."""
    target = implementation.target or ""
    module, _, qualname = target.rpartition(":")
    reason = ""
    if not module or not qualname:
        reason = "has no MODULE:FUNCTION target to import"
    elif module in ("__main__", "__mp_main__"):
        reason = f"is defined in __main__ (target {target!r})"
    elif "<locals>" in qualname:
        reason = f"is defined inside a function (target {target!r})"
    elif "<lambda>" in qualname:
        reason = f"is a lambda (target {target!r})"
    if reason:
        raise UsageError("implementation", implementation.name,
                         f"{reason}, so a worker process cannot import it",
                         "define it at the top level of an importable module or file, "
                         "or run it with isolate=False (--no-isolate)")


class IsolatedCaller:
    """Caller that runs implementations in a persistent worker process (see the module documentation)."""

    def __init__(self, timeout: Optional[float] = None, memory_limit: Optional[int] = None) -> None:
        if timeout is not None and not timeout > 0:
            raise UsageError("timeout", timeout, "expected a number of seconds above 0, or None for no limit")
        if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
            raise UsageError("memory_limit", memory_limit, "expected a number of bytes above 0, or None for no limit")
        self.timeout = timeout
        self.memory_limit = memory_limit
        self._worker: Optional[_Worker] = None

    def __call__(self, implementation: Any, case: Any, inputs: Any) -> Any:
        require_importable(implementation)
        worker = self._ready_worker(implementation)
        stub = dataclasses.replace(implementation, function=None)
        reply = worker.request(("call", stub, case, inputs), self.timeout)
        kind = reply[0]
        if kind == "returned":
            return reply[1]
        if kind == "violated":
            raise ContractViolation(reply[1], reply[2])
        if kind == "raised":
            error = _rebuild_exception(*reply[1:])
            if _limited(self.memory_limit, case) is not None and _out_of_memory(error):
                raised = getattr(error, "difftest_raised", type(error).__name__)
                raise MemoryLimitExceeded(self.memory_limit, f"{raised}: {error}") from error
            raise error
        raise RuntimeError(f"unexpected reply {kind!r} from the worker process")

    def _ready_worker(self, implementation: Any) -> _Worker:
        if self._worker is None or not self._worker.alive:
            self._worker = _Worker(self.memory_limit)
        worker = self._worker
        if implementation.target not in worker.loaded:
            reply = worker.request(("load", implementation.target), max(START_TIMEOUT, self.timeout or 0))
            if reply[0] != "loaded":
                raise UsageError("implementation", implementation.name,
                                 f"cannot be imported in a worker process: {reply[1]}",
                                 "make its module importable from a fresh process, or run it with isolate=False "
                                 "(--no-isolate)")
            worker.loaded.add(implementation.target)
        return worker

    def close(self) -> None:
        """Stop the worker. A later call starts a new one."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def __del__(self) -> None:
        # A caller dropped without close() takes its worker with it.
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> IsolatedCaller:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# Parent side ---------------------------------------------------------------

_LIVE: weakref.WeakSet[_Worker] = weakref.WeakSet()
_START_LOCK = threading.Lock()


def close_all() -> None:
    """Kill every worker this process started. It also runs at exit."""
    for worker in list(_LIVE):
        worker.kill()


atexit.register(close_all)


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # The server imports torch once. Each worker is then a fork of a process
        # that has run no torch operation, so no OpenMP threads exist yet.
        context.set_forkserver_preload(["difftest.isolation"])
        return context
    return multiprocessing.get_context("spawn")


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, memory_limit: Optional[int]) -> None:
        context = _context()
        self.connection, child_end = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(child_end, list(sys.path), memory_limit),
                                       name="difftest-isolation-worker")
        with _main_module_hidden():
            self.process.start()
        child_end.close()
        self.loaded: set[str] = set()
        self.alive = True
        _LIVE.add(self)

    def request(self, message: tuple[Any, ...], timeout: Optional[float]) -> tuple[Any, ...]:
        """Send ``message`` and return the reply; raise WorkerCrashed or WorkerTimeout (killing the worker)."""
        try:
            data = pickle.dumps(message, protocol=_PICKLE_PROTOCOL)
            try:
                self.connection.send_bytes(data)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                raise self._died() from None
            ready = wait([self.connection, self.process.sentinel], timeout)
            if not ready:
                self.kill()
                raise WorkerTimeout(f"no result within {timeout:g} s")
            if self.connection not in ready and not self.connection.poll():
                raise self._died()
            try:
                reply = self.connection.recv_bytes()
            except (EOFError, ConnectionResetError, OSError):
                raise self._died() from None
        except (WorkerCrashed, WorkerTimeout):
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt, SIGTERM) or the request did not
            # pickle: the worker's state is unknown, so it goes.
            self.kill()
            raise
        return pickle.loads(reply)

    def _died(self) -> WorkerCrashed:
        self.process.join(5)
        code = self.process.exitcode
        self.kill()
        return WorkerCrashed(_death_message(code))

    def kill(self) -> None:
        if not self.alive:
            return
        self.alive = False
        try:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
        finally:
            self.connection.close()
            _LIVE.discard(self)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep a new worker from running the parent's __main__ module again.

    multiprocessing's 'spawn' and 'forkserver' children import the parent's
    main script (as __mp_main__) unless it has neither a file nor a module
    name, so an unguarded script would run its whole body in every worker.
    Workers import implementations by target and need nothing from __main__,
    so the start sees a stand-in main module without either.
    """
    main = sys.modules.get("__main__")
    stand_in = types.ModuleType("__main__")
    with _START_LOCK:
        sys.modules["__main__"] = stand_in
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def _death_message(code: Optional[int]) -> str:
    if code is None:
        return "worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name == "SIGKILL":
            return "worker process died with SIGKILL (the out-of-memory killer sends it)"
        return f"worker process died with {name}"
    return f"worker process exited with status {code}"


def _rebuild_exception(pickled: Optional[bytes], type_name: str, message: str, text: str) -> Exception:
    error: Any = None
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
        except Exception:
            error = None
    if not isinstance(error, Exception):
        # Also taken for KeyboardInterrupt and SystemExit, which must not stop
        # the parent when the implementation raised them. The report still
        # names the type the implementation raised.
        error = RuntimeError(message)
        error.difftest_raised = type_name.removeprefix("builtins.")
    error.difftest_worker_traceback = text
    return error


# Worker side ---------------------------------------------------------------

def _serve(connection: Connection, sys_path: list[str], memory_limit: Optional[int]) -> None:
    """Serve requests until the parent closes the pipe or goes away."""
    sys.path[:] = sys_path
    # Ctrl-C reaches the whole process group, and the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    busy = threading.Event()
    _watch_parent(connection, busy)
    _warm_up()
    functions: dict[str, Any] = {}
    # One Implementation per target, so that its signature is inspected once, not on every call.
    implementations: dict[str, Any] = {}
    while True:
        try:
            request = connection.recv_bytes()
        except (EOFError, OSError):
            return
        busy.set()
        try:
            message = pickle.loads(request)
        except Exception as error:
            reply: tuple[Any, ...] = ("raised", *_exception_payload(error))
        else:
            if message[0] == "load":
                reply = _load(functions, message[1])
            else:
                reply = _call(functions, implementations, message[1], message[2], message[3], memory_limit)
        busy.clear()
        connection.send_bytes(_pickle_reply(reply))


def _watch_parent(connection: Connection, busy: threading.Event) -> None:
    """Exit when the parent goes away (killed with SIGKILL, say) while a request is being served.

    Between requests the main thread's read ends at the pipe's end of file.
    During one the parent sends nothing, so a readable pipe then means the
    parent closed it. The worker's own parent process is no help: under
    forkserver it is the fork server, which outlives difftest's process as
    long as any worker holds its file descriptors.
    """
    fd = connection.fileno()

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if busy.is_set() and _peer_closed(fd):
                os._exit(0)

    threading.Thread(target=watch, name="difftest-parent-watch", daemon=True).start()


def _peer_closed(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    if not readable:
        return False
    try:
        with socket.socket(fileno=os.dup(fd)) as peer:
            return peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        # NOTE: on a platform whose multiprocessing pipes are not sockets the
        # check is skipped, so a worker there can outlive a killed parent.
        return False


def _warm_up() -> None:
    # Start torch's thread pool (and the malloc arenas of its threads) before
    # any address-space limit, so the first call is not charged for them.
    import torch
    import torch.nn.functional as F

    F.conv2d(torch.ones(2, 8, 32, 32), torch.ones(8, 8, 3, 3))
    F.conv2d(torch.ones(2, 8, 32, 32, dtype=torch.float64), torch.ones(8, 8, 3, 3, dtype=torch.float64))


def _load(functions: dict[str, Any], target: str) -> tuple[Any, ...]:
    from difftest.registry import import_target

    try:
        functions[target] = import_target(target)
    except Exception as error:
        return ("failed", str(error))
    return ("loaded",)


def _call(functions: dict[str, Any], implementations: dict[str, Any], stub: Any, case: Any, inputs: Any,
          memory_limit: Optional[int]) -> tuple[Any, ...]:
    import torch

    from difftest._contract import contract_violation, snapshot

    implementation = implementations.get(stub.target)
    # Implementations compare without their function, so an equal one is the same declaration.
    if implementation is None or implementation != stub or implementation.function is not functions[stub.target]:
        implementation = dataclasses.replace(stub, function=functions[stub.target])
        implementations[stub.target] = implementation
    before = snapshot(inputs)
    failure: Optional[BaseException] = None
    output: Any = None
    with _address_space_limit(_limited(memory_limit, case)):
        try:
            output = implementation.call(inputs.input, inputs.weight, inputs.bias, case)
        except BaseException as error:
            # The worker ignores SIGINT, so a KeyboardInterrupt or SystemExit
            # here was raised by the implementation: a finding, not a request
            # to stop the worker.
            failure = error
    if failure is not None:
        return ("raised", *_exception_payload(failure))
    violated = contract_violation(inputs, before, output)
    if violated is not None:
        return ("violated", *violated)
    if isinstance(output, torch.Tensor):
        output = output.detach()
    return ("returned", output)


def _limited(memory_limit: Optional[int], case: Any) -> Optional[int]:
    """Return the address-space limit a call on ``case`` runs under (None: no limit)."""
    # NOTE: calls on an accelerator run without the address-space limit,
    # because CUDA reserves far more virtual memory than it uses when it starts.
    return memory_limit if str(case.device).startswith("cpu") else None


def _pickle_reply(reply: tuple[Any, ...]) -> bytes:
    try:
        return pickle.dumps(reply, protocol=_PICKLE_PROTOCOL)
    except Exception as error:
        if reply[0] == "returned":
            detail = (f"returned {type(reply[1]).__name__}, expected torch.Tensor "
                      f"(it cannot be sent back from the worker process: {error})")
            return pickle.dumps(("violated", "wrong_type", detail), protocol=_PICKLE_PROTOCOL)
        return pickle.dumps(("raised", *_exception_payload(error)), protocol=_PICKLE_PROTOCOL)


def _exception_payload(error: BaseException) -> tuple[Optional[bytes], str, str, str]:
    """Return the exception pickled (None where it does not round-trip), its type name, message and traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        pickled: Optional[bytes] = pickle.dumps(error, protocol=_PICKLE_PROTOCOL)
        pickle.loads(pickled)
    except Exception:
        pickled = None
    kind = type(error)
    return pickled, f"{kind.__module__}.{kind.__qualname__}", str(error), text


_MAX_RLIMIT = 2**63 - 1


@contextlib.contextmanager
def _address_space_limit(extra: Optional[int]) -> Iterator[None]:
    """Let the address space grow by at most ``extra`` bytes inside the block (Linux only)."""
    size = _address_space_size() if extra is not None else None
    if size is None:
        # NOTE: without /proc (macOS, Windows) no limit is set, so an
        # unbounded allocation there is stopped only by the operating system.
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + int(extra)  # type: ignore[arg-type]
    if limit >= _MAX_RLIMIT:
        # setrlimit takes a C long, and a limit this large limits nothing anyway.
        limit = resource.RLIM_INFINITY
    if hard != resource.RLIM_INFINITY:
        limit = hard if limit == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space_size() -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
