"""Celery: the app factory and the tasks, thin adapters over ``hearth`` (ids in, JSON out, no logic here)."""
