"""Dynamic batching in the spirit of Triton's dynamic batcher.

Requests are queued under a key (the model graph and the exact input shape); one worker thread runs a batch
of up to ``max_batch`` requests of one key as soon as the batch is full or its oldest request has waited
``max_delay_s`` (0: run at once with what is there). Different keys never share a batch, so nothing is
padded, and a request's result does not depend on its batch companions (the tests check the bytes). The
queue is bounded: ``submit`` raises :class:`QueueFull` at once when ``queue_size`` requests are waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .errors import SslicError

__all__ = ["DynamicBatcher", "QueueFull", "QueueTimeout", "NotReady"]


class QueueFull(SslicError):
    code = "queue_full"


class QueueTimeout(SslicError):
    code = "timeout"


class NotReady(SslicError):
    code = "not_ready"


@dataclass
class _Item:
    payload: Any
    enqueued: float
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """``run_batch(key, payloads) -> results`` is called on the worker thread, one batch at a time."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, Sequence[Any]], Sequence[Any]],
        max_batch: int,
        max_delay_s: float,
        queue_size: int,
        observe_batch: Callable[[Hashable, int], None] | None = None,
        name: str = "sslic-batcher",
    ):
        if max_batch < 1 or queue_size < 1 or max_delay_s < 0:
            raise ValueError("max_batch and queue_size must be ≥ 1 and max_delay_s ≥ 0")
        self._run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_s)
        self.queue_size = int(queue_size)
        self._observe_batch = observe_batch
        self._condition = threading.Condition()
        self._pending: dict[Hashable, deque[_Item]] = {}
        self._count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        return self._count

    @property
    def saturated(self) -> bool:
        return self._count >= self.queue_size

    def submit(self, key: Hashable, payload: Any) -> Future:
        """Queue one request; its future resolves to its result (or the batch's exception)."""
        with self._condition:
            if self._closed:
                raise NotReady("the model is shutting down")
            if self._count >= self.queue_size:
                raise QueueFull(f"{self._count} requests are waiting for the model (queue size {self.queue_size})")
            item = _Item(payload, time.monotonic())
            self._pending.setdefault(key, deque()).append(item)
            self._count += 1
            self._condition.notify()
        return item.future

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)

    def _next_batch(self) -> tuple[Hashable, list[_Item]] | None:
        """Called with the lock held: the next batch to run, waiting as the policy says; None when closed."""
        while True:
            if not self._pending:
                if self._closed:
                    return None
                self._condition.wait()
                continue
            now = time.monotonic()
            ready = []
            next_deadline = None
            for key, items in self._pending.items():
                deadline = items[0].enqueued + self.max_delay_s
                if len(items) >= self.max_batch or deadline <= now or self._closed:
                    ready.append((items[0].enqueued, key))
                elif next_deadline is None or deadline < next_deadline:
                    next_deadline = deadline
            if not ready:
                self._condition.wait(max(next_deadline - now, 0.0) if next_deadline is not None else None)
                continue
            _, key = min(ready, key=lambda entry: entry[0])
            items = self._pending[key]
            batch = [items.popleft() for _ in range(min(len(items), self.max_batch))]
            if not items:
                del self._pending[key]
            self._count -= len(batch)
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if batch:
                return key, batch

    def _loop(self) -> None:
        while True:
            with self._condition:
                taken = self._next_batch()
            if taken is None:
                return
            key, batch = taken
            if self._observe_batch is not None:
                self._observe_batch(key, len(batch))
            try:
                results = self._run_batch(key, [item.payload for item in batch])
            except BaseException as error:  # delivered to every request of the batch
                for item in batch:
                    item.future.set_exception(error)
                continue
            for item, result in zip(batch, results):
                item.future.set_result(result)
