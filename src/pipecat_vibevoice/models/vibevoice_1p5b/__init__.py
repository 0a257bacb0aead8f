"""Streaming glue over transformers' own VibeVoice-1.5B (``VibeVoiceForConditionalGeneration``).

transformers 5.24 ships the model, its processor and its acoustic and semantic
tokenizers; its ``generate`` returns the audio of a whole utterance at once. This package
drives the same submodules one model step at a time, so audio leaves after each latent
(133 ms at 24 kHz) and a stop request is honoured before the next one. No modeling code
is copied: every layer is transformers'.

Files, in import order:

* ``checkpoint.py`` — the directory check and loading model and processor (torch only
  inside ``load``).
* ``voice.py`` — a reference clip → :class:`VoicePrompt` (the acoustic encoder's latents,
  nothing of the audio), and its prompt embeddings per utterance.
* ``prompt.py`` — the prompt of one utterance: ids from the processor's chat template,
  embeddings with the voice's features where the processor puts its audio tokens.
* ``streaming.py`` — :func:`stream_speech`, the per-latent loop (LM step, the CFG
  negative branch, diffusion, streaming acoustic decoder, semantic feedback).

Nothing here imports the engine; ``engine/backends/vibevoice_1p5b.py`` adapts it.
"""
