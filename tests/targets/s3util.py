"""Helpers for tests against moto's S3 server: fresh buckets, restore-progress switching, and
a client wrapper that injects faults or records calls (the requests still go to moto)."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["ClientProxy", "new_bucket", "set_restore_transition", "slow"]


def new_bucket(aws: Any, *, lock: bool = False, prefix: str = "t") -> str:
    """Create a uniquely named bucket (with Object Lock enabled if ``lock``)."""
    name = f"{prefix}-{secrets.token_hex(6)}"
    kwargs: dict[str, Any] = {"Bucket": name}
    if lock:
        kwargs["ObjectLockEnabledForBucket"] = True
    aws.client().create_bucket(**kwargs)
    return name


def set_restore_transition(endpoint: str, transition: dict[str, Any] | None) -> None:
    """Switch how moto progresses S3 restores: ``{"progression": "manual", "times": N}``
    keeps them in progress for N reads, ``{"progression": "immediate"}`` finishes them, and
    None restores moto's default."""
    if transition is None:
        url = f"{endpoint}/moto-api/state-manager/unset-transition"
        body = {"model_name": "s3::keyrestore"}
    else:
        url = f"{endpoint}/moto-api/state-manager/set-transition"
        body = {"model_name": "s3::keyrestore", "transition": transition}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(req).read()


class ClientProxy:
    """Wraps a real boto3 client: every call goes through, after ``hooks[name](kwargs)``
    runs (which may raise to inject a fault, or sleep); calls are counted."""

    def __init__(self, client: Any, hooks: dict[str, Callable[[dict[str, Any]], None]]) -> None:
        self._client = client
        self._hooks = hooks
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("_") or name in ("get_paginator", "meta"):
            return attr

        def call(**kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            hook = self._hooks.get(name)
            if hook is not None:
                hook(kwargs)
            return attr(**kwargs)

        return call


def slow(seconds: float) -> Callable[[dict[str, Any]], None]:
    """A hook that delays the call."""
    return lambda _kw: time.sleep(seconds)
