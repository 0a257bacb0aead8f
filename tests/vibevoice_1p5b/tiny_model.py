"""A tiny random VibeVoice-1.5B in the transformers format, built from its config classes.

Nothing is downloaded: the language model is a two-layer Qwen2 of width 32, the acoustic
and semantic tokenizers keep the real 3200-sample hop (so a latent is 133 ms at 24 kHz)
with 2-4 filters per stage, and the tokenizer is a byte-level BPE without merges built
with ``tokenizers``. The processor is saved with its own files so that
``VibeVoiceProcessor.from_pretrained`` reads the directory like a real checkpoint.

The four token ids the speech loop may choose are the first ids of the vocabulary, with
the audio placeholder first. :func:`make_speech_only` zeroes the LM head so every logit
ties and the argmax picks that first id: the model then speaks until a latent cap, which
is what streaming tests need from a random model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    VibeVoiceAcousticTokenizerConfig,
    VibeVoiceAcousticTokenizerEncoderConfig,
    VibeVoiceAcousticTokenizerFeatureExtractor,
    VibeVoiceConfig,
    VibeVoiceDiffusionHeadConfig,
    VibeVoiceForConditionalGeneration,
    VibeVoiceProcessor,
)

AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS, EOS = (
    "<|vision_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|endoftext|>",
)
SPECIALS = (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS, EOS)
HOP = 3200
SAMPLE_RATE = 24000

#: The layout of the released processor's prompt (system line, voice section, text
#: section, speech opening), written here as a Jinja template for the tiny checkpoint.
CHAT_TEMPLATE = (
    "{{- ' Transform the text provided by various speakers into speech output, utilizing the "
    "distinct voice of each respective speaker.\\n' -}}"
    "{%- set voiced = namespace(roles=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] | selectattr('type', 'equalto', 'audio') | list | length > 0 "
    "and message['role'] not in voiced.roles -%}"
    "{%- set voiced.roles = voiced.roles + [message['role']] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if voiced.roles -%}"
    "{{- ' Voice input:\\n' -}}"
    "{%- for role in voiced.roles -%}"
    "{{- ' Speaker ' ~ role ~ ':<|vision_start|><|vision_pad|><|vision_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' Text input:\\n' -}}"
    "{%- for message in messages -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- ' Speaker ' ~ message['role'] ~ ': ' ~ item['text'] ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{{- ' Speech output:\\n<|vision_start|>' -}}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, no merges: every byte is a token, the four specials come first."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS, unk_token=None
    )


def tiny_config(vocab_size: int) -> VibeVoiceConfig:
    acoustic = dict(
        hidden_size=8,
        num_filters=2,
        downsampling_ratios=[2, 2, 4, 5, 5, 8],
        depths=[1, 1, 1, 1, 1, 1, 1],
        kernel_size=7,
    )
    return VibeVoiceConfig(
        text_config=Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        ),
        audio_config=VibeVoiceAcousticTokenizerConfig(**acoustic),
        semantic_model_config=VibeVoiceAcousticTokenizerEncoderConfig(
            **{**acoustic, "hidden_size": 6}
        ),
        diffusion_head_config=VibeVoiceDiffusionHeadConfig(
            num_hidden_layers=2, intermediate_size=64, frequency_embedding_size=16
        ),
        audio_token_id=SPECIALS.index(AUDIO_TOKEN),
        audio_bos_token_id=SPECIALS.index(AUDIO_BOS),
        audio_eos_token_id=SPECIALS.index(AUDIO_EOS),
        eos_token_id=SPECIALS.index(EOS),
        pad_token_id=SPECIALS.index(EOS),
    )


def wake_up(model: VibeVoiceForConditionalGeneration, rms: float = 0.1) -> None:
    """Give the random model a voice: unit-gain weights, audio at about ``rms``.

    transformers initialises small (std 0.01-0.02, layer scales 1e-6), which through a
    dozen layers leaves audio near 1e-6 that hardly depends on the prompt, so nothing
    could tell a wrong voice from a right one. Variance-keeping weights make every input
    matter; the decoder's last layer is then scaled so the audio is at ``rms``.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv1d | torch.nn.ConvTranspose1d):
                fan_in = (
                    module.weight[0].numel()
                    if isinstance(module, torch.nn.Linear | torch.nn.Conv1d)
                    else module.weight.shape[0] * module.weight.shape[2] // max(1, module.stride[0])
                )
                module.weight.normal_(0.0, fan_in**-0.5)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)
        head = model.model.audio_tower.decoder.head.conv
        latent = torch.randn(1, 4, model.config.audio_config.hidden_size)
        audio = model.model.audio_tower.decode(latent).audio
        head.weight.mul_(rms / float(audio.std()))
        if head.bias is not None:
            head.bias.zero_()


def make_speech_only(model: VibeVoiceForConditionalGeneration) -> None:
    """Zero the LM head: all logits tie, so the argmax always picks the audio placeholder."""
    with torch.no_grad():
        model.lm_head.weight.zero_()


def build_tiny_checkpoint(path: Path, seed: int = 0, speech_only: bool = True) -> Path:
    """Save a tiny random model and its processor to ``path`` (a transformers directory)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    model = VibeVoiceForConditionalGeneration(config).eval()
    wake_up(model)
    if speech_only:
        make_speech_only(model)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    model.save_pretrained(path)
    processor = VibeVoiceProcessor(
        feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(
            sampling_rate=SAMPLE_RATE, pad_to_multiple_of=HOP
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path
