"""Metrics recorded in forked children (Celery prefork) are served, summed, by the parent's server.

A real separate process: it switches to prometheus multiprocess mode, starts the server, forks
children that record through ``PrometheusObserver``, and the test scrapes the parent over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from worker.observability.metrics import (
        PrometheusObserver, enable_multiprocess, install_celery_hooks, start_metrics_server,
    )

    enable_multiprocess(sys.argv[1])
    install_celery_hooks()
    server = start_metrics_server(0, addr="127.0.0.1")
    parent = PrometheusObserver()          # the parent records too, before forking
    parent.api_call("POST /containers", 201, 0.1)

    def child(n):
        obs = PrometheusObserver()
        for _ in range(n):
            obs.api_call("POST /containers", 201, 0.1)
        obs.containers("analysts", {"ready": n})
        obs.harvest("analysts", files=n, bytes=100 * n, failures=0)

    ctx = multiprocessing.get_context("fork")
    for n in (2, 3):                       # one after the other: the last gauge write is n=3
        p = ctx.Process(target=child, args=(n,))
        p.start()
        p.join()
        assert p.exitcode == 0
    print(server.port, flush=True)
    sys.stdin.readline()                   # serve until the test closes stdin
    """
)


def test_children_samples_are_summed_by_the_parent_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    (mp_dir / "counter_999999.db").write_bytes(b"stale")  # must be wiped, not summed (or choked on)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(mp_dir)],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        port_line = proc.stdout.readline()
        assert port_line.strip().isdigit(), proc.stderr.read() if proc.stderr else ""
        resp = httpx.get(f"http://127.0.0.1:{int(port_line)}/metrics", timeout=10)
        resp.raise_for_status()
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }
    assert samples[("hearth_api_calls_total", (("endpoint", "POST /containers"), ("status", "201")))] == 6
    assert samples[("hearth_api_call_seconds_count", (("endpoint", "POST /containers"),))] == 6
    assert samples[("hearth_harvest_bytes_total", (("pool", "analysts"),))] == 500
    assert samples[("hearth_containers", (("pool", "analysts"), ("state", "ready")))] == 3
    assert proc.returncode == 0
