//! Tokenizers behind one type: `tokenizer.json` (Hugging Face), the tokenizer stored in GGUF metadata
//! (GPT-2 byte-level BPE, with the `smollm` pre-tokenizer that splits digits one by one), and the toy
//! digit vocabulary. BOS is never added silently: it is the caller's choice.

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::PreTokenizerWrapper;

pub enum Tokenizer {
    /// A real BPE/unigram tokenizer, from `tokenizer.json` or GGUF metadata.
    Hf {
        inner: Box<tokenizers::Tokenizer>,
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

    /// The tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(
        path: &Path,
        content: &candle_core::quantized::gguf_file::Content,
    ) -> Result<Self> {
        use candle_core::quantized::tokenizer::TokenizerFromGguf;
        let mut inner = tokenizers::Tokenizer::from_gguf(content).map_err(|e| {
            Error::format(
                path,
                "tokenizer.ggml.* metadata",
                "a GPT-2 BPE tokenizer",
                e.to_string(),
            )
        })?;
        let pre = content
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if pre == "smollm" {
            // llama.cpp's `smollm`: split every digit on its own, then the GPT-2 byte-level regex.
            let seq: Vec<PreTokenizerWrapper> = vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ];
            inner.with_pre_tokenizer(Some(Sequence::new(seq)));
        }
        let bos_id = content
            .metadata
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.to_u32().ok());
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            bos_id,
        })
    }

    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Hf { bos_id, .. } => *bos_id,
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

    /// A readable label for one token (byte-level BPE markers turned back into text).
    pub fn token_label(&self, id: u32) -> String {
        match self {
            Tokenizer::Hf { inner, .. } => match inner.decode(&[id], false) {
                Ok(s) if !s.is_empty() => s,
                _ => inner.id_to_token(id).unwrap_or_else(|| format!("<{id}>")),
            },
            Tokenizer::Digits { .. } => id.to_string(),
            Tokenizer::Ascii { .. } => char::from_u32(id + 32)
                .map(String::from)
                .unwrap_or_default(),
        }
    }

    pub fn labels(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| self.token_label(i)).collect()
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Hf { inner, .. } => inner.decode(ids, false).unwrap_or_default(),
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
            _ => Err(Error::input(
                path.display().to_string(),
                "a BPE tokenizer",
                self.describe(),
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Hf { inner, .. } => format!("BPE, {} tokens", inner.get_vocab_size(true)),
            Tokenizer::Digits { vocab } => format!("digits 0..{}", vocab - 1),
            Tokenizer::Ascii { vocab } => format!("printable ASCII ({vocab})"),
        }
    }
}
