import redis


def test_real_redis_server_round_trips(redis_client: redis.Redis) -> None:
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"
    info = redis_client.info("server")
    assert "redis_version" in info
