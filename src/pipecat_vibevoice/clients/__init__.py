"""Python clients of this project's two servers.

* :mod:`.voice_client` talks to the voice bot (``WS /ws``, Pipecat protobuf frames) as a
  person with a microphone and a speaker would; the bot tests and benchmarks use it.
* :mod:`.tts_client` talks to the TTS API (``WS /v1/tts/stream``) and writes or plays the
  audio: ``python -m pipecat_vibevoice.clients.tts_client "Hello." -o hello.wav``.
"""
