"""Hearth: warm pools, leases and harvest for OpenAI code-interpreter containers.

This package is the domain. It knows HTTP (httpx), Redis and storage, but neither Celery nor
APScheduler: those live in ``tasks`` and ``worker`` so that everything here can be driven and
tested without a broker or a scheduler.
"""

__version__ = "0.1.0"
