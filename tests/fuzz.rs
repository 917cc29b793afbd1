//! A fuzz harness on stable Rust (issue 17): structure-aware mutators with fixed seeds, one per reader,
//! each input run through the library's own loader in this process under `catch_unwind`.
//!
//! Readers: our toy safetensors (header and data), GGUF (header, metadata, tensor table, data),
//! Hugging Face `config.json`, `tokenizer.json`, `.npy`, `.npz`, prefix files (safetensors), and the
//! app's `session.json` (with its recent list) and prefix autosave. Every valid seed is a small file
//! (the tiny HF folder of `tests/regressions/hostile-files`, the toy sorter, a tiny GGUF made from a
//! regression input), so an iteration takes milliseconds.
//!
//! A failure is: a panic (also one that the loaders' last-resort guard turned into an error: its
//! message says "an internal failure"), an error message that is not one short line, a success
//! whose numbers are not finite, or an input that takes more than 30 s. Memory is not capped here
//! (an rlimit would break the test binary): the loaders must make big allocations impossible.
//! Every failing input is written to `tests/regressions/fuzz/` (commit it) and
//! [`replay_kept_crashes`] runs it again in every `cargo test`.
//!
//! Budget: about 60 s in all by default, shared by the readers; `PREFIXSCOPE_FUZZ_SECS=1800` runs
//! 30 minutes. Seeds are fixed (`PREFIXSCOPE_FUZZ_SEED` changes them). Counts per reader are
//! printed (`cargo test --test fuzz -- --nocapture`).
#![cfg(feature = "gui")] // the session.json reader is the window's

mod common;

use prefixscope::load;
use prefixscope::model::{LayerSel, ModelInfo, Transformer};
use prefixscope::prefix::{Prefix, PrefixKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const READERS: usize = 9;
const SLOW: Duration = Duration::from_secs(30);

fn total_budget() -> Duration {
    let secs = std::env::var("PREFIXSCOPE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(60.0);
    Duration::from_secs_f64(secs)
}

fn base_seed() -> u64 {
    std::env::var("PREFIXSCOPE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(17)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hostile(name: &str) -> PathBuf {
    root().join("tests/regressions/hostile-files").join(name)
}

fn kept_dir() -> PathBuf {
    root().join("tests/regressions/fuzz")
}

// ---------------------------------------------------------------------------------------------
// Random helpers
// ---------------------------------------------------------------------------------------------

struct R(StdRng);

impl R {
    fn new(seed: u64) -> Self {
        R(StdRng::seed_from_u64(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.0.random_range(0..n)
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    /// An integer a size check must survive.
    fn int(&mut self) -> u64 {
        const I: &[u64] = &[
            0,
            1,
            2,
            3,
            4,
            7,
            8,
            16,
            31,
            32,
            33,
            63,
            64,
            65,
            255,
            256,
            300,
            4096,
            65535,
            65536,
            (1 << 31) - 1,
            1 << 31,
            (1 << 32) - 1,
            1 << 32,
            1 << 40,
            1 << 53,
            1 << 58,
            1 << 62,
            1 << 63,
            u64::MAX,
            u64::MAX - 1,
            1_000_000_000_000,
        ];
        if self.chance(0.8) {
            *self.pick(I)
        } else {
            self.0.random()
        }
    }
    fn f64(&mut self) -> f64 {
        const F: &[f64] = &[
            0.0, -0.0, -1.0, 1.0, 1e-300, -1e-5, 1e300, -1e300, 0.5, 1e38, 3.5e38, 1e-45, 10000.0,
        ];
        if self.chance(0.8) {
            *self.pick(F)
        } else {
            self.0.random::<f64>() * 1e6 - 5e5
        }
    }
    fn string(&mut self) -> String {
        match self.below(6) {
            0 => String::new(),
            1 => "x".repeat(self.pick(&[1usize, 63, 64, 65, 1000, 70_000]).to_owned()),
            2 => "\u{1b}[2J\n\r\t\u{0}\u{7f}\u{202e}".into(),
            3 => "llama".into(),
            4 => "gpt2".into(),
            _ => (0..self.below(20))
                .map(|_| char::from_u32(self.0.random_range(0..0x3000)).unwrap_or('?'))
                .collect(),
        }
    }
}

/// Generic byte mutations: flips, overwrites with interesting integers, cuts, duplicates.
fn mutate_bytes(r: &mut R, b: &mut Vec<u8>, region: std::ops::Range<usize>) {
    let region = region.start.min(b.len())..region.end.min(b.len());
    let len = region.len();
    if len == 0 {
        return;
    }
    let at = region.start + r.below(len);
    match r.below(7) {
        0 => b[at] ^= 1 << r.below(8),
        1 => b[at] = r.0.random(),
        2 => {
            let v = r.int();
            let w = *r.pick(&[1usize, 2, 4, 8]);
            let bytes = v.to_le_bytes();
            for i in 0..w {
                if at + i < b.len() {
                    b[at + i] = bytes[i];
                }
            }
        }
        3 => b.truncate(at),
        4 => {
            let n = r.below(64).min(b.len() - at);
            let chunk = b[at..at + n].to_vec();
            let to = r.below(b.len());
            b.splice(to..to, chunk);
        }
        5 => {
            let n = r.below(64).min(b.len() - at);
            b.drain(at..at + n);
        }
        _ => {
            let n = r.below(16);
            for _ in 0..n {
                let i = region.start + r.below(len);
                if i < b.len() {
                    b[i] = r.0.random();
                }
            }
        }
    }
}

/// A random JSON value.
fn random_json(r: &mut R) -> Value {
    match r.below(9) {
        0 => Value::Null,
        1 => Value::Bool(r.chance(0.5)),
        2 => Value::from(r.int()),
        3 => Value::from((r.int() as i64).checked_abs().map_or(i64::MIN, |x| -x)),
        4 => serde_json::Number::from_f64(r.f64())
            .map(Value::Number)
            .unwrap_or(Value::Null),
        5 => Value::String(r.string()),
        6 => Value::Array((0..r.below(4)).map(|_| Value::from(r.int())).collect()),
        7 => Value::Object(serde_json::Map::new()),
        _ => serde_json::json!({"type": r.string()}),
    }
}

/// Every path (object keys and array indices) in `v`.
fn json_paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if out.len() > 5000 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(k.clone());
                out.push(at.clone());
                json_paths(x, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate().take(64) {
                at.push(format!("#{i}"));
                out.push(at.clone());
                json_paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match p.strip_prefix('#') {
            Some(i) => cur.get_mut(i.parse::<usize>().ok()?)?,
            None => cur.get_mut(p.as_str())?,
        };
    }
    Some(cur)
}

/// Replace, delete or perturb one node of `v`.
fn mutate_json(r: &mut R, v: &mut Value) {
    let mut paths = Vec::new();
    json_paths(v, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        *v = random_json(r);
        return;
    }
    let path = r.pick(&paths).clone();
    let choice = r.below(5);
    if choice == 0 {
        // delete
        let (last, parent) = path.split_last().unwrap();
        if let Some(p) = json_at(v, parent) {
            match p {
                Value::Object(m) => {
                    m.remove(last);
                }
                Value::Array(a) => {
                    if let Some(i) = last.strip_prefix('#').and_then(|i| i.parse::<usize>().ok()) {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        return;
    }
    let new = random_json(r);
    if let Some(x) = json_at(v, &path) {
        match (choice, &x) {
            (1, Value::Number(n)) => {
                // Perturb a number: a neighbour, a boundary or a sign flip.
                let f = n.as_f64().unwrap_or(0.0);
                *x = match r.below(4) {
                    0 => Value::from(r.int()),
                    1 => Value::from((f as i64).wrapping_neg().wrapping_sub(1)),
                    2 => serde_json::Number::from_f64(f * r.f64())
                        .map(Value::Number)
                        .unwrap_or(Value::Null),
                    _ => Value::from(n.as_u64().unwrap_or(0).wrapping_add(1)),
                };
            }
            _ => *x = new,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Counts {
    runs: usize,
    loaded: usize,
    refused: usize,
    failures: Vec<String>,
    slowest: Duration,
}

/// What one input did; `Err(description)` is a failure.
type Check = Result<bool, String>;

/// A refusal must be one short line and not come from the panic guard.
fn refusal(e: &prefixscope::Error) -> Check {
    let line = e.one_line();
    if line.contains('\n') || line.chars().count() > 4000 || line.is_empty() {
        return Err(format!("bad message ({} chars): {:.200}", line.len(), line));
    }
    if line.contains("an internal failure (") {
        return Err(format!("panic caught by the guard: {line}"));
    }
    Ok(false)
}

/// After a successful load: a short forward pass must give finite numbers or refuse.
fn exercise(model: &dyn Transformer, prefix: Option<&Prefix>) -> Check {
    let info = model.info().clone();
    let ids: Vec<u32> = (0..3u32)
        .map(|i| i % info.vocab_size.max(1) as u32)
        .collect();
    match prefixscope::capture::capture(model, &ids, prefix, &LayerSel::All) {
        Ok(cap) => {
            for l in &cap.layers {
                if l.check_finite().is_err() {
                    return Err(format!("non-finite layer {} returned as success", l.layer));
                }
            }
            if cap.logits_last_pretrained.iter().any(|x| !x.is_finite()) {
                return Err("non-finite logits returned as success".into());
            }
            Ok(true)
        }
        Err(e) => refusal(&e),
    }
}

fn load_and_run(path: &Path) -> Check {
    match load::load(path) {
        Ok(l) => {
            if let Err(e) = l.tokenizer.encode("hello world 123 ~", false) {
                refusal(&e)?;
            }
            let _ = l.tokenizer.decode(&[0, 1, 2]);
            exercise(l.model.as_ref(), None)
        }
        Err(e) => refusal(&e),
    }
}

/// Run `f` under catch_unwind with a quiet panic hook; a panic is a failure.
fn guarded(f: impl FnOnce() -> Check) -> Check {
    IN_GUARD.with(|g| g.set(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(false));
    match out {
        Ok(c) => c,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(format!("panic: {msg}"))
        }
    }
}

/// Builds one input: `(file name, bytes)`.
type MakeInput = dyn Fn(&mut R) -> (String, Vec<u8>) + Send + Sync;

/// One reader's fuzz loop: `make(rng, i)` builds an input as `(file name, bytes)` written into a
/// scratch folder that `prepare` sets up once; `check(path)` runs the reader.
struct Reader {
    name: &'static str,
    /// Files copied into every scratch folder (for folder readers).
    folder: Option<PathBuf>,
    make: Box<MakeInput>,
    check: Box<dyn Fn(&Path) -> Check + Send + Sync>,
}

fn run_reader(reader: &Reader, budget: Duration) -> Counts {
    let scratch = common::temp_dir(&format!("fuzz-{}", reader.name));
    if let Some(src) = &reader.folder {
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), scratch.join(e.file_name())).unwrap();
        }
    }
    let pristine: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let mut c = Counts::default();
    let t0 = Instant::now();
    let seed = base_seed() ^ (fxhash(reader.name) << 20);
    let mut i = 0u64;
    while t0.elapsed() < budget || i == 0 {
        let mut r = R::new(seed.wrapping_add(i));
        let (file, bytes) = (reader.make)(&mut r);
        for (p, b) in &pristine {
            std::fs::write(p, b).unwrap();
        }
        let path = scratch.join(&file);
        std::fs::write(&path, &bytes).unwrap();
        let target = if reader.folder.is_some() {
            scratch.to_path_buf()
        } else {
            path.clone()
        };
        let t = Instant::now();
        let out = guarded(|| (reader.check)(&target));
        let took = t.elapsed();
        c.slowest = c.slowest.max(took);
        c.runs += 1;
        let out = if took > SLOW {
            Err(format!("took {took:?}"))
        } else {
            out
        };
        match out {
            Ok(true) => c.loaded += 1,
            Ok(false) => c.refused += 1,
            Err(why) => {
                let kept = keep(reader.name, seed.wrapping_add(i), &file, &bytes);
                c.failures
                    .push(format!("{why} (kept as {})", kept.display()));
                if c.failures.len() >= 5 {
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        i += 1;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    c
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    }) & 0xFFFF_FFFF
}

/// Keep a failing input under tests/regressions/fuzz/: `{reader}-{seed}--{file}`.
fn keep(reader: &str, seed: u64, file: &str, bytes: &[u8]) -> PathBuf {
    let dir = kept_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{reader}-{seed}--{file}"));
    std::fs::write(&p, bytes).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Seeds and mutators per reader
// ---------------------------------------------------------------------------------------------

fn toy_path() -> PathBuf {
    root().join("models/sort-1l1h/ascending.safetensors")
}

/// A tiny valid GGUF: the block-count regression input with its block count set back to 2.
fn tiny_gguf() -> &'static [u8] {
    static G: OnceLock<Vec<u8>> = OnceLock::new();
    G.get_or_init(|| {
        let mut b = std::fs::read(hostile("directed-gguf-blockcount-u32max.gguf")).unwrap();
        let key = b"llama.block_count";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        b[at + 4..at + 8].copy_from_slice(&2u32.to_le_bytes());
        b
    })
}

/// Byte ranges of a GGUF's fields, for structure-aware mutation.
#[derive(Default)]
struct GgufMap {
    /// Positions of u64 counts and lengths (tensor count, kv count, string lengths, array counts).
    lengths: Vec<usize>,
    /// Positions of u32 value types / tensor types / n_dims.
    types: Vec<usize>,
    /// Positions of scalar values with their byte width.
    values: Vec<(usize, usize)>,
    /// Positions of u64 tensor dims and offsets.
    dims: Vec<usize>,
    offsets: Vec<usize>,
    /// F32 tensor data ranges.
    f32_data: Vec<(usize, usize)>,
    data_start: usize,
}

fn gguf_map(b: &[u8]) -> GgufMap {
    let mut m = GgufMap::default();
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    let mut pos = 8;
    m.lengths.push(pos);
    let nt = u64_at(pos);
    m.lengths.push(pos + 8);
    let nkv = u64_at(pos + 8);
    pos += 16;
    fn value(b: &[u8], pos: &mut usize, t: u32, m: &mut GgufMap, top: bool) {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        let size = match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => 0,
        };
        match t {
            8 => {
                m.lengths.push(*pos);
                let n = u64_at(*pos) as usize;
                *pos += 8 + n;
            }
            9 => {
                m.types.push(*pos);
                let et = u32::from_le_bytes(b[*pos..*pos + 4].try_into().unwrap());
                m.lengths.push(*pos + 4);
                let n = u64_at(*pos + 4) as usize;
                *pos += 12;
                for _ in 0..n {
                    value(b, pos, et, m, false);
                }
            }
            _ => {
                if top {
                    m.values.push((*pos, size));
                }
                *pos += size;
            }
        }
    }
    for _ in 0..nkv {
        m.lengths.push(pos);
        let n = u64_at(pos) as usize;
        pos += 8 + n;
        m.types.push(pos);
        let t = u32_at(pos);
        pos += 4;
        value(b, &mut pos, t, &mut m, true);
    }
    let mut tensors = Vec::new();
    for _ in 0..nt {
        m.lengths.push(pos);
        let n = u64_at(pos) as usize;
        pos += 8 + n;
        m.types.push(pos);
        let nd = u32_at(pos) as usize;
        pos += 4;
        let mut elems = 1;
        for _ in 0..nd {
            m.dims.push(pos);
            elems *= u64_at(pos) as usize;
            pos += 8;
        }
        m.types.push(pos);
        let ty = u32_at(pos);
        pos += 4;
        m.offsets.push(pos);
        let off = u64_at(pos) as usize;
        pos += 8;
        tensors.push((ty, off, elems));
    }
    m.data_start = pos.div_ceil(32) * 32;
    for (ty, off, elems) in tensors {
        if ty == 0 {
            m.f32_data.push((m.data_start + off, elems));
        }
    }
    m
}

fn gguf_input(r: &mut R) -> (String, Vec<u8>) {
    static MAP: OnceLock<GgufMap> = OnceLock::new();
    let seed = tiny_gguf();
    let m = MAP.get_or_init(|| gguf_map(seed));
    let mut b = seed.to_vec();
    // Byte-level mutations (which may cut the file) come after the structured ones.
    let mut raw = Vec::new();
    for _ in 0..1 + r.below(3) {
        match r.below(9) {
            0 => {
                let p = *r.pick(&m.lengths);
                b[p..p + 8].copy_from_slice(&r.int().to_le_bytes());
            }
            1 => {
                let p = *r.pick(&m.types);
                let v = *r.pick(&[
                    0u32,
                    1,
                    2,
                    4,
                    5,
                    6,
                    8,
                    9,
                    10,
                    12,
                    13,
                    14,
                    15,
                    16,
                    20,
                    30,
                    99,
                    u32::MAX,
                ]);
                b[p..p + 4].copy_from_slice(&v.to_le_bytes());
            }
            2 => {
                let (p, w) = *r.pick(&m.values);
                let v = if r.chance(0.3) && w == 4 {
                    (*r.pick(&[f32::NAN, f32::INFINITY, -1.0, 0.0, 1e-30])).to_bits() as u64
                } else {
                    r.int()
                };
                b[p..p + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            3 => {
                let p = *r.pick(&m.dims);
                b[p..p + 8].copy_from_slice(&r.int().to_le_bytes());
            }
            4 => {
                let p = *r.pick(&m.offsets);
                let other = u64::from_le_bytes(b[*r.pick(&m.offsets)..][..8].try_into().unwrap());
                let v = match r.below(3) {
                    0 => r.int(),
                    1 => other,
                    _ => other.wrapping_add(*r.pick(&[1u64, 4, 32, 64, 256])),
                };
                b[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
            5 => {
                let (p, n) = *r.pick(&m.f32_data);
                let i = r.below(n);
                let v = *r.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, 1e30]);
                b[p + 4 * i..p + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            6 => raw.push(0..m.data_start),
            7 => raw.push(m.data_start..seed.len()),
            _ => {
                // version / magic
                let p = r.below(8);
                b[p] = r.0.random();
            }
        }
    }
    for range in raw {
        mutate_bytes(r, &mut b, range);
    }
    ("m.gguf".into(), b)
}

/// A safetensors file's parts.
fn st_split(b: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (h, b[8 + n..].to_vec())
}

fn st_join(h: &Value, data: &[u8]) -> Vec<u8> {
    let text = h.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Mutate a safetensors file: a tensor entry (dtype, shape, offsets, name), the metadata (the toy
/// config JSON inside it too), the data (NaN/Inf), or raw bytes.
fn safetensors_input(r: &mut R, seed: &[u8]) -> Vec<u8> {
    let (mut h, mut data) = st_split(seed);
    for _ in 0..1 + r.below(3) {
        match r.below(8) {
            0 | 1 => {
                let Some(obj) = h.as_object() else {
                    continue;
                };
                let names: Vec<String> = obj
                    .keys()
                    .filter(|k| *k != "__metadata__")
                    .cloned()
                    .collect();
                if names.is_empty() {
                    continue;
                }
                let name = r.pick(&names).clone();
                let choice = r.below(5);
                if choice == 3 {
                    let v = h[&name].clone();
                    if let Some(o) = h.as_object_mut() {
                        o.remove(&name);
                        o.insert(r.string(), v);
                    }
                    continue;
                }
                if choice == 4 {
                    if let Some(t) = h.get_mut(&name) {
                        mutate_json(r, t);
                    }
                    continue;
                }
                let Some(t) = h.get_mut(&name).and_then(|t| t.as_object_mut()) else {
                    continue;
                };
                match choice {
                    0 => {
                        t.insert(
                            "dtype".into(),
                            Value::from(*r.pick(&[
                                "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F4", "X", "",
                            ])),
                        );
                    }
                    1 => {
                        if let Some(s) = t.get_mut("shape").and_then(|x| x.as_array_mut()) {
                            if s.is_empty() || r.chance(0.2) {
                                s.push(Value::from(r.int()));
                            } else {
                                let i = r.below(s.len());
                                s[i] = Value::from(r.int());
                            }
                        }
                    }
                    _ => {
                        let i = r.below(2);
                        let v = Value::from(r.int());
                        if let Some(a) = t.get_mut("data_offsets").and_then(|x| x.as_array_mut()) {
                            if i < a.len() {
                                a[i] = v;
                            }
                        }
                    }
                }
            }
            2 | 3 => {
                // The toy config inside the metadata.
                let meta = h.get_mut("__metadata__").and_then(|m| m.as_object_mut());
                if let Some(m) = meta.filter(|m| m.contains_key("prefixscope.config")) {
                    let cfg = m["prefixscope.config"].as_str().unwrap_or("").to_string();
                    let mut c: Value = serde_json::from_str(&cfg).unwrap_or(Value::Null);
                    mutate_json(r, &mut c);
                    m.insert("prefixscope.config".into(), Value::from(c.to_string()));
                } else {
                    mutate_json(r, &mut h);
                }
            }
            4 => mutate_json(r, &mut h),
            5 => {
                if data.len() >= 4 {
                    let i = r.below(data.len() / 4) * 4;
                    let v = *r.pick(&[f32::NAN, f32::INFINITY, -f32::INFINITY, 3e38, 1e20]);
                    data[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            6 => {
                let n = data.len();
                mutate_bytes(r, &mut data, 0..n);
            }
            _ => {
                let mut out = st_join(&h, &data);
                let n = out.len().min(4096);
                mutate_bytes(r, &mut out, 0..n);
                return out;
            }
        }
    }
    st_join(&h, &data)
}

fn npy_bytes(r: &mut R, valid: Option<(&[usize], &[f32])>) -> Vec<u8> {
    let (descr, fortran, shape, data): (String, bool, String, Vec<u8>) = match valid {
        Some((shape, vals)) if r.chance(0.5) => {
            let big = r.chance(0.5);
            let d = if big { ">f4" } else { "<f4" };
            let mut data: Vec<u8> = vals
                .iter()
                .flat_map(|x| {
                    if big {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect();
            if r.chance(0.3) && !data.is_empty() {
                let i = r.below(data.len() / 4) * 4;
                let v = f32::NAN;
                let bytes = if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                data[i..i + 4].copy_from_slice(&bytes);
            }
            let s = format!(
                "({}{})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if shape.len() == 1 { "," } else { "" }
            );
            (d.into(), r.chance(0.3), s, data)
        }
        _ => {
            let d = (*r.pick(&[
                "<f4", ">f4", "<f8", ">f8", "<f2", "|u1", "|i1", "<i8", ">i2", "|b1", "<c8", "|f4",
                "=f4", "<U4", "O", "<f16", "", "<f0",
            ]))
            .to_string();
            let nd = r.below(4);
            let dims: Vec<String> = (0..nd)
                .map(|_| {
                    if r.chance(0.5) {
                        r.below(70).to_string()
                    } else {
                        r.int().to_string()
                    }
                })
                .collect();
            let s = format!("({}{})", dims.join(", "), if nd == 1 { "," } else { "" });
            let n = *r.pick(&[0usize, 1, 4, 8, 128, 512, 4096]);
            let data: Vec<u8> = (0..n).map(|_| r.0.random()).collect();
            (d, r.chance(0.5), s, data)
        }
    };
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    if r.chance(0.1) {
        h = r.string();
    }
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(&data);
    if r.chance(0.3) {
        let n = v.len().min(128);
        mutate_bytes(r, &mut v, 0..n);
    }
    v
}

/// The tiny HF model (loaded once) for the prefix readers.
fn tiny_model() -> &'static load::Loaded {
    static M: OnceLock<load::Loaded> = OnceLock::new();
    M.get_or_init(|| load::load(&hostile("tiny-hf-folder-valid")).expect("the tiny folder loads"))
}

fn toy_model() -> &'static load::Loaded {
    static M: OnceLock<load::Loaded> = OnceLock::new();
    M.get_or_init(|| load::load(&toy_path()).expect("the toy loads"))
}

fn prefix_check(path: &Path, kind: PrefixKind, model: &load::Loaded) -> Check {
    let info: &ModelInfo = model.model.info();
    match Prefix::load_for(path, kind, info) {
        Ok(p) => exercise(model.model.as_ref(), Some(&p)),
        Err(e) => refusal(&e),
    }
}

fn npz_bytes(r: &mut R) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let n = 1 + r.below(2);
        for k in 0..n {
            let name = if k == 0 && r.chance(0.8) {
                "soft_prompt.npy".to_string()
            } else {
                format!("{}.npy", r.string())
            };
            let opts =
                zip::write::SimpleFileOptions::default().compression_method(if r.chance(0.5) {
                    zip::CompressionMethod::Stored
                } else {
                    zip::CompressionMethod::Deflated
                });
            let vals = vec![0.25f32; 2 * 64];
            let body = npy_bytes(r, Some((&[2, 64], &vals)));
            if z.start_file(name, opts).is_ok() {
                let _ = z.write_all(&body);
            }
        }
        let _ = z.finish();
    }
    let mut b = buf.into_inner();
    // Patch the size fields of local and central headers, or flip bytes.
    for _ in 0..r.below(3) {
        if r.chance(0.6) {
            let sigs: Vec<(usize, u8)> = b
                .windows(4)
                .enumerate()
                .filter_map(|(i, w)| match w {
                    [0x50, 0x4b, 3, 4] => Some((i, 0)),
                    [0x50, 0x4b, 1, 2] => Some((i, 1)),
                    [0x50, 0x4b, 5, 6] => Some((i, 2)),
                    _ => None,
                })
                .collect();
            if sigs.is_empty() {
                continue;
            }
            // Local header: sizes and name/extra lengths; central header: sizes, lengths, local
            // offset; end of central directory: entry counts, directory size and offset.
            let (at, kind) = *r.pick(&sigs);
            let field = match kind {
                0 => *r.pick(&[18usize, 22, 26, 28]),
                1 => *r.pick(&[20usize, 24, 28, 30, 42]),
                _ => *r.pick(&[8usize, 10, 12, 16, 20]),
            };
            let v = r.int() as u32;
            if at + field + 4 <= b.len() {
                b[at + field..at + field + 4].copy_from_slice(&v.to_le_bytes());
            }
        } else {
            let n = b.len();
            mutate_bytes(r, &mut b, 0..n);
        }
    }
    b
}

fn session_seed() -> String {
    serde_json::json!({
        "model_path": "/tmp/model.gguf",
        "prompt": null,
        "views": null,
        "models": {"path_text": "/x", "recent": ["/a", "/b/c.gguf"], "quantized": false},
        "autosave_model": "/tmp/model.gguf",
        "autosave_kind": "SoftPrompt",
        "editor_token": 0,
        "editor_layer": 0
    })
    .to_string()
}

fn readers() -> Vec<Reader> {
    let toy_seed: &'static [u8] = Box::leak(std::fs::read(toy_path()).unwrap().into_boxed_slice());
    let prefix_seed: &'static [u8] = Box::leak(
        std::fs::read(root().join("models/sort-1l1h/prefix-descending.safetensors"))
            .unwrap()
            .into_boxed_slice(),
    );
    let tiny = hostile("tiny-hf-folder-valid");
    let cfg_seed: Value =
        serde_json::from_slice(&std::fs::read(tiny.join("config.json")).unwrap()).unwrap();
    let tok_seed: Value =
        serde_json::from_slice(&std::fs::read(tiny.join("tokenizer.json")).unwrap()).unwrap();
    vec![
        Reader {
            name: "toy-safetensors",
            folder: None,
            make: Box::new(move |r| ("toy.safetensors".into(), safetensors_input(r, toy_seed))),
            check: Box::new(load_and_run),
        },
        Reader {
            name: "gguf",
            folder: None,
            make: Box::new(gguf_input),
            check: Box::new(load_and_run),
        },
        Reader {
            name: "hf-config",
            folder: Some(tiny.clone()),
            make: Box::new(move |r| {
                let mut v = cfg_seed.clone();
                for _ in 0..1 + r.below(3) {
                    mutate_json(r, &mut v);
                }
                let mut b = v.to_string().into_bytes();
                if r.chance(0.15) {
                    let n = b.len();
                    mutate_bytes(r, &mut b, 0..n);
                }
                ("config.json".into(), b)
            }),
            check: Box::new(load_and_run),
        },
        Reader {
            name: "hf-weights",
            folder: Some(tiny.clone()),
            make: Box::new({
                let seed: &'static [u8] = Box::leak(
                    std::fs::read(tiny.join("model.safetensors"))
                        .unwrap()
                        .into_boxed_slice(),
                );
                move |r| ("model.safetensors".into(), safetensors_input(r, seed))
            }),
            check: Box::new(load_and_run),
        },
        Reader {
            name: "tokenizer",
            folder: Some(tiny.clone()),
            make: Box::new(move |r| {
                let mut v = tok_seed.clone();
                match r.below(4) {
                    0 => {
                        // A Precompiled normalizer: random or structured charsmaps.
                        let mut cm: Vec<u8> = Vec::new();
                        if r.chance(0.6) {
                            let units = r.below(600);
                            cm.extend_from_slice(&((units * 4) as u32).to_le_bytes());
                            for _ in 0..units {
                                let u: u32 = if r.chance(0.5) {
                                    r.0.random()
                                } else {
                                    r.0.random_range(0..4096)
                                };
                                cm.extend_from_slice(&u.to_le_bytes());
                            }
                            cm.extend_from_slice(b"abc\0d\xc3\xa9\0");
                        } else {
                            cm = (0..r.below(64)).map(|_| r.0.random()).collect();
                        }
                        let b64 = base64(&cm);
                        let n =
                            serde_json::json!({"type": "Precompiled", "precompiled_charsmap": b64});
                        v["normalizer"] = if r.chance(0.5) {
                            n
                        } else {
                            serde_json::json!({"type": "Sequence", "normalizers": [n]})
                        };
                    }
                    1 => v["decoder"] = random_json(r),
                    _ => {
                        for _ in 0..1 + r.below(3) {
                            mutate_json(r, &mut v);
                        }
                    }
                }
                let mut b = v.to_string().into_bytes();
                if r.chance(0.2) {
                    b.truncate(r.below(b.len() + 1));
                }
                ("tokenizer.json".into(), b)
            }),
            check: Box::new(load_and_run),
        },
        Reader {
            name: "npy",
            folder: None,
            make: Box::new(|r| {
                let vals = vec![0.5f32; 2 * 64];
                ("p.npy".into(), npy_bytes(r, Some((&[2, 64], &vals))))
            }),
            check: Box::new(|p| prefix_check(p, PrefixKind::SoftPrompt, tiny_model())),
        },
        Reader {
            name: "npz",
            folder: None,
            make: Box::new(|r| ("p.npz".into(), npz_bytes(r))),
            check: Box::new(|p| prefix_check(p, PrefixKind::SoftPrompt, tiny_model())),
        },
        Reader {
            name: "prefix-safetensors",
            folder: None,
            make: Box::new(move |r| ("p.safetensors".into(), safetensors_input(r, prefix_seed))),
            check: Box::new(|p| prefix_check(p, PrefixKind::Hidden, toy_model())),
        },
        Reader {
            name: "session",
            folder: None,
            make: Box::new(|r| {
                let mut v: Value = serde_json::from_str(&session_seed()).unwrap();
                for _ in 0..1 + r.below(3) {
                    mutate_json(r, &mut v);
                }
                let mut b = v.to_string().into_bytes();
                if r.chance(0.2) {
                    let n = b.len();
                    mutate_bytes(r, &mut b, 0..n);
                }
                ("session.json".into(), b)
            }),
            check: Box::new(|p| {
                let (s, note) = prefixscope::app::session_file::read(p);
                if let Some(n) = &note {
                    if n.contains('\n') {
                        return Err(format!("multi-line note: {n}"));
                    }
                }
                // The autosave beside it: read through the prefix reader like the app does.
                Ok(s.is_some())
            }),
        },
    ]
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

thread_local! {
    /// Inside [`guarded`]: panics there are reported as failures with their message, not printed.
    static IN_GUARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silence the default panic message for panics the harness catches; any other panic (a failed
/// assertion of the test itself) prints as usual.
fn quiet_panics() {
    static Q: OnceLock<()> = OnceLock::new();
    Q.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUARD.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}

fn fuzz_one(name: &str) {
    quiet_panics();
    let reader = readers().into_iter().find(|r| r.name == name).unwrap();
    let budget = total_budget() / READERS as u32;
    let c = run_reader(&reader, budget);
    let peak = peak_rss_bytes();
    eprintln!(
        "fuzz {name}: {} inputs ({} loaded and ran, {} refused), {} failures, slowest {:?}, process peak RSS so far {:.0} MB",
        c.runs,
        c.loaded,
        c.refused,
        c.failures.len(),
        c.slowest,
        peak.unwrap_or(0) as f64 / 1e6
    );
    assert!(c.failures.is_empty(), "{name}: {:#?}", c.failures);
    // The whole test process (every reader, the models they loaded) stayed far from 2 GB.
    if let Some(p) = peak {
        assert!(p < 2_000_000_000, "peak RSS {p} bytes");
    }
}

#[test]
fn fuzz_toy_safetensors() {
    fuzz_one("toy-safetensors");
}

#[test]
fn fuzz_gguf() {
    fuzz_one("gguf");
}

#[test]
fn fuzz_hf_config() {
    fuzz_one("hf-config");
}

#[test]
fn fuzz_hf_weights() {
    fuzz_one("hf-weights");
}

#[test]
fn fuzz_tokenizer() {
    fuzz_one("tokenizer");
}

#[test]
fn fuzz_npy() {
    fuzz_one("npy");
}

#[test]
fn fuzz_npz() {
    fuzz_one("npz");
}

#[test]
fn fuzz_prefix_safetensors() {
    fuzz_one("prefix-safetensors");
}

#[test]
fn fuzz_session() {
    fuzz_one("session");
}

/// Every input the fuzzer ever kept, run again through its reader.
#[test]
fn replay_kept_crashes() {
    quiet_panics();
    // The folder is in the repository (with the inputs kept so far): missing, the test would pass
    // having replayed nothing.
    let dir =
        std::fs::read_dir(kept_dir()).unwrap_or_else(|e| panic!("{}: {e}", kept_dir().display()));
    let readers = readers();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for e in dir {
        let p = e.unwrap().path();
        let fname = p.file_name().unwrap().to_string_lossy().to_string();
        let Some((head, file)) = fname.split_once("--") else {
            continue;
        };
        let Some(reader) = readers
            .iter()
            .find(|r| head.starts_with(&format!("{}-", r.name)))
        else {
            continue;
        };
        let scratch = common::temp_dir(&format!("replay-{}", reader.name));
        if let Some(src) = &reader.folder {
            for e in std::fs::read_dir(src).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), scratch.join(e.file_name())).unwrap();
            }
        }
        std::fs::copy(&p, scratch.join(file)).unwrap();
        let target = if reader.folder.is_some() {
            scratch.to_path_buf()
        } else {
            scratch.join(file)
        };
        if let Err(why) = guarded(|| (reader.check)(&target)) {
            failures.push(format!("{fname}: {why}"));
        }
        replayed += 1;
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Two tokenizer inputs were kept when this was written; more may come, none may go unread.
    assert!(replayed >= 2, "replayed {replayed} kept inputs");
}

/// The harness itself can fail: a panic, a guard-caught panic and a multi-line message are failures.
#[test]
fn the_harness_reports_what_it_exists_for() {
    quiet_panics();
    assert!(guarded(|| panic!("boom")).unwrap_err().contains("boom"));
    let caught = prefixscope::load::guard::catch(
        Path::new("f.gguf"),
        "checkpoint",
        || -> prefixscope::Result<()> { panic!("inside a dependency") },
    );
    assert!(refusal(&caught.unwrap_err()).is_err());
    let plain = prefixscope::Error::input("x", "y", "z");
    assert_eq!(refusal(&plain), Ok(false));
}
