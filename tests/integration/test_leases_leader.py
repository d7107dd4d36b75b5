"""The heartbeat's leader lease against a real redis-server: one leader, fenced, quick take-over."""

from __future__ import annotations

import itertools
import time

import redis

from hearth.clock import ManualClock, SystemClock
from hearth.pool import LeaderLease


def test_only_one_of_two_replicas_leads_and_release_hands_over(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    a = LeaderLease(redis_client, clock, "heartbeat", 30, "host-a:1")
    b = LeaderLease(redis_client, clock, "heartbeat", 30, "host-b:2")
    assert a.ensure() is True and a.is_leader
    assert b.ensure() is False and not b.is_leader
    assert a.ensure() is True  # renewing keeps it
    assert b.ensure() is False
    assert b.holder() == "host-a:1"
    first_epoch = a.epoch
    assert a.release() is True and not a.is_leader
    assert b.ensure() is True and b.is_leader
    assert b.epoch is not None and first_epoch is not None and b.epoch > first_epoch
    assert a.ensure() is False
    assert a.release() is False  # nothing to release; and it must not delete b's lease
    assert b.holder() == "host-b:2"


def test_a_standby_takes_over_when_the_leader_stops_renewing(redis_client: redis.Redis) -> None:
    ttl = 0.3
    leader = LeaderLease(redis_client, SystemClock(), "hb", ttl, "leader")
    standby = LeaderLease(redis_client, SystemClock(), "hb", ttl, "standby")
    assert leader.ensure()
    assert not standby.ensure()
    # The leader stops renewing (it died). The standby keeps ticking; the lease lapses after ttl.
    took_over = False
    for _ in range(100):  # a safety net, not a timing assertion
        if standby.ensure():
            took_over = True
            break
        time.sleep(ttl / 5)
    assert took_over and standby.is_leader
    # The old leader, waking up, is fenced: it cannot renew or delete the new lease.
    assert leader.renew() is False and not leader.is_leader
    assert leader.release() is False
    assert standby.holder() == "standby"


def test_a_leader_stops_trusting_its_lease_by_its_own_clock(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    tokens = itertools.count()
    lease = LeaderLease(redis_client, clock, "hb", 10, "me", safety=0.8, token_factory=lambda: f"t{next(tokens)}")
    assert lease.ensure() and lease.is_leader
    clock.advance(7.9)
    assert lease.is_leader
    clock.advance(0.2)
    # Stalled past ttl * safety without a renew: step back before Redis could hand it to another.
    assert not lease.is_leader
    assert lease.ensure() and lease.is_leader  # still ours in Redis: renewing restores it
    assert redis_client.get(lease.key) == b"me:t0"
