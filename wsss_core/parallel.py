"""Map a function over items on this machine (joblib) or on a dask.distributed cluster.

`imap_unordered(fn, items, workers, desc)` is a context manager that yields an iterator of
`fn(item)` in completion order, under a progress bar (rank 0). `fn` must be a module-level
function and the items picklable; callers combine the results order-independently (sums of
confusion matrices, one file per item), so which worker ran which item changes nothing.

- `local`: joblib (`n_jobs` processes, -1 = all cores; 1 runs in this process, in order);
- `dask`: `Client.map` + `as_completed` on a `distributed.LocalCluster` of `n_jobs` worker
  processes with one thread each, started here and closed on exit, or on a running cluster
  when `scheduler` is an address (`tcp://host:8786`) or a scheduler file (`*.json`, as written
  by `dask scheduler --scheduler-file`). Workers read and write the files the items name: on a
  cluster they must see the same paths (a shared filesystem) and have the same wsss installed.

A scheduler that cannot be reached within `CONNECT_TIMEOUT` seconds is one `ConfigError` naming
the params key and the address. On exit (also on an error or Ctrl-C) the tasks not yet run are
cancelled and a cluster started here is closed.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

from joblib import Parallel, delayed, effective_n_jobs

from .cli import progress
from .config_types import PARAMS_FILE
from .errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT = 5.0   # seconds to reach a scheduler (or to start a LocalCluster's scheduler)


@dataclass(frozen=True)
class Workers:
    """Where `imap_unordered` runs: the `backend`, `n_jobs` and `scheduler` keys of the params
    group `key` (e.g. "crf", "pseudo_labels.refine"), which errors name."""

    backend: Literal["local", "dask"] = "local"
    n_jobs: int = -1
    scheduler: str | None = None
    key: str = "crf"

    @classmethod
    def of(cls, group, key: str) -> Workers:
        """The workers of a params group with `backend`, `n_jobs` and `scheduler` fields."""
        return cls(group.backend, group.n_jobs, group.scheduler, key)


@contextmanager
def imap_unordered(fn: Callable[[T], R], items: Sequence[T], workers: Workers,
                   desc: str) -> Iterator[Iterator[R]]:
    """`fn(item)` for every item, in completion order, with a progress bar."""
    items = list(items)
    if workers.backend == "dask":
        with _dask_results(fn, items, workers) as results:
            yield iter(progress(results, desc, total=len(items)))
        return
    if workers.backend != "local":
        raise ValueError(f"unknown backend {workers.backend!r}")
    results = Parallel(n_jobs=workers.n_jobs, return_as="generator_unordered")(
        delayed(fn)(item) for item in items)
    try:
        yield iter(progress(results, desc, total=len(items)))
    finally:
        results.close()  # stops the workers' remaining tasks


@contextmanager
def _dask_results(fn, items: list, workers: Workers) -> Iterator[Iterator]:
    with _dask_client(workers) as client:
        pending = set(client.map(fn, items, pure=False))
        results = _completed(pending, client.loop)
        try:
            yield results
        finally:
            results.close()
            client.cancel(list(pending))


def _completed(pending: set, loop) -> Iterator:
    """Results of `pending`'s futures as they finish; each is dropped once read, so the
    cluster does not keep every result to the end."""
    from distributed import as_completed

    for future in as_completed(pending, loop=loop):
        pending.discard(future)
        yield future.result()   # a task's exception is raised here, as the worker raised it
        del future


@contextmanager
def _dask_client(workers: Workers):
    from distributed import Client, LocalCluster

    if workers.scheduler is None:
        # dashboard on a free port (none fixed to collide with); workers get one thread and
        # OMP/MKL/OpenBLAS_NUM_THREADS=1 (dask's default for the processes it starts)
        with LocalCluster(n_workers=effective_n_jobs(workers.n_jobs), threads_per_worker=1,
                          processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client
        return
    address = _scheduler_address(workers)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"{PARAMS_FILE}: {workers.key}.scheduler: cannot reach {address} "
                          f"({_one_line(exc)})") from None
    with client:
        yield client


def _scheduler_address(workers: Workers) -> str:
    """The address of `scheduler`, read from the scheduler file if it names one."""
    scheduler = workers.scheduler
    if not scheduler.endswith(".json"):
        return scheduler
    where = f"{PARAMS_FILE}: {workers.key}.scheduler"
    try:
        with open(os.path.expanduser(scheduler), encoding="utf-8") as file:
            address = json.load(file)["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot read the scheduler file {scheduler} "
                          f"({_one_line(exc)})") from None
    if not isinstance(address, str):
        raise ConfigError(f"{where}: scheduler file {scheduler} has no address")
    return address


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
