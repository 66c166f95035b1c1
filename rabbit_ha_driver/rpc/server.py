"""RPC servers: a poll loop, an executor and a dispatcher to endpoint objects.

How this works. :class:`MessageHandlingServer` is the part servers share: on
:meth:`~MessageHandlingServer.start` it opens a listener connection and a
publishing connection (for replies), subscribes (bounded by a start timeout;
if the broker is not reachable yet it keeps trying in the background), and
runs one loop that reserves a worker slot, polls one message and submits its
handling to the executor. Its states and their moves are in
:mod:`.server_lifecycle`. :meth:`~MessageHandlingServer.stop` makes the
listener stop consuming and give back messages it had not handed out; it
returns once the loop has ended, which takes at most a drain slice or two.
:meth:`~MessageHandlingServer.wait` lets running handlers finish (bounded by
its timeout if one is given), then closes the connections.

:class:`RPCServer` consumes a topic's shared queue, its own ``topic.server``
queue and its own queue on the topic's fanout exchange. Its
:class:`~.dispatcher.Dispatcher` calls ``endpoint.<method>(ctxt, **args)`` on
the first endpoint that has a public method of that name and accepts the
request's namespace and version; wrong arguments are reported as such and
not as an error of the method. A call whose caller asked for call monitoring
gets a heartbeat every half of its monitor timeout while the method runs.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.events import EventBus

# Named here, not only as ``exc.X``: the dispatch errors travel as
# ``rabbit_ha_driver.rpc.server.<class>`` (see envelope.WIRE_MODULES), and an
# oslo.messaging caller that lists this module in ``allowed_remote_exmods``
# looks the class up in it.
from rabbit_ha_driver.exceptions import InvalidArguments, NoSuchMethod, UnsupportedVersion
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.call_monitor import monitor_call
from rabbit_ha_driver.rpc.dispatcher import Dispatcher
from rabbit_ha_driver.rpc.executors import Executor, make_executor
from rabbit_ha_driver.rpc.listener import (
    DRAIN_SLICE,
    IncomingMessage,
    PollListener,
    RpcIncomingMessage,
    rpc_listener,
)
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.server_lifecycle import ServerLifecycle, ServerState
from rabbit_ha_driver.rpc.transport import ConnectionFactory, default_connection_factory
from rabbit_ha_driver.settings import Settings

__all__ = [
    "PROMOTE_AFTER",
    "STOP_TIMEOUT",
    "TOKEN_WAIT",
    "WATCH_IDLE",
    "Dispatcher",
    "InvalidArguments",
    "MessageHandlingServer",
    "NoSuchMethod",
    "RPCServer",
    "ServerState",
    "UnsupportedVersion",
]

LOG = logging.getLogger(__name__)

#: How long :meth:`MessageHandlingServer.stop` waits for the loop to end.
STOP_TIMEOUT = 5.0
#: How often :meth:`MessageHandlingServer.stop` looks whether polling ended.
TOKEN_WAIT = 0.05
#: A message handled by the worker that polled holds up the next one at most
#: this long (seconds) before another worker takes over the polling.
PROMOTE_AFTER = 0.005
#: Seconds without handling after which the watcher stops looking regularly.
WATCH_IDLE = 1.0


class MessageHandlingServer(abc.ABC):
    """A listener, a loop and an executor; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        *,
        executor: str | Executor = "threading",
        max_workers: int = 64,
        connection_factory: ConnectionFactory | None = None,
        clock: Clock | None = None,
        events: EventBus | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._clock = clock or REAL_CLOCK
        self._factory = connection_factory or default_connection_factory(
            settings, events=events, clock=clock)
        self._executor = make_executor(executor, max_workers)
        self._start_timeout = (start_timeout if start_timeout is not None
                               else settings.connect_timeout + settings.request_timeout)
        self._lock = threading.Lock()
        self._listener: PollListener | None = None
        self._publisher: Publisher | None = None
        self._join: Callable[[float | None], bool] | None = None
        self._life = ServerLifecycle(name, self._clock)
        # Leader/followers: whoever holds the token polls; the worker that
        # receives a message hands the token on and handles the message
        # itself. Once polling has ended the token stays taken.
        self._token = threading.Lock()
        self._loop_done = threading.Event()
        #: When the last leader let go of the token to handle a message
        #: itself (None: someone polls, or nobody handles).
        self._freed_at: float | None = None
        self._watcher_wake = threading.Event()
        #: The parent's pid when this server was started before a fork (see _after_fork).
        self._parent: int | None = None
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the poll loop, the watcher and the workers stayed in
        the parent, and the connections are the parent's sockets. A started
        server is the parent's: here it is stopped without touching them, so
        :meth:`stop` and :meth:`wait` return at once (a server the child needs
        is a new one)."""
        self._lock = threading.Lock()
        self._token = threading.Lock()
        self._watcher_wake = threading.Event()
        self._loop_done = threading.Event()
        if self._life.end_in_child():
            self._loop_done.set()
            self._parent = os.getppid()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self._life.state.value}>"

    @property
    def listener(self) -> PollListener | None:
        return self._listener

    @property
    def running(self) -> bool:
        return self._life.state is ServerState.RUNNING

    @abc.abstractmethod
    def _make_listener(self, publisher: Publisher) -> PollListener:
        """The listener this server polls."""

    @abc.abstractmethod
    def _handle(self, incoming: IncomingMessage) -> None:
        """Handle one message on a worker; must not raise."""

    def connection(self, purpose: str) -> Any:
        return self._factory(f"{self.name}:{purpose}")

    def start(self) -> None:
        """Subscribe and start handling messages.

        Waits up to the start timeout for the broker; if it is not reachable
        by then, keeps subscribing in the background. Raises
        IrrecoverableError when the broker refuses (credentials, permissions,
        queue arguments that differ from an existing queue's).
        """
        with self._lock:
            if self._life.state is ServerState.RUNNING:
                return
            if not self._life.allows(ServerState.RUNNING):
                if self._parent is not None:
                    raise RuntimeError(f"{self!r} was started by the parent process "
                                       f"{self._parent} before fork(); start a new server here")
                raise RuntimeError(f"{self!r} cannot be started again")
            publisher = Publisher(self.settings, self._factory, purpose=f"{self.name}:reply",
                                  clock=self._clock)
            listener = self._make_listener(publisher)
            try:
                subscribed = listener.subscribe(self._clock.now() + self._start_timeout)
            except BaseException:
                listener.cleanup()
                publisher.close()
                raise
            if not subscribed:
                LOG.warning("%r: broker not reachable within %.1fs; subscribing in the "
                            "background", self, self._start_timeout)
            self._listener, self._publisher = listener, publisher
            self._life.move(ServerState.RUNNING)
            self._join = self._loop_done.wait
            if not self._executor.reserve(self._start_timeout):
                raise RuntimeError(f"{self!r}: no free worker to poll with")
            self._executor.submit(self._lead)
            self._executor.spawn(self._watch, name=f"rpc-watch-{self.name}")
            LOG.info("%r: started (%s executor, %d workers)", self, self._executor.name,
                     self._executor.max_workers)

    def _lead(self) -> None:
        """On a worker: poll while holding the token, then handle what came.

        Leader/followers: the worker that reads a message handles it itself,
        so no hand-over between threads lies between reading a request and
        running it. Before handling, it hands the polling on to a free worker
        when more messages are already waiting; otherwise it handles first
        and polls again after, and the server's watcher hands the polling on
        if the handling takes longer than :data:`PROMOTE_AFTER`. So a slow
        handler never holds up the next request for long, and a stream of
        quick ones costs no thread switch each. A worker that finds the
        token taken has nothing to do.
        """
        listener, executor = self._listener, self._executor
        assert listener is not None
        while self._token.acquire(blocking=False):
            self._freed_at = None
            incoming: IncomingMessage | None = None
            while incoming is None:
                if listener.stopped or self._loop_done.is_set():
                    self._end_polling(listener)
                    return  # the token stays taken: nobody polls any more
                try:
                    batch = listener.poll(timeout=DRAIN_SLICE, batch_size=1)
                except Exception:
                    LOG.exception("%r: polling failed", self)
                    batch = []
                if batch:
                    incoming = batch[0]
            if listener.has_waiting() and executor.reserve(0):
                self._token.release()
                handed_on = self._hand_on()
                self._handle(incoming)
                if handed_on:
                    return
                continue  # nobody took over the polling: poll again
            self._freed_at = self._clock.now()
            self._token.release()
            self._watcher_wake.set()
            self._handle(incoming)

    def _watch(self) -> None:
        """Hand the polling to a free worker when the leader's handling runs long.

        While messages keep coming it looks every :data:`PROMOTE_AFTER`
        seconds; after :data:`WATCH_IDLE` seconds without handling it waits
        for the next one instead. Times are the server's clock's; the waits
        are on events, so :meth:`stop` ends them (on a fake clock that is not
        moved nobody is promoted: the handling worker polls again once done).
        """
        clock = self._clock
        idle_since = clock.now()
        while not self._loop_done.is_set():
            freed = self._freed_at
            now = clock.now()
            if freed is None:
                if now - idle_since >= WATCH_IDLE:
                    self._watcher_wake.clear()
                    if self._freed_at is None:
                        self._watcher_wake.wait(WATCH_IDLE)
                    idle_since = clock.now()
                    continue
            else:
                idle_since = now
                if (now - freed >= PROMOTE_AFTER and not self._token.locked()
                        and self._executor.reserve(0)):
                    self._freed_at = None
                    if not self._hand_on():
                        # Try again later; meanwhile the handling worker
                        # polls again once it is done.
                        self._freed_at = freed
                        self._loop_done.wait(WATCH_IDLE)
                        continue
            self._loop_done.wait(PROMOTE_AFTER)

    def _hand_on(self) -> bool:
        """Start a worker that polls (a slot is reserved); False if none could start."""
        try:
            self._executor.submit(self._lead)
        except Exception as error:  # no thread: a pids limit, no memory for a stack
            LOG.warning("%r: no worker could start to take over the polling: %s", self, error)
            return False
        return True

    def _end_polling(self, listener: PollListener) -> None:
        """With the token held: stop consuming, give back what was not handed out."""
        if not self._loop_done.is_set():
            try:
                listener.poll(timeout=0)
            finally:
                self._loop_done.set()

    def stop(self) -> None:
        """Stop taking messages; returns once the loop ended (never hangs)."""
        with self._lock:
            if self._life.state is not ServerState.RUNNING:
                if self._parent is not None:
                    LOG.info("%r: started by the parent process %d before fork(); "
                             "nothing to stop in this process", self, self._parent)
                return
            self._life.move(ServerState.STOPPING)
            listener, join = self._listener, self._join
        assert listener is not None and join is not None
        listener.stop()
        # A polling worker ends within a drain slice. If every worker is busy
        # handling, nobody polls: end the polling here instead.
        for _ in range(int(STOP_TIMEOUT / TOKEN_WAIT)):
            if self._loop_done.is_set():
                break
            if self._token.acquire(timeout=TOKEN_WAIT):
                self._end_polling(listener)
                break
        if not join(STOP_TIMEOUT):
            LOG.warning("%r: the polling loop did not end within %ss", self, STOP_TIMEOUT)
        LOG.info("%r: stopped taking messages", self)

    def wait(self, timeout: float | None = None) -> bool:
        """Let running handlers finish, then close connections.

        Call after :meth:`stop`. ``timeout`` bounds the wait for handlers;
        returns False if some were still running when it ran out.
        """
        with self._lock:
            if self._life.state in (ServerState.NEW, ServerState.STOPPED):
                return True
            listener, publisher, join = self._listener, self._publisher, self._join
        assert listener is not None and publisher is not None and join is not None
        join(timeout)
        finished = self._executor.shutdown(timeout)
        listener.cleanup()
        publisher.close()
        with self._lock:
            if self._life.state is not ServerState.STOPPED:  # another wait() may have ended it
                self._life.move(ServerState.STOPPED)
        return finished


class RPCServer(MessageHandlingServer):
    """Serves ``endpoints`` on ``topic`` as ``server``; see the module docstring.

    ``executor`` is ``"threading"`` or ``"eventlet"`` (a monkey-patched
    process), ``max_workers`` the most requests handled at once. ``exchange``
    is oslo.messaging's ``control_exchange``.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        server: str,
        endpoints: Sequence[object],
        executor: str | Executor = "threading",
        max_workers: int = 64,
        *,
        exchange: str = envelope.DEFAULT_EXCHANGE,
        **kwargs: Any,
    ) -> None:
        if not topic or not server:
            raise ValueError("an RPC server needs a topic and a server name")
        super().__init__(settings, f"{topic}.{server}", executor=executor,
                         max_workers=max_workers, **kwargs)
        self.topic = topic
        self.server = server
        self.exchange = exchange
        self.dispatcher = Dispatcher(endpoints)

    def _make_listener(self, publisher: Publisher) -> PollListener:
        return rpc_listener(self.settings, self.topic, self.server,
                            connection=self.connection("listen"), publisher=publisher,
                            exchange=self.exchange, clock=self._clock)

    def _handle(self, incoming: IncomingMessage) -> None:
        assert isinstance(incoming, RpcIncomingMessage)
        request = incoming.request
        stop_monitor = monitor_call(incoming)
        result: Any = None
        failure: BaseException | None = None
        try:
            result = self.dispatcher.dispatch(request)
        except exc.DispatchError as error:
            LOG.warning("%r: refused %s: %s", self, request.method, error)
            failure = error
        except Exception as error:
            LOG.exception("%r: %s raised", self, request.method)
            failure = error
        finally:
            stop_monitor()
        try:
            incoming.reply(result, failure)
        except Exception:
            LOG.exception("%r: replying to %s failed", self, request.method)
