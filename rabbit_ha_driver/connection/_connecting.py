"""Connecting, failing over, and the retry loop every operation runs in.

How it works. :meth:`ensure` runs an operation under the connection's lock,
making sure a connection and a channel are open, and on failure asks
:func:`~rabbit_ha_driver.connection._errors.classify` what to do: raise at once
(a refusal retrying cannot mend), reopen the channel, or drop the connection
and reconnect. Connecting follows the
:class:`~rabbit_ha_driver.connection._connect_plan.ConnectPlan`: the next host
at once, a backoff only after a whole pass over the hosts, never past the
caller's deadline; each successful connect replays the recorded topology.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import kombu

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import _errors as errors
from rabbit_ha_driver.connection._backend import open_link
from rabbit_ha_driver.connection._channel import ChannelState, close_of, concerns
from rabbit_ha_driver.connection._channel_recovery import _ChannelRecovery
from rabbit_ha_driver.connection._connect_plan import GiveUp, Pause, Why
from rabbit_ha_driver.connection._lifecycle import OPEN_STATES, State
from rabbit_ha_driver.connection._refusals import closed_connection, note_refusal
from rabbit_ha_driver.connection._retry import Deadline
from rabbit_ha_driver.connection._tls_options import amqp_ssl_options
from rabbit_ha_driver.settings import Host

LOG = logging.getLogger(__name__)
T = TypeVar("T")


class _Connecting(_ChannelRecovery):
    """Connects, fails over, and runs operations in the retry loop."""

    def ensure(self, fn: Callable[[Any], T], *, operation: str, deadline: Deadline | None = None) -> T:
        """Run ``fn(channel)``, recovering from broker faults until ``deadline``.

        ``operation`` is the AMQP method it performs (``queue.declare``...), used
        to judge broker refusals by the error table.
        """
        deadline = deadline or self._default_deadline()
        began = self._clock.now()
        with self._locked(deadline, operation):
            recovering = False
            failures = 0
            while True:
                self._ensure_open(deadline, operation)
                try:
                    with self._request_deadline(operation, deadline.cap(self.settings.request_timeout)):
                        return fn(self._channel)
                except (exc.Unroutable, exc.PublishNacked, exc.MessagingTimeout, exc.ConnectionLost):
                    # Verdicts of the operation itself (a publish whose outcome
                    # is unknown says so with ConnectionLost after recovery):
                    # the caller decides, the connection is fine.
                    raise
                except Exception as error:
                    failures += 1
                    self._on_failure(error, operation, recovering, deadline, failures, began)
                    recovering = True

    def _on_failure(self, error: BaseException, operation: str, recovering: bool,
                    deadline: Deadline, failures: int, began: float) -> None:
        host = self._host.address if self._host else None
        close = close_of(error)
        if close is not None and self._state in OPEN_STATES and not concerns(close, operation):
            # The broker closed the channel over something else (a consumer
            # timeout, another thread's publish or ack): not this caller's
            # fault. Restore the channel and run the operation again.
            self._channel_closed(close)
            if failures > 1:
                self._clock.sleep(deadline.cap(self._backoff.delay(failures - 1)))
            if self._restore_channel(deadline):
                return
            # ensure() reconnects next, within the caller's deadline.
            self._lost(f"restoring the channel after the broker closed it ({close}) failed")
            return
        if close is not None and self._state in OPEN_STATES:
            self._channel_closed(close)
        action = errors.classify(error, operation, recovering)
        refused = errors.refusal(error, operation, host, recovering=recovering)
        if refused is not None:
            note_refusal(self, error, operation, refused)
            if errors.closes_channel(error) and self._state in OPEN_STATES:
                # The broker closed the channel: give the next caller a fresh one,
                # whole (a replay cut short would leave it without its
                # consumers), or a new connection.
                if not self._reopen_channel(deadline, f"{operation} refused"):
                    self._lost(f"reopening the channel after {operation} was refused failed")
            elif closed_connection(error):
                # The broker closed the connection: the next caller reconnects.
                self._lost(str(refused))
            if refused is error:
                raise
            raise refused from error
        if isinstance(error, errors.RequestTimeout):
            self.events.emit(ev.RequestDeadlineMissed(self.name, host or "-", operation, error.timeout))
        reason = str(errors.translate(error, operation, host, failures))
        if action is errors.Action.REOPEN_CHANNEL and self._state in OPEN_STATES:
            if failures > 1:
                self._clock.sleep(deadline.cap(self._backoff.delay(failures - 1)))
            if self._reopen_channel(deadline, reason):
                return
        self._lost(reason)
        if deadline.expired():
            raise exc.MessagingTimeout(
                f"{operation} did not succeed before its deadline: {reason}",
                waited=self._clock.now() - began, last_error=error) from error

    def _ensure_open(self, deadline: Deadline, operation: str, patient: bool = False) -> None:
        self._stop_if_closing(operation)
        if self._state is State.CLOSED:
            raise exc.ConnectionLost(f"connection {self.name} is closed", operation=operation)
        if os.getpid() != self._pid:
            self._forget_after_fork()
        if self._state in OPEN_STATES and self._channel is not None:
            return
        if self._state in OPEN_STATES and self._life.state is ChannelState.BROKER_CLOSED:
            if self._restore_channel(deadline if not patient else self._request_budget()):
                return
            self._lost(f"restoring the channel the broker closed ({self._life.last_close}) failed")
        elif self._state in OPEN_STATES:
            # Connected without a channel (reopening one failed after a
            # refusal): tear it down before connecting again, or it is left open.
            self._lost("the connection has no channel: reopening it failed")
        self._establish(deadline, patient)

    def _establish(self, deadline: Deadline, patient: bool = False) -> None:
        """Connect to the first host that answers and replay the topology.

        ``patient`` (a consumer's drain loop, which has no caller waiting on
        it): an attempt that starts before the deadline gets its full connect
        and request timeouts, however little of the deadline is left, so a
        replay that takes longer than one drain slice still completes.
        """
        recovering = self._last_host is not None
        self._set_state(State.RECOVERING if recovering else State.CONNECTING)
        plan = self._plan
        plan.begin()
        started = self._clock.now()
        last_error: BaseException | None = None
        self._wait_for_retry(deadline)
        while True:
            step = plan.next_attempt(deadline.expired())
            if isinstance(step, GiveUp):
                raise exc.MessagingTimeout(
                    f"could not connect to any of {self._hosts_text()} within "
                    f"{self._clock.now() - started:.1f}s ({step.attempts} attempts): {last_error}",
                    waited=self._clock.now() - started, last_error=last_error)
            host = step.host
            self.events.emit(ev.Connecting(self.name, host.address if host else "memory", step.number))
            phase = ["connection.open"]
            try:
                self._open(host, deadline, phase, patient)
            except Exception as error:
                self._teardown()
                refused = errors.refusal(error, phase[0], host.address if host else None,
                                         recovering=True)
                if refused is not None:
                    self._set_state(State.FAILED)
                    note_refusal(self, error, phase[0], refused)
                    if refused is error:
                        raise
                    raise refused from error
                last_error = error
                self.events.emit(ev.ConnectFailed(self.name, host.address if host else "memory",
                                                  f"{phase[0]}: {type(error).__name__}: {error}"))
                after = plan.failed(self._clock.now(), forever=deadline.is_never)
                if isinstance(after, GiveUp):
                    assert after.why is Why.MAX_RETRIES
                    self._set_state(State.FAILED)
                    raise exc.ConnectionLost(
                        f"gave up after {after.failed_passes} passes over the hosts: {error}",
                        attempts=after.attempts) from error
                if isinstance(after, Pause):
                    self.events.emit(ev.RetryScheduled(self.name, after.failed_passes, after.seconds))
                    self._clock.sleep(deadline.cap(after.seconds))
                continue
            plan.succeeded()
            self._stop_if_closing("connection.open")
            self._set_state(State.CONNECTED)
            heartbeat = self._link.heartbeat if self._link is not None else 0.0
            where = host.address if host else "memory"
            self.events.emit(ev.Connected(self.name, where, self.local_port, heartbeat))
            if self._last_host is not None and host is not None and self._last_host != host:
                self.events.emit(ev.FailedOver(self.name, self._last_host.address, host.address))
            self._last_host = host
            for key in self._cancels.reconnected():
                self.events.emit(ev.ConsumerRestored(self.name, self._topology.queue_name(key), False))
            return

    def _hosts_text(self) -> str:
        return ", ".join(h.address for h in self.settings.hosts) or "memory://"

    def _wait_for_retry(self, deadline: Deadline) -> None:
        """Honour a backoff an earlier, shorter turn began (see :mod:`._connect_plan`).

        Raises MessagingTimeout, without an attempt, when the deadline ends
        before the next attempt is due.
        """
        wait = self._plan.wait_due(self._clock.now())
        if wait <= 0:
            return
        if deadline.remaining() < wait:
            waited = max(0.0, deadline.remaining())
            self._clock.sleep(waited)
            raise exc.MessagingTimeout(
                f"could not connect to any of {self._hosts_text()}: backing off after "
                f"{self._plan.failed_passes} failed passes, next attempt in {wait:.1f}s",
                waited=waited)
        self._clock.sleep(wait)

    def _open(self, host: Host | None, deadline: Deadline, phase: list[str], patient: bool = False) -> None:
        if patient:  # this attempt's own budget; no new attempt starts past the caller's
            deadline = Deadline.after(self.settings.connect_timeout + self.settings.request_timeout,
                                      self._clock)
        budget = max(0.05, deadline.cap(self.settings.connect_timeout))
        if host is None:
            kconn = kombu.Connection("memory://", transport=self._transport_cls,
                                     transport_options={"polling_interval": 0.01, **self._transport_options})
        else:
            assert self.liveness is not None
            options = {"client_properties": {"connection_name": self.name},
                       "on_blocked": self._on_blocked, "on_unblocked": self._on_unblocked,
                       **self.liveness.transport_options(), **self._transport_options}
            kconn = kombu.Connection(
                hostname=host.hostname, port=host.port, userid=host.username,
                password=host.password, virtual_host=self.settings.virtual_host,
                transport=self._transport_cls, heartbeat=self.liveness.heartbeat,
                connect_timeout=budget, ssl=self._ssl_options(host),
                login_method=self.settings.rabbit_login_method, transport_options=options)
        self._link = link = open_link(kconn, frame_write_timeout=self.settings.request_timeout)
        self._host = host
        self._pid = os.getpid()
        if self.liveness is not None and link.heartbeats:
            self.liveness.attach(link.raw)
        phase[0] = "channel.open"
        # What is left of the caller's time, not the budget the connect began with.
        with self._request_deadline("channel.open", max(0.05, deadline.cap(self.settings.connect_timeout))):
            self._open_channel()
        phase[0] = "queue.declare"
        with self._request_deadline("queue.declare", deadline.cap(self.settings.request_timeout)):
            self._topology.replay(self._declarer(self._channel))
        self._life.move(ChannelState.OPEN)
        if self._topology.queues or self._topology.consumers:
            self.events.emit(ev.TopologyRestored(self.name, host.address if host else "memory",
                                                 len(self._topology.queues), len(self._topology.consumers)))

    def _ssl_options(self, host: Host) -> Any:
        """py-amqp's TLS options: the chain is always verified, the name on request."""
        return amqp_ssl_options(self.settings, host)
