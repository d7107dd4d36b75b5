"""Shared fixtures, one plugin module per real part (Redis, the local API, a Celery worker)."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.celery",
    "tests.fixtures.localapi",
    "tests.fixtures.s3",
    "tests.fixtures.pools",
    "tests.fixtures.faces",
    "tests.fixtures.litellm",
]
