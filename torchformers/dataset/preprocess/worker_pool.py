"""The preprocessing's process pool: items mapped in this process and N - 1 forked ones, results in order.

Each process reads the input itself and claims the next unclaimed item (a chunk of records or of
paragraphs) from a shared counter; the forked ones send back only their results, and this process
puts them back in input order while writing them. MindFormers' `llama_preprocess.py` runs in one
process; this is the `--num_workers` part.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import queue
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torchformers.dataset.preprocess.errors import PreprocessError

__all__ = ["map_chunks"]

logger = logging.getLogger(__name__)

_IN_FLIGHT_PER_WORKER = 4  # chunks a worker may hold before the writer has taken them (bounds memory)


def map_chunks(
    fn: Callable[[Any], Any],
    make_items: Callable[[], Iterable],
    *,
    num_workers: int,
    exiting: list | None = None,
) -> Iterator[Any]:
    """`fn(item)` for every item of `make_items()`, yielded in input order.

    With one worker, inline. With N, this process and N - 1 forked ones each build the item sequence
    themselves (reading the input, and parsing it for a JSON list: cheap next to tokenizing) and claim
    the next unclaimed item from a shared counter; the forked ones send their results through one
    queue, and this process puts all results back in order. Only results cross between processes, no
    process waits on another while there is work, and the writing done here is balanced by this
    process claiming fewer items. A semaphore bounds the items claimed but not yet written. Forked
    workers inherit `fn` as it is here (with the tokenizer it holds): nothing is pickled. Once every
    result is in, the workers are only exiting: with `exiting` given, they are appended to it for the
    caller to join later (after writing the output) instead of being waited for here.
    """
    if num_workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        logger.warning("parallel preprocessing needs the 'fork' start method; using one process")
        num_workers = 1
    if num_workers <= 1:
        yield from map(fn, make_items())
        return
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    claimed = ctx.Value("q", 0)
    window = ctx.BoundedSemaphore(_IN_FLIGHT_PER_WORKER * num_workers)
    # objects alive now (the tokenizer, imported modules) go to the collector's permanent generation, so
    # collections in the workers neither walk them nor touch (so copy) the pages they share with this process
    gc.freeze()
    workers = [
        ctx.Process(target=_worker_loop, args=(fn, make_items, claimed, window, results), daemon=True)
        for _ in range(num_workers - 1)
    ]
    try:
        for worker in workers:
            worker.start()
        own = _OwnShare(fn, make_items())
        pending: dict[int, tuple[str, Any]] = {}
        total = None  # the number of items, once a process has run out of them
        j = 0
        while total is None or j < total:
            if j in pending:
                kind, value = pending.pop(j)
                if kind == "raise":
                    raise value
                if kind == "error":
                    _raise_worker_error(value)
                yield value
                window.release()
                j += 1
                continue
            try:
                kind, index, value = results.get_nowait()
            except queue.Empty:
                if not own.finished and window.acquire(block=False):
                    kind, index, value = own.run(_claim(claimed))
                    if kind == "done":
                        window.release()
                else:
                    kind, index, value = _receive(results, workers, pending)
            if kind == "done":
                total = index if total is None else min(total, index)
            else:
                pending[index] = (kind, value)
    finally:
        complete = total is not None and j >= total
        if complete and exiting is not None:
            exiting.extend(workers)
        else:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
                worker.join()
        results.close()
        gc.unfreeze()


class _OwnShare:
    """The items the main process claims: it walks the item sequence as each worker does and runs `fn`
    on the items it claims, reporting as a worker does (an exception is kept, to be raised in order)."""

    def __init__(self, fn, items: Iterable):
        self.fn, self.items = fn, enumerate(items)
        self.position = -1  # the index of the last item taken from `items`
        self.finished = False

    def run(self, index: int) -> tuple[str, int, Any]:
        try:
            while self.position < index:  # claims only grow: `index` is ahead
                self.position, item = next(self.items)
        except StopIteration:
            self.finished = True
            return "done", self.position + 1, None
        except Exception as err:  # reading or parsing the input: the item after the last one read
            self.finished = True
            return "raise", self.position + 1, err
        try:
            return "ok", index, self.fn(item)
        except Exception as err:
            self.finished = True
            return "raise", index, err


def _claim(claimed) -> int:
    """The next unclaimed item index from the shared counter."""
    with claimed.get_lock():
        claimed.value += 1
        return claimed.value - 1


def _worker_loop(fn, make_items: Callable[[], Iterable], claimed, window, out) -> None:
    window.acquire()
    mine = _claim(claimed)
    try:
        own = _OwnShare(fn, make_items())
        while True:
            kind, index, value = own.run(mine)
            if kind == "raise":  # sent as text: the exception itself may not pickle
                is_preprocess_error = isinstance(value, PreprocessError)
                text = str(value) if is_preprocess_error else "".join(traceback.format_exception(value))
                kind, value = "error", (is_preprocess_error, text)
            out.put((kind, index, value))
            if own.finished:
                break
            window.acquire()
            mine = _claim(claimed)
    except BaseException:
        out.put(("error", mine, (False, traceback.format_exc())))
    finally:
        out.close()
        out.join_thread()


def _receive(results, workers, pending) -> tuple[str, int, Any]:
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                errors = sorted(i for i, (kind, _) in pending.items() if kind == "error")
                if errors:
                    _raise_worker_error(pending[errors[0]][1])
                codes = ", ".join(str(w.exitcode) for w in workers)
                raise PreprocessError(f"the preprocessing workers exited unexpectedly (exit codes {codes})") from None


def _raise_worker_error(value) -> None:
    is_preprocess_error, message = value
    if is_preprocess_error:
        raise PreprocessError(message)
    raise RuntimeError(f"a preprocessing worker failed:\n{message}")
