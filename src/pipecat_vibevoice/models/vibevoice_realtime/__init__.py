"""Our own VibeVoice-Realtime-0.5B: checkpoint-compatible, streaming, on transformers 5.x.

Files, each with one job (in import order: a module imports only those above it):

* ``configuration_vibevoice_realtime.py`` — the official ``config.json`` and the configs
  of the transformers blocks derived from it.
* ``modeling_vibevoice_realtime.py`` — the modules (two Qwen2 halves, connector,
  diffusion head, σ-VAE decoder, EOS head) and their single steps; stateless.
* ``checkpoint.py`` — official tensor names → ours, finding the weights (directory or
  HF cache), ``load_model`` / ``from_pretrained``; imports torch only when loading.
* ``presets.py`` — official voice presets (``*.pt``) read without running pickled code.
* ``settings.py`` — ``GenerationSettings``, the knobs of one utterance.
* ``token_sources.py`` — text windows: ``FixedTokens`` and ``TextTokenStream`` (growing
  text giving exactly the whole text's tokens).
* ``noise.py`` — the sampler's Gaussian draws: ``TorchNoise``, ``RecordedNoise``.
* ``sampling.py`` — one latent by DPM-Solver++ with classifier-free guidance.
* ``utterance.py`` — ``Utterance``: one utterance's caches, model steps and the loop
  rules as a state machine (``next_step`` / ``spoken`` / ``heard``), shared by both
  drivers below.
* ``generation.py`` — ``generate()``, the single-utterance driver (a generator), and
  the front door the engine imports the generation names from.
* ``batching.py`` — model steps for many utterances at once (ragged LM step, batched
  sampling and listen).
* ``batcher.py`` — ``VibeVoiceBatcher``, the many-utterance driver: one worker thread,
  continuous batching.

Nothing here imports the engine: its adapter (``engine/backends/vibevoice.py``) imports
``checkpoint`` at start-up (torch-free until a model is loaded) and the rest lazily, so a
machine without torch, transformers or diffusers still gets a clear
``BackendUnavailable`` from the engine.
"""
