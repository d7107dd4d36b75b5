"""Hearth's Redis broker transport: kombu's own, made to outlive a Redis restart with unacked tasks held.

Why it exists: with kombu 5.7's Redis transport, a worker that holds an unacknowledged message (a task
waiting for its countdown or ETA, or one running under ``acks_late``) when Redis goes away ends with
``CRITICAL Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")``.
On the lost connection Celery closes it twice (``Connection.collect()``, then ``close()``). The first
close fails while draining the dead ``BRPOP`` socket, so the channel stays open, and then detaches the
transport from its ``Connection``. The second close gets as far as restoring the held messages
(``QoS.restore_unacked_once``), which builds a new connection pool from a transport that has no
``Connection`` any more (``Channel._connparams``): an ``AttributeError``, not a connection error,
so Celery does not reconnect but stops. No broker option avoids that path.

What this transport changes, and only that: restoring the held messages when Redis cannot be
reached (the transport is detached, or the restore itself hits a connection error) is put off until
this process next opens a channel to the same broker, instead of raising. Nothing is lost meanwhile:
Redis itself keeps every delivered, unacknowledged message in kombu's ``unacked`` hash until it is
acknowledged or restored, and restoring a delivery tag moves it from that hash back to its queue in
one WATCH transaction that does nothing when the tag is no longer there (acknowledged, or already
put back by a visibility-timeout sweep, see ``tasks.app.redelivery_options``). So a late restore, a
second one, or none at all (then the sweep restores it after the visibility timeout) are all safe.

``tasks.app`` selects it (``BROKER_TRANSPORT``) for ``redis://`` and ``rediss://`` brokers.

Also here, for the same outage: the app's ``Connection`` (through ``AMQP``, ``tasks.app`` installs it)
retries a lost broker every ``RECONNECT_MAX`` seconds at most. Celery's consumer reconnects through
``Connection.ensure_connection`` with kombu's defaults (2 s, then 2 s more each try, up to 30 s) and
no setting to change them: after a minute's outage a worker found Redis back only 12-30 s later.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import kombu
import redis
from celery.app.amqp import AMQP as CeleryAMQP
from kombu.transport import redis as kombu_redis

from hearth.events import log_event

log = logging.getLogger(__name__)

# What "Redis cannot be reached" looks like from redis-py (refused, reset, timed out).
UNREACHABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)


class DeferredRestores:
    """Delivery tags whose restore waits until this process reaches their broker again.

    Process-wide because the channel that held them is gone by then: Celery reconnects with a new
    ``Connection``, transport and channel. Keyed by broker (host, port, db and key prefix), so tags are
    only ever put back on the Redis that holds them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: dict[str, list[str]] = {}

    def add(self, broker: str, tags: list[str]) -> None:
        with self._lock:
            known = self._tags.setdefault(broker, [])
            known.extend(t for t in tags if t not in known)

    def take(self, broker: str) -> list[str]:
        with self._lock:
            return self._tags.pop(broker, [])

    def pending(self, broker: str | None = None) -> int:
        with self._lock:
            if broker is not None:
                return len(self._tags.get(broker, []))
            return sum(len(tags) for tags in self._tags.values())

    def clear(self) -> None:
        with self._lock:
            self._tags.clear()


DEFERRED = DeferredRestores()
# A forked pool child holds none of its parent's messages: it must not restore them a second time.
os.register_at_fork(after_in_child=DEFERRED.clear)


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation; a restore that cannot reach Redis is deferred, not raised."""

    channel: Channel

    def restore_unacked(self, client: Any = None) -> None:
        if client is None and getattr(self.channel.connection, "client", None) is None:
            # The transport is detached from its Connection (the crash kombu would hit): no pool can
            # be built from it, and the Redis it came from just failed anyway.
            self._defer("the broker connection is closed")
            return
        try:
            super().restore_unacked(client)
        except UNREACHABLE as exc:
            self._defer(f"{type(exc).__name__}: {exc}")

    def _defer(self, why: str) -> None:
        tags = [str(tag) for tag in self._delivered]
        self._delivered.clear()
        if not tags:
            return
        DEFERRED.add(self.channel.hearth_broker, tags)
        log_event(log, "broker.restore_deferred", level=logging.WARNING, messages=len(tags), reason=why)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel with the QoS above; once connected, restores what an earlier one could not."""

    QoS = QoS
    hearth_broker: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # connects (PING) or raises
        conninfo = self.connection.client
        self.hearth_broker = (
            f"{conninfo.hostname}:{conninfo.port}/{conninfo.virtual_host}#{self.global_keyprefix}{self.unacked_key}"
        )
        self.restore_deferred()

    def restore_deferred(self) -> int:
        """Put back the messages an earlier channel to this broker held when it was lost; how many."""
        tags = DEFERRED.take(self.hearth_broker)
        done = 0
        try:
            for tag in tags:
                self.qos.restore_by_tag(tag)
                done += 1
        except UNREACHABLE:
            DEFERRED.add(self.hearth_broker, tags[done:])  # lost again: the next channel tries
        if done:
            log_event(log, "broker.restored", messages=done)
        return done


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel


RECONNECT_STEP = 1.0  # s added to the wait after each failed try to reach the broker
RECONNECT_MAX = 5.0  # s between tries at most: a broker back is found within this


class Connection(kombu.Connection):
    """kombu's connection, retrying a lost broker at most ``RECONNECT_MAX`` s apart."""

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Connection:
        # Positional order (kombu): errback, max_retries, interval_start, interval_step, interval_max.
        if len(args) < 4:
            kwargs.setdefault("interval_step", RECONNECT_STEP)
        if len(args) < 5:
            kwargs.setdefault("interval_max", RECONNECT_MAX)
        super().ensure_connection(*args, **kwargs)
        return self


class AMQP(CeleryAMQP):
    """Celery's AMQP glue with the connection above (``Celery(amqp=...)``)."""

    Connection = Connection
    BrokerConnection = Connection
