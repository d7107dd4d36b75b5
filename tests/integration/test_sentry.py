"""Sentry against a local HTTP server that receives the SDK's envelopes.

The SDK runs in a separate Python process (so its integrations never patch this test process),
pointed at ``http://public@127.0.0.1:PORT/1``. The server records every request body, decompressed,
and the tests parse the envelopes: the event must arrive, and the fake API key and domain secret
must not appear anywhere in what was sent.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from settings import Settings
from worker.observability.sentry import Scrubber, heartbeat_checkin, init_sentry, interval_monitor_config

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "sk-proj-TESTKEY123abcdefghijklmnopqrstuv"
DOMAIN_SECRET = "tangerine-domain-value-5521"  # no recognisable shape: only the secrets list catches it


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes  # as sent on the wire
    body: bytes  # decompressed


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "br":
        import brotli  # only used by the SDK when installed

        return bytes(brotli.decompress(raw))
    return raw


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """Split an envelope into its header and (item header, payload) pairs (length-prefixed or line-ended)."""
    header_line, _, rest = body.partition(b"\n")
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        items.append((item_header, payload))
    return json.loads(header_line), items


class EnvelopeServer:
    """A tiny Sentry ingest stand-in: accepts every POST, keeps it, answers 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = decode_body(raw, self.headers.get("Content-Encoding"))
                with outer._lock:
                    outer.received.append(Received(self.path, dict(self.headers.items()), raw, body))
                payload = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def items(self, item_type: str) -> list[dict[str, Any]]:
        found = []
        for rec in self.received:
            _, items = parse_envelope(rec.body)
            found += [json.loads(p) for h, p in items if h.get("type") == item_type]
        return found

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def envelope_server() -> Iterator[EnvelopeServer]:
    srv = EnvelopeServer()
    yield srv
    srv.close()


def run_sdk_script(script: str, dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "SENTRY_", "OPENAI_"))}
    env |= {"SENTRY_DSN": dsn, "HEARTH_API_KEY": FAKE_KEY, "DOMAIN_SECRET": DOMAIN_SECRET}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


EVENT_SCRIPT = """
    import logging, os
    import sentry_sdk
    from settings import Settings
    from worker.observability.sentry import flush_sentry, init_sentry

    settings = Settings()
    key = settings.api_key.get_secret_value()
    domain = os.environ["DOMAIN_SECRET"]
    assert init_sentry(settings, component="worker", extra_secrets=[domain])

    log = logging.getLogger("hearth.test")
    log.warning("calling the API with %s for %s", key, domain)      # becomes a breadcrumb
    import httpx                                                      # an http breadcrumb, key in the query
    httpx.get(os.environ["SENTRY_DSN"].replace("public@", "") + "/probe?api-key=" + key + "&d=" + domain)
    sentry_sdk.add_breadcrumb(category="api", message="key " + key, data={"api_key": key, "note": domain})
    sentry_sdk.set_extra("config", {"token": key, "text": "secret=" + domain, "plain": domain})
    sentry_sdk.set_context("pool", {"domain": domain, "pool": "analysts"})
    sentry_sdk.set_tag("pool_secret_tag", domain)

    def call_backend(api_key, secret):
        headers = {"Authorization": "Bearer " + api_key}         # a local that must not be sent
        raise RuntimeError("backend rejected " + api_key + " with domain secret " + secret)

    try:
        call_backend(key, domain)
    except RuntimeError:
        sentry_sdk.capture_exception()
    log.error("harvest failed for %s", domain)                     # a logging event
    flush_sentry(10)
"""


def test_event_arrives_without_the_api_key_or_domain_secret(envelope_server: EnvelopeServer) -> None:
    run_sdk_script(EVENT_SCRIPT, envelope_server.dsn)

    assert envelope_server.received, "the SDK sent nothing"
    assert all(r.path == "/api/1/envelope/" for r in envelope_server.received)
    events = envelope_server.items("event")
    exc_events = [e for e in events if e.get("exception")]
    assert exc_events, f"no exception event among {len(events)} events"
    exc = exc_events[0]["exception"]["values"][-1]
    assert exc["type"] == "RuntimeError"
    assert "backend rejected [REDACTED]" in exc["value"]
    assert "[REDACTED]" in exc["value"].split("domain secret ", 1)[1]
    frames = exc["stacktrace"]["frames"]
    assert any(f["function"] == "call_backend" for f in frames)
    assert all("vars" not in f for f in frames)
    crumbs = exc_events[0]["breadcrumbs"]["values"]
    assert any(c.get("category") == "api" and c["data"]["api_key"] == "[REDACTED]" for c in crumbs)
    assert any("calling the API with [REDACTED]" in (c.get("message") or "") for c in crumbs)
    assert exc_events[0]["tags"]["component"] == "worker"
    assert {"celery", "httpx", "redis"} <= set(exc_events[0]["sdk"]["integrations"])
    http = [c for c in crumbs if c.get("category") == "httplib"]
    assert http and "/probe" in http[0]["data"]["url"], crumbs
    assert "[REDACTED]" in http[0]["data"]["http.query"]
    assert any("harvest failed" in json.dumps(e.get("logentry", {})) for e in events)

    for rec in envelope_server.received:
        for blob in (rec.body, rec.raw, json.dumps(rec.headers).encode()):
            assert FAKE_KEY.encode() not in blob
            assert b"TESTKEY123" not in blob
            assert DOMAIN_SECRET.encode() not in blob


CHECKIN_SCRIPT = """
    from settings import Settings
    from worker.observability.sentry import flush_sentry, heartbeat_checkin, init_sentry, monitored_tick

    assert init_sentry(Settings(), component="heartbeat")
    cid = heartbeat_checkin("hearth-heartbeat-test", "in_progress", interval_seconds=10)
    assert cid
    heartbeat_checkin("hearth-heartbeat-test", "ok", duration=0.25, check_in_id=cid, interval_seconds=10)
    try:
        with monitored_tick("hearth-heartbeat-test", interval_seconds=120):
            raise ValueError("tick failed")
    except ValueError:
        pass
    flush_sentry(10)
"""


def test_heartbeat_checkins_arrive_with_slug_status_and_schedule(envelope_server: EnvelopeServer) -> None:
    run_sdk_script(CHECKIN_SCRIPT, envelope_server.dsn)

    checkins = envelope_server.items("check_in")
    assert [c["status"] for c in checkins] == ["in_progress", "ok", "in_progress", "error"]
    assert {c["monitor_slug"] for c in checkins} == {"hearth-heartbeat-test"}
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]
    assert checkins[2]["check_in_id"] == checkins[3]["check_in_id"] != checkins[0]["check_in_id"]
    assert checkins[1]["duration"] == pytest.approx(0.25)
    assert checkins[3]["duration"] >= 0
    assert checkins[0]["monitor_config"]["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}
    assert checkins[2]["monitor_config"]["schedule"] == {"type": "interval", "value": 2, "unit": "minute"}


def test_disabled_without_a_dsn_and_status_is_checked() -> None:
    assert init_sentry(Settings(sentry_dsn=None), component="worker") is False
    with pytest.raises(ValueError, match="status"):
        heartbeat_checkin("hearth-heartbeat", "done")
    assert interval_monitor_config(10)["checkin_margin"] == 1


def test_scrubber_walks_every_part_of_an_event() -> None:
    event = {
        "message": f"uses {FAKE_KEY}",
        "request": {"headers": {"Authorization": "Bearer abc", "X-Api-Key": "k1"}, "data": {"p": DOMAIN_SECRET}},
        "exception": {"values": [{"value": DOMAIN_SECRET, "stacktrace": {"frames": [
            {"function": "f", "lineno": 1, "vars": {"x": "1"}, "context_line": f"key = '{FAKE_KEY}'"},
        ]}}]},
        "extra": {"argv": ["hearth", "--api-key", FAKE_KEY]},
        "contexts": {"trace": {"trace_id": "abc123", "span_id": "def"}},
    }
    out = Scrubber([DOMAIN_SECRET]).scrub(event)
    text = json.dumps(out)
    assert FAKE_KEY not in text and DOMAIN_SECRET not in text and "Bearer abc" not in text and "k1" not in text
    assert "vars" not in out["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert out["contexts"]["trace"] == {"trace_id": "abc123", "span_id": "def"}  # structure intact
