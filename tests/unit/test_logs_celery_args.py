"""A worker's log never shows a session key, though Celery logs each task's arguments.

Celery logs "Task … received" with ``extra={'data': {...'args': …}}``; the key an app passes to
``hearth.session_lease`` is in those args. Our formatter (``install_celery_logging``, what ``hearth
worker`` installs) renders only the task id and name. Same real-worker pattern as
test_logs_celery_worker.py.
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
KEY = "conversation-secret-key-91c2e"

APP_MODULE = textwrap.dedent(
    """
    from celery import Celery
    import os
    from hearth.sessions import session_hash
    from worker.observability.logs import install_celery_logging

    install_celery_logging("INFO", json={json})
    app = Celery("logapp", broker=os.environ["BROKER"], backend=os.environ["BROKER"])

    @app.task(name="hearth.session_lease")
    def session_lease(pool, session):
        return {{"session_id": session_hash(session)}}
    """
)


def run_worker(tmp_path: Path, redis_url: str, as_json: bool) -> tuple[str, str]:
    (tmp_path / "logapp.py").write_text(APP_MODULE.format(json=as_json))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "SENTRY_", "OPENAI_"))}
    env |= {"BROKER": redis_url, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    err = (tmp_path / "worker.err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "logapp", "worker", "--pool", "prefork", "--concurrency", "1",
         "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
    )
    client = Celery("logapp", broker=redis_url, backend=redis_url)
    try:
        result = client.send_task("hearth.session_lease", args=["alpha", KEY])
        result.get(timeout=60)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        err.close()
    return result.id, (tmp_path / "worker.err").read_text()


def test_json_worker_log_of_a_session_lease_has_the_task_id_but_never_the_key(
    tmp_path: Path, redis_url: str,
) -> None:
    task_id, output = run_worker(tmp_path, redis_url, True)
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    received = [r for r in records if "received" in str(r.get("msg", ""))]
    assert received and received[0]["task_id"] == task_id, output[-3000:]
    assert KEY not in output and "secret-key-91c2e" not in output


def test_human_worker_log_never_has_the_key(tmp_path: Path, redis_url: str) -> None:
    task_id, output = run_worker(tmp_path, redis_url, False)
    assert task_id in output
    assert KEY not in output
