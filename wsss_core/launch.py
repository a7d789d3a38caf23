"""`python -m wsss_core.launch [torchrun options] script.py [args]`: torchrun with one-line errors.

It takes torchrun's options (`--nproc-per-node=N`, ...; one node with a local c10d rendezvous
unless told otherwise) and starts the ranks through torch's own elastic launcher, but reports a
failure the way every other stage does:

- a user error (bad input or config, full disk, missing permission) in any rank is one line
  `error: <file|key>: <problem>` on stderr and exit status 2. The ranks do not print it:
  `wsss_core.cli.run_stage` leaves it in the folder named by `ERROR_DIR_ENV`, and this launcher
  prints the lowest rank's message once;
- a bug keeps its traceback (printed by the failing rank), followed by one line naming the rank
  and its exit status;
- torchrun's own logs (`ChildFailedError`, "failed (exitcode: ...)", SIGTERM notices) are
  silenced; set LOGLEVEL (e.g. LOGLEVEL=INFO) to see them again.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

# the folder where ranks leave their failure reports (read by run_stage in the workers)
ERROR_DIR_ENV = "WSSS_ERROR_DIR"
USER_ERROR_SUFFIX = ".error"    # <rank>.error: the one-line message of a user error
CRASH_SUFFIX = ".crash"         # <rank>.crash: the rank died of a bug (its traceback is on stderr)
USER_ERROR_EXIT = 2


def report_path(error_dir: str | Path, rank: int, suffix: str) -> Path:
    return Path(error_dir) / f"{rank}{suffix}"


def first_user_error(error_dir: Path) -> str | None:
    """The message of the lowest rank that reported a user error, or None."""
    reports = sorted(error_dir.glob(f"*{USER_ERROR_SUFFIX}"), key=lambda p: int(p.stem))
    return reports[0].read_text(encoding="utf-8").strip() if reports else None


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    if "LOGLEVEL" not in os.environ:
        # the elastic agent logs every child failure with its own multi-line report
        logging.disable(logging.ERROR)
    error_dir = Path(tempfile.mkdtemp(prefix="wsss-launch-"))
    os.environ[ERROR_DIR_ENV] = str(error_dir)  # inherited by every rank
    try:
        run(args)
        return 0
    except ChildFailedError as failed:
        message = first_user_error(error_dir)
        if message is not None:
            print(f"error: {message}", file=sys.stderr, flush=True)
            return USER_ERROR_EXIT
        rank, failure = failed.get_first_failure()
        print(f"error: {args.training_script}: rank {rank} {_describe_exit(failure.exitcode)}",
              file=sys.stderr, flush=True)
        return 128 - failure.exitcode if failure.exitcode < 0 else failure.exitcode or 1
    except (SignalException, KeyboardInterrupt) as stopped:
        # the agent has stopped the ranks; one line instead of their tracebacks
        signum = getattr(stopped, "sigval", signal.SIGINT)
        print("error: interrupted" if signum == signal.SIGINT else
              f"error: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        return 128 + int(signum)
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
