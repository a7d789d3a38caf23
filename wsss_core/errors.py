"""Errors that stage scripts turn into one-line messages and a non-zero exit."""
from __future__ import annotations

import errno
from pathlib import Path


class WsssError(Exception):
    """A problem with the user's input or configuration (not a bug in wsss)."""


class ConfigError(WsssError):
    """params.yaml (or an override) is invalid."""


class DataError(WsssError):
    """A data file is missing, unreadable or inconsistent; the message starts with its path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # joblib workers send errors back pickled; keep both constructor arguments
        return (type(self), (self.path, self.problem))


# errors of the machine rather than of wsss (a full disk, a missing permission): user errors too
OS_PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def os_problem(exc: BaseException) -> str | None:
    """What a full disk or a missing permission did ("no space left on device"), None for any
    other exception."""
    return OS_PROBLEMS.get(exc.errno) if isinstance(exc, OSError) else None
