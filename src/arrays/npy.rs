//! A bounded reader of NumPy `.npy` data (alone or as `.npz` members), in place of candle's, which
//! trusts the header's shape (a declared `(2^64 - 1,)` panics with "capacity overflow", a
//! `(2^58, 576)` wraps its element count to 0 in release builds).
//!
//! Format (<https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>): magic
//! `\x93NUMPY`, version `1.x` (u16 header length) or `2.x`/`3.x` (u32), then a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces, then the data.
//!
//! Read: floats `f2 f4 f8`, integers `i1..i8`, `u1..u8` and `b1` in either byte order, C or Fortran
//! order (returned row-major). The shape's element count is computed by checked arithmetic and its
//! byte size must equal the bytes present before anything is allocated. Integers must be exact in
//! f32 (`|x| <= 2^24`). Every refusal names the array, its dtype and its order.

use super::Array;
use crate::error::{Error, Result};
use crate::load::limits;
use std::path::Path;

/// What the header says.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The dtype string as written (`'<f4'`).
    pub descr: String,
    /// `f`, `i`, `u` or `b`.
    pub kind: char,
    pub item: usize,
    pub big_endian: bool,
    pub fortran: bool,
    pub shape: Vec<u64>,
    /// Offset of the data.
    pub data_at: usize,
}

impl Header {
    /// "array 'x' (dtype '<f4', C order)".
    pub fn label(&self, name: &str) -> String {
        format!(
            "array '{name}' (dtype '{}', {} order)",
            self.descr,
            if self.fortran { "Fortran" } else { "C" }
        )
    }
}

/// Parse the header of `.npy` bytes; `name` is the array's name for messages.
pub fn header(path: &Path, name: &str, b: &[u8]) -> Result<Header> {
    let what = format!("array '{name}'");
    let bad = |expected: &str, found: String| Error::format(path, &what, expected, found);
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad(
            "a .npy array (magic \\x93NUMPY)",
            format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(6)])),
        ));
    }
    let major = b[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => {
            return Err(bad(
                ".npy format version 1, 2 or 3",
                format!("version {major}.{}", b[7]),
            ))
        }
    };
    if hlen > b.len() - start {
        return Err(bad(
            &format!("a header of at most {} bytes", b.len() - start),
            format!("a header length of {hlen}"),
        ));
    }
    let text: String = if major == 3 {
        std::str::from_utf8(&b[start..start + hlen])
            .map_err(|_| bad("a UTF-8 header", "invalid UTF-8".into()))?
            .to_string()
    } else {
        // latin-1
        b[start..start + hlen].iter().map(|&c| c as char).collect()
    };
    let dict = parse_dict(&text)
        .map_err(|why| bad("a header dict {'descr', 'fortran_order', 'shape'}", why))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in dict {
        match (k.as_str(), v) {
            ("descr", Py::Str(s)) => descr = Some(s),
            ("descr", other) => {
                return Err(bad(
                    "a plain dtype ('<f4', ...)",
                    format!("a structured dtype {other:?}"),
                ))
            }
            ("fortran_order", Py::Bool(f)) => fortran = Some(f),
            ("shape", Py::Tuple(t)) => shape = Some(t),
            (k, v) => {
                return Err(bad(
                    "keys 'descr' (a string), 'fortran_order' (a bool), 'shape' (a tuple)",
                    format!("'{k}': {v:?}"),
                ))
            }
        }
    }
    let (Some(descr), Some(fortran), Some(shape)) = (descr, fortran, shape) else {
        return Err(bad(
            "keys 'descr', 'fortran_order' and 'shape'",
            "a header without them".into(),
        ));
    };
    let order = if fortran { "Fortran" } else { "C" };
    let dt = descr.as_bytes();
    let (bo, kind, item) = match dt {
        [bo @ (b'<' | b'>' | b'|' | b'='), k, rest @ ..] => (
            *bo,
            *k as char,
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse::<usize>().ok()),
        ),
        _ => (b'?', '?', None),
    };
    let ok = matches!(
        (kind, item),
        ('f', Some(2 | 4 | 8)) | ('i' | 'u', Some(1 | 2 | 4 | 8)) | ('b', Some(1))
    ) && (item == Some(1) || bo == b'<' || bo == b'>');
    if !ok {
        return Err(Error::unsupported(
            path,
            format!("dtype of array '{name}' ({order} order)"),
            format!("'{descr}'"),
            "floats f2, f4, f8, integers i1..i8, u1..u8, bool b1, little- or big-endian ('<', '>')",
        ));
    }
    Ok(Header {
        descr,
        kind,
        item: item.unwrap_or(1),
        big_endian: bo == b'>',
        fortran,
        shape,
        data_at: start + hlen,
    })
}

/// Read `.npy` bytes as a row-major f32 array.
pub fn read(path: &Path, name: &str, b: &[u8]) -> Result<Array> {
    let h = header(path, name, b)?;
    let label = h.label(name);
    let n = limits::product(path, &label, &h.shape)?;
    let need = limits::tensor_bytes(path, &label, &h.shape, h.item as u64)?;
    let data = &b[h.data_at..];
    if need != data.len() as u64 {
        return Err(Error::format(
            path,
            &label,
            format!("{need} bytes of data for shape {:?}", h.shape),
            format!("{} bytes", data.len()),
        ));
    }
    let n = n as usize; // <= the bytes present
    let mut out = Vec::with_capacity(n);
    for (i, c) in data.chunks_exact(h.item).enumerate() {
        let mut e = [0u8; 8];
        e[..h.item].copy_from_slice(c);
        if h.big_endian {
            e[..h.item].reverse();
        }
        let x = match (h.kind, h.item) {
            ('f', 2) => half::f16::from_le_bytes([e[0], e[1]]).to_f32(),
            ('f', 4) => f32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            ('f', _) => f64::from_le_bytes(e) as f32,
            ('b', _) => (e[0] != 0) as u8 as f32,
            (k, s) => {
                let v: i128 = if k == 'u' {
                    u64::from_le_bytes(e) as i128
                } else {
                    // sign-extend from `s` bytes
                    let shift = 64 - 8 * s as u32;
                    ((i64::from_le_bytes(e) << shift) >> shift) as i128
                };
                if v.unsigned_abs() > 1 << 24 {
                    return Err(Error::format(
                        path,
                        format!("{label} element {i}"),
                        "an integer exact in f32 (|x| <= 2^24)",
                        v.to_string(),
                    ));
                }
                v as f32
            }
        };
        out.push(x);
    }
    let shape: Vec<usize> = h.shape.iter().map(|&d| d as usize).collect();
    let data = if h.fortran && shape.len() > 1 {
        fortran_to_c(&out, &shape)
    } else {
        out
    };
    Ok(Array { shape, data })
}

/// Column-major `src` of `shape` in row-major order.
fn fortran_to_c(src: &[f32], shape: &[usize]) -> Vec<f32> {
    let k = shape.len();
    // Fortran strides: axis 0 moves by 1.
    let mut stride = vec![1usize; k];
    for a in 1..k {
        stride[a] = stride[a - 1] * shape[a - 1];
    }
    let mut out = Vec::with_capacity(src.len());
    let mut idx = vec![0usize; k];
    for _ in 0..src.len() {
        let f: usize = idx.iter().zip(&stride).map(|(i, s)| i * s).sum();
        out.push(src[f]);
        // Row-major odometer: the last axis moves fastest.
        for a in (0..k).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// A Python literal as the header uses them.
#[derive(Debug, Clone, PartialEq)]
enum Py {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    Other(String),
}

/// `{'key': value, ...}` with string keys; values strings, True/False, tuples of integers, or
/// anything else kept as text (a structured dtype's list).
fn parse_dict(s: &str) -> std::result::Result<Vec<(String, Py)>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or_else(|| format!("{:?}", cut(s)))?;
    let mut out = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (key, r) = py_str(rest).ok_or_else(|| format!("a key at {:?}", cut(rest)))?;
        let r = r
            .trim_start()
            .strip_prefix(':')
            .ok_or("a ':' after a key")?;
        let r = r.trim_start();
        let (val, r) = if r.starts_with('\'') || r.starts_with('"') {
            let (v, r) = py_str(r).ok_or("an unterminated string")?;
            (Py::Str(v), r)
        } else if let Some(r) = r.strip_prefix("True") {
            (Py::Bool(true), r)
        } else if let Some(r) = r.strip_prefix("False") {
            (Py::Bool(false), r)
        } else if let Some(r) = r.strip_prefix('(') {
            let end = r.find(')').ok_or("an unterminated tuple")?;
            let mut dims = Vec::new();
            for part in r[..end].split(',') {
                let p = part.trim().trim_end_matches('L');
                if p.is_empty() {
                    continue;
                }
                dims.push(
                    p.parse::<u64>()
                        .map_err(|_| format!("a shape entry {:?}", cut(p)))?,
                );
            }
            (Py::Tuple(dims), &r[end + 1..])
        } else {
            // A structured dtype (a list) or another literal: taken up to the next top-level comma.
            let mut depth = 0i32;
            let mut end = r.len();
            for (i, c) in r.char_indices() {
                match c {
                    '[' | '(' | '{' => depth += 1,
                    ']' | ')' | '}' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            (Py::Other(cut(&r[..end])), &r[end..])
        };
        out.push((key, val));
        let r = r.trim_start();
        rest = match r.strip_prefix(',') {
            Some(x) => x.trim_start(),
            None if r.is_empty() => r,
            None => return Err(format!("a ',' at {:?}", cut(r))),
        };
    }
    Ok(out)
}

fn py_str(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((body[..end].to_string(), &body[end + 1..]))
}

fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn byte_orders_and_fortran_order() {
        let p = Path::new("a.npy");
        // [[1, 2, 3], [4, 5, 6]] stored column-major: 1 4 2 5 3 6, big-endian f4.
        let col: Vec<u8> = [1f32, 4., 2., 5., 3., 6.]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let a = read(p, "x", &npy(">f4", true, "(2, 3)", &col)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
        let le: Vec<u8> = [1f32, 2.].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            read(p, "x", &npy("<f4", false, "(2,)", &le)).unwrap().data,
            vec![1., 2.]
        );
        assert_eq!(
            read(p, "x", &npy("|u1", false, "(3,)", &[0, 7, 255]))
                .unwrap()
                .data,
            vec![0., 7., 255.]
        );
        let i2: Vec<u8> = (-3i16).to_be_bytes().to_vec();
        assert_eq!(
            read(p, "x", &npy(">i2", false, "(1,)", &i2)).unwrap().data,
            vec![-3.]
        );
        // A (2, 2, 2) Fortran array: element (i, j, k) at i + 2j + 4k.
        let f: Vec<u8> = (0..8).map(|x| x as u8).collect();
        let a = read(p, "x", &npy("|u1", true, "(2, 2, 2)", &f)).unwrap();
        assert_eq!(a.data, vec![0., 4., 2., 6., 1., 5., 3., 7.]);
    }

    #[test]
    fn declared_sizes_are_checked_before_allocating() {
        let p = Path::new("a.npy");
        let e = read(p, "x", &npy("<f4", false, "(288230376151711744, 576)", &[]))
            .unwrap_err()
            .one_line();
        assert!(e.contains("'<f4'") && e.contains("C order"), "{e}");
        let e = read(p, "x", &npy("<f4", false, "(18446744073709551615,)", &[]))
            .unwrap_err()
            .one_line();
        assert!(e.contains("'<f4'"), "{e}");
        let e = read(p, "x", &npy(">f8", true, "(1000000000000, 576)", &[0; 8]))
            .unwrap_err()
            .one_line();
        assert!(e.contains("'>f8'") && e.contains("Fortran order"), "{e}");
        let e = read(p, "x", &npy("<c8", true, "(1,)", &[0; 8]))
            .unwrap_err()
            .one_line();
        assert!(e.contains("'<c8'") && e.contains("Fortran order"), "{e}");
    }
}
