//! Named f32 arrays and their files (.npy, .npz, .safetensors), written atomically.

pub mod npy;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A plain row-major f32 array: what sliders edit and files hold.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    pub fn zeros(shape: &[usize]) -> Self {
        Array {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Self> {
        Ok(Array {
            shape: t.dims().to_vec(),
            data: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        })
    }

    pub fn to_tensor(&self) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.data, self.shape.as_slice(), &Device::Cpu)
    }
}

/// Read every array of an `.npy`, `.npz` or `.safetensors` file as f32.
///
/// Every size a file states is checked against the bytes it holds before anything is allocated
/// ([`npy`] for `.npy` and `.npz` members, [`crate::load::safetensors_check`] for safetensors); a
/// panic inside a reader becomes an error naming the file.
pub fn read_arrays(path: &Path) -> Result<HashMap<String, Array>> {
    crate::load::guard::catch(path, "array file", || read_arrays_unguarded(path))
}

fn read_arrays_unguarded(path: &Path) -> Result<HashMap<String, Array>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let ext = extension(path);
    let bad = |e: candle_core::Error, what: &str| {
        Error::format(
            path,
            what,
            format!("a valid {what}"),
            crate::error::candle_message(&e),
        )
    };
    let mut out = HashMap::new();
    match ext.as_str() {
        "npy" => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            out.insert("array".to_string(), npy::read(path, "array", &bytes)?);
        }
        "npz" => {
            for (name, a) in read_npz(path)? {
                out.insert(name, a);
            }
        }
        "safetensors" => {
            crate::load::safetensors_check::check_file(path)?;
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| bad(e, "safetensors file"))?;
            for (name, t) in tensors {
                let a = Array::from_tensor(&t).map_err(|e| bad(e, "f32-convertible array"))?;
                out.insert(name, a);
            }
        }
        other => {
            return Err(Error::unsupported(
                path,
                "file extension",
                format!("'.{other}'"),
                ".npy, .npz, .safetensors",
            ))
        }
    };
    Ok(out)
}

/// Deflate's largest expansion is about 1032:1; a member whose declared size exceeds that over its
/// compressed bytes is corrupt (or a bomb) and is refused before it is read.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// The `.npy` members of an `.npz` (zip) archive, each read through a reader capped at its declared
/// size, which must itself be plausible for its compressed size.
fn read_npz(path: &Path) -> Result<Vec<(String, Array)>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| {
        Error::format(
            path,
            ".npz archive",
            "a zip archive of .npy files",
            e.to_string(),
        )
    })?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut m = zip.by_index(i).map_err(|e| {
            Error::format(
                path,
                format!(".npz member {i}"),
                "a readable member",
                e.to_string(),
            )
        })?;
        let raw_name = match m.name() {
            Ok(n) => n.to_string(),
            Err(_) => String::from_utf8_lossy(m.name_raw()).into_owned(),
        };
        let Some(name) = raw_name.strip_suffix(".npy").map(str::to_string) else {
            return Err(Error::format(
                path,
                format!(".npz member '{raw_name}'"),
                "a member named *.npy",
                format!("'{raw_name}'"),
            ));
        };
        let (size, packed) = (m.size(), m.compressed_size());
        if size
            > packed
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(4096)
        {
            return Err(Error::format(
                path,
                format!("array '{name}'"),
                format!("at most {MAX_DEFLATE_RATIO} times its {packed} compressed bytes"),
                format!("{size} bytes declared"),
            ));
        }
        let mut bytes = Vec::new();
        (&mut m)
            .take(size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Error::format(
                    path,
                    format!("array '{name}'"),
                    "readable data",
                    e.to_string(),
                )
            })?;
        if bytes.len() as u64 != size {
            return Err(Error::format(
                path,
                format!("array '{name}'"),
                format!("{size} bytes (its declared size)"),
                format!("{} bytes", bytes.len()),
            ));
        }
        out.push((name.clone(), npy::read(path, &name, &bytes)?));
    }
    Ok(out)
}

/// Write named arrays atomically as `.npz`, `.npy` (exactly one array) or `.safetensors`.
pub fn write_arrays(path: &Path, named: &[(&str, &Array)]) -> Result<()> {
    if extension(path) == "npz" {
        // Straight from the arrays: no tensor copy of each.
        let mut npz = NpzWriter::create(path)?;
        for (name, a) in named {
            npz.add(name, a)?;
        }
        return npz.finish();
    }
    let tensors: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, a)| Ok((n.to_string(), a.to_tensor()?)))
        .collect::<candle_core::Result<_>>()?;
    write_tensors(path, tensors)
}

/// [`write_arrays`] taking the arrays: their data moves into the written tensors instead of being
/// copied (a long prompt's maps are hundreds of MB each).
pub fn write_arrays_owned(path: &Path, named: Vec<(String, Array)>) -> Result<()> {
    if extension(path) == "npz" {
        let refs: Vec<(&str, &Array)> = named.iter().map(|(n, a)| (n.as_str(), a)).collect();
        return write_arrays(path, &refs);
    }
    let tensors: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(n, a)| Ok((n, Tensor::from_vec(a.data, a.shape, &Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    write_tensors(path, tensors)
}

fn write_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let ext = extension(path);
    let tmp = tmp_path(path);
    let res = match ext.as_str() {
        "npy" if tensors.len() == 1 => tensors[0].1.write_npy(&tmp),
        "npy" => {
            return Err(Error::input(
                path.display().to_string(),
                "a .npz or .safetensors file for several arrays",
                format!("{} arrays for one .npy", tensors.len()),
            ))
        }
        "safetensors" => {
            let map: HashMap<String, Tensor> = tensors.into_iter().collect();
            candle_core::safetensors::save(&map, &tmp)
        }
        other => {
            return Err(Error::unsupported(
                path,
                "file extension",
                format!("'.{other}'"),
                ".npy, .npz, .safetensors",
            ))
        }
    };
    let done = res
        .map_err(|e| Error::format(path, "write", "a writable file", e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    remove_on_error(&tmp, done)
}

/// One `.npy` file's bytes before its data: the format's magic, version 1.0, and the header dict
/// (numpy's own layout), padded with spaces and a newline to a multiple of 64 bytes.
fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

type NpzZip = zip::ZipWriter<std::io::BufWriter<std::fs::File>>;

fn zip_error(e: zip::result::ZipError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// A new zip at `path` behind a 1 MB buffer.
fn npz_zip(path: &Path) -> candle_core::Result<NpzZip> {
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    Ok(zip::ZipWriter::new(file))
}

/// One stored (uncompressed) `{name}.npy` entry: numpy's header for `shape`, then `data` as
/// little-endian f32 in blocks of 1 MB (zip64 when it passes 4 GB). candle's `write_npz` writes every
/// float with its own call into an unbuffered file (7 million `write` calls and 125 s of system time
/// for a 2,048-token prompt's four layers).
fn npz_entry(
    zip: &mut NpzZip,
    name: &str,
    shape: &[usize],
    data: &[f32],
) -> candle_core::Result<()> {
    use std::io::Write;
    let header = npy_header(shape);
    let bytes = header.len() as u64 + data.len() as u64 * 4;
    let options: zip::write::FileOptions<()> = zip::write::FileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(bytes >= u32::MAX as u64);
    zip.start_file(format!("{name}.npy"), options)
        .map_err(zip_error)?;
    zip.write_all(&header)?;
    let mut block = Vec::with_capacity(1 << 20);
    for chunk in data.chunks(1 << 18) {
        block.clear();
        for x in chunk {
            block.extend_from_slice(&x.to_le_bytes());
        }
        zip.write_all(&block)?;
    }
    Ok(())
}

/// An `.npz` written one array at a time into a temporary file beside `path` and renamed onto it by
/// [`NpzWriter::finish`], so that a long prompt's maps go to disk layer by layer instead of being
/// held together (`prefixscope attention`). Dropped unfinished (an error on the way), it removes its
/// temporary file and leaves `path` as it was.
pub struct NpzWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    zip: Option<NpzZip>,
}

impl NpzWriter {
    /// Start the file. Errors: the temporary file cannot be created (naming `path`).
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = tmp_path(path);
        let zip = npz_zip(&tmp).map_err(|e| write_error(path, e))?;
        Ok(NpzWriter {
            path: path.to_path_buf(),
            tmp,
            zip: Some(zip),
        })
    }

    /// Append one array as `{name}.npy`. Errors: a write failed (the disk is full, naming `path`).
    pub fn add(&mut self, name: &str, a: &Array) -> Result<()> {
        if a.shape.iter().product::<usize>() != a.data.len() {
            return Err(Error::Internal("an array's data does not fill its shape"));
        }
        let zip = self
            .zip
            .as_mut()
            .ok_or(Error::Internal("npz written after it was finished"))?;
        npz_entry(zip, name, &a.shape, &a.data).map_err(|e| write_error(&self.path, e))
    }

    /// Write the zip's directory and rename the file onto `path`.
    pub fn finish(mut self) -> Result<()> {
        use std::io::Write;
        let zip = self
            .zip
            .take()
            .ok_or(Error::Internal("npz finished twice"))?;
        let done = zip
            .finish()
            .map_err(zip_error)
            .and_then(|mut f| f.flush().map_err(candle_core::Error::from))
            .map_err(|e| write_error(&self.path, e))
            .and_then(|()| {
                std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
            });
        remove_on_error(&self.tmp, done)
    }
}

impl Drop for NpzWriter {
    fn drop(&mut self) {
        if self.zip.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_error(path: &Path, e: candle_core::Error) -> Error {
    Error::format(path, "write", "a writable file", e.to_string())
}

/// A failed write or rename leaves no temporary file behind.
fn remove_on_error(tmp: &Path, done: Result<()>) -> Result<()> {
    if done.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    done
}

pub fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A temporary name beside `path` (same directory, so the rename is atomic), keeping the extension
/// because some writers pick the format from it.
pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let ext = extension(path);
    path.with_file_name(format!(".{name}.{}.tmp.{ext}", std::process::id()))
}

/// Write named arrays as JSON: each name maps to nested lists of its shape. Atomic.
pub fn write_json(path: &Path, named: &[(String, Array)]) -> Result<()> {
    fn nest(shape: &[usize], data: &[f32]) -> serde_json::Value {
        match shape {
            [] => serde_json::Value::from(data.first().copied().unwrap_or(0.0) as f64),
            [_] => serde_json::Value::from(data.iter().map(|&x| x as f64).collect::<Vec<_>>()),
            [n, rest @ ..] => {
                let step = rest.iter().product::<usize>();
                serde_json::Value::Array(
                    (0..*n)
                        .map(|i| nest(rest, &data[i * step..(i + 1) * step]))
                        .collect(),
                )
            }
        }
    }
    let mut map = serde_json::Map::new();
    for (name, a) in named {
        map.insert(name.clone(), nest(&a.shape, &a.data));
    }
    let text = serde_json::to_string(&serde_json::Value::Object(map))
        .map_err(|e| Error::format(path, "json", "serializable arrays", e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// Write bytes to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let done = std::fs::write(&tmp, bytes)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    remove_on_error(&tmp, done)
}
