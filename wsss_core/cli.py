"""What every stage script shares: error reporting and progress bars.

A stage script is `run_stage(main)`: a `WsssError` (bad input or configuration) becomes one line
`error: <message>` on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm import tqdm

from .errors import WsssError

T = TypeVar("T")


def run_stage(main: Callable[[], object]) -> None:
    try:
        main()
    except WsssError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): only it logs and writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on rank 0 only; WSSS_NO_PROGRESS=1 turns bars off (tests, logs)."""
    disable = not is_main_process() or os.environ.get("WSSS_NO_PROGRESS") == "1"
    return tqdm(items, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False,
                mininterval=1.0)
