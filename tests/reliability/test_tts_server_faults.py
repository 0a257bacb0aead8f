"""Faults through the real TTS server (``WS /v1/tts/stream``): the promises end to end.

* a client that hangs up mid-utterance stops the model within one unit of work, and the
  server is left with the asyncio tasks and threads it had before;
* an engine that raises mid-stream gives that client an ``error`` event and the next
  utterance on the same connection works;
* a store whose disk fails: audio still flows and the failure is logged once.

The engine is the real one over the real Piper voice, wrapped (``FaultyPiper``) to count
its work and to raise on demand; server and clients are real and talk over loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from reliability.conftest import start_tts_server
from reliability.harness import (
    LONG_TEXT,
    captured_logs,
    counted_threads,
    start_all_workers,
    thread_names,
    wait_until,
)
from serving.tts_harness import open_client


def _get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _speak_ok(url: str, rid: str, text: str) -> int:
    """Speak once on a fresh connection; returns the audio bytes (asserts ``done``)."""
    client = await open_client(url)
    await client.send(type="speak", id=rid, text=text)
    result = await client.collect([rid], timeout=60)
    await client.ws.close()
    final = result[rid].final
    assert final is not None and final["type"] == "done", final
    return len(result[rid].audio)


async def _hang_up(url: str, how: str) -> float:
    """Ask for a long utterance, hang up after its first chunk; returns when."""
    client = await open_client(url)
    await client.send(type="speak", id="gone", text=LONG_TEXT)
    await client.next_event("chunk")
    hung_up = time.monotonic()
    if how == "close":
        await client.ws.close()  # a polite close frame
    else:
        client.ws.transport.abort()  # the TCP connection just vanishes
    return hung_up


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_hang_up_mid_utterance_stops_generation_and_leaves_nothing(tts_server, how) -> None:
    server, engine, backend = tts_server
    # Warm-up, unmeasured: the engine's worker pool (bounded: one per core, at most 4)
    # starts its threads on first use, including the one that closes a stream.
    await _speak_ok(server.url, "warm", "Warm the worker pool first.")
    await _hang_up(server.url, how)
    assert await wait_until(lambda: backend.open_streams == 0, timeout=15)
    server.call(start_all_workers(engine))
    await asyncio.sleep(0.5)
    tasks_before = await asyncio.to_thread(server.tasks)
    threads_before = counted_threads()
    names_before = thread_names()
    requests_before = len(backend.requests)

    hung_up = await _hang_up(server.url, how)

    assert await wait_until(lambda: backend.open_streams == 0, timeout=15), "stream left open"
    tasks_after = await server.wait_tasks(len(tasks_before))
    await asyncio.sleep(0.5)  # anything still running would ask for more work now
    started_after = backend.requests_after(hung_up)
    total = len(backend.requests) - requests_before
    # "Within one chunk": at most the one unit of work already asked for when the
    # server noticed; and far from the ~30 units the whole text needs.
    assert started_after <= 1, f"{started_after} pieces of model work after the hang-up"
    assert total < 12, f"{total} pieces for an abandoned utterance"
    assert tasks_after == tasks_before, f"leftover tasks: {tasks_after} vs {tasks_before}"
    assert await wait_until(lambda: counted_threads() <= threads_before, timeout=5), (
        f"threads before {names_before}, after {thread_names()}"
    )
    health = await engine.health_check()
    assert health["active_streams"] == 0
    # The server is fine: the next client is served in full.
    assert await _speak_ok(server.url, "next", "Still here after the hang-up.") > 24000


async def test_engine_error_mid_stream_reaches_the_client_and_the_next_utterance_works(
    tts_server,
) -> None:
    server, engine, backend = tts_server
    failures_before = (await engine.health_check())["failures"]
    client = await open_client(server.url)
    backend.fail_after = 2  # the next stream dies after two pieces of audio
    await client.send(type="speak", id="boom", text=LONG_TEXT)
    await client.send(type="speak", id="after", text="The next utterance works.")
    result = await client.collect(["boom", "after"], timeout=60)
    boom, after = result["boom"], result["after"]
    assert boom.final is not None and boom.final["type"] == "error", boom.final
    assert boom.final["reason"] == "engine_error"
    assert "injected inference failure" in boom.final["message"]
    assert boom.chunks, "the failure should come mid-stream, after some audio"
    assert after.final is not None and after.final["type"] == "done", after.final
    assert len(after.audio) > 24000
    # The same connection still takes work.
    await client.send(type="speak", id="again", text="And the connection stays open.")
    again = await client.collect(["again"], timeout=60)
    assert again["again"].final["type"] == "done"
    await client.ws.close()
    health = await engine.health_check()
    assert health["failures"] == failures_before + 1 and health["status"] == "ok"
    status, body = _get_json(server.http + "/health")
    assert status == 200 and body["status"] == "ok"
    assert await server.serving_state.store.flush()
    store = server.serving_state.store.health()
    assert store["status"] == "ok" and store["failed"] == 0


async def _store_fault_run(server, n: int) -> list[dict]:
    """Speak ``n`` utterances, let the store writer try them, return ERROR log records."""
    with captured_logs("ERROR") as records:
        for k in range(n):
            assert await _speak_ok(server.url, f"d{k}", f"Row number {k} cannot be stored.") > 0
            await server.serving_state.store.flush()
    return [r for r in records if "synthesis store" in r["message"]]


async def test_store_directory_that_is_a_file_audio_flows_and_logged_once(tmp_path: Path) -> None:
    """ENOTDIR from the OS: the store's directory path is a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store wants a directory")
    server, engine, _ = start_tts_server(tmp_path, store_url=str(blocker / "tts.sqlite3"))
    try:
        errors = await _store_fault_run(server, 4)
        assert len(errors) == 1, errors
        store = server.serving_state.store.health()
        assert store["status"] == "failing" and store["failed"] == 4 and store["written"] == 0
        status, body = _get_json(server.http + "/health")
        assert status == 200 and body["status"] == "degraded"
    finally:
        server.stop()
        await engine.cleanup()


def _make_read_only(directory: Path) -> str:
    """Make ``directory`` unwritable for this process; returns how (or skips).

    A non-root user gets ``chmod 555``. Root ignores modes, so for root the directory
    is made immutable with ``chattr +i`` (the kernel then refuses every write, root's
    included); where the file system does not support that, the test is skipped.
    """
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return "chmod"
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a read-only directory")
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i unsupported here: {done.stderr.strip()}")
    return "chattr"


def _undo_read_only(directory: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(directory)], check=False)
    else:
        directory.chmod(0o755)


async def test_store_in_a_read_only_directory_audio_flows_and_logged_once(tmp_path: Path) -> None:
    """The store's directory exists but cannot be written (EACCES/EPERM from the OS)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    how = _make_read_only(directory)
    try:
        with pytest.raises(OSError):
            (directory / "probe").write_text("must fail")
        server, engine, _ = start_tts_server(tmp_path, store_url=str(directory / "tts.sqlite3"))
        try:
            errors = await _store_fault_run(server, 3)
            assert len(errors) == 1, errors
            store = server.serving_state.store.health()
            assert store["status"] == "failing" and store["written"] == 0
            assert store["failed"] == 3
        finally:
            server.stop()
            await engine.cleanup()
    finally:
        _undo_read_only(directory, how)


def _limit_file_size(limit: int):
    """``preexec_fn``: files this process writes may not grow past ``limit`` bytes.

    ``RLIMIT_FSIZE`` is how an unprivileged process gets a full disk: writes past the
    limit fail with ``EFBIG`` (SIGXFSZ, which would kill the process, is ignored — the
    disposition survives ``exec``). Pipes are not files, so the server's log is not cut.
    """
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
async def test_store_on_a_full_disk_audio_flows_and_logged_once(tmp_path: Path) -> None:
    """A real server process whose file writes stop at 48 KiB: the store fills up."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "tts.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipecat_vibevoice.serving", "--port", str(port),
        "--engine", "piper", "--log-level", "WARNING", "--tts-store-url", str(db),
        "--tts-cache-max-bytes", "0", "--tts-rate-limit-per-s", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_limit_file_size(48 * 1024),
    )  # fmt: skip
    http = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, body = await asyncio.to_thread(_get_json, http + "/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert proc.returncode is None and time.monotonic() < deadline, "server did not start"
            await asyncio.sleep(0.3)
        url = f"ws://127.0.0.1:{port}/v1/tts/stream"
        for k in range(30):  # ~1-2 KiB of WAL per row: the limit is reached on the way
            text = f"Row {k} goes to a disk that fills up, with some words to say."
            assert await _speak_ok(url, f"f{k}", text) > 0
            _, body = await asyncio.to_thread(_get_json, http + "/health")
            if body["serving"]["store"]["failed"] >= 5:
                break
        store = body["serving"]["store"]
        assert store["failed"] >= 5, store  # the disk really filled up
        # A nearly full disk may take a row now and then: health follows the last write.
        if store["last_error"] is not None:
            assert store["status"] == "failing" and body["status"] == "degraded"
            assert "full" in store["last_error"] or "I/O" in store["last_error"], store
    finally:
        proc.terminate()
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    log = output.decode(errors="replace")
    assert log.count("synthesis store") == 1, log[-3000:]
    assert db.stat().st_size <= 48 * 1024
