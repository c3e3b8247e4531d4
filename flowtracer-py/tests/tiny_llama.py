"""A tiny randomly initialised Llama and a character tokenizer, built in code (no download).

The attention is made peaked, not uniform: the query and key projections are scaled up, so
each row of ``Ā`` has a few heavy keys as a trained model's does. Shared by the TRL, Q/K and
docs tests.
"""

from __future__ import annotations

import copy

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHARS = "0123456789+-*=()<>/?.,:; abcdefghijklmnopqrstuvwxyz"
PAD, EOS = "[PAD]", "[EOS]"
#: How much q_proj and k_proj are scaled up: logits ~ QK_GAIN² times larger than at init.
QK_GAIN = 6.0


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (offsets exact), plus ``[PAD]`` (0) and ``[EOS]`` (1)."""
    vocab = {PAD: 0, EOS: 1, "[UNK]": 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token="[UNK]")
    fast.padding_side = "left"
    return fast


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    layers: int = 6,
    heads: int = 4,
    kv_heads: int = 2,
    hidden: int = 32,
    attn: str = "sdpa",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A random Llama (GQA when ``kv_heads < heads``) with peaked attention."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(QK_GAIN)
            layer.self_attn.k_proj.weight.mul_(QK_GAIN)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def copy_with_attention(model: LlamaForCausalLM, attn: str) -> LlamaForCausalLM:
    """The same weights under another attention implementation."""
    other = LlamaForCausalLM._from_config(copy.deepcopy(model.config), attn_implementation=attn, dtype=model.dtype)
    other.load_state_dict(model.state_dict())
    other.eval()
    return other
