"""Review B5/B10: injected drops are not logged as bugs; file names cannot name a directory."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.fixtures.localapi import LocalAPI


def test_injected_drops_log_no_error(local_api: LocalAPI, caplog: pytest.LogCaptureFixture) -> None:
    local_api.set_faults({"seed": 1, "endpoints": {"containers.create": {"drop_rate": 1.0}}})
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{local_api.base_url}/containers", json={"name": "dropped"}, timeout=10)
    local_api.set_faults(None)
    made = httpx.get(f"{local_api.base_url}/containers", params={"name": "dropped"}, timeout=10).json()["data"]
    assert len(made) == 3  # drop_after_processing: the creates did happen, only the answers were lost
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("name", ["..", ".", "a/..", "x\\.."])
def test_a_directory_like_file_name_becomes_file(local_api: LocalAPI, name: str) -> None:
    base = local_api.base_url
    up = httpx.post(f"{base}/files", files={"file": (name, b"abc")}, data={"purpose": "user_data"}, timeout=10)
    assert up.status_code == 200, up.text
    assert up.json()["filename"] == "file"
    c = httpx.post(f"{base}/containers", json={"name": "b10", "file_ids": [up.json()["id"]]}, timeout=10).json()
    files = httpx.get(f"{base}/containers/{c['id']}/files", timeout=10).json()["data"]
    assert [f["path"] for f in files] == ["/mnt/data/file"]
    direct = httpx.post(f"{base}/containers/{c['id']}/files", files={"file": (name, b"abc")}, timeout=10).json()
    assert direct["path"].endswith("-file")
