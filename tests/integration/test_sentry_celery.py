"""A task failing in a real Celery worker reaches Sentry (a local envelope server) through the
Celery integration, with its API key and domain secret scrubbed from message, args and everything else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.integration.test_sentry import DOMAIN_SECRET, FAKE_KEY, EnvelopeServer

REPO = Path(__file__).resolve().parents[2]

APP_MODULE = textwrap.dedent(
    """
    import os
    from celery import Celery
    from settings import Settings
    from worker.observability.sentry import init_sentry

    assert init_sentry(Settings(), component="worker", extra_secrets=[os.environ["DOMAIN_SECRET"]])
    app = Celery("sentryapp", broker=os.environ["BROKER"], backend=os.environ["BROKER"])

    @app.task(name="sentryapp.fail")
    def fail(api_key, secret):
        raise RuntimeError("provision failed with " + api_key + " / " + secret)
    """
)


@pytest.fixture
def envelope_server() -> Iterator[EnvelopeServer]:
    srv = EnvelopeServer()
    yield srv
    srv.close()


def test_failing_task_is_reported_scrubbed(redis_url: str, tmp_path: Path, envelope_server: EnvelopeServer) -> None:
    (tmp_path / "sentryapp.py").write_text(APP_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "SENTRY_", "OPENAI_"))}
    env |= {
        "BROKER": redis_url, "SENTRY_DSN": envelope_server.dsn, "HEARTH_API_KEY": FAKE_KEY,
        "DOMAIN_SECRET": DOMAIN_SECRET, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "sentryapp", "worker", "--pool", "prefork", "--concurrency", "1",
         "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = Celery("sentryapp", broker=redis_url, backend=redis_url)
    try:
        result = client.send_task("sentryapp.fail", args=[FAKE_KEY, DOMAIN_SECRET])
        with pytest.raises(Exception, match="provision failed"):
            result.get(timeout=60)
        deadline = time.monotonic() + 30  # the child sends from its background thread: wait for it
        while time.monotonic() < deadline and not [e for e in envelope_server.items("event") if e.get("exception")]:
            time.sleep(0.1)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()

    events = [e for e in envelope_server.items("event") if e.get("exception")]
    assert events, (tmp_path / "worker.log").read_text()[-3000:]
    event = events[0]
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "RuntimeError" and exc["value"] == "provision failed with [REDACTED] / [REDACTED]"
    assert exc["mechanism"]["type"] == "celery"
    assert event["extra"]["celery-job"]["task_name"] == "sentryapp.fail"
    assert event["tags"]["component"] == "worker"
    for rec in envelope_server.received:
        for blob in (rec.body, rec.raw):
            assert FAKE_KEY.encode() not in blob and DOMAIN_SECRET.encode() not in blob
    # The SDK itself filters task args without send_default_pii; either way no secret is in them.
    assert FAKE_KEY not in json.dumps(event["extra"]["celery-job"])
