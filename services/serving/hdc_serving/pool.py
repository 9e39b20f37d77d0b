"""A pool of predict worker processes driven from the event loop, with adaptive batching.

Each worker is a spawned process (spawn, not fork: CUDA and TensorFlow break after fork)
joined to the server by a pipe. The loop watches the pipes with `add_reader`, so there is
no thread per worker and no polling. A worker runs one message at a time; requests wait in
one queue. When a worker comes free and the request at the head of the queue is for a model
with `predict_batch`, the worker takes every queued request for that model (up to
`batch_max_size`) in one message: under load batches grow by themselves, when idle a
request goes alone and waits for nobody. For a fast model, requests that arrive while one
of its batches is about to finish wait for it instead of starting a batch of one on another
worker (see `_held`): fewer, bigger batches, less CPU per request.

A request that runs past its timeout kills its worker (the only way to stop a model call),
and a worker that dies is replaced; the requests it held fail, the server keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hdc_serving import worker as worker_mod

log = logging.getLogger(__name__)
_ctx = multiprocessing.get_context("spawn")


class PoolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Task:
    op: str
    model: str
    payload: Any
    future: asyncio.Future
    batchable: bool = False
    priority: bool = False
    enqueued: float = field(default_factory=time.perf_counter)  # same clock as _held's `now`


class _Worker:
    def __init__(self, pool: WorkerPool) -> None:
        parent, child = _ctx.Pipe(duplex=True)
        self.conn = parent
        self.proc = _ctx.Process(
            target=worker_mod.main,
            args=(child, pool.models, pool.env),
            name="hdc-serving-worker",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.ready = False
        self.tasks: list[_Task] = []
        self.sent_at = 0.0
        self.started = time.monotonic()


class WorkerPool:
    def __init__(
        self,
        models: list[str],
        size: int,
        *,
        env: dict[str, str] | None = None,
        batch_max_size: int = 32,
        batch_wait_s: float = 0.002,
        max_queue: int = 1024,
        metrics: Any = None,
    ) -> None:
        self.models = list(models)
        self.size = max(1, size)
        self.env = dict(env or {})
        self.batch_max_size = max(1, batch_max_size)
        self.batch_wait_s = batch_wait_s
        self._batch_cost: dict[str, float] = {}
        self._recheck: asyncio.TimerHandle | None = None
        self._arriving: dict[str, int] = {}
        self._dispatch_soon = False
        self.max_queue = max_queue
        self.metrics = metrics
        self.batchable: set[str] = set()
        self.warm_errors: dict[str, str] = {}
        self._queue: deque[_Task] = deque()
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._respawn_delay = 0.5

    # -- lifecycle ------------------------------------------------------------------

    def prespawn(self) -> None:
        """Start the workers now, before there is an event loop.

        Loading the models in the workers is the slowest part of a server start; begun
        before the server's own (large) imports, the two overlap. `start` connects them.
        """
        if not self._workers:
            self._workers.append(_Worker(self))

    def start(self) -> None:
        """Connect the workers to the loop; the first one alone if none is ready yet.

        The others start once the first has loaded the models: on a busy machine one worker
        loading alone makes the server ready sooner than several sharing the CPU.
        """
        self._loop = asyncio.get_running_loop()
        for w in self._workers:  # prespawned: their "ready" may already wait in the pipe
            self._loop.add_reader(w.conn.fileno(), self._on_readable, w)
        if not self._workers:
            self._spawn()
        self._gauge()

    def _fill(self) -> None:
        while not self._closing and len(self._workers) < self.size:
            self._spawn()

    def _spawn(self) -> None:
        w = _Worker(self)
        self._workers.append(w)
        assert self._loop is not None
        self._loop.add_reader(w.conn.fileno(), self._on_readable, w)
        self._gauge()

    async def close(self) -> None:
        self._closing = True
        if self._recheck is not None:
            self._recheck.cancel()
        for w in list(self._workers):
            with contextlib.suppress(Exception):
                w.conn.send(None)
        deadline = time.monotonic() + 3
        for w in list(self._workers):
            while w.proc.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._drop(w, kill=True, reason="the server is shutting down")
        while self._queue:
            t = self._queue.popleft()
            if not t.future.done():
                t.future.set_exception(PoolError(503, "the server is shutting down"))

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w.ready)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid]

    # -- submitting -----------------------------------------------------------------

    async def submit(
        self,
        op: str,
        model: str,
        payload: Any,
        *,
        timeout: float,
        priority: bool = False,
        expected: bool = False,
    ) -> Any:
        if expected:
            self._arriving[model] = max(0, self._arriving.get(model, 0) - 1)
        if self._closing:
            raise PoolError(503, "the server is shutting down")
        if len(self._queue) >= self.max_queue and not priority:
            raise PoolError(503, f"too many requests waiting ({self.max_queue}); retry shortly")
        assert self._loop is not None
        fut = self._loop.create_future()
        task = _Task(
            op,
            model,
            payload,
            fut,
            batchable=op == "predict" and model in self.batchable,
            priority=priority,
        )
        if priority:
            self._queue.appendleft(task)
        else:
            self._queue.append(task)
        # Dispatch at the end of this loop iteration, not now: requests that arrived together
        # (already scheduled handler steps) get queued first and leave as one batch.
        if not self._dispatch_soon:
            self._dispatch_soon = True
            self._loop.call_soon(self._dispatch)
        # A timer handle, not wait_for(): no extra task per request on the hot path.
        timer = self._loop.call_later(timeout, self._expire, task, timeout)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, task: _Task, timeout: float) -> None:
        if task.future.done():
            return
        task.future.set_exception(PoolError(504, f"the model did not answer within {timeout:g} s"))
        if task in self._queue:
            self._queue.remove(task)
            return
        for w in self._workers:
            if task in w.tasks:
                # Killing the process is the only way to stop a model call in progress.
                log.warning("predict timed out, restarting worker %s", w.proc.pid)
                # The other requests of its batch die with the worker: they time out too.
                self._fail(
                    w.tasks, PoolError(504, f"a request in the same batch ran past {timeout:g} s")
                )
                self._drop(w, kill=True, reason="the worker was stopped")
                self._spawn()
                return

    def expect(self, model: str) -> None:
        """A predict request for `model` has started; it will reach `submit` soon."""
        self._arriving[model] = self._arriving.get(model, 0) + 1

    def unexpect(self, model: str) -> None:
        """A request announced with `expect` left before `submit` (bad input, say)."""
        n = self._arriving.get(model, 0)
        if n > 0:
            self._arriving[model] = n - 1
            if n == 1:
                self._dispatch()

    def _held(self, model: str, now: float, oldest: float) -> float | None:
        """Until when queued requests for `model` wait to join a bigger batch, or None.

        Only for a fast model (one call costs the worker under `batch_wait_s` of CPU; a
        slow model's requests spread over idle workers at once). Its requests wait
        (a) for a batch of the same model that is running, rather than start a batch of one
        on another worker, and (b) while other requests for it are still being read by the
        server and will be queued within moments. Both waits are bounded by `batch_wait_s`
        (a few of them for (a), in case the running batch is slow this time). At low load
        neither applies and a request goes alone, at once; under load batches grow, and the
        CPU spent per request falls.
        """
        cost = self._batch_cost.get(model)
        if cost is None or cost > self.batch_wait_s:
            return None
        for w in self._workers:
            if w.tasks and w.tasks[0].model == model and w.tasks[0].batchable:
                until = w.sent_at + 5 * self.batch_wait_s
                if now < until:
                    return until
        if self._arriving.get(model, 0) > 0:
            until = oldest + self.batch_wait_s
            if now < until:
                return until
        return None

    def _take(self, now: float) -> _Task | None:
        """The first queued request that should start now, or None (and a timer to look again)."""
        held: dict[str, float | None] = {}
        wake = None
        for t in self._queue:
            if t.future.done():
                continue
            if t.batchable and self.batch_wait_s > 0:
                if t.model not in held:
                    held[t.model] = self._held(t.model, now, t.enqueued)
                end = held[t.model]
                if end is not None:
                    wake = end if wake is None else min(wake, end)
                    continue
            self._queue.remove(t)
            return t
        if wake is not None and self._recheck is None:
            delay = max(wake - now, 0.0) + 0.0002
            self._recheck = self._loop.call_later(delay, self._redispatch)  # type: ignore[union-attr]
        return None

    def _redispatch(self) -> None:
        self._recheck = None
        self._dispatch()

    def _dispatch(self) -> None:
        self._dispatch_soon = False
        # Drop requests that timed out while queued.
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        while self._idle and self._queue:
            now = time.perf_counter()
            head = self._take(now)
            if head is None:
                break
            w = self._idle.pop()
            batch = [head]
            if head.batchable and self.batch_max_size > 1:
                rest: deque[_Task] = deque()
                while self._queue and len(batch) < self.batch_max_size:
                    t = self._queue.popleft()
                    if t.batchable and t.model == head.model and not t.future.done():
                        batch.append(t)
                    else:
                        rest.append(t)
                rest.extend(self._queue)
                self._queue = rest
            w.tasks = batch
            w.sent_at = now
            try:
                if len(batch) == 1:
                    w.conn.send((head.op, head.model, head.payload))
                else:
                    w.conn.send(("batch", head.model, [t.payload for t in batch]))
            except Exception as exc:
                w.tasks = []
                self._fail(batch, PoolError(500, f"could not send the request to a worker: {exc}"))
                self._drop(w, kill=True, reason=str(exc))
                self._spawn()
                continue
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(batch))
        self._gauge()

    # -- replies --------------------------------------------------------------------

    def _on_readable(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            code = w.proc.exitcode if not w.proc.is_alive() else None
            if w.proc.is_alive():
                w.proc.join(0.5)
                code = w.proc.exitcode
            self._drop(
                w, kill=True, reason=f"the worker process running the model died (exit code {code})"
            )
            if not self._closing:
                # A model that kills its worker while loading would otherwise respawn in a
                # tight loop: back off, up to 30 s, until a worker comes up again.
                delay = self._respawn_delay
                if not w.ready:
                    self._respawn_delay = min(self._respawn_delay * 2, 30.0)
                self._loop.call_later(delay, self._spawn)  # type: ignore[union-attr]
            return
        except Exception as exc:  # a reply that could not be unpickled
            msg = ("error", 500, f"the model's answer could not be read: {exc}")
        if not w.ready and isinstance(msg, tuple) and msg and msg[0] == "ready":
            w.ready = True
            self._respawn_delay = 0.5
            self._fill()
            self.warm_errors.update(msg[2])
            log.info(
                "predict worker ready",
                extra={"pid": msg[1], "seconds": round(time.monotonic() - w.started, 2)},
            )
            self._idle.append(w)
            self._dispatch()
            return
        tasks, w.tasks = w.tasks, []
        wrapped = isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], float)
        cpu, msg = msg if wrapped else (None, msg)
        if tasks and tasks[0].batchable and cpu is not None:
            # Moving average of the CPU one call of this model takes, for _held().
            prev = self._batch_cost.get(tasks[0].model)
            self._batch_cost[tasks[0].model] = cpu if prev is None else 0.8 * prev + 0.2 * cpu
        if len(tasks) == 1:
            self._resolve(tasks[0], msg)
        elif isinstance(msg, list):
            for t, m in zip(tasks, msg, strict=False):
                self._resolve(t, m)
        else:
            for t in tasks:
                self._resolve(t, msg)
        self._idle.append(w)
        self._dispatch()

    @staticmethod
    def _resolve(task: _Task, msg: Any) -> None:
        if task.future.done():
            return
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            task.future.set_exception(PoolError(msg[1], msg[2]))
        else:
            task.future.set_result(msg)

    def _fail(self, tasks: list[_Task], exc: Exception) -> None:
        for t in tasks:
            if not t.future.done():
                t.future.set_exception(exc)

    def _drop(self, w: _Worker, *, kill: bool, reason: str) -> None:
        if w in self._workers:
            self._workers.remove(w)
        if w in self._idle:
            self._idle.remove(w)
        with contextlib.suppress(Exception):
            self._loop.remove_reader(w.conn.fileno())  # type: ignore[union-attr]
        self._fail(w.tasks, PoolError(500, reason))
        w.tasks = []
        if kill and w.proc.is_alive():
            w.proc.kill()
        with contextlib.suppress(Exception):
            w.proc.join(1)
        with contextlib.suppress(Exception):
            w.conn.close()
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))
            self.metrics.workers.set(self.ready_workers)


def default_size() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_pool(settings: Any, names: list[str] | None = None) -> WorkerPool:
    """The pool for ServingSettings (kept here, not in runtime, so the CLI imports little)."""
    from hdc_serving.loading import available

    if names is None:
        names = [settings.model] if settings.model else sorted(available())
    return WorkerPool(
        names,
        settings.workers or default_size(),
        env=settings.worker_env(),
        batch_max_size=settings.batch_max_size,
        batch_wait_s=settings.batch_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
