"""Messages written without waiting for their confirm, and who settles them.

How this works. :meth:`Publisher.publish_async
<rabbit_ha_driver.rpc.publisher.Publisher.publish_async>` writes a message and
returns a :class:`Receipt` at once; the broker's confirm is read later, so
messages sent one after the other are confirmed in batches. Settling a receipt
reads its confirm and, when the broker provably did not take the message
(returned, nacked) or its confirm was lost with the connection and the sender
allows it, sends it again by the publisher's rules.

A :class:`ReceiptKeeper` holds one publisher's receipts that nobody settled
yet. At most :data:`CONFIRM_WINDOW` wait at a time (beyond it the oldest half
is settled before the next write), and a keeper thread settles the rest once
writing pauses for :data:`KEEPER_IDLE` seconds. A receipt whose message must
be sent again is settled in a thread of its own, so a resend that takes until
its deadline (no queue bound yet) holds up no receipt after it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import Clock
from rabbit_ha_driver.connection import Connection, Deadline, Outcome, Pending

LOG = logging.getLogger(__name__)

#: Receipts of :meth:`Publisher.publish_async` that may wait for their confirm
#: at once; beyond it the oldest half is settled before the next write.
CONFIRM_WINDOW = 512
#: The keeper thread settles waiting receipts once no message was written
#: for this many seconds.
KEEPER_IDLE = 0.02
#: The keeper thread ends after this many seconds with nothing to settle.
KEEPER_EXIT = 1.0


class Receipt:
    """The fate of a message written by :meth:`Publisher.publish_async`.

    :meth:`result` waits for the broker's confirm and, if the message was
    returned, nacked or its confirm was lost, sends it again by
    :meth:`Publisher.publish`'s rules. It reports the message sent only
    after a confirm. Thread-safe; settling happens once.
    """

    #: What was sent, for logs (``cast 'method' to topic``).
    what: str
    #: Why it failed, once settled (None if sent).
    error: BaseException | None

    def __init__(self, what: str, conn: Connection | None, pending: Pending | None,
                 resend: Callable[[float], bool], *, deadline: float, clock: Clock,
                 retry_uncertain: bool,
                 on_settled: Callable[[Receipt], None] | None = None) -> None:
        self.what = what
        self._on_settled = on_settled
        self.deadline = deadline
        self._clock = clock
        self._conn = conn
        self._pending = pending
        self._resend = resend
        self._retry_uncertain = retry_uncertain
        self._lock = threading.Lock()
        self._settled = False
        self._sent = False
        self.error = None

    def __repr__(self) -> str:
        state = ("sent" if self._sent else f"failed: {self.error}") if self._settled else "waiting"
        return f"<Receipt {self.what} {state}>"

    @property
    def sent(self) -> bool:
        """Settled and confirmed (False while waiting, failed, or a fanout to nobody)."""
        return self._settled and self._sent

    def settled_ok(self) -> bool:
        """True once confirmed (without waiting, without reading)."""
        if self._settled:
            return self._sent
        pending = self._pending
        return pending is not None and pending.outcome is Outcome.ACKED

    def result(self, timeout: float | None = None) -> bool:
        """Wait until settled; True if confirmed, False if a fanout reached nobody.

        Raises what :meth:`Publisher.publish` raises when it fails.
        """
        with self._lock:
            if not self._settled:
                try:
                    self._sent = self._settle(timeout)
                except BaseException as error:
                    self.error = error
                    raise
                finally:
                    self._finish()
            elif self.error is not None:
                raise self.error
            return self._sent

    def settle_unless_resending(self) -> bool:
        """Settle at once unless that means sending the message again.

        Reads the confirm (bounded by the deadline); True, still unsettled,
        when the broker did not take the message and :meth:`result` would
        send it again. Failures are logged as by :meth:`settle_quietly`.
        """
        with self._lock:
            if self._settled:
                return False
            try:
                if not self._confirmed(self.deadline):
                    return True
                self._sent = True
            except Exception as error:
                self.error = error
                if self._on_settled is None:
                    LOG.error("%s: failed after it was written: %s", self.what, error)
            except BaseException as error:
                self.error = error
                raise
            finally:
                if self.error is not None or self._sent:
                    self._finish()
            return False

    def _finish(self) -> None:
        self._settled = True
        self._conn = self._pending = None
        self._report()

    def settle_quietly(self, timeout: float | None = None) -> bool:
        """:meth:`result` that logs instead of raising (unless a callback
        handles the outcome); True if sent."""
        try:
            return self.result(timeout)
        except Exception as error:
            if self._on_settled is None:
                LOG.error("%s: failed after it was written: %s", self.what, error)
            return False

    def _report(self) -> None:
        callback, self._on_settled = self._on_settled, None
        if callback is not None:
            try:
                callback(self)
            except Exception:
                LOG.exception("%s: handling its outcome failed", self.what)
        self._on_settled = callback

    def _settle(self, timeout: float | None) -> bool:
        until = self.deadline
        if timeout is not None:
            until = min(until, self._clock.now() + timeout)
        if self._confirmed(until):
            return True
        pending = self._pending
        LOG.debug("%s: %s; sending it again", self.what,
                  pending.outcome.value if pending and pending.outcome else "not written")
        return self._resend(until)

    def _confirmed(self, until: float) -> bool:
        """Wait for the confirm: True if acked, False if it must be sent again.

        Raises ConnectionLost when the confirm was lost and the message is
        not to be sent again, MessagingTimeout when ``until`` passes first.
        """
        conn, pending = self._conn, self._pending
        if conn is None or pending is None:
            return False  # never written: publish() sends it
        conn.wait_confirm(pending, Deadline(until, self._clock))
        if pending.outcome is Outcome.ACKED:
            return True
        if pending.outcome is Outcome.LOST and not self._retry_uncertain:
            raise exc.ConnectionLost(
                f"{self.what}: connection lost after the message was written and before "
                "the broker confirmed it; not sent again", operation="basic.publish")
        return False


class ReceiptKeeper:
    """One publisher's receipts that nobody settled yet, and the thread that settles them.

    ``name`` names the keeper and resend threads (``confirms-<name>``,
    ``resend-<name>``).
    """

    def __init__(self, name: str, clock: Clock) -> None:
        self._name = name
        self._clock = clock
        #: Guards the receipts, the keeper thread and the resend threads.
        self.lock = threading.Lock()
        self._outstanding: collections.deque[Receipt] = collections.deque()
        self._last_write = 0.0
        #: The keeper thread, while one runs.
        self.thread: threading.Thread | None = None
        self._wake = threading.Event()
        #: Threads sending a returned (or nacked) message again (see _settle_batch).
        self._resending: set[threading.Thread] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f"<ReceiptKeeper {self._name} waiting={len(self._outstanding)}>"

    def after_fork(self) -> None:
        """In a forked child: a fresh lock, no keeper thread, and none of the
        parent's receipts (settling one here could send its message again)."""
        self.lock = threading.Lock()
        self._outstanding.clear()
        self.thread = None
        self._wake = threading.Event()
        self._resending = set()

    def keep(self, receipt: Receipt) -> None:
        """Hold ``receipt`` until it is settled; settle the oldest beyond the window."""
        with self.lock:
            outstanding = self._outstanding
            outstanding.append(receipt)
            while outstanding and outstanding[0].settled_ok():
                outstanding.popleft()
            overflow = ([outstanding.popleft() for _ in range(len(outstanding) // 2)]
                        if len(outstanding) > CONFIRM_WINDOW else [])
            self._last_write = self._clock.now()
            if self.thread is None and not self._closing:
                self.thread = threading.Thread(target=self._keep_settling, daemon=True,
                                               name=f"confirms-{self._name}")
                self.thread.start()
        self._settle_batch(overflow)

    def _settle_batch(self, batch: list[Receipt]) -> None:
        """Settle receipts in order; one that must be sent again is sent apart.

        Reading a confirm is quick, but sending a returned message again may
        take until its deadline (no queue bound yet): done here, it would hold
        up every receipt after it, and their ``on_settled`` (a call's
        uncertain request waiting to be re-sent, a cast's failure report).
        """
        for receipt in batch:
            if receipt.settle_unless_resending():
                self._resend_apart(receipt)

    def _resend_apart(self, receipt: Receipt) -> None:
        """Settle ``receipt`` (send it again) in a thread of its own."""
        thread = threading.Thread(target=self._resend_one, args=(receipt,), daemon=True,
                                  name=f"resend-{self._name}")
        with self.lock:
            self._resending.add(thread)
        thread.start()

    def _resend_one(self, receipt: Receipt) -> None:
        try:
            receipt.settle_quietly()
        finally:
            with self.lock:
                self._resending.discard(threading.current_thread())

    def _keep_settling(self) -> None:
        """The keeper thread: settle receipts nobody settled once writing pauses.

        It looks every :data:`KEEPER_IDLE` seconds and ends after
        :data:`KEEPER_EXIT` seconds with nothing to settle (the next
        :meth:`keep` starts another), so an idle publisher costs no wake-ups.
        """
        empty_since = self._clock.now()
        while not self._closing:
            with self.lock:
                now = self._clock.now()
                idle = now - self._last_write
                batch = list(self._outstanding) if idle >= KEEPER_IDLE else []
                if batch:
                    self._outstanding.clear()
                if batch or self._outstanding:
                    empty_since = now
                elif now - empty_since >= KEEPER_EXIT:
                    self.thread = None
                    return
            if not batch:
                self._wake.wait(KEEPER_IDLE)
                continue
            self._settle_batch(batch)
        with self.lock:
            self.thread = None

    def settle_all(self, timeout: float | None = None) -> list[Receipt]:
        """Settle every outstanding receipt; returns those that failed.

        ``timeout`` bounds the whole batch, not each receipt: once it has
        passed, the receipts left get no time to wait for their confirm.
        """
        with self.lock:
            batch = list(self._outstanding)
            self._outstanding.clear()
        until = None if timeout is None else self._clock.now() + timeout
        failed = []
        for receipt in batch:
            left = None if until is None else max(0.0, until - self._clock.now())
            if not receipt.settle_quietly(left):
                failed.append(receipt)
        return failed

    def close(self, seconds: float) -> list[Receipt]:
        """Stop the keeper and settle what is left within ``seconds`` in all;
        returns the receipts that failed.

        The keeper thread finishes the batch it took, and receipts being sent
        again get what is left of ``seconds`` (joined on the clock).
        """
        self._closing = True
        self._wake.set()
        until = self._clock.now() + seconds
        keeper = self.thread
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(seconds)  # it finishes the batch it took
        with self.lock:
            resending = list(self._resending)
        for thread in resending:
            if thread is not threading.current_thread():
                thread.join(max(0.0, until - self._clock.now()))
        return self.settle_all(max(0.0, until - self._clock.now()))
