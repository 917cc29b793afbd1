//! `tokenizer.json` checked before the tokenizers crate parses it.
//!
//! tokenizers 0.23 panics instead of returning an error on two kinds of input
//! (`decoders/mod.rs`: `DecoderHelper::deserialize(..).expect("Helper")`, reached by any JSON
//! syntax error inside `"decoder"`, e.g. a file that is just `{"decoder":{`; and
//! `normalizers/mod.rs`: `.expect("Precompiled")`, reached by any `Precompiled` normalizer whose
//! `precompiled_charsmap` is not base64 of a valid charsmap). So the file must be whole, valid JSON,
//! and every `Precompiled` normalizer (also inside a `Sequence`) must hold a charsmap that
//! spm_precompiled 0.1 parses: base64 of `[u32 trie size][trie: size/4 u32][UTF-8 normalized]`.
//! Whatever else panics is caught at the loader boundary ([`super::guard`]).

use super::limits::MAX_TOKENIZER_BYTES;
use crate::error::{Error, Result};
use std::path::Path;

/// Check `path` as a `tokenizer.json`.
pub fn check(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_TOKENIZER_BYTES {
        return Err(Error::format(
            path,
            "size",
            format!("a tokenizer.json of at most {MAX_TOKENIZER_BYTES} bytes"),
            format!("{} bytes", meta.len()),
        ));
    }
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_bytes(path, &text)
}

pub fn check_bytes(path: &Path, text: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
        Error::format(
            path,
            "tokenizer.json",
            "a complete JSON file",
            e.to_string(),
        )
    })?;
    if !v.is_object() {
        return Err(Error::format(
            path,
            "tokenizer.json",
            "a JSON object",
            "another JSON value",
        ));
    }
    if let Some(n) = v.get("normalizer") {
        check_normalizer(path, n, "normalizer")?;
    }
    if let Some(m) = v.get("model") {
        check_bpe(path, m)?;
    }
    Ok(())
}

/// A BPE model's merges as tokenizers 0.23 builds them (`models/bpe/model.rs`, `BpeBuilder::build`):
/// it concatenates `a` and `b` minus the `continuing_subword_prefix` into a buffer as long as the
/// longest vocabulary entry, subtracting the prefix length from `b`'s without a check and slicing
/// `b` there as if it were a character boundary. So every merge whose parts are in the vocabulary
/// must have `b` at least as long as the prefix, cut on a character boundary, and a concatenation
/// no longer than the longest entry; otherwise building panics (or reads a broken string).
fn check_bpe(path: &Path, m: &serde_json::Value) -> Result<()> {
    let is_bpe = match m.get("type").and_then(|t| t.as_str()) {
        Some(t) => t == "BPE",
        None => m.get("merges").is_some(),
    };
    let (Some(vocab), Some(merges)) = (
        m.get("vocab").and_then(|v| v.as_object()),
        m.get("merges").and_then(|v| v.as_array()),
    ) else {
        return Ok(());
    };
    if !is_bpe {
        return Ok(());
    }
    let prefix = m
        .get("continuing_subword_prefix")
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let max_len = vocab.keys().map(|k| k.len()).max().unwrap_or(0);
    for (i, merge) in merges.iter().enumerate() {
        let pair = match merge {
            serde_json::Value::String(s) => {
                let parts: Vec<&str> = s.split(' ').collect();
                match parts.as_slice() {
                    [a, b] => Some((a.to_string(), b.to_string())),
                    _ => None,
                }
            }
            serde_json::Value::Array(a) => match a.as_slice() {
                [serde_json::Value::String(a), serde_json::Value::String(b)] => {
                    Some((a.clone(), b.clone()))
                }
                _ => None,
            },
            _ => None,
        };
        // Other shapes are refused by the crate with an error.
        let Some((a, b)) = pair else { continue };
        if !vocab.contains_key(&a) || !vocab.contains_key(&b) {
            continue;
        }
        let ok = b.len() >= prefix.len()
            && b.is_char_boundary(prefix.len())
            && a.len() + b.len() - prefix.len() <= max_len;
        if !ok {
            return Err(Error::format(
                path,
                format!("model (BPE) merges[{i}]"),
                format!(
                    "a merge whose second part extends the continuing_subword_prefix {prefix:?} and whose result is no longer than the longest token ({max_len} bytes)"
                ),
                format!("{:?}", format!("{a} {b}").chars().take(80).collect::<String>()),
            ));
        }
    }
    Ok(())
}

fn check_normalizer(path: &Path, n: &serde_json::Value, at: &str) -> Result<()> {
    if n.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
        let what = format!("{at} (Precompiled) 'precompiled_charsmap'");
        let s = n
            .get("precompiled_charsmap")
            .and_then(|s| s.as_str())
            .ok_or_else(|| Error::format(path, &what, "a base64 string", "none"))?;
        let raw = base64_decode(s)
            .ok_or_else(|| Error::format(path, &what, "base64", format!("{:?}", cut(s))))?;
        check_charsmap(&raw).map_err(|why| Error::format(path, &what, "a valid charsmap", why))?;
    }
    if let Some(list) = n.get("normalizers").and_then(|l| l.as_array()) {
        for (i, m) in list.iter().enumerate() {
            check_normalizer(path, m, &format!("{at}.normalizers[{i}]"))?;
        }
    }
    Ok(())
}

fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

/// spm_precompiled's layout: a u32 trie size in bytes, the trie (size/4 u32s), UTF-8 text. The
/// trie is walked from its root as `DoubleArray::common_prefix_search` walks it for any input byte:
/// every index it can read must be inside the array, and every value it can return must be a char
/// boundary of the text (`Precompiled::transform` slices the text there), else encoding would panic.
fn check_charsmap(b: &[u8]) -> std::result::Result<(), String> {
    if b.len() < 4 {
        return Err(format!("{} bytes (no trie size)", b.len()));
    }
    let trie_bytes = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize / 4 * 4;
    if trie_bytes > b.len() - 4 {
        return Err(format!(
            "a trie of {trie_bytes} bytes in {} bytes",
            b.len() - 4
        ));
    }
    let text = std::str::from_utf8(&b[4 + trie_bytes..])
        .map_err(|_| "normalized text that is not UTF-8".to_string())?;
    let units: Vec<usize> = b[4..4 + trie_bytes]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = units.len();
    if n == 0 {
        return Err("an empty trie".into());
    }
    // The unit accessors of spm_precompiled 0.1.4.
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let label = |u: usize| u & ((1 << 31) | 0xFF);
    let value = |u: usize| u & ((1 << 31) - 1);
    let mut seen = vec![false; n];
    let mut stack = vec![0usize];
    seen[0] = true;
    while let Some(j) = stack.pop() {
        let base = j ^ offset(units[j]);
        if (base | 0xFF) >= n {
            return Err(format!(
                "a trie node at unit {j} pointing outside the {n} units"
            ));
        }
        for c in 1..=255usize {
            let k = base ^ c;
            let u = units[k];
            if label(u) != c {
                continue;
            }
            let next = k ^ offset(u);
            if next >= n {
                return Err(format!(
                    "a trie node at unit {k} pointing outside the {n} units"
                ));
            }
            if has_leaf(u) {
                let v = value(units[next]);
                if !text.is_char_boundary(v) {
                    return Err(format!(
                        "a replacement at byte {v}, outside the {} bytes of text or inside a character",
                        text.len()
                    ));
                }
            }
            if !seen[k] {
                seen[k] = true;
                stack.push(k);
            }
        }
    }
    Ok(())
}

/// Standard base64 (padding optional), `None` on any character outside the alphabet, a bad length
/// or non-zero trailing bits: at least as strict as the decoder the tokenizers crate uses.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let body = s
        .strip_suffix("==")
        .or_else(|| s.strip_suffix('='))
        .unwrap_or(s);
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = body.as_bytes();
    if bytes.len() % 4 == 1 || (s.len() != body.len() && !s.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 3);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert!(base64_decode("!!notbase64").is_none());
        assert!(base64_decode("aGVsbG9=").is_none()); // trailing bits set
    }

    #[test]
    fn bpe_merges_the_crate_would_panic_on_are_refused() {
        let p = Path::new("tokenizer.json");
        let ok = br#"{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}"#;
        check_bytes(p, ok).unwrap();
        let prefix = br#"{"model":{"type":"BPE","continuing_subword_prefix":"gpt2","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}"#;
        let e = check_bytes(p, prefix).unwrap_err().one_line();
        assert!(e.contains("merges[0]"), "{e}");
        let long = br#"{"model":{"type":"BPE","vocab":{"ab":0,"cd":1},"merges":[["ab","cd"]]}}"#;
        assert!(check_bytes(p, long).is_err());
    }

    #[test]
    fn the_two_panics_are_refused() {
        let p = Path::new("tokenizer.json");
        assert!(check_bytes(p, br#"{"decoder":{"#).is_err());
        let bad = br#"{"normalizer":{"type":"Sequence","normalizers":[{"type":"Precompiled","precompiled_charsmap":"AAAA"}]}}"#;
        let e = check_bytes(p, bad).unwrap_err().one_line();
        assert!(e.contains("normalizers[0]"), "{e}");
        // No trie at all: encoding would index an empty array.
        let empty = br#"{"normalizer":{"type":"Precompiled","precompiled_charsmap":"AAAAAA=="}}"#;
        assert!(check_bytes(p, empty).is_err());
    }
}
