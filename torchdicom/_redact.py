"""Credential scrubbing: what a URL or a message may show in errors and logs.

Ground floor, beside :mod:`torchdicom.errors` (which scrubs every remote path and reason it
is given): user info and signed-URL query parameters are removed from any text, and every
secret a registered source hands over is replaced. :mod:`torchdicom.sources.remote`
registers the storage options it is configured with (and with them the credentials of
:mod:`torchdicom.sources.dicomweb`); nothing here imports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["add_secrets", "display", "scrub"]

# Callables returning the secrets known now (read at each scrub, so a reset registration
# is no longer scrubbed for, and a new one at once).
_SOURCES: list[Callable[[], Iterable[str]]] = []


def add_secrets(source: Callable[[], Iterable[str]]) -> None:
    """Register ``source``: a callable returning the secret strings to scrub, read each time."""
    if source not in _SOURCES:
        _SOURCES.append(source)


def _secrets() -> list[str]:
    found: set[str] = set()
    for source in list(_SOURCES):
        found.update(s for s in source() if isinstance(s, str) and len(s) >= 4)
    return sorted(found, key=len, reverse=True)


_USERINFO = re.compile(r"(://)[^/@\s]*@")
# Query parameters that carry signatures or tokens (presigned URLs, SAS tokens).
# S3 (X-Amz-*), GCS (X-Goog-*, GoogleAccessId), Azure SAS (sig …), CloudFront (Policy,
# Key-Pair-Id), OAuth / API keys.
_TOKEN_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-[a-z-]*|x-goog-[a-z-]*|googleaccessid|sig|signature|token|sv|se|sp"
    r"|code|policy|key-pair-id|access_token|api_?key|key)=)[^&#\s]*"
)


def scrub(text: str) -> str:
    """``text`` with every registered secret, URL user info and signed query value redacted."""
    for secret in _secrets():
        text = text.replace(secret, "<redacted>")
    text = _USERINFO.sub(r"\1<redacted>@", text)
    return _TOKEN_QUERY.sub(r"\1<redacted>", text)


def display(url: str) -> str:
    """The URL as errors and logs show it: user info and signed query parameters removed."""
    return scrub(url)
