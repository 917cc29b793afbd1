//! Our own bounded check of a GGUF file before candle's reader sees it.
//!
//! candle's `gguf_file::Content::read` divides by `general.alignment` (zero panics), takes tensor
//! offsets and types as they are, and keeps the last of two tensors with one name. This reads the
//! same layout (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>) and refuses, naming the
//! key or the tensor:
//! - a bad magic or version; counts, string lengths and array lengths the remaining bytes cannot
//!   hold (nothing is allocated from a count before that);
//! - `general.alignment` that is not an unsigned integer, is 0, or is not a power of two;
//! - the architecture's sizes beyond [`super::limits`] (`{arch}.block_count`, ...), a RoPE base
//!   `<= 0`, a negative epsilon, a non-finite float;
//! - a tensor name longer than ggml's 63 bytes or given twice; 0 or more than 4 dimensions; an
//!   unknown ggml type; a row (first dimension) that is not a whole number of blocks; a byte size
//!   that overflows; an offset not a multiple of the alignment; data outside the data section; two
//!   tensors whose data overlap;
//! - a non-finite weight: F32/F16/BF16 elements, and the f16/f32 scales of every quantized block
//!   (a block with finite scales dequantizes to finite numbers), naming the tensor and the first bad
//!   element.

use super::limits::{self, MetaNum};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// ggml's tensor-name limit (`GGML_MAX_NAME` is 64 with the terminating zero).
const MAX_NAME: usize = 63;
/// Nested arrays deeper than this are refused (real files have none).
const MAX_DEPTH: usize = 2;

/// A tensor-table entry.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    /// Dimensions as stored (innermost first).
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
    pub bytes: u64,
}

/// What the check read: enough for tests and for a loader that wants it.
#[derive(Debug, Clone)]
pub struct Checked {
    pub version: u32,
    pub alignment: u64,
    pub architecture: Option<String>,
    pub data_offset: u64,
    pub tensors: Vec<TensorEntry>,
}

/// A ggml type's name, block size (elements) and block bytes; `None` for types we do not know.
pub fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        30 => ("BF16", 1, 2),
        _ => return None,
    })
}

/// Byte offsets of the f16 scales inside one block of a quantized type (Q8_K's scale is an f32 at
/// 0, handled apart). From candle's `k_quants.rs` block structs (ggml's `ggml-common.h`).
fn f16_scales(t: u32) -> &'static [usize] {
    match t {
        2 | 6 | 8 => &[0],
        3 | 7 | 9 => &[0, 2],
        10 => &[80, 82],
        11 => &[108],
        12 | 13 => &[0, 2],
        14 => &[208],
        _ => &[],
    }
}

/// A bounded little-endian cursor over the file's bytes.
struct Cur<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::format(
                self.path,
                format!("GGUF header: {what}"),
                format!("{n} bytes"),
                format!(
                    "{} bytes left in the file at byte {}",
                    self.remaining(),
                    self.pos
                ),
            ));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }

    /// A length: u32 in version 1, u64 after.
    fn len(&mut self, v1: bool, what: &str) -> Result<u64> {
        if v1 {
            Ok(self.u32(what)? as u64)
        } else {
            self.u64(what)
        }
    }

    fn string(&mut self, v1: bool, what: &str) -> Result<&'a [u8]> {
        let n = self.len(v1, what)?;
        self.take(n, what)
    }
}

/// A metadata value, kept only as far as the checks need it (strings and arrays are skipped).
#[derive(Debug, Clone)]
enum Val {
    Num(MetaNum, u32),
    Str(String),
    Bool,
    Array(Vec<MetaNum>),
}

/// Size in bytes of a fixed-size GGUF value type, `None` for string (8), array (9) and unknown.
fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

fn read_scalar(c: &mut Cur, t: u32, what: &str) -> Result<Option<MetaNum>> {
    let n = scalar_size(t).unwrap_or(0);
    let s = c.take(n, what)?;
    Ok(match t {
        0 => Some(MetaNum::Int(s[0] as i128)),
        1 => Some(MetaNum::Int(s[0] as i8 as i128)),
        2 => Some(MetaNum::Int(u16::from_le_bytes([s[0], s[1]]) as i128)),
        3 => Some(MetaNum::Int(i16::from_le_bytes([s[0], s[1]]) as i128)),
        4 => Some(MetaNum::Int(
            u32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as i128,
        )),
        5 => Some(MetaNum::Int(
            i32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as i128,
        )),
        6 => Some(MetaNum::Float(
            f32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as f64,
        )),
        10 => Some(MetaNum::Int(
            u64::from_le_bytes(s.try_into().unwrap_or([0; 8])) as i128,
        )),
        11 => Some(MetaNum::Int(
            i64::from_le_bytes(s.try_into().unwrap_or([0; 8])) as i128,
        )),
        12 => Some(MetaNum::Float(f64::from_le_bytes(
            s.try_into().unwrap_or([0; 8]),
        ))),
        _ => None, // bool
    })
}

fn read_value(c: &mut Cur, t: u32, v1: bool, depth: usize, key: &str) -> Result<Val> {
    let what = format!("metadata '{key}'");
    match t {
        8 => {
            let s = c.string(v1, &what)?;
            Ok(Val::Str(String::from_utf8_lossy(s).into_owned()))
        }
        9 => {
            let et = c.u32(&what)?;
            let n = c.len(v1, &what)?;
            if depth >= MAX_DEPTH {
                return Err(Error::format(
                    c.path,
                    &what,
                    format!("arrays nested at most {MAX_DEPTH} deep"),
                    "deeper nesting",
                ));
            }
            // Each element takes at least its fixed size, or a length prefix for strings and
            // arrays: a count the rest of the file cannot hold is refused before the loop.
            let min = match et {
                8 | 9 => {
                    if v1 {
                        4
                    } else {
                        8
                    }
                }
                _ => scalar_size(et).ok_or_else(|| unknown_type(c.path, &what, et))?,
            };
            if n.saturating_mul(min) > c.remaining() {
                return Err(Error::format(
                    c.path,
                    &what,
                    format!("an array the file can hold ({} bytes left)", c.remaining()),
                    format!("{n} elements of type {et}"),
                ));
            }
            let mut nums = Vec::new();
            for _ in 0..n {
                match et {
                    8 | 9 => {
                        read_value(c, et, v1, depth + 1, key)?;
                    }
                    _ => {
                        if let Some(x) = read_scalar(c, et, &what)? {
                            // Only short arrays can be per-layer sizes; long ones (token scores)
                            // are not kept.
                            if nums.len() < 4096 {
                                nums.push(x);
                            }
                        }
                    }
                }
            }
            Ok(Val::Array(nums))
        }
        7 => {
            c.take(1, &what)?;
            Ok(Val::Bool)
        }
        t if scalar_size(t).is_some() => Ok(read_scalar(c, t, &what)?
            .map(|x| Val::Num(x, t))
            .unwrap_or(Val::Bool)),
        t => Err(unknown_type(c.path, &what, t)),
    }
}

fn unknown_type(path: &Path, what: &str, t: u32) -> Error {
    Error::format(path, what, "a GGUF value type 0..=12", format!("type {t}"))
}

/// Check a GGUF file (memory-mapped; only read).
pub fn check(path: &Path) -> Result<Checked> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 24 {
        return Err(Error::format(
            path,
            "GGUF header",
            "at least 24 bytes (magic, version, counts)",
            format!("a file of {len} bytes"),
        ));
    }
    // SAFETY: read-only mapping of a file we do not write; dropped before returning.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    check_bytes(path, &map)
}

/// Check the bytes of a GGUF file.
pub fn check_bytes(path: &Path, bytes: &[u8]) -> Result<Checked> {
    let mut c = Cur {
        path,
        b: bytes,
        pos: 0,
    };
    let magic = c.take(4, "magic")?;
    if magic != b"GGUF" {
        return Err(Error::format(
            path,
            "GGUF header (magic)",
            "'GGUF' (a little-endian GGUF file)",
            format!("{:?}", String::from_utf8_lossy(magic)),
        ));
    }
    let version = c.u32("version")?;
    if !(1..=3).contains(&version) {
        return Err(Error::format(
            path,
            "GGUF header (version)",
            "1, 2 or 3",
            version.to_string(),
        ));
    }
    let v1 = version == 1;
    let n_tensors = c.len(v1, "tensor count")?;
    let n_kv = c.len(v1, "metadata count")?;
    let prefix = if v1 { 4 } else { 8 };
    let needed = n_kv
        .saturating_mul(prefix + 4 + 1)
        .saturating_add(n_tensors.saturating_mul(prefix + 4 + 4 + 8));
    if needed > c.remaining() {
        return Err(Error::format(
            path,
            "GGUF header",
            format!("counts the file can hold ({} bytes left)", c.remaining()),
            format!("{n_tensors} tensors and {n_kv} metadata entries"),
        ));
    }
    let mut meta: HashMap<String, Val> = HashMap::new();
    for _ in 0..n_kv {
        let key_raw = c.string(v1, "metadata key")?;
        let key = candle_key(key_raw);
        let t = c.u32(&format!("metadata '{key}' type"))?;
        let v = read_value(&mut c, t, v1, 0, &key)?;
        if meta.insert(key.clone(), v).is_some() {
            return Err(Error::format(
                path,
                format!("metadata '{key}'"),
                "each key once",
                "a second entry",
            ));
        }
    }
    let alignment = match meta.get("general.alignment") {
        None => 32,
        // candle reads u8/u16/u32 and non-negative i8/i16/i32 (and silently uses 32 for any other
        // type): the same set is accepted here, anything else refused.
        Some(Val::Num(MetaNum::Int(a), t)) if *a >= 0 && [0u32, 1, 2, 3, 4, 5].contains(t) => {
            *a as u64
        }
        Some(other) => {
            return Err(Error::format(
                path,
                "metadata 'general.alignment'",
                "an unsigned 32-bit integer",
                format!("{other:?}"),
            ))
        }
    };
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(Error::format(
            path,
            "metadata 'general.alignment'",
            "a power of two (32 by default)",
            alignment.to_string(),
        ));
    }
    let architecture = match meta.get("general.architecture") {
        Some(Val::Str(s)) => Some(s.clone()),
        _ => None,
    };
    if let Some(arch) = &architecture {
        let get = |k: &str| -> Vec<MetaNum> {
            match meta.get(k) {
                Some(Val::Num(x, _)) => vec![x.clone()],
                Some(Val::Array(v)) => v.clone(),
                _ => vec![],
            }
        };
        limits::check_gguf_meta(path, arch, &get)?;
    }
    // The tensor table.
    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let raw = c.string(v1, "tensor name")?;
        let name = candle_key(raw);
        if raw.len() > MAX_NAME {
            return Err(Error::format(
                path,
                format!("tensor '{name}'"),
                format!("a name of at most {MAX_NAME} bytes"),
                format!("{} bytes", raw.len()),
            ));
        }
        let what = format!("tensor '{name}'");
        if !names.insert(name.clone()) {
            return Err(Error::format(
                path,
                &what,
                "each name once",
                "a second entry",
            ));
        }
        let nd = c.u32(&what)?;
        if !(1..=4).contains(&nd) {
            return Err(Error::format(
                path,
                &what,
                "1 to 4 dimensions",
                nd.to_string(),
            ));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(c.len(v1, &what)?);
        }
        let t = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let Some((tname, block, block_bytes)) = ggml_type(t) else {
            return Err(Error::format(
                path,
                &what,
                "a known ggml type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K..Q8_K)",
                format!("type {t}"),
            ));
        };
        if dims[0] % block != 0 {
            return Err(Error::format(
                path,
                &what,
                format!("rows of whole {tname} blocks ({block} elements)"),
                format!("a first dimension of {}", dims[0]),
            ));
        }
        let elems = limits::product(path, &what, &dims)?;
        let nbytes = (elems / block).checked_mul(block_bytes).ok_or_else(|| {
            Error::format(
                path,
                &what,
                "a byte size that fits in 64 bits",
                format!("{dims:?}"),
            )
        })?;
        limits::within_file(path, &what, nbytes, bytes.len() as u64)?;
        if offset % alignment != 0 {
            return Err(Error::format(
                path,
                &what,
                format!("an offset that is a multiple of the alignment {alignment}"),
                offset.to_string(),
            ));
        }
        tensors.push(TensorEntry {
            name,
            dims,
            ggml_type: t,
            offset,
            bytes: nbytes,
        });
    }
    let table_end = c.pos as u64;
    let data_offset = table_end.div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        let end = limits::add(path, &format!("tensor '{}'", t.name), t.offset, t.bytes)?;
        if end > data_len {
            return Err(Error::format(
                path,
                format!("tensor '{}'", t.name),
                format!(
                    "its full data inside the data section (bytes {}..{end} of its {data_len}, from file byte {data_offset})",
                    t.offset
                ),
                format!("a file of {file_len} bytes (truncated, or a bad offset)"),
            ));
        }
    }
    let mut spans: Vec<&TensorEntry> = tensors.iter().filter(|t| t.bytes > 0).collect();
    spans.sort_by_key(|t| (t.offset, t.bytes));
    for w in spans.windows(2) {
        if w[1].offset < w[0].offset + w[0].bytes {
            return Err(Error::format(
                path,
                format!("tensor '{}'", w[1].name),
                format!(
                    "data after tensor '{}' (which ends at data byte {})",
                    w[0].name,
                    w[0].offset + w[0].bytes
                ),
                format!("data starting at data byte {}", w[1].offset),
            ));
        }
    }
    for t in tensors.iter().filter(|t| t.bytes > 0) {
        // Inside the file: offset + bytes <= data_len = file_len - data_offset, checked above.
        let start = (data_offset + t.offset) as usize;
        check_finite(path, t, &bytes[start..start + t.bytes as usize])?;
    }
    Ok(Checked {
        version,
        alignment,
        architecture,
        data_offset,
        tensors,
    })
}

/// A key or name as candle stores it (trailing zero bytes dropped, invalid UTF-8 replaced), so that
/// two entries candle would merge are seen as one name here.
fn candle_key(raw: &[u8]) -> String {
    let mut end = raw.len();
    while end > 0 && raw[end - 1] == 0 {
        end -= 1;
    }
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The first non-finite weight (or block scale) of one tensor's data.
fn check_finite(path: &Path, t: &TensorEntry, data: &[u8]) -> Result<()> {
    let bad = |i: u64, v: f64| {
        Err(Error::format(
            path,
            format!("tensor '{}' element {i}", t.name),
            "a finite number",
            v.to_string(),
        ))
    };
    match t.ggml_type {
        0 => super::safetensors_check::check_finite_raw(path, &t.name, "F32", data),
        1 => super::safetensors_check::check_finite_raw(path, &t.name, "F16", data),
        30 => super::safetensors_check::check_finite_raw(path, &t.name, "BF16", data),
        ty => {
            let Some((_, block, bb)) = ggml_type(ty) else {
                return Ok(());
            };
            for (b, blk) in data.chunks_exact(bb as usize).enumerate() {
                if ty == 15 {
                    let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                    if !d.is_finite() {
                        return bad(b as u64 * block, d as f64);
                    }
                }
                for &o in f16_scales(ty) {
                    let d = half::f16::from_le_bytes([blk[o], blk[o + 1]]);
                    if !d.is_finite() {
                        return bad(b as u64 * block, d.to_f64());
                    }
                }
            }
            Ok(())
        }
    }
}
