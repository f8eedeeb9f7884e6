"""Worker processes that run the intake pipeline off the event loop, each request under a CPU and memory budget.

Why processes: JSON decoding, ``list.sort``, regex and pydantic-core are single C calls that
hold the GIL for their whole duration (a 5M-item sort, a 16 MiB ``json.loads``), so a thread
cannot keep the loop answering, and nothing inside the interpreter can stop such a call. The
kernel can: a worker arms ``ITIMER_PROF`` with the request's CPU budget around
:func:`bridge.intake.prepare`, and ``SIGPROF``, left at its default action, ends the process
at exactly that much CPU time, even inside a C call. The server sees the death, answers the
request 422 (:class:`OverBudget`) and starts a fresh worker.

Contract:

* **Nothing is stored by a worker.** It returns events; the server stores them. A worker that
  dies mid-request loses nothing that was accepted, and the request is always answered: 422
  over budget, 503 for any other death (the sender retries).
* **Memory**: a worker's data segment is capped (``RLIMIT_DATA``) at what it holds idle plus
  ``worker_memory``; a request that needs more is 422. A worker that grew by more than half
  of that keeps no freed-but-held memory: it exits after answering and is replaced.
* **Config**: every job names the config generation it runs on; a worker whose snapshot is of
  another generation gets the pickled config with the job and rebuilds (outside the budget),
  so after a reload workers use the new config, and a request started before it the old one.
* **Isolation**: workers are forked by multiprocessing's ``forkserver``, a fresh interpreter
  that preloaded this module: they inherit no thread, socket or database of the server. They
  ignore SIGINT, run at a lower priority (nice 10: the loop wins the CPU), and exit when the server's
  end of their socket closes (so a killed server leaves none behind).
* **Queue**: at most ``size`` requests run at once; ``queue`` more may wait up to ``wait``
  seconds for a worker; beyond that :class:`Overloaded` (503).

Wire format on each worker's socket pair: frames of an 8-byte big-endian length and a body. The
server writes with ``loop.sock_sendall`` and reads with ``loop.sock_recv_into`` (non-blocking);
results come back in batches, so no single unpickling holds the loop for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from typing import Literal

from bridge import intake
from bridge.config import Config
from bridge.intake import NotForwarded, Outcome, Prepared, Received, Refused
from bridge.outbox import NewEvent

log = logging.getLogger("bridge.workers")

__all__ = ["OverBudget", "Overloaded", "Pool", "WorkerLost"]

_FRAME = struct.Struct("!Q")
#: Events (or unrouted alerts) per result frame: unpickling one batch takes well under a millisecond.
BATCH = 256
#: Frames up to this size (in all) go out in one write.
_SMALL = 64 * 1024
#: Read this much of a large frame, then let the loop run other work.
_YIELD_EVERY = 1024 * 1024
#: How long close() waits for an idle worker to exit before it is killed.
_EXIT_GRACE = 2.0

_CONTEXT = multiprocessing.get_context("forkserver")
# The forkserver lowers its priority, then imports this module (and with it the whole pipeline)
# once; workers fork from it and inherit both (bridge._forkserver).
_CONTEXT.set_forkserver_preload(["bridge._forkserver"])


class Overloaded(Exception):
    """Every worker is busy and the queue is full, or the wait ran out: answer 503."""


class WorkerLost(Exception):
    """The worker died of something other than its budget, or could not be started: answer 503."""


class OverBudget(Exception):
    """The request needed more CPU time or memory than one request may use: refused for good (422)."""

    def __init__(self, resource: Literal["cpu", "memory"], limit: float) -> None:
        self.resource = resource
        self.limit = limit
        if resource == "cpu":
            what = f"more than {limit:g} s of CPU time (limits.request_cpu)"
        else:
            what = f"more than {limit / 2**20:g} MiB of memory (limits.worker_memory)"
        super().__init__(f"handling this request needed {what}; it is refused for good")


@dataclass(frozen=True, slots=True)
class _Job:
    """What the worker needs besides the body, which follows in its own frame (never pickled)."""

    generation: int
    #: The pickled config, when the worker's snapshot is of another generation.
    config: bytes | None
    source: str
    headers: dict[str, str]
    query: dict[str, str]
    passthrough: str | None
    cpu_seconds: float
    #: For ``render``: the request id; the worker answers the whole response body.
    render_id: str | None


# -- the worker process ---------------------------------------------------------------------------------


def _send(sock: socket.socket, frames: Iterable[bytes]) -> None:
    """Frames as they are made, so a large result is never all in memory at once; small frames are
    gathered into one write (each write wakes the reader), a large one is written as it is."""
    pending: list[bytes] = []
    size = 0
    for frame in frames:
        header = _FRAME.pack(len(frame))
        if len(frame) > _SMALL:
            sock.sendall(b"".join([*pending, header]))
            sock.sendall(frame)
            pending, size = [], 0
            continue
        pending += (header, frame)
        size += len(frame)
        if size > _SMALL:
            sock.sendall(b"".join(pending))
            pending, size = [], 0
    if pending:
        sock.sendall(b"".join(pending))


def _recv(sock: socket.socket) -> bytes:
    """One frame (blocking); EOFError when the server closed its end."""
    (size,) = _FRAME.unpack(_recv_exactly(sock, _FRAME.size))
    return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = sock.recv(size, socket.MSG_WAITALL)  # one allocation of the frame's size
    while len(data) < size:  # a signal, or the end of the stream
        more = sock.recv(size - len(data), socket.MSG_WAITALL)
        if not more:
            raise EOFError
        data += more
    return data


def _data_bytes() -> int:
    """This process's data segment (what RLIMIT_DATA counts), from /proc."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _head(
    kind: str, outcome: Outcome | None = None, batches: int = 0, unrouted: int = 0, exiting: bool = False
) -> bytes:
    """A result's first frame: its kind, the outcome without its lists, the batches that follow, and
    whether the worker exits after this answer (to give memory back; the server replaces it)."""
    return pickle.dumps((kind, outcome, batches, unrouted, exiting))


def _result_frames(outcome: Outcome, exiting: bool) -> Iterator[bytes]:
    """The head, then the batches of events and of unrouted alerts."""
    if not isinstance(outcome, Prepared):
        yield _head("outcome", outcome, exiting=exiting)
        return
    events = [(e.destination, e.alert_key, e.source, e.event_status, e.body, e.digest) for e in outcome.events]
    event_batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    unrouted_batches = [outcome.unrouted[i : i + BATCH] for i in range(0, len(outcome.unrouted), BATCH)]
    head = replace(outcome, events=[], unrouted=[])
    yield _head("outcome", head, len(event_batches), len(unrouted_batches), exiting)
    for batch in (*event_batches, *unrouted_batches):
        yield pickle.dumps(batch)


def _serve(sock: socket.socket, worker_memory: int) -> None:
    """The worker's loop: one job at a time until the server closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the server's to handle
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # the CPU budget: the kernel ends the process
    # What the forkserver imported stays shared with it as long as nothing writes to it; the cyclic
    # collector would (it links every object it tracks): keep it off those objects.
    gc.freeze()
    idle = _data_bytes()
    if worker_memory:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (idle + worker_memory, resource.RLIM_INFINITY))
    baseline = _rss_bytes()
    snapshot: intake.Intake | None = None
    generation = -1
    while True:
        try:
            job: _Job = pickle.loads(_recv(sock))
            body = _recv(sock)
        except (EOFError, OSError):
            return
        if job.config is not None or snapshot is None or job.generation != generation:
            if job.config is None:  # the server thinks this worker is current; it is not: say so
                _send(sock, [_head("stale")])
                continue
            snapshot = intake.build(pickle.loads(job.config))
            generation = job.generation
        received = Received(job.source, body, job.headers, job.query, job.passthrough)
        del body
        outcome: Outcome | None = None
        rendered: bytes | None = None
        try:
            signal.setitimer(signal.ITIMER_PROF, job.cpu_seconds)
            try:
                outcome = intake.prepare(snapshot, received)
                rendered = _render(job.render_id, outcome) if job.render_id is not None else None
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
        except MemoryError:
            outcome = rendered = None
        del received
        # Python keeps freed memory for reuse; a worker that grew a lot exits instead, so the
        # memory goes back to the system with the process (the server starts another).
        exiting = outcome is None or bool(worker_memory and _rss_bytes() - baseline > worker_memory // 2)
        try:
            if outcome is None:
                _send(sock, [_head("memory", exiting=True)])
            elif rendered is not None:
                _send(sock, [_head("rendered", exiting=exiting), rendered])
            else:
                _send(sock, _result_frames(outcome, exiting))
        except OSError:
            return
        del outcome, rendered
        if exiting:
            return


def _render(request_id: str, outcome: Outcome) -> bytes | None:
    """The whole ``render`` answer for events (built here: it decodes every event once more)."""
    from bridge.responses import envelope

    if not isinstance(outcome, Prepared):
        return None
    return bytes(envelope(200, request_id, data=outcome.to_json()).body)


# -- the server side --------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    sock: socket.socket
    generation: int = -1
    #: Discarded: its socket is closed and it is, or will soon be, gone.
    closed: bool = False

    def alive(self) -> bool:
        return self.process.is_alive()


class Pool:
    """``size`` worker processes and a bounded queue in front of them (see the module docstring)."""

    def __init__(self, size: int, *, queue: int, wait: float, cpu_seconds: float, worker_memory: int) -> None:
        self.size = size
        self.queue = queue
        self.wait = wait
        self.cpu_seconds = cpu_seconds
        self.worker_memory = worker_memory
        #: Called with a reason (budget, memory, recycled, crashed) whenever a worker is replaced.
        self.on_restart: Callable[[str], None] = lambda reason: None
        self._slots: asyncio.Queue[_Worker | None] = asyncio.Queue()
        self._waiting = 0
        self._closed = False
        self._configs: list[tuple[Config, int, bytes]] = []
        self._generation = 0
        self._workers: set[_Worker] = set()
        #: Jobs answered by a worker (any outcome but a death), since start.
        self.jobs = 0
        self._lock = threading.Lock()
        self._warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the workers in the background: the server does not wait for them to listen.

        A slot without a worker starts one when a request takes it, so a request that comes
        first waits for that start (the first one imports the pipeline in the forkserver).
        """
        for _ in range(self.size):
            self._slots.put_nowait(None)
        self._warming = asyncio.create_task(self._warm(), name="worker warm-up")

    async def _warm(self) -> None:
        for _ in range(self.size):
            try:
                worker = self._slots.get_nowait()
            except asyncio.QueueEmpty:
                return  # requests hold every slot: they start their workers themselves
            try:
                if worker is None or worker.closed:
                    worker = await self._respawn()
            except WorkerLost as exc:
                log.warning("%s; the next request that needs a worker tries again", exc)
            finally:
                self._slots.put_nowait(worker if worker is not None and not worker.closed else None)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    async def prepare(self, config: Config, received: Received, *, render_id: str | None = None) -> Outcome | bytes:
        """Run :func:`bridge.intake.prepare` in a worker (for render: the whole answer's body, when events).

        Raises :class:`OverBudget`, :class:`Overloaded` or :class:`WorkerLost`.
        """
        generation, pickled = self._generation_of(config)
        worker = await self._acquire()
        try:
            if worker is not None and (worker.closed or not worker.alive()):
                if not worker.closed:
                    self._discard(worker, "crashed")
                worker = None
            if worker is None:
                worker = await self._respawn()
            job = _Job(
                generation,
                None if worker.generation == generation else pickled,
                received.source,
                received.headers,
                received.query,
                received.passthrough,
                self.cpu_seconds,
                render_id,
            )
            result = await self._exchange(worker, job, received.body)
            if isinstance(result, str):  # "stale": the worker lost its snapshot (defensive); send the config
                result = await self._exchange(worker, replace(job, config=pickled), received.body)
            worker.generation = generation
            self.jobs += 1
            assert not isinstance(result, str)
            return result
        except BaseException:
            if worker is not None and not worker.closed:  # cancelled, or a bug: its state is unknown
                self._discard(worker, None)
            raise
        finally:
            self._slots.put_nowait(worker if worker is not None and not worker.closed else None)

    async def close(self) -> None:
        """Stop every worker: close its socket (it exits on EOF), then kill what is still running."""
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        with self._lock:  # a start still running in a thread sees this and stops its worker itself
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            worker.sock.close()
        for worker in workers:
            await asyncio.to_thread(worker.process.join, _EXIT_GRACE)
            if worker.process.is_alive():
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, _EXIT_GRACE)
        self._workers.clear()

    # -- internals ------------------------------------------------------------------------------------

    def _generation_of(self, config: Config) -> tuple[int, bytes]:
        """A number per config object in use, and its pickle (made once)."""
        for known, generation, pickled in self._configs:
            if known is config:
                return generation, pickled
        self._generation += 1
        entry = (config, self._generation, pickle.dumps(config))
        self._configs = [entry, *self._configs[:1]]  # the new config and the one before it
        return entry[1], entry[2]

    async def _acquire(self) -> _Worker | None:
        if self._closed:
            raise WorkerLost("the bridge is shutting down")
        if self._slots.empty() and self._waiting >= self.queue:
            raise Overloaded(
                f"all {self.size} workers are busy and {self._waiting} requests wait (limits.workers, limits.queue)"
            )
        self._waiting += 1
        try:
            async with asyncio.timeout(self.wait):
                return await self._slots.get()
        except TimeoutError:
            raise Overloaded(f"no worker was free within {self.wait:g} s (limits.workers, limits.queue_wait)") from None
        finally:
            self._waiting -= 1

    def _spawn(self) -> _Worker:
        """A new worker process (blocking: run it in a thread)."""
        ours, theirs = socket.socketpair()
        try:
            process = _CONTEXT.Process(
                target=_serve, args=(theirs, self.worker_memory), name="flashduty-bridge-worker", daemon=True
            )
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = _Worker(process, ours)
        with self._lock:
            if not self._closed:
                self._workers.add(worker)
                return worker
        ours.close()  # closed while this one started
        process.kill()
        process.join(_EXIT_GRACE)
        raise WorkerLost("the bridge is shutting down")

    async def _respawn(self) -> _Worker:
        if self._closed:
            raise WorkerLost("the bridge is shutting down")
        try:
            return await asyncio.to_thread(self._spawn)
        except (OSError, EOFError, ValueError) as exc:
            raise WorkerLost(f"could not start a worker process: {exc}") from None

    def _discard(self, worker: _Worker, reason: str | None) -> None:
        """Forget a worker: close its socket and make sure the process ends."""
        self._workers.discard(worker)
        worker.closed = True
        worker.sock.close()
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(0)  # reaps it when it has ended (non-blocking)
        if reason is not None:
            self.on_restart(reason)

    async def _exchange(self, worker: _Worker, job: _Job, body: bytes) -> Outcome | bytes | str:
        """Send one job, read its result; a death is OverBudget (its CPU timer) or WorkerLost."""
        loop = asyncio.get_running_loop()
        try:
            head = pickle.dumps(job)
            if len(body) <= _SMALL:
                await loop.sock_sendall(
                    worker.sock, b"".join((_FRAME.pack(len(head)), head, _FRAME.pack(len(body)), body))
                )
            else:  # the body is written as it is, never copied
                await loop.sock_sendall(worker.sock, _FRAME.pack(len(head)) + head + _FRAME.pack(len(body)))
                await loop.sock_sendall(worker.sock, memoryview(body))
            kind, outcome, batches, unrouted, exiting = pickle.loads(await _read_frame(loop, worker.sock))
            if kind == "stale":
                return "stale"
            if kind == "memory":
                self._discard(worker, "memory")
                raise OverBudget("memory", self.worker_memory)
            if kind == "rendered":  # one frame: the answer's body
                outcome = bytes(await _read_frame(loop, worker.sock))
            elif batches or unrouted:
                assert isinstance(outcome, Prepared)
                events: list[NewEvent] = []
                for _ in range(batches):
                    events.extend(NewEvent(*fields) for fields in pickle.loads(await _read_frame(loop, worker.sock)))
                    await asyncio.sleep(0)
                lost: list[tuple[dict[str, str], str]] = []
                for _ in range(unrouted):
                    lost.extend(pickle.loads(await _read_frame(loop, worker.sock)))
                    await asyncio.sleep(0)
                outcome = replace(outcome, events=events, unrouted=lost)
            assert isinstance(outcome, Prepared | Refused | NotForwarded | bytes)
        except (EOFError, ConnectionError):
            raise await self._death(worker) from None
        if exiting:  # it answered and exits to give its memory back: the next request starts another
            self._discard(worker, "recycled")
        return outcome

    async def _death(self, worker: _Worker) -> Exception:
        """Why the worker's socket closed, as the exception to answer with."""
        await asyncio.to_thread(worker.process.join, _EXIT_GRACE)
        code = worker.process.exitcode
        self._discard(worker, None)
        if code == -signal.SIGPROF:
            self.on_restart("budget")
            return OverBudget("cpu", self.cpu_seconds)
        self.on_restart("crashed")
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log.error("a worker process died while handling a request (%s); a new one takes its place", how)
        return WorkerLost(f"the worker handling this request died ({how}); retry")


async def _read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytearray:
    (size,) = _FRAME.unpack(await _read_exactly(loop, sock, _FRAME.size))
    return await _read_exactly(loop, sock, size)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    since_yield = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise EOFError
        got += n
        since_yield += n
        if since_yield >= _YIELD_EVERY:
            since_yield = 0
            await asyncio.sleep(0)
    return buffer
