"""Fixtures: a tiny random Llama (2 layers, hidden 64, GQA 4 query / 2 KV heads) and a
character-level tokenizer built in memory: no download, builds in milliseconds."""

from __future__ import annotations

import pytest
import torch


SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


MERGES = [("Ġ", "t"), ("t", "h"), ("h", "e"), ("i", "n"), ("Ġ", "a")]
VOCAB_SIZE = len(SPECIALS) + 256 + len(MERGES)


def make_tokenizer():
    """Byte-level BPE (GPT-2 style, as SmolLM2 uses) with the 256 byte tokens and a few merges."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + _byte_alphabet() + [a + b for a, b in MERGES])}
    tk = Tokenizer(BPE(vocab=vocab, merges=MERGES, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": []})
    return tok


def make_tiny_llama(seed: int = 0, attn: str = "sdpa", **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3,
               tie_word_embeddings=False, rms_norm_eps=1e-5)
    cfg.update(overrides)
    config = LlamaConfig(**cfg)
    config._attn_implementation = attn
    model = LlamaForCausalLM(config).eval()
    # random init is tiny (std 0.02); scale up so heads have distinguishable effects
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model():
    return make_tiny_llama()


@pytest.fixture
def tiny_dir(tmp_path, tiny_model, tokenizer):
    d = tmp_path / "tiny"
    tiny_model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache directory, except where a test opts into the real one."""
    monkeypatch.setenv("CAP_EDGE_CACHE", str(tmp_path / "cache"))
