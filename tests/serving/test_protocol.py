"""The TTS websocket protocol against the real server and the real Piper voice."""

from __future__ import annotations

import asyncio
import json

import pytest
from serving.tts_harness import Client, ServerThread, open_client
from websockets.exceptions import ConnectionClosed

LONG = (
    "This sentence is long enough to keep the voice busy for a while. "
    "Then another sentence follows it, and a third one comes after that. "
    "Finally a fourth sentence closes the paragraph for good."
)


def _contiguous(events: list[dict]) -> None:
    chunks = [e for e in events if e["type"] == "chunk"]
    assert chunks, "no chunk events"
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert chunks[0]["start_s"] == 0.0
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt["start_s"] == pytest.approx(prev["end_s"], abs=1e-3)


async def test_queue_plays_in_order_with_chunk_metadata(server: ServerThread) -> None:
    client = await open_client(server.url)
    texts = {"q1": "First in line.", "q2": "Second in line.", "q3": "Third in line."}
    for rid, text in texts.items():
        await client.send(type="speak", id=rid, text=text)
    result = await client.collect(list(texts))
    started = [e["id"] for e in client.log if isinstance(e, dict) and e["type"] == "started"]
    done = [e["id"] for e in client.log if isinstance(e, dict) and e["type"] == "done"]
    assert started == ["q1", "q2", "q3"]
    assert done == ["q1", "q2", "q3"]
    for rid, utt in result.items():
        _contiguous(utt.events)
        chunks = [e for e in utt.events if e["type"] == "chunk"]
        assert [c["bytes"] for c in chunks] == [len(b) for b in utt.chunks]
        # Every word of the text, each in the chunk its speech starts in, in order.
        words = [w for c in chunks for w in c["words"]]
        assert [w for w, _ in words] == texts[rid].split()
        assert [t for _, t in words] == sorted(t for _, t in words)
        assert all(c["start_s"] <= t <= c["end_s"] for c in chunks for _, t in c["words"])
        final = utt.final
        assert final is not None and final["type"] == "done"
        assert final["audio_s"] == pytest.approx(len(utt.audio) / 2 / 24000, abs=1e-3)
        assert 0.3 < final["audio_s"] < 3.0
    # An item does not start before the previous one is done.
    kinds = [(e["type"], e.get("id")) for e in client.log if isinstance(e, dict)]
    assert kinds.index(("done", "q1")) < kinds.index(("started", "q2"))
    await client.ws.close()


async def test_append_streams_text_and_flush_completes(server: ServerThread) -> None:
    client = await open_client(server.url)
    await client.send(type="speak", id="s1", text="The first sentence arrives whole. ", final=False)
    first = await client.next_event("chunk")  # speech starts before the rest of the text
    assert first["id"] == "s1"
    for piece in ["And then", " the rest", " trickles in", " word by word."]:
        await client.send(type="append", text=piece)
    await client.send(type="flush")
    result = await client.collect(["s1"])
    audio_s = len(result["s1"].audio) / 2 / 24000
    final = result["s1"].final
    assert final is not None and final["type"] == "done", final
    # Both sentences were spoken: far longer than the first sentence alone (~2 s).
    assert final["audio_s"] == pytest.approx(audio_s, abs=0.01)
    assert final["audio_s"] > 3.0
    # An append with no open utterance opens one; flush ends it.
    await client.send(type="append", id="s2", text="Opened by an append.")
    await client.send(type="flush")
    result = await client.collect(["s2"])
    assert result["s2"].final["type"] == "done"
    assert len(result["s2"].audio) > 24000
    await client.ws.close()


async def test_cancel_mid_stream_drops_current_and_queued(server: ServerThread) -> None:
    client = await open_client(server.url)
    await client.send(type="speak", id="c1", text=LONG)
    await client.send(type="speak", id="c2", text="Queued behind the long one.")
    await client.next_event("chunk")
    await client.send(type="cancel")
    cancelled = await client.next_event("cancelled")
    assert cancelled["ids"] == ["c1", "c2"]
    # Nothing of the cancelled items comes after the cancelled event.
    await client.send(type="speak", id="c3", text="After the cancel.")
    result = await client.collect(["c3"])
    after = client.log[client.log.index(cancelled) + 1 :]
    ids = {e.get("id") for e in after if isinstance(e, dict)}
    assert ids <= {"c3"}, ids
    assert result["c3"].final["type"] == "done"
    assert not any(
        isinstance(e, dict) and e["type"] == "done" and e["id"] in ("c1", "c2") for e in client.log
    )
    await client.ws.close()


async def test_cancel_by_id_removes_only_that_queued_item(server: ServerThread) -> None:
    client = await open_client(server.url)
    await client.send(type="speak", id="k1", text="Keep this one.")
    await client.send(type="speak", id="k2", text="Drop this one.")
    await client.send(type="speak", id="k3", text="Keep this one too.")
    await client.send(type="cancel", id="k2")
    result = await client.collect(["k1", "k2", "k3"])
    assert result["k1"].final["type"] == "done"
    assert result["k3"].final["type"] == "done"
    assert result["k2"].final is None
    await client.send(type="cancel", id="nope")
    err = await client.next_event("error")
    assert err["reason"] == "unknown_id"
    await client.ws.close()


async def test_end_drains_queue_then_closes(server: ServerThread) -> None:
    client = await open_client(server.url)
    await client.send(type="speak", id="e1", text="Before the end.")
    await client.send(type="end")
    result = await client.collect(["e1"])
    assert result["e1"].final["type"] == "done"
    closing = await client.next_event("closing")
    assert closing["reason"] == "end"
    with pytest.raises(ConnectionClosed):
        await client.recv(timeout=5)
    assert client.ws.close_code == 1000


async def test_many_concurrent_clients_share_the_engine(server: ServerThread) -> None:
    async def one(n: int) -> list[str]:
        client = await open_client(server.url)
        ids = [f"m{n}-{k}" for k in range(2)]
        for k, rid in enumerate(ids):
            await client.send(type="speak", id=rid, text=f"Client {n} says sentence {k + 1}.")
        result = await client.collect(ids, timeout=60)
        await client.ws.close()
        for utt in result.values():
            assert utt.final["type"] == "done", utt.final
            assert len(utt.audio) > 12000
            _contiguous(utt.events)
        # A client only ever hears its own items.
        seen = {e.get("id") for e in client.log if isinstance(e, dict) and e.get("id")}
        return sorted(seen)

    results = await asyncio.gather(*(one(n) for n in range(8)))
    for n, seen in enumerate(results):
        assert seen == [f"m{n}-0", f"m{n}-1"]


async def test_malformed_messages_get_errors_and_the_connection_goes_on(
    server: ServerThread,
) -> None:
    client = await open_client(server.url)
    cases: list[tuple[str | bytes, str]] = [
        ("{not json", "invalid_json"),
        (b"\x00\x01binary", "binary_not_supported"),
        ("[1, 2, 3]", "invalid_message"),
        (json.dumps({"type": "shout", "text": "hi"}), "unknown_type"),
        (json.dumps({"type": "speak"}), "invalid_message"),
        (json.dumps({"type": "speak", "text": "   "}), "empty_text"),
        (json.dumps({"type": "speak", "text": "hi", "speed": 9}), "invalid_value"),
        (json.dumps({"type": "speak", "text": "hi", "speed": "fast"}), "invalid_message"),
        (json.dumps({"type": "speak", "text": "x" * 6000}), "text_too_long"),
        (json.dumps({"type": "speak", "text": "y" * 70000}), "message_too_large"),
        (json.dumps({"type": "speak", "id": {"a": 1}, "text": "hi"}), "invalid_message"),
    ]
    for frame, reason in cases:
        await client.ws.send(frame)
        err = await client.next_event("error")
        assert err["reason"] == reason, (frame[:40], err)
        assert err["message"]
    # Errors found by the engine arrive for the item, and the queue goes on.
    await client.send(type="speak", id="v1", text="Unknown voice.", voice="nobody")
    await client.send(type="speak", id="v2", text="Still serving.")
    result = await client.collect(["v1", "v2"])
    assert result["v1"].final["reason"] == "unknown_voice"
    assert result["v2"].final["type"] == "done"
    await client.ws.close()


async def test_utterance_limit_refuses_the_append_not_the_utterance(
    make_server,
) -> None:
    srv = make_server(max_message_chars=100, max_utterance_chars=150)
    client = await open_client(srv.url)
    await client.send(type="speak", id="u1", text="Short start.", final=False)
    await client.send(type="append", text=" More words here." * 5)  # 85 chars: fits
    await client.send(type="append", text=" Too much text." * 6)  # would pass 150
    err = await client.next_event("error")
    assert err["reason"] == "utterance_too_long" and err["id"] == "u1"
    await client.send(type="flush")
    result = await client.collect(["u1"])
    assert result["u1"].final["type"] == "done"
    await client.ws.close()


async def test_rate_limit_answers_error_and_keeps_serving(make_server) -> None:
    srv = make_server(rate_limit_per_s=0.5, rate_limit_burst=3)
    client = await open_client(srv.url)
    for _ in range(3):
        await client.send(type="flush")
    await client.send(type="speak", id="r1", text="Over the limit.")
    err = await client.next_event("error")
    assert err["reason"] == "rate_limited"
    await client.send(type="cancel")  # never rate limited: stopping must always work
    assert (await client.next_event())["type"] == "cancelled"
    await asyncio.sleep(2.1)  # one token back
    await client.send(type="speak", id="r2", text="Allowed again.")
    result = await client.collect(["r2"])
    assert result["r2"].final["type"] == "done"
    await client.ws.close()


async def _refused(url: str, **kwargs) -> tuple[dict, int | None]:
    from websockets.asyncio.client import connect

    ws = await connect(url, **kwargs)
    client = Client(ws)
    event = await client.next_event()
    with pytest.raises(ConnectionClosed):
        await client.recv(timeout=5)
    return event, ws.close_code


async def test_busy_when_synthesis_slots_are_full(make_server) -> None:
    srv = make_server(max_active_syntheses=1, cache_max_bytes=0)
    a = await open_client(srv.url)
    b = await open_client(srv.url)
    await a.send(type="speak", id="a1", text=LONG)
    await a.next_event("chunk")
    await b.send(type="speak", id="b1", text="Can I speak now?")
    result = await b.collect(["b1"])
    assert result["b1"].final["type"] == "error"
    assert result["b1"].final["reason"] == "busy"
    await a.send(type="cancel")
    await a.next_event("cancelled")
    await b.send(type="speak", id="b2", text="And now?")
    result = await b.collect(["b2"])
    assert result["b2"].final["type"] == "done"
    for c in (a, b):
        await c.ws.close()


async def test_busy_when_connections_are_full(make_server) -> None:
    srv = make_server(max_connections=1)
    first = await open_client(srv.url)
    event, code = await _refused(srv.url)
    assert event["type"] == "error" and event["reason"] == "busy"
    assert code == 1013
    await first.ws.close()
    await asyncio.sleep(0.2)
    again = await open_client(srv.url)  # the slot came back
    await again.ws.close()


async def test_token_is_required_when_configured(make_server) -> None:
    srv = make_server(token="s3cret")
    event, code = await _refused(srv.url)
    assert event["reason"] == "unauthorized" and code == 1008
    event, code = await _refused(srv.url, additional_headers={"Authorization": "Bearer wrong"})
    assert event["reason"] == "unauthorized"
    ok = await open_client(srv.url, additional_headers={"Authorization": "Bearer s3cret"})
    await ok.ws.close()
    ok = await open_client(srv.url + "?token=s3cret")
    await ok.ws.close()


async def test_origin_allow_list(make_server) -> None:
    srv = make_server(allowed_origins="https://app.example")
    event, code = await _refused(srv.url, origin="https://evil.example")
    assert event["reason"] == "forbidden_origin" and code == 1008
    ok = await open_client(srv.url, origin="https://app.example")
    await ok.ws.close()
    ok = await open_client(srv.url)  # no Origin: not a browser
    await ok.ws.close()
    ok = await open_client(srv.url, origin=f"http://127.0.0.1:{srv.port}")  # same host
    await ok.ws.close()


async def test_idle_open_utterance_is_flushed_and_may_start_empty(make_server) -> None:
    srv = make_server(open_idle_s=0.5)
    client = await open_client(srv.url)
    await client.send(type="speak", id="i1", text="", final=False)  # text comes later
    await client.send(type="append", text="Nobody flushes this sentence.")
    result = await client.collect(["i1"], timeout=10)  # no flush: done after 0.5 s idle
    assert result["i1"].final["type"] == "done" and len(result["i1"].audio) > 24000
    await client.send(type="speak", id="i2", text="Next in line.")
    result = await client.collect(["i2"])
    assert result["i2"].final["type"] == "done"
    await client.ws.close()


async def test_cancel_while_gathering_the_start_up_buffer(make_server) -> None:
    srv = make_server(prebuffer_ms=1500, prebuffer_wait_ms=5000)
    client = await open_client(srv.url)
    await client.send(type="speak", id="g1", text=LONG)
    await client.next_event("started")
    await client.send(type="cancel")
    cancelled = await client.next_event("cancelled")
    assert cancelled["ids"] == ["g1"]
    await client.send(type="speak", id="g2", text="Short one.")  # shorter than the buffer
    result = await client.collect(["g2"])
    assert result["g2"].final["type"] == "done" and len(result["g2"].audio) > 24000
    _contiguous(result["g2"].events)
    chunks_g1 = [e for e in client.log if isinstance(e, dict) and e.get("id") == "g1"]
    assert all(e["type"] != "chunk" for e in chunks_g1)  # cancelled before its first send
    await client.ws.close()
