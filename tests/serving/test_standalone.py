"""The TTS-only server as the Piper-only Docker image runs it: no torch, no Pipecat."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    for name in ("torch", "transformers", "diffusers", "pipecat"):
        sys.modules[name] = None  # not installed in the 'cpu' image
    import asyncio, json, socket, threading, time, urllib.request
    import uvicorn
    from websockets.asyncio.client import connect
    from pipecat_vibevoice.engine import TTSConfig
    from pipecat_vibevoice.serving import ServingSettings
    from pipecat_vibevoice.serving.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(ServingSettings(store_url="none"), TTSConfig(engine="piper"))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())

    async def speak():
        async with connect(f"ws://127.0.0.1:{port}/v1/tts/stream") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "speak", "text": "No torch here."}))
            await ws.send(json.dumps({"type": "end"}))
            return sum([len(m) async for m in ws if isinstance(m, bytes)])

    audio = asyncio.run(speak())
    server.should_exit = True
    print(json.dumps({"status": health["status"], "audio": audio,
                      "torch": sys.modules.get("torch") is not None}))
    """
)


def test_tts_server_runs_without_torch_or_pipecat() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": "ok", "audio": result["audio"], "torch": False}
    assert result["audio"] > 24000
