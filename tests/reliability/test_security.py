"""Security checks through the engine API and the websocket APIs.

* Voice names never reach the file system: VibeVoice voices are the ``*.pt`` files
  found in the voices directory, and a requested name is only matched against that
  list. ``../``-style names, absolute paths, encoded or NUL-carrying names are refused
  — through ``TTSEngine`` and through ``WS /v1/tts/stream`` — even where the path
  would lead to a valid preset outside the directory.
* A preset in the voices directory that executes code when unpickled is refused when
  selected (engine and websocket), its payload never runs, and the server goes on.
  (The unpickler itself is tested in ``tests/vibevoice/test_presets.py``.)
* ``WS /ws`` refuses a foreign browser origin by default, takes the allowed ones. The TTS
  socket's origin and token checks are in ``tests/serving/test_protocol.py``
  (``test_origin_allow_list``, ``test_token_is_required_when_configured``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from reliability.conftest import start_tts_server
from serving.tts_harness import open_client

from pipecat_vibevoice.engine import TTSConfig, TTSEngine, UnknownVoiceError
from pipecat_vibevoice.web_access import AccessPolicy

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vibevoice.conftest import FIXTURE, build_tiny_tokenizer, link_model_dir  # noqa: E402

GOOD_VOICE = "en-Carter_man"
EVIL_VOICE = "zz-evil"


def traversal_names(outside: Path) -> list[str]:
    """Names that would reach files outside the voices directory if used as paths."""
    return [
        "../../etc/passwd",
        "/etc/passwd",
        "../outside/outside",
        "../outside/outside.pt",
        str(outside / "outside.pt"),
        str(outside / "outside"),
        f"{GOOD_VOICE}/../../outside/outside",
        "..%2F..%2Fetc%2Fpasswd",
        f"{GOOD_VOICE}\x00../../etc/passwd",
        "~/outside",
        "..",
        ".",
    ]


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a hostile preset does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model dir, a voices dir (one good, one hostile preset) and a valid preset outside."""
    root = tmp_path_factory.mktemp("security")
    tokenizer = build_tiny_tokenizer(root)
    model = link_model_dir(root / "model", tokenizer, with_preset=False)
    voices_dir = root / "voices"
    voices_dir.mkdir()
    (voices_dir / f"{GOOD_VOICE}.pt").symlink_to(FIXTURE / "voice_preset.pt")
    marker = root / "pwned"
    torch.save({"lm": _RunsCode(marker)}, str(voices_dir / f"{EVIL_VOICE}.pt"))
    outside = root / "outside"
    outside.mkdir()
    (outside / "outside.pt").symlink_to(FIXTURE / "voice_preset.pt")
    return {"model": model, "voices": voices_dir, "outside": outside, "marker": marker}


@pytest.fixture(scope="module")
def vv_engine(voices: dict[str, Path]) -> Iterator[TTSEngine]:
    """The VibeVoice engine on the tiny model with that voices dir (one torch thread)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    config = TTSConfig(
        engine="vibevoice",
        model_path=str(voices["model"]),
        voices_dir=str(voices["voices"]),
        device="cpu",
    )
    engine = TTSEngine(config)
    asyncio.run(engine.initialize())
    yield engine
    asyncio.run(engine.cleanup())
    torch.set_num_threads(previous)


async def test_engine_refuses_voice_names_that_are_paths(vv_engine, voices) -> None:
    assert await vv_engine.get_available_speakers() == [GOOD_VOICE, EVIL_VOICE]
    for name in traversal_names(voices["outside"]):
        with pytest.raises(UnknownVoiceError):
            vv_engine.resolve_voice(name)
        with pytest.raises(UnknownVoiceError):
            async for _ in vv_engine.synthesize_streaming("Hello there.", name):
                pass
        # The backend does not take paths either, even when called directly.
        with pytest.raises(ValueError, match="unknown VibeVoice voice"):
            vv_engine.backend._preset(name)
    # The good voice still works (the tiny model may stop early: any even-length PCM).
    failures = (await vv_engine.health_check())["failures"]
    chunks = [c async for c in vv_engine.synthesize_streaming("Hello there.", GOOD_VOICE)]
    assert all(len(c) % 2 == 0 for c in chunks)
    assert (await vv_engine.health_check())["failures"] == failures


async def test_engine_refuses_a_preset_that_runs_code(vv_engine, voices) -> None:
    from pipecat_vibevoice.models.vibevoice_realtime.presets import PresetError

    with pytest.raises(PresetError, match="not allowed"):
        async for _ in vv_engine.synthesize_streaming("Hello there.", EVIL_VOICE):
            pass
    assert not voices["marker"].exists(), "the hostile preset ran code"
    health = await vv_engine.health_check()
    assert health["status"] == "ok" and health["active_streams"] == 0


async def test_websocket_refuses_path_voices_and_hostile_presets(vv_engine, voices, tmp_path):
    server, _, _ = start_tts_server(tmp_path, engine=vv_engine, cache_max_bytes=0)
    try:
        client = await open_client(server.url)
        names = traversal_names(voices["outside"])
        for k, name in enumerate(names):
            await client.send(type="speak", id=f"t{k}", text="Hello there.", voice=name)
        await client.send(type="speak", id="evil", text="Hello there.", voice=EVIL_VOICE)
        await client.send(type="speak", id="good", text="Hello there.", voice=GOOD_VOICE)
        ids = [f"t{k}" for k in range(len(names))]
        result = await client.collect([*ids, "evil", "good"], timeout=120)
        for rid in ids:
            final = result[rid].final
            assert final["type"] == "error" and final["reason"] == "unknown_voice", final
            assert not result[rid].audio
        evil = result["evil"].final
        assert evil["type"] == "error" and "not allowed" in evil["message"], evil
        assert not voices["marker"].exists(), "the hostile preset ran code"
        assert result["good"].final["type"] == "done", result["good"].final
        await client.ws.close()
    finally:
        server.stop()


async def test_piper_websocket_refuses_path_voices(tts_server, tmp_path) -> None:
    server, _engine, _backend = tts_server
    client = await open_client(server.url)
    names = traversal_names(tmp_path)
    for k, name in enumerate(names):
        await client.send(type="speak", id=f"p{k}", text="Hello.", voice=name)
    result = await client.collect([f"p{k}" for k in range(len(names))], timeout=60)
    for utt in result.values():
        assert utt.final["type"] == "error" and utt.final["reason"] == "unknown_voice"
    await client.ws.close()


@pytest.mark.slow
async def test_ws_refuses_a_foreign_browser_origin_by_default(bot_server, monkeypatch) -> None:
    """With no configuration at all, only this server's own pages (and non-browsers) get in."""
    server, _engine, _backend = bot_server
    sessions = server.app.state.sessions
    url = f"ws://127.0.0.1:{server.port}/ws"
    total_before = sessions.total
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    assert sessions.total == total_before, "a foreign page got a session"
    for origin in (f"http://127.0.0.1:{server.port}", None):  # own page; not a browser
        async with websockets.connect(url, origin=origin) as ws:
            await asyncio.sleep(0.5)
            assert sessions.live, f"origin {origin!r} was not served"
            await ws.ping()  # still open
    # --allowed-origins (here the policy it builds) lets another page in.
    # (setitem: pytest's setattr cannot restore a Starlette State attribute)
    monkeypatch.setitem(
        server.app.state._state,
        "access",
        AccessPolicy.from_settings("https://app.example", environ={}),
    )
    async with websockets.connect(url, origin="https://app.example") as ws:
        await asyncio.sleep(0.5)
        assert sessions.total == total_before + 3
        await ws.ping()


@pytest.mark.slow
async def test_ws_requires_the_bearer_token_when_one_is_set(bot_server, monkeypatch) -> None:
    """The server's token guards the voice socket as well as the TTS socket."""
    server, _engine, _backend = bot_server
    monkeypatch.setitem(server.app.state._state, "access", AccessPolicy(token="s3cret"))
    sessions = server.app.state.sessions
    total_before = sessions.total
    url = f"ws://127.0.0.1:{server.port}/ws"
    for attempt in (url, url + "?token=wrong"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(attempt):
                pass
        assert refused.value.response.status_code == 403
    assert sessions.total == total_before, "a refused client got a session"
    async with websockets.connect(url + "?token=s3cret") as ws:
        await asyncio.sleep(0.5)
        assert sessions.total == total_before + 1
        await ws.ping()
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer s3cret"}):
        await asyncio.sleep(0.3)
        assert sessions.total == total_before + 2
