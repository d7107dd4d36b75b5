"""Which broker transport a worker runs on: Hearth's (tasks/broker.py) unless the debugging switch says kombu's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from settings import Settings
from tasks.app import BROKER_TRANSPORT, celery_config, transport_config


def test_redis_brokers_get_hearths_transport_by_default() -> None:
    config = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert config["broker_transport"] == BROKER_TRANSPORT == "tasks.broker:Transport"


def test_the_debugging_switch_selects_kombus_own_transport() -> None:
    config = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0", broker_transport="kombu"))
    assert config["broker_transport"] == "redis"
    assert transport_config("rediss://h:6380/0", "kombu")["broker_transport"] == "redis"


def test_other_brokers_keep_kombus_choice_and_a_bad_switch_is_refused() -> None:
    assert transport_config("amqp://guest@localhost//", "kombu") == {}
    with pytest.raises(ValidationError, match="broker_transport"):
        Settings(broker_transport="stock")


def test_the_apps_connections_retry_a_lost_broker_every_few_seconds() -> None:
    from tasks.app import create_app
    from tasks.broker import RECONNECT_MAX, Connection

    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0"))
    conn = app.connection_for_read()
    try:
        assert isinstance(conn, Connection)  # what Celery's consumer reconnects through
        assert RECONNECT_MAX <= 10
    finally:
        conn.release()
        app.close()
