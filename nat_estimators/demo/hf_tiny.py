r"""A tiny Qwen2-shaped causal LM and a character tokenizer, built in memory (no hub downloads).

For examples, documentation and tests of the trainer integrations: a Hugging Face
``PreTrainedTokenizerFast`` over single characters and a randomly initialised
``Qwen2ForCausalLM`` with a few thousand parameters.  Needs ``transformers`` and ``tokenizers``
(installed with the ``[trl]`` extra).
"""

from __future__ import annotations

from typing import Any

try:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
except ImportError as _e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "nat_estimators.demo.hf_tiny needs transformers and tokenizers: install the "
        "extra with pip install 'nat-estimators[trl]'"
    ) from _e

__all__ = ["CHARS", "char_tokenizer", "tiny_qwen2"]

#: The characters the tokenizer knows (besides ``<pad>`` = 0 and ``<eos>`` = 1).
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-=?."


def char_tokenizer(chars: str = CHARS) -> Any:
    """A fast tokenizer with one token per character, ``<pad>`` (id 0) and ``<eos>`` (id 1).

    Unknown characters map to ``<pad>``.

    Examples
    --------
    >>> from nat_estimators.demo.hf_tiny import char_tokenizer
    >>> tok = char_tokenizer()
    >>> tok("ab 1").input_ids, tok.decode([2, 3]), tok.pad_token_id, tok.eos_token_id
    ([2, 3, 38, 29], 'ab', 0, 1)
    """
    if len(set(chars)) != len(chars):
        raise ValueError("chars must not repeat a character")
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_qwen2(
    tokenizer: Any,
    *,
    hidden_size: int = 16,
    num_layers: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A randomly initialised ``Qwen2ForCausalLM`` sized for CPU tests (tied embeddings).

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerFast
        Its vocabulary size and pad / eos ids are used.
    hidden_size, num_layers : int
        Width (a multiple of 4) and depth.
    seed : int
        ``torch.manual_seed`` for the initialisation (the global generator is restored after).
    dtype : torch.dtype, default float32

    Examples
    --------
    >>> from nat_estimators.demo.hf_tiny import char_tokenizer, tiny_qwen2
    >>> model = tiny_qwen2(char_tokenizer())
    >>> model.config.model_type, model.config.vocab_size, sum(p.numel() for p in model.parameters())
    ('qwen2', 44, 3088)
    """
    if hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of 4, got {hidden_size}")
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model: Any = Qwen2ForCausalLM(cfg)
        model = model.to(dtype)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
