"""Model conversions in worker processes, one per core.

Exporting to ONNX and converting to TFLite are single-threaded Python (tracing,
``torch.export``), seconds per conversion; the profiler converts everything before it
times anything, so the other cores would idle. Workers are spawned (JAX and TensorFlow are
not fork-safe) and unpinned: the profiler pins itself to one core for timing, and no
timing runs while models are converted.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

G = TypeVar("G")

WORKERS = 0  # processes converting at once; 0: one per core this machine has


def in_workers(fn: Callable[[G], object], groups: Sequence[G]) -> Iterator[G]:
    """Call ``fn(group)`` for each group, yielding each group once ``fn`` returned for it
    (in the order they finish). Several groups go to worker processes when this machine
    has more than one core and ``fn`` and the groups can be sent to them (a module-level
    function and picklable builders); otherwise, or when the pool breaks (a calling script
    without a ``__main__`` guard), they run here. An exception of ``fn`` is raised here."""
    import os

    workers = min(WORKERS or os.cpu_count() or 1, len(groups))
    left = list(groups)
    if workers > 1 and _sendable(fn, left):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_unpin)
        finished: set[int] = set()
        try:
            futures = {pool.submit(fn, group): i for i, group in enumerate(left)}
            for future in as_completed(futures):
                future.result()
                finished.add(futures[future])
                yield left[futures[future]]
            return
        except BrokenProcessPool:
            left = [g for i, g in enumerate(left) if i not in finished]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for group in left:
        fn(group)
        yield group


def _sendable(fn, groups) -> bool:
    import pickle

    try:
        pickle.dumps((fn, groups))
        return True
    except Exception:  # lambdas, local modules: convert here
        return False


def _unpin() -> None:
    """A worker runs on any core, and one torch thread (several workers share the cores)."""
    import os

    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):
        pass
    import torch

    torch.set_num_threads(1)
