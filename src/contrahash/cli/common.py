"""What every command shares: consoles, one-line errors, number formatting, the command line.

A user's mistake ends a command with one line ``error: …`` naming the file or field, and a
non-zero exit code — never a traceback, unless ``--debug`` (or ``CONTRAHASH_DEBUG=1``) asks
for one. :func:`guarded` wraps every command with that policy.
"""

from __future__ import annotations

import errno
import functools
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

__all__ = ["console", "err_console", "fail", "fmt", "guarded", "invoked_command", "relaunch",
           "state"]

console = Console()
err_console = Console(stderr=True)

#: options of the whole program (set by the app's callback)
state: dict[str, Any] = {"debug": os.environ.get("CONTRAHASH_DEBUG", "") not in ("", "0")}

F = TypeVar("F", bound=Callable[..., Any])

#: exit code of a user error (bad argument, path, config, data), as click uses for usage errors
USER_ERROR = 2


def fail(message: str, code: int = USER_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True,
                      markup=True)
    raise typer.Exit(code)


def fmt(value: Any, digits: int = 4) -> str:
    """A metric as text: '-' when absent."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def invoked_command() -> str:
    """The command line as typed (for a run's command.txt)."""
    return " ".join(shlex.quote(a) for a in ["contrahash", *sys.argv[1:]])


def user_message(exc: BaseException) -> str | None:
    """The one-line message of an exception a user can cause, or None for a bug."""
    from contrahash.config import ConfigError
    from contrahash.data import DataError
    from contrahash.locks import LockedError
    from contrahash.retrieval.index import IndexFormatError
    from contrahash.training.loop import TrainingError
    from contrahash.training.rundir import RunStateError

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the device{where}; free space and run the command again "
                "(what was written before is intact; a run can continue with --resume)")
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return f"{what}: {exc.filename or exc}; choose a writable output location"
    if isinstance(exc, FileNotFoundError | FileExistsError | IsADirectoryError |
                  NotADirectoryError):
        return str(exc) if exc.filename is None or str(exc.filename) in str(exc) else (
            f"{exc.strerror or exc}: {exc.filename}")
    known = (ConfigError, DataError, IndexFormatError, LockedError, RunStateError,
             TrainingError, ValueError, KeyError, ImportError)
    if isinstance(exc, known):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return " ".join(text.split()) or type(exc).__name__
    return None


def guarded(command: F) -> F:
    """Run a command under the error policy of the module docstring."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning  # one plain line, no source line
                return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted (what was written so far is intact)")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the one place errors become messages
            if state["debug"]:
                raise
            import click

            if isinstance(exc, click.ClickException):
                raise
            message = user_message(exc)
            if message is None:
                fail(f"internal error ({type(exc).__name__}: {exc}); run again with --debug "
                     "for the traceback and report it", code=1)
            fail(message)

    return wrapper  # type: ignore[return-value]


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def relaunch(nproc: int) -> None:
    """Run this very command in ``nproc`` processes through torch.distributed's launcher
    (``torchrun --standalone --nproc-per-node N -m contrahash.cli …``)."""
    from torch.distributed import run as torchrun

    args = []
    skip = False
    for arg in sys.argv[1:]:  # the command line without --nproc
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(["--standalone", "--nproc-per-node", str(nproc), "-m", "contrahash.cli",
                       *args])
    except ChildFailedError as exc:  # each process has printed its own error line
        codes = [f.exitcode for f in exc.failures.values()]
        raise typer.Exit(next((c for c in codes if c), 1)) from None
