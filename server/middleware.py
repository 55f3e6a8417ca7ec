"""Middlewares: cache-control, origin check or CORS, request limits."""
from __future__ import annotations


def build(args) -> list:
    return []
