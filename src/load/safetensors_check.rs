//! Our own bounded check of a safetensors file before the safetensors crate or candle reads it, so
//! that every error names the tensor and every weight is known finite.
//!
//! Layout (<https://github.com/huggingface/safetensors>): an 8-byte little-endian header length `n`,
//! `n` bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`,
//! then the data; offsets are relative to the data section. Checked here: the header fits in the
//! file (and in the crate's 100 MB limit), every dtype is known, every shape's byte size (checked
//! arithmetic) equals its offsets' span, every span lies inside the data and no two overlap, and
//! every float tensor (F16, BF16, F32, F64) is finite: the first bad element is named.

use super::limits;
use crate::error::{Error, Result};
use std::path::Path;

/// The safetensors crate's own header limit.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor entry of the header.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

/// Element size in bytes of a safetensors dtype, `None` if unknown. Sub-byte types (F4, F6) are
/// refused: none of our formats use them.
fn dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Check `path` (memory-mapped; only read).
pub fn check_file(path: &Path) -> Result<Vec<Entry>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::format(
            path,
            "safetensors",
            "an 8-byte header length",
            "an empty file",
        ));
    }
    // SAFETY: read-only mapping of a file we do not write; dropped before returning.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    check_bytes(path, &map)
}

/// Check the bytes of a safetensors file.
pub fn check_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>> {
    let entries = check_header(path, bytes)?;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    let data = &bytes[(8 + n) as usize..];
    for e in &entries {
        let raw = &data[e.begin as usize..e.end as usize];
        check_finite_raw(path, &e.name, &e.dtype, raw)?;
    }
    Ok(entries)
}

/// The header's entries, checked against the file's length (no data is read).
pub fn check_header(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>> {
    let file_len = bytes.len() as u64;
    let bad =
        |what: &str, expected: &str, found: String| Err(Error::format(path, what, expected, found));
    if file_len < 8 {
        return bad(
            "safetensors header",
            "an 8-byte header length",
            format!("a file of {file_len} bytes"),
        );
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER || n > file_len - 8 {
        return bad(
            "safetensors header length",
            &format!(
                "at most {} bytes (the file's {file_len} bytes less 8)",
                (file_len - 8).min(MAX_HEADER)
            ),
            n.to_string(),
        );
    }
    let header = &bytes[8..(8 + n) as usize];
    let text = std::str::from_utf8(header)
        .map_err(|e| Error::format(path, "safetensors header", "UTF-8 JSON", e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| Error::format(path, "safetensors header", "a JSON object", e.to_string()))?;
    let obj = match v.as_object() {
        Some(o) => o,
        None => return bad("safetensors header", "a JSON object", kind(&v)),
    };
    let data_len = file_len - 8 - n;
    let mut entries = Vec::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            let ok = t
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string()));
            if !ok && !t.is_null() {
                return bad(
                    "safetensors '__metadata__'",
                    "an object of strings",
                    kind(t),
                );
            }
            continue;
        }
        let what = format!("tensor '{name}'");
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let Some(esize) = dtype_size(dtype) else {
            return bad(
                &what,
                "a known dtype (F16, BF16, F32, F64, I8..I64, U8..U64, BOOL, F8_*)",
                t.get("dtype")
                    .map(|d| d.to_string())
                    .unwrap_or("none".into()),
            );
        };
        let shape: Option<Vec<u64>> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect());
        let Some(shape) = shape else {
            return bad(
                &what,
                "a shape (a list of sizes)",
                t.get("shape")
                    .map(|s| s.to_string())
                    .unwrap_or("none".into()),
            );
        };
        let offs: Option<Vec<u64>> = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect());
        let (begin, end) = match offs.as_deref() {
            Some([b, e]) if b <= e => (*b, *e),
            _ => {
                return bad(
                    &what,
                    "data_offsets [begin, end] with begin <= end",
                    t.get("data_offsets")
                        .map(|s| s.to_string())
                        .unwrap_or("none".into()),
                )
            }
        };
        let bytes_needed = limits::tensor_bytes(path, &what, &shape, esize)?;
        if end > data_len {
            return bad(
                &what,
                &format!(
                    "a complete safetensors file, with this tensor's data inside its {data_len} data bytes"
                ),
                format!("bytes {begin}..{end} (truncated, or a bad offset)"),
            );
        }
        if end - begin != bytes_needed {
            return bad(
                &what,
                &format!("{bytes_needed} bytes ({dtype} {shape:?})"),
                format!("{} bytes (offsets {begin}..{end})", end - begin),
            );
        }
        entries.push(Entry {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            begin,
            end,
        });
    }
    let mut spans: Vec<&Entry> = entries.iter().filter(|e| e.end > e.begin).collect();
    spans.sort_by_key(|e| (e.begin, e.end));
    for w in spans.windows(2) {
        if w[1].begin < w[0].end {
            return bad(
                &format!("tensor '{}'", w[1].name),
                &format!(
                    "data after tensor '{}' (which ends at byte {})",
                    w[0].name, w[0].end
                ),
                format!("data starting at byte {}", w[1].begin),
            );
        }
    }
    Ok(entries)
}

fn kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
    .to_string()
}

/// The first non-finite element of raw little-endian float data of `dtype`, refused by name and
/// index. Other dtypes pass.
pub fn check_finite_raw(path: &Path, name: &str, dtype: &str, raw: &[u8]) -> Result<()> {
    let bad = |i: usize, v: f64| {
        Err(Error::format(
            path,
            format!("tensor '{name}' element {i}"),
            "a finite number",
            v.to_string(),
        ))
    };
    match dtype {
        "F32" => {
            for (i, c) in raw.chunks_exact(4).enumerate() {
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if !x.is_finite() {
                    return bad(i, x as f64);
                }
            }
        }
        "F64" => {
            for (i, c) in raw.chunks_exact(8).enumerate() {
                let x = f64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                if !x.is_finite() {
                    return bad(i, x);
                }
            }
        }
        "F16" => {
            for (i, c) in raw.chunks_exact(2).enumerate() {
                let x = half::f16::from_le_bytes([c[0], c[1]]);
                if !x.is_finite() {
                    return bad(i, x.to_f64());
                }
            }
        }
        "BF16" => {
            for (i, c) in raw.chunks_exact(2).enumerate() {
                let x = half::bf16::from_le_bytes([c[0], c[1]]);
                if !x.is_finite() {
                    return bad(i, x.to_f64());
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn refusals_name_the_tensor() {
        let p = Path::new("t.safetensors");
        let ok = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert_eq!(check_bytes(p, &ok).unwrap().len(), 1);
        let big = file(
            r#"{"w":{"dtype":"F32","shape":[288230376151711744,576],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        let e = check_bytes(p, &big).unwrap_err().one_line();
        assert!(e.contains("tensor 'w'"), "{e}");
        let overlap = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
        );
        let e = check_bytes(p, &overlap).unwrap_err().one_line();
        assert!(e.contains("tensor 'b'"), "{e}");
        let mut nan = vec![0u8; 8];
        nan[4..].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = check_bytes(
            p,
            &file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                &nan,
            ),
        )
        .unwrap_err()
        .one_line();
        assert!(e.contains("tensor 'a' element 1"), "{e}");
    }
}
