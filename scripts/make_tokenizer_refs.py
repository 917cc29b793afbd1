#!/usr/bin/env python3
"""Reference token ids from llama.cpp itself, for tests/tokenizer_gguf.rs.

Run by hand, never in CI:
    /work/venv-ref/bin/python scripts/make_tokenizer_refs.py [--smollm2 PATH]

Pinned: Python 3.12, llama-cpp-python 0.3.36 (built from source, it vendors llama.cpp; CMAKE_ARGS
"-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"), gguf 0.19.0, tokenizers 0.23.x,
sentencepiece 0.2.3.

Writes tests/fixtures/tokenizer/:
- tiny_bpe.gguf: a byte-level BPE vocabulary (600 tokens) trained here with `tokenizers` on a small
  hostile corpus, tag `smollm`, one user-defined token `<tool>` and one control token `<|im_start|>`.
  The tests swap the tag in memory; here each tag is written to a temporary copy for llama.cpp.
- tiny_spm.gguf / tiny_spm_nospace.gguf: a SentencePiece BPE vocabulary (400 pieces, byte fallback,
  user-defined `<tool>`, control `<start_of_turn>`), as convert_hf_to_gguf.py's
  `_create_vocab_sentencepiece` writes it; the second with add_space_prefix = false (Gemma's setting).
- reference_ids.json: for every vocabulary and tag, llama.cpp's ids for every test string, from
  `Llama(path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=False)`. With --smollm2
  the real SmolLM2 vocabulary (49152 tokens) is also run under every tag; the tests then read it from
  the cached GGUF. With --gemma3 (.ci/fetch-gemma3.sh's file) the real Gemma 3 vocabulary as well.
"""
import argparse
import json
import os
import sys
import tempfile

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer")

BPE_TAGS = ["llama-bpe", "smollm", "qwen2", "gpt-2", "default", "tekken"]

# Hostile strings: leading/trailing/multiple spaces, digit runs, contractions, newlines and tabs, CJK,
# emoji (with modifiers and joiners), accents (composed and decomposed), punctuation runs, the
# user-defined and control tokens typed as text.
STRINGS = [
    "Hello world",
    " Hello world",
    "Hello  world   ",
    "   ",
    " ",
    "\n",
    "1 12 123 1234 12345 3.14159 2026-11-30 007",
    "I'm, you're, he'll, they've, she'd, it's, DON'T, I'M, O'Neil's",
    "line one\nline two\n\n\tindented\r\nwindows\n\n\n",
    "日本語のテキスト、中文字符。한국어 text",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷!",
    "café naïve résumé Ångström Œuvre ﬁ cafe\u0301",
    "x=3*(y+2)^2; a_b-c/d \\ |pipe| ~tilde $100 #hash @at ... !!! ???",
    "CamelCaseWords and ALLCAPS and lowerUPPERlower and Ünïcödé",
    "tab\tsep  \t  mixed whitespace\u00a0nbsp\u3000ideographic",
    "<tool>call</tool> a<tool>b  <tool> ",
    "<|im_start|>user\nhi<|im_end|>",
    "<start_of_turn>model",
    "  leading two and trailing two  ",
    "ends with newline\n",
    "αβγ δεζ Привет мир שלום مرحبا",
    "(hello) [world] {x} don't DON'T Don'T 's 'S 'll",
    "a\n\nb\n \nc  \n  d\r\n\r\ne",
    "12345678901234567890 and 1,000,000.00",
    "word.Word,WORD;word:word!?",
    "é🦀",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<b>bold</b> <h1>head</h1>\t\t\t<br>",
    "<tool>  \n x <tool>\ty<tool>",
]

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world! I'm here, you're there, they've gone, "
    "he'll come, she'd say it's DON'T. Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 123 2024 3.14 1000000. "
    "Line one\nline two\n\tindented\n\n"
    "café naïve résumé Ångström Œuvre über straße. 日本語 中文 한국어 テキスト。 Привет мир. "
    "emoji 😀 👍 🇫🇷 family. CamelCase ALLCAPS lowerUPPER x=3*(y+2)^2; a_b-c/d |pipe| ~ $ # @ ... "
    "(hello) [world] {x} don't DON'T Don'T 's 'S 'll. a\n\nb\n \nc  \n  d\r\n\r\ne. "
    "12345678901234567890 and 1,000,000.00. word.Word,WORD;word:word!? "
) * 20


def write_vocab(path, model, tokens, types, *, pre=None, merges=None, scores=None,
                add_space_prefix=None, bos=None, name=None):
    """A vocabulary-only GGUF llama.cpp opens with vocab_only=True (arch llama, tiny hparams)."""
    w = gguf.GGUFWriter(path, "llama")
    if name is not None:
        w.add_name(name)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    if bos is not None:
        w.add_bos_token_id(bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def train_bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    tok = Tokenizer(models.BPE())
    # No split while training: merges then cross the boundaries some tags draw and others do not
    # ("(w", "'T", "\n\n", "123"), so the tags give different ids and the tests can tell them apart.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<tool>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split(". "), trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[tokens.index("<|endoftext|>")] = gguf.TokenType.CONTROL
    types[tokens.index("<|im_start|>")] = gguf.TokenType.CONTROL
    types[tokens.index("<tool>")] = gguf.TokenType.USER_DEFINED
    return tokens, merges, types


def train_spm(tmp):
    import sentencepiece as spm
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(CORPUS)
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=400, model_type="bpe", byte_fallback=True,
        user_defined_symbols=["<tool>"], control_symbols=["<start_of_turn>", "<|endoftext|>"],
        character_coverage=1.0, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        elif sp.IdToPiece(i) == "<tool>":
            t = gguf.TokenType.USER_DEFINED
        else:
            t = gguf.TokenType.NORMAL
        types.append(t)
    return tokens, scores, types


def llama_ids(path, strings):
    from llama_cpp import Llama
    m = Llama(model_path=path, vocab_only=True, verbose=False)
    out = [m.tokenize(s.encode("utf-8"), add_bos=False, special=False) for s in strings]
    del m
    return out


def read_vocab(path):
    r = gguf.GGUFReader(path)

    def field(name):
        f = r.fields.get(name)
        if f is None:
            return None
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p).decode("utf-8") for p in field("tokenizer.ggml.tokens")]
    merges = [bytes(p).decode("utf-8") for p in field("tokenizer.ggml.merges")]
    types = [int(p[0]) for p in field("tokenizer.ggml.token_type")]
    return tokens, merges, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", default=os.path.expanduser(
        "~/.cache/prefixscope/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--gemma3", default=os.path.expanduser(
        "~/.cache/prefixscope/gemma-3-270m-q4_k_m.gguf"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens, merges, types = train_bpe()
        write_vocab(os.path.join(OUT, "tiny_bpe.gguf"), "gpt2", tokens, types, pre="smollm",
                    merges=merges, bos=0)
        for tag in BPE_TAGS:
            p = os.path.join(tmp, f"bpe_{tag}.gguf")
            write_vocab(p, "gpt2", tokens, types, pre=tag, merges=merges, bos=0)
            cases.append({"vocab": "tiny_bpe.gguf", "pre": tag, "ids": llama_ids(p, STRINGS)})
            print("tiny_bpe", tag, "ok", file=sys.stderr)

        stoks, sscores, stypes = train_spm(tmp)
        # The third: named like a Phi-3 model, for which llama.cpp strips the spaces after special
        # tokens (user-defined ones included).
        for name, asp, model_name in [("tiny_spm.gguf", True, None),
                                      ("tiny_spm_nospace.gguf", False, None),
                                      ("tiny_spm_phi3.gguf", True, "Phi-3 tiny")]:
            p = os.path.join(OUT, name)
            write_vocab(p, "llama", stoks, stypes, scores=sscores, add_space_prefix=asp, bos=1,
                        name=model_name)
            cases.append({"vocab": name, "pre": None, "ids": llama_ids(p, STRINGS)})
            print(name, "ok", file=sys.stderr)

        if args.smollm2 and os.path.exists(args.smollm2):
            rt, rm, rty = read_vocab(args.smollm2)
            for tag in BPE_TAGS:
                p = os.path.join(tmp, f"smol_{tag}.gguf")
                write_vocab(p, "gpt2", rt, rty, pre=tag, merges=rm, bos=1)
                cases.append({"vocab": "smollm2", "pre": tag, "ids": llama_ids(p, STRINGS)})
                print("smollm2", tag, "ok", file=sys.stderr)

    if args.gemma3 and os.path.exists(args.gemma3):
        # The real Gemma 3 vocabulary (SentencePiece, no space prefix, 165 user-defined tokens).
        cases.append({"vocab": "gemma3", "pre": None, "ids": llama_ids(args.gemma3, STRINGS)})
        print("gemma3 ok", file=sys.stderr)

    import llama_cpp
    meta = {
        "made_by": "scripts/make_tokenizer_refs.py",
        "llama_cpp_python": llama_cpp.__version__,
        "call": "Llama(path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=False)",
        "strings": STRINGS,
        "cases": cases,
    }
    with open(os.path.join(OUT, "reference_ids.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=0)
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
