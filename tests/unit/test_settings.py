"""Settings: where each value comes from (constructor > environment > .env > default), key aliases, masking.

Each test runs in an empty directory with every Hearth-related variable removed, so the developer's
own shell or .env cannot change the outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from settings import Backend, Settings

KEY = "sk-test-key-never-shown"
DSN = "https://publickey@sentry.example.com/42"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("HEARTH_") or name.upper() in {"OPENAI_API_KEY", "SENTRY_DSN"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dotenv(tmp_path: Path, **values: str) -> None:
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def test_defaults_when_nothing_is_set() -> None:
    s = Settings()
    assert s.backend is Backend.local and s.api_key is None and s.redis_url is None
    assert s.heartbeat_interval == 10.0 and s.pools == Path("examples/pools.yaml")
    assert s.resolved_api_base == "http://127.0.0.1:8650/v1"


def test_precedence_constructor_env_dotenv_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv(tmp_path, HEARTH_HEARTBEAT_INTERVAL="7", HEARTH_ORPHAN_GRACE="11", HEARTH_LOG_LEVEL="DEBUG")
    monkeypatch.setenv("HEARTH_HEARTBEAT_INTERVAL", "3")
    monkeypatch.setenv("HEARTH_ORPHAN_GRACE", "12")
    s = Settings(orphan_grace=99)
    assert s.orphan_grace == 99  # constructor beats the environment
    assert s.heartbeat_interval == 3  # environment beats .env
    assert s.log_level == "DEBUG"  # .env beats the default
    assert s.heartbeat_leader_ttl == 30  # default
    assert Settings(_env_file=None).log_level == "INFO"  # type: ignore[call-arg]


def test_hearth_api_key_beats_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    assert Settings().api_key is not None and Settings().api_key.get_secret_value() == "openai-key"  # type: ignore[union-attr]
    monkeypatch.setenv("HEARTH_API_KEY", "hearth-key")
    assert Settings().api_key.get_secret_value() == "hearth-key"  # type: ignore[union-attr]
    assert Settings(api_key="ctor-key").api_key.get_secret_value() == "ctor-key"  # type: ignore[union-attr]


def test_hearth_api_key_beats_openai_api_key_in_dotenv(tmp_path: Path) -> None:
    dotenv(tmp_path, OPENAI_API_KEY="openai-key", HEARTH_API_KEY="hearth-key")
    assert Settings().api_key.get_secret_value() == "hearth-key"  # type: ignore[union-attr]


def test_hearth_api_key_in_dotenv_beats_a_global_openai_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "global-openai-key")
    dotenv(tmp_path, HEARTH_API_KEY="project-hearth-key")
    assert Settings().api_key.get_secret_value() == "project-hearth-key"  # type: ignore[union-attr]


def test_secrets_are_masked_everywhere_but_get_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_API_KEY", KEY)
    monkeypatch.setenv("SENTRY_DSN", DSN)
    s = Settings()
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump()), repr(s.api_key)):
        assert KEY not in text and "publickey" not in text
    assert s.api_key is not None and s.api_key.get_secret_value() == KEY
    assert s.sentry_dsn is not None and s.sentry_dsn.get_secret_value() == DSN


def test_values_are_validated_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_API_TIMEOUT", "0")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert info.value.errors()[0]["loc"] == ("api_timeout",)
    monkeypatch.setenv("HEARTH_API_TIMEOUT", "5")
    monkeypatch.setenv("HEARTH_BACKEND", "nope")
    with pytest.raises(ValidationError):
        Settings()


def test_faults_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_FAULTS", '{"latency_ms": 5, "endpoints": {"containers.create": {"error_rate": 0.5}}}')
    faults = Settings().faults
    assert faults.latency_ms == 5
    assert faults.for_endpoint("containers.create").error_rate == 0.5
    assert faults.for_endpoint("containers.list") is faults


def test_resolved_api_base_per_backend() -> None:
    assert Settings(backend=Backend.openai).resolved_api_base == "https://api.openai.com/v1"
    assert Settings(api_base="http://gw:8080/openai/v1/", backend=Backend.gateway).resolved_api_base == \
        "http://gw:8080/openai/v1"
    assert Settings(local_port=9999).resolved_api_base == "http://127.0.0.1:9999/v1"
    with pytest.raises(ValueError, match="HEARTH_API_BASE is required"):
        _ = Settings(backend=Backend.azure).resolved_api_base


def test_resolved_storage_url(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path / "d").resolved_storage_url == (tmp_path / "d" / "harvest").as_uri()
    assert Settings(storage_url="s3://bucket/h").resolved_storage_url == "s3://bucket/h"


def test_every_setting_documents_its_default() -> None:
    # docs/reference.md is generated from these descriptions: an undocumented setting is a bug.
    undocumented = [n for n, f in Settings.model_fields.items() if "Default" not in (f.description or "")]
    assert undocumented == []
