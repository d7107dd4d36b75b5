"""Review B8 (unknown fault endpoint names are refused) and B6 (a failed slot renewal does not abort a transfer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from hearth.api.client import ContainersClient
from hearth.api.limiter import Slot
from hearth.clock import ManualClock
from hearth.errors import StorageError
from hearth.localapi.faults import _ROUTES
from settings.faults import ENDPOINT_NAMES, FaultConfig


def test_unknown_fault_endpoint_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown endpoint name"):
        FaultConfig.model_validate({"endpoints": {"containers.creat": {"drop_rate": 1.0}}})
    assert FaultConfig.model_validate({"endpoints": {"containers.create": {"drop_rate": 1.0}}}).active


def test_settings_names_match_the_servers_routes() -> None:
    assert set(ENDPOINT_NAMES) == {name for _, _, name in _ROUTES}


class _FlakySlot(Slot):
    def __init__(self) -> None:
        super().__init__(None, "", 0.0)
        self.calls = 0

    def renew(self) -> bool:
        self.calls += 1
        raise StorageError("limiter l: Redis failed: ConnectionError")


def test_a_failed_renewal_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    client = ContainersClient("http://127.0.0.1:9/v1", dialect="local", clock=clock)
    client._limiter = SimpleNamespace(lease_ttl=3.0)  # type: ignore[assignment]
    slot = _FlakySlot()
    tick = client._renewer(slot)
    assert tick is not None
    for _ in range(3):
        clock.advance(2)
        tick(1024)  # would raise StorageError mid-transfer without the fix
    assert slot.calls == 3
    assert "renewal failed" in caplog.text
    client.close()
