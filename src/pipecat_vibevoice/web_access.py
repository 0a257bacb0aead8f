"""Who may open a socket: one rule for every websocket of a server.

Browsers attach an ``Origin`` header to every websocket, so any web page a user visits
could otherwise open a session on their bot and spend its LLM key or its GPU. The rule,
the same on ``/ws``, ``/telephony/*`` and ``/v1/tts/stream``:

* a browser page served by this same host (``Origin`` names the ``Host`` the socket was
  opened on) is allowed; so is every origin on the allow-list (``*`` allows all);
* a client that sends no ``Origin`` is not a browser (a phone carrier, a Python client,
  another server): no page can make it connect, so the origin rule does not apply;
* where a bearer token is configured, every client must present it
  (``Authorization: Bearer …``, or ``?token=`` since browsers cannot set headers on a
  websocket), compared in constant time.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

#: Pipecat's own allow-list variable; its origins are added to ours.
PIPECAT_ALLOWED_ORIGINS = "PIPECAT_ALLOWED_ORIGINS"


def parse_origins(text: str) -> frozenset[str]:
    """A comma-separated allow-list, normalised (``scheme://host[:port]``, lower case)."""
    return frozenset(o.strip().rstrip("/").lower() for o in text.split(",") if o.strip())


@dataclass(frozen=True)
class Refusal:
    """Why a socket is refused: a stable ``reason`` code and a message for people."""

    reason: str
    message: str


@dataclass(frozen=True)
class AccessPolicy:
    """The origin allow-list and the bearer token of one server."""

    allowed_origins: frozenset[str] = frozenset()
    token: str = ""

    @classmethod
    def from_settings(
        cls, allowed_origins: str, token: str = "", environ: Mapping[str, str] | None = None
    ) -> AccessPolicy:
        """From the settings' comma list, plus ``PIPECAT_ALLOWED_ORIGINS`` if it is set."""
        environ = os.environ if environ is None else environ
        extra = environ.get(PIPECAT_ALLOWED_ORIGINS, "")
        return cls(parse_origins(allowed_origins) | parse_origins(extra), token)

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """Whether a socket opened from ``origin`` onto ``host`` may proceed."""
        if not origin:
            return True
        normal = origin.strip().rstrip("/").lower()
        if "*" in self.allowed_origins or normal in self.allowed_origins:
            return True
        netloc = urlsplit(normal).netloc
        return bool(host and netloc and netloc == host.strip().lower())

    def token_ok(self, authorization: str | None, query_string: bytes | str) -> bool:
        """Whether the request carries the token (always, when none is configured)."""
        if not self.token:
            return True
        given = ""
        if authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given:
            if isinstance(query_string, bytes):
                query_string = query_string.decode("latin-1")
            given = (parse_qs(query_string).get("token") or [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self, headers: Mapping[str, str], query_string: bytes | str) -> Refusal | None:
        """The refusal for a websocket handshake, or None when it may proceed."""
        origin = headers.get("origin")
        if not self.origin_ok(origin, headers.get("host")):
            return Refusal(
                "forbidden_origin",
                f"origin {origin!r} is not allowed (allow it with --allowed-origins)",
            )
        if not self.token_ok(headers.get("authorization"), query_string):
            return Refusal("unauthorized", "a valid bearer token is required")
        return None
