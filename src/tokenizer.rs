//! Tokenizers behind one type: `tokenizer.json` (Hugging Face), the tokenizer stored in GGUF metadata
//! (llama.cpp's byte-level BPE with its pre-tokenizer tags, and its SentencePiece: `gguf.rs`), the toy
//! digit vocabulary, and none at all (a model whose tokenizer cannot be built still takes token ids).
//! BOS is never added silently: it is the caller's choice. Labels never print a bare "�" (`label.rs`).

pub mod gguf;
pub mod label;
pub mod spm;

use crate::error::{Error, Result};
use gguf::GgufTokenizer;
use label::Piece;
use std::path::Path;

pub enum Tokenizer {
    /// A real BPE/unigram tokenizer, from `tokenizer.json` or GGUF metadata.
    Hf {
        inner: Box<tokenizers::Tokenizer>,
        bos_id: Option<u32>,
    },
    /// A GGUF file's vocabulary, tokenized as llama.cpp does.
    Gguf(Box<GgufTokenizer>),
    /// No tokenizer could be built (`reason` says why): token ids work, text is refused. `tokens`
    /// holds the vocabulary's strings where the file has them, for labels.
    Unavailable {
        reason: String,
        tokens: Vec<String>,
        bos_id: Option<u32>,
    },
    /// The toy models' vocabulary: token `k` is the digit `k` (`k < vocab`).
    Digits { vocab: usize },
    /// The constructions' vocabulary: printable ASCII, token = code point - 32.
    Ascii { vocab: usize },
}

impl Tokenizer {
    pub fn from_file(path: &Path, bos_id: Option<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::format(
                path,
                "tokenizer.json",
                "a Hugging Face tokenizer file",
                e.to_string(),
            )
        })?;
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            bos_id,
        })
    }

    /// The tokenizer stored in a GGUF file's metadata (llama.cpp's BPE or SentencePiece).
    pub fn from_gguf(
        path: &Path,
        content: &candle_core::quantized::gguf_file::Content,
    ) -> Result<Self> {
        Ok(Tokenizer::Gguf(Box::new(GgufTokenizer::from_gguf(
            path, content,
        )?)))
    }

    /// [`Tokenizer::from_gguf`]; when the file's tokenizer is one we do not implement (unknown
    /// tokenizer model or pre-tokenizer tag) or the file has none, a warning on stderr and a tokenizer that
    /// takes token ids only (`--ids`) and refuses text with the reason. Malformed tokenizer metadata
    /// is still refused: the file is broken, not merely unfamiliar.
    pub fn from_gguf_or_ids_only(
        path: &Path,
        content: &candle_core::quantized::gguf_file::Content,
    ) -> Result<Self> {
        match Self::from_gguf(path, content) {
            Ok(t) => Ok(t),
            Err(e @ Error::Unsupported { .. }) => {
                let tokens = content
                    .metadata
                    .get("tokenizer.ggml.tokens")
                    .and_then(|v| v.to_vec().ok())
                    .map(|a| {
                        a.iter()
                            .map(|x| x.to_string().cloned().unwrap_or_default())
                            .collect()
                    })
                    .unwrap_or_default();
                let bos_id = content
                    .metadata
                    .get("tokenizer.ggml.bos_token_id")
                    .and_then(|v| v.to_u32().ok());
                Ok(Self::unavailable(e, tokens, bos_id))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Tokenizer::from_file`]; when there is no `tokenizer.json`, a tokenizer that takes token ids
    /// only (callers that take ids warn, see [`Tokenizer::unavailable_reason`]). A `tokenizer.json` that cannot be read is refused.
    pub fn from_file_or_ids_only(path: &Path, bos_id: Option<u32>) -> Result<Self> {
        if path.exists() {
            Self::from_file(path, bos_id)
        } else {
            Ok(Self::unavailable(
                Error::format(
                    path,
                    "tokenizer",
                    "tokenizer.json beside config.json",
                    "no such file",
                ),
                Vec::new(),
                bos_id,
            ))
        }
    }

    fn unavailable(e: Error, tokens: Vec<String>, bos_id: Option<u32>) -> Self {
        // No warning printed here: the library does not write to the terminal. Callers that take
        // token ids say it ([`Tokenizer::unavailable_reason`]); text is refused with the reason.
        let reason = e.one_line();
        Tokenizer::Unavailable {
            reason,
            tokens,
            bos_id,
        }
    }

    /// Why there is no tokenizer (token ids only), or `None` when there is one.
    pub fn unavailable_reason(&self) -> Option<&str> {
        match self {
            Tokenizer::Unavailable { reason, .. } => Some(reason),
            _ => None,
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Hf { bos_id, .. } => *bos_id,
            Tokenizer::Gguf(g) => g.bos_id(),
            Tokenizer::Unavailable { bos_id, .. } => *bos_id,
            _ => None,
        }
    }

    /// Encode `text`; prepend BOS only when `add_bos` and the tokenizer has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = match self {
            Tokenizer::Hf { inner, .. } => inner
                .encode(text, false)
                .map_err(|e| Error::input("text", "text the tokenizer can encode", e.to_string()))?
                .get_ids()
                .to_vec(),
            Tokenizer::Gguf(g) => g.encode(text)?,
            Tokenizer::Unavailable { reason, .. } => {
                return Err(Error::input(
                    "text",
                    "token ids (--ids): this model's tokenizer could not be built",
                    reason.clone(),
                ))
            }
            Tokenizer::Digits { vocab } => {
                let mut ids = Vec::new();
                for (i, c) in text.chars().enumerate() {
                    if c.is_whitespace() || c == ',' {
                        continue;
                    }
                    match c.to_digit(10) {
                        Some(d) if (d as usize) < *vocab => ids.push(d),
                        _ => {
                            return Err(Error::input(
                                format!("text character {i}"),
                                format!("a digit 0..{} (the toy vocabulary)", vocab - 1),
                                format!("{c:?}"),
                            ))
                        }
                    }
                }
                ids
            }
            Tokenizer::Ascii { vocab } => {
                let mut ids = Vec::new();
                for (i, c) in text.chars().enumerate() {
                    let code = c as u32;
                    if !(32..32 + *vocab as u32).contains(&code) {
                        return Err(Error::input(
                            format!("text character {i}"),
                            crate::construct::vocabulary_text(*vocab),
                            format!("{c:?}"),
                        ));
                    }
                    ids.push(code - 32);
                }
                ids
            }
        };
        if add_bos {
            if let Some(b) = self.bos_id() {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    /// A readable label for one token: its text, with `<0xXX>` for bytes that are not a whole UTF-8
    /// character. [`Tokenizer::labels`] also joins partial characters across neighbouring tokens.
    pub fn token_label(&self, id: u32) -> String {
        match self.piece(id) {
            Piece::Label(l) => l,
            Piece::Bytes(b) => label::bytes_label(&b),
        }
    }

    /// Labels for a token sequence: tokens that hold parts of one character show the joined
    /// character and their place in it (`😀[1/2]`), a lone partial token its bytes; never "�".
    pub fn labels(&self, ids: &[u32]) -> Vec<String> {
        let pieces: Vec<Piece> = ids.iter().map(|&i| self.piece(i)).collect();
        label::sequence_labels(&pieces)
    }

    /// What one token stands for: the bytes of text, or a fixed label (control tokens, toys).
    fn piece(&self, id: u32) -> Piece {
        match self {
            Tokenizer::Hf { inner, .. } => match inner.decode(&[id], false) {
                Ok(s) if !s.is_empty() && !s.contains('\u{FFFD}') => Piece::Bytes(s.into_bytes()),
                _ => match inner.id_to_token(id) {
                    Some(t) => hf_token_bytes(&t),
                    None => Piece::Label(format!("<{id}>")),
                },
            },
            Tokenizer::Gguf(g) => match g.token_bytes(id) {
                Some(b) => Piece::Bytes(b),
                None => Piece::Label(
                    g.token_text(id)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("<{id}>")),
                ),
            },
            Tokenizer::Unavailable { tokens, .. } => Piece::Label(
                tokens
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("<{id}>")),
            ),
            Tokenizer::Digits { .. } => Piece::Label(id.to_string()),
            Tokenizer::Ascii { .. } => Piece::Label(
                char::from_u32(id + 32)
                    .map(String::from)
                    .unwrap_or_default(),
            ),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Hf { inner, .. } => inner.decode(ids, false).unwrap_or_default(),
            Tokenizer::Gguf(g) => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .filter_map(|&i| g.token_bytes(i))
                    .flatten()
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Unavailable { .. } => self.labels(ids).concat(),
            Tokenizer::Digits { .. } => ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Tokenizer::Ascii { .. } => ids.iter().map(|&i| self.token_label(i)).collect(),
        }
    }

    /// Write a real tokenizer as `tokenizer.json` (e.g. to export a GGUF's tokenizer to a HF folder).
    pub fn save_json(&self, path: &Path) -> Result<()> {
        match self {
            Tokenizer::Hf { inner, .. } => {
                let text = inner.to_string(false).map_err(|e| {
                    Error::format(path, "tokenizer", "a serializable tokenizer", e.to_string())
                })?;
                crate::arrays::write_atomic(path, text.as_bytes())
            }
            Tokenizer::Gguf(g) => match g.hf_tokenizer() {
                Some(t) => {
                    let text = t.to_string(false).map_err(|e| {
                        Error::format(path, "tokenizer", "a serializable tokenizer", e.to_string())
                    })?;
                    crate::arrays::write_atomic(path, text.as_bytes())
                }
                None => Err(Error::input(
                    path.display().to_string(),
                    "a byte-level BPE tokenizer (SentencePiece vocabularies are not exported)",
                    self.describe(),
                )),
            },
            _ => Err(Error::input(
                path.display().to_string(),
                "a BPE tokenizer",
                self.describe(),
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Hf { inner, .. } => format!(
                "tokenizer.json ({}), {} tokens",
                hf_model_kind(inner),
                inner.get_vocab_size(true)
            ),
            Tokenizer::Gguf(g) => g.describe(),
            Tokenizer::Unavailable { reason, .. } => format!("none, token ids only ({reason})"),
            Tokenizer::Digits { vocab } => format!("digits 0..{}", vocab - 1),
            Tokenizer::Ascii { vocab } => format!("printable ASCII ({vocab})"),
        }
    }
}

/// The bytes behind a `tokenizer.json` token that does not decode to whole characters: `<0xXX>`
/// byte-fallback tokens, GPT-2 byte characters, else the token's own text with `▁` as a space.
fn hf_token_bytes(token: &str) -> Piece {
    if let Some(b) = label::parse_byte_token(token) {
        Piece::Bytes(vec![b])
    } else if label::is_byte_level(token) {
        Piece::Bytes(label::byte_level_to_bytes(token))
    } else {
        Piece::Bytes(token.replace('\u{2581}', " ").into_bytes())
    }
}

fn hf_model_kind(t: &tokenizers::Tokenizer) -> &'static str {
    use tokenizers::ModelWrapper;
    match t.get_model() {
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::Unigram(_) => "Unigram",
        ModelWrapper::WordPiece(_) => "WordPiece",
        ModelWrapper::WordLevel(_) => "WordLevel",
    }
}
