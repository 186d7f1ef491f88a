"""A Hugging Face tokenizer rebuilt exactly from a GGUF's ``tokenizer.ggml.*`` keys.

transformers' own GGUF conversion of a byte-level BPE vocabulary (4.57) gets SmolLM2 wrong in
ways that reach every figure: it makes ``<|im_start|>`` the end-of-sequence token (the GGUF says
id 2, ``<|im_end|>``), prepends it to every encode, decodes through a SentencePiece-style chain and
calls the result a LlamaTokenizer. Here the pieces come from the file itself:

* vocabulary, merges and token types (3 = control -> special added token, 4 = user-defined);
* the pre-tokenizer named by ``tokenizer.ggml.pre``, from the regexes llama.cpp uses for that name
  (``PRE_TOKENIZERS``; an unknown name is refused, never guessed);
* bos / eos / unk / pad ids, ``add_bos_token`` (no post-processor unless the file asks for a BOS),
  the chat template, and a byte-level decoder.

The result is checked in the tests against llama.cpp's tokenization of the same file.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

# tokenizer.ggml.pre -> pre-tokenizer pieces. Source: llama.cpp src/llama-vocab.cpp (regex_exprs
# per LLAMA_VOCAB_PRE_TYPE_*). "smollm" / "starcoder" / "refact" split every digit first ("\p{N}"),
# then apply GPT-2's regex; "gpt-2" is GPT-2's regex alone.
PRE_TOKENIZERS = {
    "gpt-2": ("bytelevel",),
    "smollm": ("digits", "bytelevel"),
    "starcoder": ("digits", "bytelevel"),
    "refact": ("digits", "bytelevel"),
}


def gguf_fields(path: str | Path) -> dict:
    """Every key of a GGUF file's header, as Python values (tensors are not read)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # truncated or not a GGUF: the reader raises many types
        raise ModelLoadError(f"could not read GGUF {path}: {e}") from e
    out = {}
    for k, f in reader.fields.items():
        try:
            out[k] = f.contents()
        except Exception:  # a key type the reader cannot render; not needed here
            continue
    return out


def exact_tokenizer_supported(fields: dict) -> bool:
    model, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")
    return (model == "gpt2" and pre in PRE_TOKENIZERS) or (model == "llama" and pre in (None, "default"))


def spm_tokenizer_from_gguf(fields: dict):
    """SentencePiece-style BPE (``tokenizer.ggml.model`` "llama": Gemma, Llama 2): merges derived from
    the piece scores (a split a + b of a piece merges earlier the higher the piece's score, as
    SentencePiece's extractor orders them), byte fallback, spaces as U+2581. transformers' GGUF
    conversion of Gemma 3 (4.57) splits every word after a space into characters; this matches
    llama.cpp's tokenization of the file (tested)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast

    tokens = list(fields["tokenizer.ggml.tokens"])
    scores = list(fields.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    types = list(fields.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, t in enumerate(tokens):
        if types[i] != 1 or len(t) < 2:  # only normal pieces are merge results
            continue
        ranked += [(-scores[i], i, t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab]
    ranked.sort()
    tk = Tokenizer(BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked], unk_token=_token(fields, tokens, "unknown"),
                       fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if fields.get("tokenizer.ggml.add_space_prefix", False):
        steps.insert(0, normalizers.Prepend("\u2581"))
    tk.normalizer = normalizers.Sequence(steps)
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    cls = GemmaTokenizerFast if str(fields.get("general.architecture", "")).startswith("gemma") else LlamaTokenizerFast
    return _wrap(cls, tk, fields, tokens, processors)


def _token(fields: dict, tokens: list, key: str):
    i = fields.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None


def _wrap(cls, tk, fields: dict, tokens: list, processors, **extra):
    """The transformers class around a ``tokenizers`` object: special tokens, BOS rule, context, chat template."""
    bos = _token(fields, tokens, "bos")
    add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tokens.index(bos))])
    kwargs = {k: v for k, v in (("bos_token", bos), ("eos_token", _token(fields, tokens, "eos")),
                                ("unk_token", _token(fields, tokens, "unknown")), ("pad_token", _token(fields, tokens, "padding")))
              if v is not None}
    hf = cls(tokenizer_object=tk, add_bos_token=add_bos, clean_up_tokenization_spaces=False, **extra, **kwargs)
    ctx = fields.get(f"{fields.get('general.architecture', '')}.context_length")
    if ctx:
        hf.model_max_length = int(ctx)
    if fields.get("tokenizer.chat_template"):
        hf.chat_template = fields["tokenizer.chat_template"]
    return hf


def tokenizer_from_gguf(fields: dict):
    """The transformers tokenizer equal to llama.cpp's tokenizer of the file: byte-level BPE
    (``GPT2TokenizerFast``) or SentencePiece-style BPE (``spm_tokenizer_from_gguf``)."""
    if fields.get("tokenizer.ggml.model") == "llama" and fields.get("tokenizer.ggml.pre") in (None, "default"):
        return spm_tokenizer_from_gguf(fields)
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import GPT2TokenizerFast

    model, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")
    if model != "gpt2":
        raise ModelLoadError(f"exact GGUF tokenizer: expected tokenizer.ggml.model 'gpt2' (byte-level BPE), got {model!r}")
    if pre not in PRE_TOKENIZERS:
        raise ModelLoadError(f"exact GGUF tokenizer: pre-tokenizer {pre!r} is not in the table; known: {', '.join(PRE_TOKENIZERS)}")
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges", [])]
    if len(types) != len(tokens):
        raise ModelLoadError(f"GGUF tokenizer: expected one token type per token ({len(tokens)}), got {len(types)}")
    tk = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False))
    parts = {"digits": pre_tokenizers.Digits(individual_digits=True),
             "bytelevel": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)}
    tk.pre_tokenizer = pre_tokenizers.Sequence([parts[p] for p in PRE_TOKENIZERS[pre]])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    return _wrap(GPT2TokenizerFast, tk, fields, tokens, processors, add_prefix_space=False)
