"""Logs of a real Celery prefork worker: our JSON lines, the task id on each, no secret in the output.

(Uses the real Redis fixture and a worker process, so it is more than a unit test; it lives here
because it tests ``worker.observability.logs``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from celery import Celery

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "sk-proj-TESTKEY123abcdefghijklmnopqr"
DOMAIN_SECRET = "tangerine-domain-value-5521"

APP_MODULE = textwrap.dedent(
    """
    import logging, os
    from celery import Celery
    from hearth.events import log_event
    from worker.observability.logs import install_celery_logging

    install_celery_logging("INFO", json=True, secrets=[os.environ["DOMAIN_SECRET"]])
    app = Celery("logapp", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
    log = logging.getLogger("hearth.pool")

    @app.task(name="logapp.work")
    def work(pool):
        log_event(log, "lease.taken", pool=pool, note="secret " + os.environ["DOMAIN_SECRET"])
        log.info("calling with key %s", os.environ["FAKE_KEY"])
        return "ok"
    """
)


def test_worker_logs_are_json_with_task_ids_and_no_secrets(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "logapp.py").write_text(APP_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "SENTRY_", "OPENAI_"))}
    env |= {
        "BROKER": redis_url, "FAKE_KEY": FAKE_KEY, "DOMAIN_SECRET": DOMAIN_SECRET,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }
    err = (tmp_path / "worker.err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "logapp", "worker", "--pool", "prefork", "--concurrency", "1",
         "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
    )
    client = Celery("logapp", broker=redis_url, backend=redis_url)
    try:
        result = client.send_task("logapp.work", args=["analysts"])
        assert result.get(timeout=60) == "ok"
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)  # warm shutdown of the main process; it stops its children
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        err.close()

    output = (tmp_path / "worker.err").read_text()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    taken = [r for r in records if r.get("event") == "lease.taken"]
    assert len(taken) == 1, output[-3000:]
    assert taken[0]["task_id"] == result.id and taken[0]["pool"] == "analysts"
    assert taken[0]["note"] == "secret [REDACTED]"
    assert any(r.get("msg") == "calling with key [REDACTED]" and r.get("task_id") == result.id for r in records)
    assert FAKE_KEY not in output and "TESTKEY123" not in output and DOMAIN_SECRET not in output
