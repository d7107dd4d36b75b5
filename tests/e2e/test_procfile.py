"""The Procfile under ``honcho start``: worker, heartbeat and the dev API come up against a given Redis,
fill the pool, and all stop on SIGTERM (the worker with a warm shutdown)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import openai
import psutil

from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tests.e2e.helpers import REPO, clean_env, descendants, port_open, still_alive, stop_tree, write_pool_files
from tests.helpers import until
from worker.redis_server import free_port


def test_procfile_processes_fill_the_pool_and_stop_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    procfile = REPO / "Procfile"
    entries = dict(line.split(":", 1) for line in procfile.read_text().splitlines() if line.strip())
    assert set(entries) == {"worker", "heartbeat", "api"}
    # exec: honcho then signals and waits for hearth itself, not a shell, and reports hearth's exit code.
    assert all(cmd.strip().startswith("exec hearth ") for cmd in entries.values())
    pools = write_pool_files(tmp_path)
    port = free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    env = clean_env(
        HEARTH_REDIS_URL=redis_url,
        HEARTH_API_BASE=api_base,
        HEARTH_LOCAL_PORT=str(port),
        HEARTH_POOLS=str(pools),
        HEARTH_DATA_DIR=str(tmp_path / "data"),
        HEARTH_HEARTBEAT_INTERVAL="1",
    )
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            ["honcho", "start", "--no-colour", "-f", str(procfile), "-d", str(tmp_path)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        rt = Runtime.from_settings(Settings(redis_url=redis_url, api_base=api_base, pools=pools))
        try:
            def filled() -> bool:
                if honcho.poll() is not None:
                    raise AssertionError(f"honcho exited early:\n{log.read_text()[-4000:]}")
                return len(rt.store.records("alpha", State.READY)) == 2

            until(filled, timeout=60, what="pool alpha ready 2", pause=0.5)
            ready = {r.container_id for r in rt.store.records("alpha", State.READY)}
        finally:
            rt.close()
        client = openai.OpenAI(base_url=api_base, api_key="unused", max_retries=0)
        assert {c.id for c in client.containers.list(limit=100) if c.status == "running"} == ready

        procs = descendants(honcho.pid)
        commands = " ".join(" ".join(p.cmdline()) for p in procs)
        assert all(part in commands for part in ("hearth worker", "hearth heartbeat", "hearth api"))
        # No shell in between: honcho's children are the hearth processes themselves.
        direct = psutil.Process(honcho.pid).children()
        assert len(direct) == 3 and not {p.name() for p in direct} & {"sh", "dash", "bash"}, [
            (p.name(), p.cmdline()) for p in direct]
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(60)
        assert still_alive(procs) == []
        assert not port_open("127.0.0.1", port)
        output = log.read_text()
        assert "warm shutdown" in output.lower()  # the worker stopped gracefully
        for name in ("worker", "heartbeat", "api"):  # and every process exited cleanly, by its own code
            assert f"{name}.1 stopped (rc=0)" in output, output[-4000:]
    finally:
        stop_tree(honcho, signal.SIGTERM)

