"""Hypothesis over the ``WS /v1/tts/stream`` protocol: the server never crashes and
answers every bad frame with a clear error.

Each example opens a connection to the real server (module fixture, real Piper voice),
sends one generated frame, then a *sentinel* (``cancel`` of an id that does not exist,
which the server must answer with ``unknown_id``): everything before the sentinel's
answer is the server's response to the frame. Items the frame queued are flushed and
followed to their ``done``/``error``. ``end`` is not generated (it closes the
connection by design; tests/serving covers it).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving.tts_harness import open_client

from pipecat_vibevoice.serving.protocol import MESSAGE_TYPES

SENTINEL = "zz-sentinel-id"
EVENT_TYPES = {"ready", "queued", "started", "chunk", "done", "cancelled", "error", "closing"}
REASON = re.compile(r"^[a-z][a-z_]{2,40}$")
MAX_CHARS = 5000  # ServingSettings.max_message_chars (default)
MAX_BYTES = 65536  # ServingSettings.max_message_bytes (default)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
not_str = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
)  # fmt: skip
controls = st.text(alphabet=st.characters(categories=["Cc"]), min_size=1, max_size=30)


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return True
    return False


def _bad_number(value: Any) -> str | None:
    """The reason the server must give for ``speed``/``pitch`` = ``value`` (None: valid)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "invalid_message"
    return None if 0.5 <= value <= 2.0 else "invalid_value"


#: (frame, reasons): one of ``reasons`` must come back; ``None`` = may be accepted.
Case = tuple[str | bytes, set[str] | None]

cases = st.one_of(
    st.binary(max_size=2048).map(lambda b: (b, {"binary_not_supported"})),
    st.text(max_size=200).filter(_not_json).map(lambda t: (t, {"invalid_json"})),
    json_values.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: (json.dumps(v), {"invalid_message"})
    ),
    st.builds(
        lambda kind, extra: (json.dumps({**extra, "type": kind}), {"unknown_type"}),
        st.one_of(st.text(max_size=10).filter(lambda k: k not in MESSAGE_TYPES), not_str),
        st.dictionaries(st.sampled_from(["text", "voice", "speed"]), json_scalars, max_size=2),
    ),
    not_str.map(lambda t: (json.dumps({"type": "speak", "text": t}), {"invalid_message"})),
    st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=20).map(
        lambda t: (json.dumps({"type": "speak", "text": t}), {"empty_text"})
    ),
    st.integers(MAX_CHARS + 1, 90_000).map(
        lambda n: (
            json.dumps({"type": "speak", "text": "x" * n}),
            {"message_too_large" if n + 30 > MAX_BYTES else "text_too_long"},
        )
    ),
    st.builds(
        lambda field, value: (
            json.dumps({"type": "speak", "text": "Hello.", field: value}),
            {_bad_number(value)},
        ),
        st.sampled_from(["speed", "pitch"]),
        st.one_of(
            not_str.filter(lambda v: not isinstance(v, int | float) or isinstance(v, bool)),
            st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: _bad_number(v)),
        ),
    ),
    # Control characters (Cc) are dropped by the engine: only-controls is empty text.
    # (Format characters such as U+200D are spoken like emoji: no audio, no error.)
    controls.map(lambda t: (json.dumps({"type": "speak", "text": t}), {"empty_text"})),
    # Anything that parses as an object: accepted or refused, never a crash.
    st.dictionaries(
        st.sampled_from(["type", "id", "text", "voice", "speed", "pitch", "final", "seed"]),
        json_scalars,
        max_size=6,
    )
    .filter(lambda d: d.get("type") != "end" and d.get("id") != SENTINEL)
    .map(lambda d: (json.dumps(d), None)),
    st.builds(
        lambda text, voice: (
            json.dumps({"type": "speak", "text": text[:60] + " ok.", "voice": voice}),
            None,
        ),
        st.text(max_size=40) | controls,
        st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=12), not_str),
    ),
)


def _check_event(item: Any) -> None:
    assert isinstance(item, dict) and item.get("type") in EVENT_TYPES, item
    if item["type"] == "error":
        assert isinstance(item.get("reason"), str) and REASON.match(item["reason"]), item
        assert isinstance(item.get("message"), str) and item["message"].strip(), item


async def _exchange(url: str, frame: str | bytes) -> list[dict]:
    """Send ``frame`` and the sentinel; return every event answering the frame."""
    client = await open_client(url)
    try:
        await client.ws.send(frame)
        await client.send(type="cancel", id=SENTINEL)
        events: list[dict] = []
        while True:
            item = await client.recv(timeout=30)
            if isinstance(item, bytes):
                continue
            _check_event(item)
            if item["type"] == "error" and item.get("id") == SENTINEL:
                break
            events.append(item)
        queued = {e["id"] for e in events if e["type"] == "queued"}
        finished = {e.get("id") for e in events if e["type"] in ("done", "error")}
        for e in events:
            if e["type"] == "cancelled":
                finished |= set(e["ids"])
        if queued - finished:  # follow what the frame started to its end
            await client.send(type="flush")
            while queued - finished:
                item = await client.recv(timeout=30)
                if isinstance(item, bytes):
                    continue
                _check_event(item)
                events.append(item)
                if item["type"] in ("done", "error") and item.get("id") in queued:
                    finished.add(item["id"])
                elif item["type"] == "cancelled":
                    finished |= set(item["ids"])
        return events
    finally:
        await client.ws.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases)
def test_fuzzed_frames_get_clear_errors_and_the_server_lives(tts_server, case: Case) -> None:
    server, _engine, _backend = tts_server
    frame, reasons = case
    events = asyncio.run(_exchange(server.url, frame))
    errors = {e["reason"] for e in events if e["type"] == "error"}
    if reasons is not None:
        assert errors & reasons, f"{str(frame)[:80]!r}: expected {reasons}, got {events[:4]}"
    else:
        # Accepted frames answer with queued/…; refused ones with an error.
        assert all(e["type"] != "closing" for e in events), events
    assert server.thread.is_alive()


def test_after_the_fuzz_the_server_still_speaks(tts_server) -> None:
    server, engine, _backend = tts_server

    async def speak() -> dict:
        client = await open_client(server.url)
        await client.send(type="speak", id="alive", text="Still speaking after the fuzz.")
        result = await client.collect(["alive"], timeout=60)
        await client.ws.close()
        return result["alive"]

    utterance = asyncio.run(speak())
    assert utterance.final["type"] == "done" and len(utterance.audio) > 24000
    health = asyncio.run(engine.health_check())
    assert health["status"] == "ok" and health["active_streams"] == 0
