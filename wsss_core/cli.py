"""What every stage script shares: error reporting and progress bars.

A stage script is `run_stage(main)`. A user error becomes one line `error: <file|key>: <problem>`
on stderr and exit status 2; anything else is a bug and keeps its traceback. User errors are:
a `WsssError` (bad input or configuration), also when raised inside a DataLoader worker (torch
re-raises it as a `RuntimeError` carrying the worker's traceback as text), and an `OSError` of a
full disk or a missing permission.

Under torchrun the ranks only print through rank 0; under `wsss_core.launch` they print nothing
and leave their report to the launcher, which prints one line for all of them. A rank whose
error is only the consequence of another rank's failure (its peer closed the connection) exits
quietly, and a failing rank of a multi-process run leaves with `os._exit`, so no rank tears the
process group down in the middle of its peers' collectives.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm import tqdm

from .errors import WsssError, os_problem
from .launch import CRASH_SUFFIX, ERROR_DIR_ENV, USER_ERROR_EXIT, USER_ERROR_SUFFIX, report_path

T = TypeVar("T")

INTERRUPTED_EXIT = 130
# the last line of a DataLoader worker's traceback, e.g. "wsss_core.errors.DataError: a.jpg: ..."
_WORKER_ERROR_LINE = re.compile(r"^(?P<module>[\w.]+)\.(?P<name>\w+): (?P<message>.*)$")


def _dataloader_worker_error(exc: BaseException) -> str | None:
    """The message of a WsssError raised in a DataLoader worker (torch re-raises it with the
    worker's traceback as text: "Caught DataError in DataLoader worker process 0.\\n...")."""
    text = str(exc)
    if not (text.startswith("Caught ") and "DataLoader worker" in text.split("\n", 1)[0]):
        return None
    last = text.rstrip().rsplit("\n", 1)[-1]
    found = _WORKER_ERROR_LINE.match(last)
    if found is None:
        return None
    cls = getattr(sys.modules.get(found["module"]), found["name"], None)
    if isinstance(cls, type) and issubclass(cls, WsssError):
        return found["message"]
    return None


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug."""
    worker_message = _dataloader_worker_error(exc)
    if worker_message is not None:
        return worker_message
    if isinstance(exc, WsssError):
        return str(exc)
    problem = os_problem(exc)
    if problem is not None:  # the atomic writers name their destination; others name theirs
        return f"{exc.filename}: {problem}" if exc.filename else problem
    return None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _report(suffix: str, message: str = "") -> None:
    """Leave this rank's failure report for wsss_core.launch (no-op outside it)."""
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if error_dir:
        path = report_path(error_dir, _rank(), suffix)
        tmp = path.with_name(f".{path.name}.tmp")  # the launcher never reads half a message
        tmp.write_text(message, encoding="utf-8")
        os.replace(tmp, path)


def _peer_failed() -> bool:
    """Whether another rank has already reported a failure to the launcher."""
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if not error_dir or not os.path.isdir(error_dir):
        return False
    return any(not name.startswith(".") and name.split(".")[0] != str(_rank())
               for name in os.listdir(error_dir))


def _exit(code: int) -> None:
    if _world_size() == 1:
        sys.exit(code)
    # leave without the interpreter's shutdown (no process-group teardown, no atexit hooks that
    # talk to peers); DataLoader workers would otherwise linger until their watchdog notices
    sys.stdout.flush()
    sys.stderr.flush()
    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(code)


def _fail(code: int, message: str) -> None:
    if os.environ.get(ERROR_DIR_ENV):
        if code == USER_ERROR_EXIT:
            _report(USER_ERROR_SUFFIX, message)
    elif is_main_process():
        print(f"error: {message}", file=sys.stderr, flush=True)
    _exit(code)


def run_stage(main: Callable[[], object]) -> None:
    try:
        main()
    except KeyboardInterrupt:
        _fail(INTERRUPTED_EXIT, "interrupted")
    except Exception as exc:
        message = user_error_message(exc)
        if message is not None:
            _fail(USER_ERROR_EXIT, message)
        if _world_size() > 1 and _peer_failed():
            # most likely "connection closed by peer": the failed rank has said what went wrong
            _exit(USER_ERROR_EXIT)
        _report(CRASH_SUFFIX)
        raise


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): only it logs and writes shared files."""
    return _rank() == 0


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on rank 0 only; WSSS_NO_PROGRESS=1 turns bars off (tests, logs)."""
    disable = not is_main_process() or os.environ.get("WSSS_NO_PROGRESS") == "1"
    return tqdm(items, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False,
                mininterval=1.0)
