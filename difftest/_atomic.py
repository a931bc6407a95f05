"""Write files whole or not at all."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from typing import Iterator

from difftest.errors import WriteError

__all__ = ["write_atomic"]


def write_atomic(path: str, text: str | bytes, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8 text, or bytes as they are) to ``path`` through a temporary file and a rename.

    A reader, or a run killed half-way, sees either no file or the whole file:
    os.replace is atomic on POSIX and Windows within one file system. Ctrl-C
    or SIGTERM during the write takes effect once it is over, so an
    interrupted run leaves no temporary file either; SIGKILL can leave one,
    named ``.tmp-*``, which readers skip.

    Raises WriteError naming the file when the operating system rejects the
    write (a missing or read-only folder, a full disk), so that the command
    line can show one line instead of a traceback.
    """
    with _interrupts_deferred():
        try:
            _write(path, text, mode)
        except OSError as error:
            raise WriteError(path, error.strerror or str(error)) from error


def _write(path: str, text: str | bytes, mode: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


_DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first one received.

    Python runs signal handlers in the main thread only, and only there can
    they be replaced. In other threads the block runs without deferring.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in _DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])
