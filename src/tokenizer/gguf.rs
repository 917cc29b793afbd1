//! The tokenizer stored in a GGUF file's metadata, computed the way llama.cpp computes it
//! (`src/llama-vocab.cpp`, `src/unicode.cpp`), so that a GGUF file gives llama.cpp's token ids:
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE. The text is split by the regular expressions of
//!   the pre-tokenizer named by `tokenizer.ggml.pre` (llama.cpp's `llm_tokenizer_bpe`), each piece is
//!   mapped to GPT-2's byte characters without an added space, and merged by the `tokenizer.ggml.merges`
//!   ranks (the `tokenizers` crate's BPE, which merges exactly as llama.cpp does). A tag we do not know
//!   is refused by name: a wrong split changes every id.
//! - `tokenizer.ggml.model = llama`: SentencePiece as llama.cpp runs it (`spm.rs`), with the scores,
//!   byte fallback, the `▁` space marker and `tokenizer.ggml.add_space_prefix` (default true).
//!
//! Before either, the text is cut at user-defined tokens (token type 4), longest first, as llama.cpp's
//! `tokenizer_st_partition` does when special tokens are not parsed; control tokens in the text
//! (`<|im_start|>` typed by hand) are plain text; for a model named Phi-3 (`general.name`) the
//! whitespace after such a token is dropped, as llama.cpp does. BOS is never added here.

use super::spm::{self, SpmVocab};
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

/// llama.cpp's token types (`LLAMA_TOKEN_TYPE_*`).
pub const TYPE_NORMAL: i32 = 1;
pub const TYPE_UNKNOWN: i32 = 2;
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
pub const TYPE_UNUSED: i32 = 5;
pub const TYPE_BYTE: i32 = 6;

/// GPT-2's split, as llama.cpp writes it (its hand-written `unicode_regex_split_custom_gpt2`
/// implements exactly this expression).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split, llama.cpp's case-insensitive spelling of the contractions.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken (Mistral Nemo): upper-then-lower letter runs, single digits.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One llama.cpp BPE pre-tokenizer: the tags that name it, its split expressions (applied in turn,
/// each to the pieces of the one before, keeping matches and the text between them), and whether a
/// piece that is itself a token skips the merges (`ignore_merges`).
pub struct PreTokenizer {
    pub tags: &'static [&'static str],
    pub regexes: &'static [&'static str],
    pub ignore_merges: bool,
}

/// The BPE pre-tokenizers of the model families we load (llama.cpp `llama_vocab::impl::load` and
/// `llm_tokenizer_bpe::llm_tokenizer_bpe`).
pub const PRE_TOKENIZERS: &[PreTokenizer] = &[
    // Llama 3, 3.1, 3.2.
    PreTokenizer {
        tags: &["llama-bpe", "llama3", "llama-v3"],
        regexes: &[LLAMA3],
        ignore_merges: true,
    },
    // SmolLM, SmolLM2: every digit on its own, then GPT-2's split.
    PreTokenizer {
        tags: &["smollm"],
        regexes: &[r"\p{N}", GPT2],
        ignore_merges: false,
    },
    // Qwen2, Qwen2.5, Qwen3.
    PreTokenizer {
        tags: &["qwen2", "deepseek-r1-qwen"],
        regexes: &[QWEN2],
        ignore_merges: false,
    },
    PreTokenizer {
        tags: &["gpt-2", "phi-2"],
        regexes: &[GPT2],
        ignore_merges: false,
    },
    // Mistral Nemo and later Mistral models.
    PreTokenizer {
        tags: &["tekken"],
        regexes: &[TEKKEN],
        ignore_merges: true,
    },
    // llama.cpp's fallback for a BPE vocabulary: `default`, and a missing tag (with a warning).
    PreTokenizer {
        tags: &["default"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        ignore_merges: false,
    },
];

/// The tags we implement, for messages.
pub fn known_tags() -> String {
    PRE_TOKENIZERS
        .iter()
        .flat_map(|p| p.tags.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The GGUF tokenizer metadata keys that decide the ids, all read here. The other `tokenizer.*` keys
/// (chat template, EOS/EOT/padding/FIM ids, `add_bos_token` and `add_eos_token`: BOS is the caller's
/// choice) do not change how a text is split.
pub const KEYS_USED: &[&str] = &[
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.bos_token_id",
];

enum Kind {
    Bpe {
        tag: String,
        inner: Box<tokenizers::Tokenizer>,
    },
    Spm {
        add_space_prefix: bool,
    },
}

/// A GGUF vocabulary and how llama.cpp tokenizes with it.
pub struct GgufTokenizer {
    kind: Kind,
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    token_to_id: HashMap<String, u32>,
    /// User-defined tokens, longest first: the text is cut at them before tokenizing.
    user_defined: Vec<u32>,
    /// llama.cpp strips the whitespace after every special token of a Phi-3 model (by
    /// `general.name`), user-defined ones included.
    rstrip_user_defined: bool,
    bos_id: Option<u32>,
}

fn key<'a>(c: &'a Content, k: &str) -> Option<&'a Value> {
    c.metadata.get(k)
}

fn bad(path: &Path, k: &str, expected: &str, found: impl Into<String>) -> Error {
    Error::format(path, k, expected, found)
}

fn string_array(path: &Path, c: &Content, k: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = key(c, k) else { return Ok(None) };
    let arr = v.to_vec().map_err(|_| {
        bad(
            path,
            k,
            "an array of strings",
            format!("{:?}", v.value_type()),
        )
    })?;
    arr.iter()
        .map(|x| {
            x.to_string().cloned().map_err(|_| {
                bad(
                    path,
                    k,
                    "an array of strings",
                    format!("an element of type {:?}", x.value_type()),
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn number_array(path: &Path, c: &Content, k: &str, n: usize) -> Result<Option<Vec<f64>>> {
    let Some(v) = key(c, k) else { return Ok(None) };
    let arr = v.to_vec().map_err(|_| {
        bad(
            path,
            k,
            "an array of numbers",
            format!("{:?}", v.value_type()),
        )
    })?;
    if arr.len() < n {
        return Err(bad(
            path,
            k,
            &format!("at least {n} entries (one per token)"),
            arr.len().to_string(),
        ));
    }
    arr.iter()
        .map(|x| match x {
            Value::F32(f) => Ok(*f as f64),
            Value::I32(i) => Ok(*i as f64),
            other => Err(bad(
                path,
                k,
                "f32 or i32 entries",
                format!("{:?}", other.value_type()),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn u32_key(path: &Path, c: &Content, k: &str) -> Result<Option<u32>> {
    match key(c, k) {
        None => Ok(None),
        Some(v) => match v {
            Value::U32(x) => Ok(Some(*x)),
            Value::I32(x) if *x >= 0 => Ok(Some(*x as u32)),
            Value::U64(x) if *x <= u32::MAX as u64 => Ok(Some(*x as u32)),
            Value::I32(-1) => Ok(None),
            other => Err(bad(path, k, "a token id", format!("{other:?}"))),
        },
    }
}

impl GgufTokenizer {
    /// Build the tokenizer from a GGUF file's metadata; refuse (naming the key and value) what
    /// llama.cpp would compute differently from us.
    pub fn from_gguf(path: &Path, c: &Content) -> Result<Self> {
        let model = match key(c, "tokenizer.ggml.model") {
            // No tokenizer at all (a file converted without its vocabulary).
            None => {
                return Err(Error::unsupported(
                    path,
                    "tokenizer",
                    "none (no tokenizer.ggml.model)",
                    "gpt2 (byte-level BPE), llama (SentencePiece)",
                ))
            }
            Some(v) => v
                .to_string()
                .map_err(|_| {
                    bad(
                        path,
                        "tokenizer.ggml.model",
                        "a string",
                        format!("{:?}", v.value_type()),
                    )
                })?
                .clone(),
        };
        let mut tokens = string_array(path, c, "tokenizer.ggml.tokens")?.ok_or_else(|| {
            bad(
                path,
                "tokenizer.ggml.tokens",
                "the vocabulary",
                "no such key",
            )
        })?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(bad(
                path,
                "tokenizer.ggml.tokens",
                "a non-empty vocabulary",
                n.to_string(),
            ));
        }
        // llama.cpp names empty tokens so that every id has a distinct text.
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let scores: Vec<f32> = number_array(path, c, "tokenizer.ggml.scores", n)?
            .map(|s| s.into_iter().take(n).map(|x| x as f32).collect())
            .unwrap_or_else(|| vec![0.0; n]);
        let types: Vec<i32> = number_array(path, c, "tokenizer.ggml.token_type", n)?
            .map(|s| s.into_iter().take(n).map(|x| x as i32).collect())
            .unwrap_or_else(|| vec![TYPE_NORMAL; n]);
        // Later duplicates win, as in llama.cpp's `token_to_id[word] = i`.
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }
        let mut user_defined: Vec<u32> = (0..n as u32)
            .filter(|&i| types[i as usize] == TYPE_USER_DEFINED)
            .collect();
        user_defined.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let name = key(c, "general.name")
            .and_then(|v| v.to_string().ok())
            .map(|s| s.to_lowercase())
            .unwrap_or_default();
        let rstrip_user_defined = name.contains("phi-3") || name.contains("phi3");

        let pre = match key(c, "tokenizer.ggml.pre") {
            None => None,
            Some(v) => Some(
                v.to_string()
                    .map_err(|_| {
                        bad(
                            path,
                            "tokenizer.ggml.pre",
                            "a string",
                            format!("{:?}", v.value_type()),
                        )
                    })?
                    .clone(),
            ),
        };
        let bos_key = u32_key(path, c, "tokenizer.ggml.bos_token_id")?;
        let (kind, bos_default) = match model.as_str() {
            "gpt2" => {
                let tag = match pre.as_deref() {
                    None | Some("") => {
                        eprintln!(
                            "warning: {}: no tokenizer.ggml.pre; using llama.cpp's 'default' BPE split, as llama.cpp does",
                            path.display()
                        );
                        "default".to_string()
                    }
                    Some(t) => t.to_string(),
                };
                let Some(p) = PRE_TOKENIZERS
                    .iter()
                    .find(|p| p.tags.contains(&tag.as_str()))
                else {
                    return Err(Error::unsupported(
                        path,
                        "tokenizer.ggml.pre",
                        format!("'{tag}'"),
                        known_tags(),
                    ));
                };
                let merges = string_array(path, c, "tokenizer.ggml.merges")?.ok_or_else(|| {
                    bad(
                        path,
                        "tokenizer.ggml.merges",
                        "the BPE merges",
                        "no such key",
                    )
                })?;
                let inner = build_bpe(path, &tokens, &merges, p)?;
                (
                    Kind::Bpe {
                        tag,
                        inner: Box::new(inner),
                    },
                    None,
                )
            }
            "llama" => {
                let add_space_prefix = match key(c, "tokenizer.ggml.add_space_prefix") {
                    None => true,
                    Some(v) => v.to_bool().map_err(|_| {
                        bad(
                            path,
                            "tokenizer.ggml.add_space_prefix",
                            "a bool",
                            format!("{v:?}"),
                        )
                    })?,
                };
                // llama.cpp's SentencePiece default BOS is id 1.
                (
                    Kind::Spm { add_space_prefix },
                    if n > 1 { Some(1) } else { None },
                )
            }
            other => {
                return Err(Error::unsupported(
                    path,
                    "tokenizer.ggml.model",
                    format!("'{other}'"),
                    "gpt2 (byte-level BPE), llama (SentencePiece)",
                ))
            }
        };
        let bos_id = bos_key.or(bos_default).filter(|&b| (b as usize) < n);
        Ok(GgufTokenizer {
            kind,
            tokens,
            scores,
            types,
            token_to_id,
            user_defined,
            rstrip_user_defined,
            bos_id,
        })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }

    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.types.get(id as usize).copied()
    }

    /// "BPE (llama-bpe), 128256 tokens" or "SentencePiece, 32000 tokens".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Bpe { tag, .. } => {
                format!("GGUF byte-level BPE ({tag}), {} tokens", self.tokens.len())
            }
            Kind::Spm { add_space_prefix } => format!(
                "GGUF SentencePiece{}, {} tokens",
                if *add_space_prefix {
                    ""
                } else {
                    " (no space prefix)"
                },
                self.tokens.len()
            ),
        }
    }

    pub fn is_byte_level(&self) -> bool {
        matches!(self.kind, Kind::Bpe { .. })
    }

    /// The `tokenizers` form of a BPE vocabulary (to write `tokenizer.json`), with the user-defined
    /// and control tokens as added tokens.
    pub fn hf_tokenizer(&self) -> Option<tokenizers::Tokenizer> {
        let Kind::Bpe { inner, .. } = &self.kind else {
            return None;
        };
        let mut t = (**inner).clone();
        let added: Vec<tokenizers::AddedToken> = (0..self.tokens.len())
            .filter(|&i| matches!(self.types[i], TYPE_USER_DEFINED | TYPE_CONTROL))
            .map(|i| {
                tokenizers::AddedToken::from(self.tokens[i].clone(), self.types[i] == TYPE_CONTROL)
            })
            .collect();
        t.add_tokens(added).ok()?;
        Some(t)
    }

    /// llama.cpp's ids for `text` (no BOS): `llama_tokenize(text, add_special=false, parse_special=false)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut prev_special = true;
        for frag in self.partition(text) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.kind {
                        Kind::Bpe { inner, .. } => {
                            let enc = inner.encode(t, false).map_err(|e| {
                                Error::input("text", "text the tokenizer can encode", e.to_string())
                            })?;
                            out.extend_from_slice(enc.get_ids());
                        }
                        Kind::Spm { add_space_prefix } => {
                            let mut s = String::with_capacity(t.len() + 1);
                            if *add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            let s = s.replace(' ', "\u{2581}");
                            spm::tokenize(self, &s, &mut out)?;
                        }
                    }
                    prev_special = false;
                }
            }
        }
        Ok(out)
    }

    /// Cut `text` at the user-defined tokens, longest token first (llama.cpp `tokenizer_st_partition`).
    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut frags = if text.is_empty() {
            vec![]
        } else {
            vec![Fragment::Text(text)]
        };
        for &id in &self.user_defined {
            let tok = self.tokens[id as usize].as_str();
            if tok.is_empty() {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(pos) = t.find(tok) {
                            if pos > 0 {
                                next.push(Fragment::Text(&t[..pos]));
                            }
                            next.push(Fragment::Token(id));
                            t = &t[pos + tok.len()..];
                            if self.rstrip_user_defined && !self.keeps_right_space(id) {
                                // C `isspace`: space, \t, \n, \v, \f, \r.
                                t = t.trim_start_matches([' ', '\t', '\n', '\x0B', '\x0C', '\r']);
                            }
                        }
                        if !t.is_empty() {
                            next.push(Fragment::Text(t));
                        }
                    }
                    tok @ Fragment::Token(_) => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    /// llama.cpp's exceptions to the Phi-3 right strip.
    fn keeps_right_space(&self, id: u32) -> bool {
        matches!(
            self.tokens[id as usize].as_str(),
            "<unk>" | "<s>" | "<|endoftext|>"
        )
    }

    /// The bytes a token stands for, when it stands for text: BPE characters mapped back through
    /// GPT-2's byte table; SentencePiece `▁` as a space and `<0xXX>` as its byte. None for control,
    /// unknown and unused tokens (their label is their name).
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let i = id as usize;
        let text = self.tokens.get(i)?;
        let ty = self.types[i];
        if matches!(ty, TYPE_CONTROL | TYPE_UNKNOWN | TYPE_UNUSED) {
            return None;
        }
        if ty == TYPE_USER_DEFINED {
            return Some(text.as_bytes().to_vec());
        }
        match self.kind {
            Kind::Bpe { .. } => Some(super::label::byte_level_to_bytes(text)),
            Kind::Spm { .. } => {
                if ty == TYPE_BYTE {
                    if let Some(b) = super::label::parse_byte_token(text) {
                        return Some(vec![b]);
                    }
                }
                Some(text.replace('\u{2581}', " ").into_bytes())
            }
        }
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

impl SpmVocab for GgufTokenizer {
    fn text_to_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }
    fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }
    fn byte_to_token(&self, byte: u8) -> Option<u32> {
        self.token_to_id
            .get(&format!("<0x{byte:02X}>"))
            .or_else(|| {
                // llama.cpp then tries the byte itself as a one-byte token.
                std::str::from_utf8(&[byte])
                    .ok()
                    .and_then(|s| self.token_to_id.get(s))
            })
            .copied()
    }
}

/// The `tokenizers` pipeline for one llama.cpp BPE pre-tokenizer: the splits, then GPT-2's byte
/// characters with no added space, then the merges.
fn build_bpe(
    path: &Path,
    tokens: &[String],
    merges: &[String],
    pre: &PreTokenizer,
) -> Result<tokenizers::Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // llama.cpp splits a merge at its first space after the first byte.
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let cut = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p);
        let Some(p) = cut else {
            return Err(bad(
                path,
                &format!("tokenizer.ggml.merges[{i}]"),
                "two tokens separated by a space",
                format!("{m:?}"),
            ));
        };
        pairs.push((m[..p].to_string(), m[p + 1..].to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| {
            bad(
                path,
                "tokenizer.ggml.merges",
                "merges of tokens in the vocabulary",
                e.to_string(),
            )
        })?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for r in pre.regexes {
        let split = Split::new(
            SplitPattern::Regex(r.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|_| Error::Internal("a pre-tokenizer expression does not compile"))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(Sequence::new(steps)));
    t.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(t)
}
