//! GGUF tokenizers against llama.cpp's own ids (tests/fixtures/tokenizer/reference_ids.json, made by
//! scripts/make_tokenizer_refs.py with llama-cpp-python 0.3.36): every BPE pre-tokenizer tag of the
//! families we load, on a trained tiny vocabulary and on SmolLM2's real one, and SentencePiece with and
//! without the space prefix, on hostile strings (space runs, digit runs, contractions, newlines, CJK,
//! emoji, accents, user-defined and control tokens typed as text).

mod common;

use candle_core::quantized::gguf_file::{Content, Value};
use prefixscope::tokenizer::gguf::GgufTokenizer;
use prefixscope::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
struct Refs {
    strings: Vec<String>,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    vocab: String,
    pre: Option<String>,
    ids: Vec<Vec<u32>>,
}

fn fixtures() -> PathBuf {
    common::repo_path("tests/fixtures/tokenizer")
}

fn refs() -> Refs {
    let text = std::fs::read_to_string(fixtures().join("reference_ids.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn content(path: &Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap();
    Content::read(&mut f).unwrap()
}

fn with_pre(mut c: Content, pre: Option<&str>) -> Content {
    if let Some(p) = pre {
        c.metadata
            .insert("tokenizer.ggml.pre".into(), Value::String(p.into()));
    }
    c
}

fn vocab_path(name: &str) -> PathBuf {
    match name {
        "smollm2" => common::smollm2(),
        "gemma3" => common::gemma3(),
        _ => fixtures().join(name),
    }
}

/// Every case of `refs` whose vocabulary `pick` accepts: (case, string index, ours, llama.cpp's) for
/// each string that differs.
fn mismatches(pick: impl Fn(&str) -> bool) -> (usize, Vec<String>) {
    let refs = refs();
    let mut checked = 0;
    let mut bad = Vec::new();
    for case in refs.cases.iter().filter(|c| pick(&c.vocab)) {
        let path = vocab_path(&case.vocab);
        let c = with_pre(content(&path), case.pre.as_deref());
        let tok = GgufTokenizer::from_gguf(&path, &c).unwrap();
        for (s, want) in refs.strings.iter().zip(&case.ids) {
            let got = tok.encode(s).unwrap();
            checked += 1;
            if &got != want {
                bad.push(format!(
                    "{} {:?} {s:?}: ours {got:?}, llama.cpp {want:?}",
                    case.vocab, case.pre
                ));
            }
        }
    }
    (checked, bad)
}

#[test]
fn tiny_vocabularies_give_llama_cpp_ids_for_every_tag() {
    let (checked, bad) = mismatches(|v| v.ends_with(".gguf"));
    // 6 BPE tags and 3 SentencePiece vocabularies, 28 strings each.
    assert!(checked >= 9 * 28, "only {checked} strings checked");
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn smollm2_vocabulary_gives_llama_cpp_ids_for_every_tag() {
    let (checked, bad) = mismatches(|v| v == "smollm2");
    assert!(checked >= 6 * 20, "only {checked} strings checked");
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn gemma3_vocabulary_gives_llama_cpp_ids() {
    let (checked, bad) = mismatches(|v| v == "gemma3");
    assert!(checked >= 20, "only {checked} strings checked");
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.join("\n"));
}

/// The reference ids tell the tags apart: a tokenizer that used one tag's split for another (the old
/// fallback to GPT-2 with a space) would fail the tests above. The tiny vocabulary was trained without
/// a split, so its merges cross the boundaries where the tags differ.
#[test]
fn every_tag_changes_some_ids() {
    let refs = refs();
    let cases: Vec<&Case> = refs
        .cases
        .iter()
        .filter(|c| c.vocab == "tiny_bpe.gguf")
        .collect();
    assert_eq!(cases.len(), 6);
    for (i, a) in cases.iter().enumerate() {
        for b in &cases[i + 1..] {
            assert_ne!(
                a.ids, b.ids,
                "{:?} and {:?} agree on every string",
                a.pre, b.pre
            );
        }
    }
    // With and without the SentencePiece space prefix.
    let spm: Vec<&Case> = refs
        .cases
        .iter()
        .filter(|c| c.pre.is_none() && c.vocab.ends_with(".gguf"))
        .collect();
    assert_eq!(spm.len(), 3);
    assert_ne!(spm[0].ids, spm[1].ids);
    // And with Phi-3's strip after special tokens.
    assert_ne!(spm[0].ids, spm[2].ids);
}

#[test]
fn no_space_is_added_before_the_first_word() {
    // The old GPT-2 fallback turned "Hello world" into " Hello", " world".
    let path = common::smollm2();
    let c = with_pre(content(&path), Some("llama-bpe"));
    let tok = Tokenizer::Gguf(Box::new(GgufTokenizer::from_gguf(&path, &c).unwrap()));
    let ids = tok.encode("Hello world", false).unwrap();
    assert_eq!(tok.labels(&ids), ["Hello", " world"]);
}

#[test]
fn an_unknown_pre_tokenizer_is_refused_by_name() {
    let path = fixtures().join("tiny_bpe.gguf");
    let c = with_pre(content(&path), Some("no-such-split"));
    let e = GgufTokenizer::from_gguf(&path, &c)
        .err()
        .unwrap()
        .one_line();
    assert!(
        e.contains("tokenizer.ggml.pre") && e.contains("'no-such-split'"),
        "{e}"
    );
    assert!(e.contains("llama-bpe") && e.contains("qwen2"), "{e}");
    // An unknown tokenizer model too.
    let mut c = content(&path);
    c.metadata
        .insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
    let e = GgufTokenizer::from_gguf(&path, &c)
        .err()
        .unwrap()
        .one_line();
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("'t5'"),
        "{e}"
    );
}

#[test]
fn without_a_tokenizer_ids_still_work_and_text_is_refused_with_the_reason() {
    let path = fixtures().join("tiny_bpe.gguf");
    let c = with_pre(content(&path), Some("no-such-split"));
    let tok = Tokenizer::from_gguf_or_ids_only(&path, &c).unwrap();
    assert!(matches!(tok, Tokenizer::Unavailable { .. }));
    let e = tok.encode("hello", false).err().unwrap().one_line();
    assert!(e.contains("--ids") && e.contains("no-such-split"), "{e}");
    // Ids are labelled with the vocabulary's own strings.
    assert_eq!(tok.labels(&[2]), ["<tool>"]);
    assert!(tok.describe().contains("token ids only"));
    // Malformed tokenizer metadata is a broken file: refused, not degraded.
    let mut c = content(&path);
    c.metadata
        .insert("tokenizer.ggml.tokens".into(), Value::U32(7));
    let e = Tokenizer::from_gguf_or_ids_only(&path, &c)
        .err()
        .unwrap()
        .one_line();
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
}

#[test]
fn sentencepiece_labels_show_spaces_bytes_and_joined_characters() {
    let path = fixtures().join("tiny_spm.gguf");
    let tok = Tokenizer::from_gguf(&path, &content(&path)).unwrap();
    let ids = tok.encode("é🦀", false).unwrap();
    let labels = tok.labels(&ids);
    assert!(labels.iter().all(|l| !l.contains('\u{FFFD}')), "{labels:?}");
    // The emoji is not in the vocabulary: four byte tokens that join into one character.
    let tail: Vec<&String> = labels.iter().rev().take(4).collect();
    assert!(tail.iter().all(|l| l.starts_with('🦀')), "{labels:?}");
    // One byte token alone shows its byte.
    let b = tok.encode("🦀", false).unwrap();
    assert_eq!(tok.token_label(*b.last().unwrap()), "<0x80>");
}

/// `--ids` works when the tokenizer cannot be built (a warning on stderr), and `--text` is refused
/// with the reason (exit 2). The model: the conformance suite's tiny Llama GGUF with its tag renamed to
/// one llama.cpp does not know (same length, so the file stays valid).
#[test]
fn the_cli_takes_ids_without_a_tokenizer_and_refuses_text_by_name() {
    let src = common::repo_path("tests/fixtures/conformance/llama/model.gguf");
    let mut bytes = std::fs::read(&src).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"llama-bpe")
        .expect("the tag is in the file");
    bytes[at..at + 9].copy_from_slice(b"llama-xyz");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("untokenizable.gguf");
    std::fs::write(&model, bytes).unwrap();
    let exe = env!("CARGO_BIN_EXE_prefixscope");
    let out = std::process::Command::new(exe)
        .args(["attention", "--model"])
        .arg(&model)
        .args(["--ids", "5,6,7", "--out"])
        .arg(dir.path().join("a.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("llama-xyz"),
        "{err}"
    );
    let out = std::process::Command::new(exe)
        .args(["attention", "--model"])
        .arg(&model)
        .args(["--text", "hello", "--out"])
        .arg(dir.path().join("b.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--ids") && err.contains("'llama-xyz'"),
        "{err}"
    );
}

/// Tokens holding parts of emoji: no label is "�", and different ids never share a label (the issue's
/// prompt with three emoji gave ten ids one label).
#[test]
fn emoji_pieces_get_distinct_labels_and_no_replacement_character() {
    let path = common::smollm2();
    let tok = Tokenizer::from_gguf(&path, &content(&path)).unwrap();
    let ids = tok
        .encode("Rain 🌧️ then sun ☀️ and a rocket 🚀! 👨‍👩‍👧", false)
        .unwrap();
    let labels = tok.labels(&ids);
    assert!(labels.iter().all(|l| !l.contains('\u{FFFD}')), "{labels:?}");
    for i in 0..ids.len() {
        for j in 0..ids.len() {
            if labels[i] == labels[j] {
                assert_eq!(ids[i], ids[j], "{labels:?}");
            }
        }
    }
    // The rocket is split into byte pieces that join back into it.
    assert!(labels.iter().any(|l| l.contains("🚀[")), "{labels:?}");
}
