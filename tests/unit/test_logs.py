"""Log lines: the human and JSON formats, one line per event, and no secret ever in the output."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from celery import Celery

from hearth.clock import ManualClock
from hearth.errors import ConfigError
from hearth.events import MASK, RecentEvents, log_event, redact, redact_text, register_secrets
from worker.observability.logs import configure_logging

FAKE_KEY = "sk-proj-TESTKEY123abcdefghijklmnop"
DOMAIN_SECRET = "tangerine-domain-value-5521"  # no recognisable shape: only registration can catch it


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """Route the root logger into a buffer the way a process would, restoring it afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    yield buf, logging.getLogger("hearth.pool")
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
    root.setLevel(saved[1])
    logging.captureWarnings(False)


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_human_format_is_one_line_per_event_with_fields(capture: tuple[io.StringIO, logging.Logger]) -> None:
    buf, log = capture
    configure_logging("INFO", json=False, stream=buf)
    log_event(log, "lease.taken", pool="analysts", container_id="cntr_abc", task_id="t-1", lease_id="l-9", dropped=None)
    (line,) = lines(buf)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO hearth\.pool event=lease\.taken "
        r"pool=analysts container_id=cntr_abc lease_id=l-9 task_id=t-1",
        line,
    ), line


def test_human_format_quotes_values_with_spaces_and_renders_plain_messages(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    buf, log = capture
    configure_logging("DEBUG", json=False, stream=buf)
    log.warning("pool %s is short by %d", "analysts", 3, extra={"pool": "analysts", "reason": "api down\nagain"})
    (line,) = lines(buf)
    assert " WARNING hearth.pool pool analysts is short by 3 pool=analysts " in line
    assert 'reason="api down\\nagain"' in line


def test_json_format_has_the_same_fields(capture: tuple[io.StringIO, logging.Logger]) -> None:
    buf, log = capture
    configure_logging("info", json=True, stream=buf)
    log_event(log, "harvest.stored", pool="analysts", container_id="cntr_1", files=3, msg="collides")
    log.info("plain %s", "text")
    first, second = (json.loads(x) for x in lines(buf))
    assert first["event"] == "harvest.stored"
    assert first["logger"] == "hearth.pool" and first["level"] == "INFO"
    assert (first["pool"], first["container_id"], first["files"]) == ("analysts", "cntr_1", 3)
    assert first["msg_"] == "collides"  # a field named like a reserved key does not overwrite it
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["ts"])
    assert second["msg"] == "plain text" and "event" not in second


def test_level_filters_and_bad_level_is_a_config_error(capture: tuple[io.StringIO, logging.Logger]) -> None:
    buf, log = capture
    configure_logging("WARNING", json=False, stream=buf)
    log_event(log, "lease.taken", pool="p")
    log.info("hidden")
    assert lines(buf) == []
    with pytest.raises(ConfigError, match="HEARTH_LOG_LEVEL"):
        configure_logging("LOUD", json=False, stream=buf)


def test_reconfiguring_replaces_the_handler(capture: tuple[io.StringIO, logging.Logger]) -> None:
    buf, log = capture
    configure_logging("INFO", json=False, stream=buf)
    configure_logging("INFO", json=False, stream=buf)
    log.info("once")
    assert len(lines(buf)) == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_no_secret_reaches_the_output(capture: tuple[io.StringIO, logging.Logger], as_json: bool) -> None:
    buf, log = capture
    configure_logging("DEBUG", json=as_json, stream=buf, secrets=[DOMAIN_SECRET])
    log.info("calling with key %s", FAKE_KEY)  # in message args
    log.info(f"header Authorization: Bearer {FAKE_KEY}")  # in the message itself
    log.info("extras", extra={"api_key": "plainvalue123", "note": f"uses {FAKE_KEY}", "cfg": {"secret": "x"}})
    log_event(log, "pool.configured", pool="p", domain=DOMAIN_SECRET, headers={"Authorization": "Bearer abc"})
    log_event(log, "lease.taken", pool="p", fencing_token=7)  # not a secret: stays readable
    try:
        raise RuntimeError(f"backend refused {FAKE_KEY} / {DOMAIN_SECRET}")
    except RuntimeError:
        log.exception("call failed")
    log.info("redis at %s", "redis://:hunter2pw@127.0.0.1:6379/0")
    out = buf.getvalue()
    for secret in (FAKE_KEY, "TESTKEY123", DOMAIN_SECRET, "plainvalue123", "hunter2pw", "Bearer abc"):
        assert secret not in out
    assert out.count(MASK) >= 8
    assert "RuntimeError" in out  # the traceback is still there, only masked
    assert ("fencing_token=7" in out) or ('"fencing_token": 7' in out)
    if as_json:
        assert all(json.loads(x) for x in lines(buf) if x)  # every line parses: one object per line


def test_redact_masks_secret_keys_shapes_and_literals() -> None:
    register_secrets("plum-secret-9")
    data = {
        "api_key": "abc",
        "Authorization": "Bearer zzz",
        "SENTRY_DSN": "https://k@sentry.io/1",
        "password": None,
        "pool": "analysts",
        "fencing_token": 12,
        "nested": [{"client_secret": 1}, "sk-abcdef123456", ("x", "plum-secret-9")],
        "url": "https://api.example.com/v1?api-key=qwerty&x=1",
    }
    out = redact(data)
    assert out["api_key"] == MASK and out["Authorization"] == MASK and out["SENTRY_DSN"] == MASK
    assert out["password"] is None and out["pool"] == "analysts" and out["fencing_token"] == 12
    assert out["nested"] == [{"client_secret": MASK}, MASK, ("x", MASK)]
    assert out["url"] == f"https://api.example.com/v1?api-key={MASK}&x=1"
    assert data["api_key"] == "abc"  # a copy, the input is untouched


def test_redact_text_shapes() -> None:
    assert redact_text("key sk-proj-Ab_c-123456789 end") == f"key {MASK} end"
    assert redact_text("Authorization: Bearer eyJ0.abc.def") == f"Authorization: {MASK} {MASK}"
    assert redact_text("Basic settings apply; bearer of news") == "Basic settings apply; bearer of news"
    assert redact_text("redis://user:pw@h:1/0") == f"redis://user:{MASK}@h:1/0"
    assert redact_text("Settings(api_key='abc', x=1)") == f"Settings(api_key='{MASK}', x=1)"
    assert redact_text('{"token": "t0k3n"}') == f'{{"token": "{MASK}"}}'
    assert redact_text("http://127.0.0.1:8650/v1 task sk-1") == "http://127.0.0.1:8650/v1 task sk-1"


def test_celery_task_id_is_added_inside_a_task(capture: tuple[io.StringIO, logging.Logger]) -> None:
    buf, log = capture
    configure_logging("INFO", json=True, stream=buf)
    app = Celery("logtest", set_as_current=False)

    @app.task(name="logtest.work")
    def work() -> str:
        log_event(log, "task.step", pool="p")
        return "done"

    # Task.apply runs the task through Celery's tracer in this process (no broker needed), which
    # is exactly what pushes it as the "current task" the filter reads.
    result = work.apply()
    log.info("outside")
    inside, outside = (r for r in map(json.loads, lines(buf)) if r["logger"] == "hearth.pool")
    assert inside["task_id"] == result.id and inside["task_name"] == "logtest.work"
    assert "task_id" not in outside


def test_recent_events_are_bounded_stamped_and_redacted() -> None:
    clock = ManualClock(start=1_000.0)
    recent = RecentEvents(clock, size=2)
    recent.event("container.expired", pool="a", container_id="cntr_1")
    clock.advance(5)
    recent.event("pool.configured", pool="b", api_key="k")
    clock.advance(5)
    recent.event("lease.taken", pool="c", note=f"with {FAKE_KEY}")
    got = recent.recent()
    assert [(e.at, e.kind) for e in got] == [(1_005.0, "pool.configured"), (1_010.0, "lease.taken")]
    assert got[0].fields == {"pool": "b", "api_key": MASK}
    assert got[1].fields["note"] == f"with {MASK}"
    assert recent.recent(limit=1) == got[-1:]
