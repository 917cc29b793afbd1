//! Builders for the paper's constructions, the virtual tokens that drive them, and the counting
//! experiment (one hard token against many virtual tokens).
//!
//! Every builder returns a [`Construction`] (the model, independent of the target) and a
//! [`Prefix::SoftPrompt`] (the virtual tokens, which hold the target). Vocabulary: the notebook's 94
//! characters, token = code point - 32, from space (0) to '}' (93), `V = 94`: '~' (126) is not one
//! of them. Messages name the alphabet from its own first and last ids ([`alphabet_range`]).
//!
//! - (a) [`unconditional`]: one virtual token makes the model write any string of up to N characters
//!   (N = 20, T = 50). Embedding `[content (N) | position (N)]`; the virtual token's content is
//!   `enc(s)_i = id(s_i)/V`. Head "pos" attends each position to itself and returns its one-hot
//!   position, head "first" attends to position 0 and returns `enc(s)`; `ReLU(h - 1)` keeps
//!   coordinate `i`, so position `i` decodes `s_i`.
//! - (b) [`conditional`]: one virtual token holds a whole character map `c -> m(c)` (N = 2, T = 100):
//!   content `r[c] = id(m(c))/V`, the user token is one-hot, `h = onehot(c) + r`.
//! - (c) [`long`]: N0 virtual tokens, one per response position, map each user character to a string
//!   of up to N0 characters (N0 = 10, N = 20, T = 100); head "back" attends position `p` to `p - N0`.
//! - (d) [`two_token`]: one virtual token holds a map from two letters to a letter, packed as base-K
//!   digits, and the model itself unpacks it (see the function's documentation).
//!
//! The rest of this page is `src/construct/construct.md`, the design notes for every construction.
#![doc = include_str!("construct.md")]

mod alphabet;
mod capacity;
mod maps;
pub mod model;

pub use alphabet::*;
pub use capacity::*;
pub use maps::*;

use crate::arrays::Array;
use crate::error::{Error, Result};
use crate::model::{LayerSel, Transformer};
use crate::prefix::Prefix;
use model::{Construction, ConstructionConfig, Generation, HeadConfig, Mat, MlpConfig};
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

/// Which construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    /// (a) any string from one virtual token.
    Unconditional,
    /// (b) one character to one character, one virtual token.
    Conditional,
    /// (c) one character to a string, N0 virtual tokens.
    Long,
    /// (d) two characters to one character, one virtual token unpacked by the model's MLP.
    TwoToken,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unconditional => "unconditional",
            Kind::Conditional => "conditional",
            Kind::Long => "long",
            Kind::TwoToken => "two-token",
        }
    }
}

/// Sizes of each construction (the notebook's, except (d), see [`two_token`]).
pub const UNCONDITIONAL_N: usize = 20;
pub const UNCONDITIONAL_T: f64 = 50.0;
pub const CONDITIONAL_T: f64 = 100.0;
pub const LONG_N0: usize = 10;
pub const LONG_T: f64 = 100.0;
pub const TWO_TOKEN_T: f64 = 100.0;
/// (d)'s default alphabet: the ten letters A..J (as the notebook).
pub const TWO_TOKEN_FIRST: char = 'A';
pub const TWO_TOKEN_K: usize = 10;
/// Base-K digits packed into one f32 coordinate: K^5 = 1e5 levels, far inside f32's 2^24.
pub const TWO_TOKEN_DIGITS: usize = 5;

/// Named weights under construction.
struct Weights(HashMap<String, Array>);

impl Weights {
    fn new() -> Self {
        Weights(HashMap::new())
    }
    fn put(&mut self, name: impl Into<String>, m: Mat) {
        self.0.insert(name.into(), m.to_array());
    }
    fn put_vec(&mut self, name: impl Into<String>, v: Vec<f64>) {
        self.0.insert(
            name.into(),
            Array {
                shape: vec![v.len()],
                data: v.into_iter().map(|x| x as f32).collect(),
            },
        );
    }
    fn head(&mut self, name: &str, q: Mat, k: Mat, v: Mat) {
        self.put(format!("attn.{name}.w_q"), q);
        self.put(format!("attn.{name}.w_k"), k);
        self.put(format!("attn.{name}.w_v"), v);
    }
    fn finish(self, cfg: &ConstructionConfig) -> Construction {
        // The builders' own weights always match their config; a failure here is a bug in this file.
        Construction::load(&self.0, cfg, Path::new("<built construction>"))
            .unwrap_or_else(|e| panic!("construction builder produced bad weights: {e}"))
    }
}

fn cfg(
    name: &str,
    n: usize,
    d: usize,
    t: f64,
    heads: &[(&str, usize)],
    d_head: usize,
    n_virtual: usize,
) -> ConstructionConfig {
    ConstructionConfig {
        name: name.into(),
        vocab_size: V,
        n_positions: n,
        d_model: d,
        inv_temperature: t,
        heads: heads
            .iter()
            .map(|(n, q)| HeadConfig {
                name: n.to_string(),
                d_qk: *q,
            })
            .collect(),
        d_head,
        mlps: vec![],
        n_virtual,
        extra: HashMap::new(),
    }
}

/// (a) The unconditional construction: `N` positions, inverse temperature `t`.
pub fn unconditional(n: usize, t: f64) -> Construction {
    let d = 2 * n;
    let c = cfg("unconditional", n, d, t, &[("pos", n), ("first", 1)], n, 1);
    let mut w = Weights::new();
    // Real tokens carry no content (E = 0): only the virtual token does.
    w.put("embed", Mat::zeros(V, d));
    let mut pos = Mat::zeros(n, d);
    for i in 0..n {
        pos.set(i, n + i, 1.0);
    }
    w.put("pos", pos);
    // Head "pos": W_Q = W_K = W_V = [0 | I_N]: each position attends to itself and returns e_i.
    let mut sel_pos = Mat::zeros(d, n);
    for i in 0..n {
        sel_pos.set(n + i, i, 1.0);
    }
    w.head("pos", sel_pos.clone(), sel_pos.clone(), sel_pos);
    // Head "first": q = 1, k = 1 only at position 0, value = the content block.
    let (mut q, mut k, mut v) = (Mat::zeros(d, 1), Mat::zeros(d, 1), Mat::zeros(d, n));
    for i in 0..n {
        q.set(n + i, 0, 1.0);
        v.set(i, i, 1.0);
    }
    k.set(n, 0, 1.0);
    w.head("first", q, k, v);
    w.finish(&c)
}

/// (a)'s virtual token for `target`: `enc(s)_i = id(s_i)/V`, padded with spaces (id 0) to N.
pub fn unconditional_prefix(model: &Construction, target: &str) -> Result<Prefix> {
    let c = model.config();
    let n = c.n_positions;
    let ids = encode("target", target)?;
    if ids.len() > n {
        return Err(Error::input(
            "target",
            format!("at most {n} characters (N, the construction's length)"),
            format!("{} characters", ids.len()),
        ));
    }
    let mut a = Array::zeros(&[1, c.d_model]);
    for (i, &id) in ids.iter().enumerate() {
        a.data[i] = (id as f64 / V as f64) as f32;
    }
    Ok(Prefix::SoftPrompt(a))
}

fn content_heads(n: usize) -> (usize, Mat, Mat) {
    // Embedding [content (V) | position (n)]: the one-hot of a token, and its position.
    let d = V + n;
    let mut embed = Mat::zeros(V, d);
    for c in 0..V {
        embed.set(c, c, 1.0);
    }
    let mut pos = Mat::zeros(n, d);
    for i in 0..n {
        pos.set(i, V + i, 1.0);
    }
    (d, embed, pos)
}

fn content_value(d: usize) -> Mat {
    let mut v = Mat::zeros(d, V);
    for c in 0..V {
        v.set(c, c, 1.0);
    }
    v
}

/// (b) One token to one token from one virtual token: N = 2, inverse temperature `t`.
pub fn conditional(t: f64) -> Construction {
    let n = 2;
    let (d, embed, pos) = content_heads(n);
    let c = cfg("conditional", n, d, t, &[("val", n), ("first", 1)], V, 1);
    let mut w = Weights::new();
    w.put("embed", embed);
    w.put("pos", pos);
    // Head "val": each position attends to itself and returns its content (the user's one-hot).
    let mut qk = Mat::zeros(d, n);
    for i in 0..n {
        qk.set(V + i, i, 1.0);
    }
    w.head("val", qk.clone(), qk, content_value(d));
    // Head "first": everyone attends to position 0 and returns the virtual token's content, the map.
    let (mut q, mut k) = (Mat::zeros(d, 1), Mat::zeros(d, 1));
    for i in 0..n {
        q.set(V + i, 0, 1.0);
    }
    k.set(V, 0, 1.0);
    w.head("first", q, k, content_value(d));
    w.finish(&c)
}

/// A character map with single-character keys, as token ids.
fn char_keys(map: &Map) -> Result<Vec<(u32, Vec<u32>)>> {
    let mut out = Vec::new();
    for (k, v) in map {
        let kid = encode("--map key", k)?;
        if kid.len() != 1 {
            return Err(Error::input(
                format!("--map key {k:?}"),
                "exactly one character",
                format!("{} characters", kid.len()),
            ));
        }
        out.push((kid[0], encode(&format!("--map value for {k:?}"), v)?));
    }
    Ok(out)
}

/// (b)'s virtual token: `r[c] = id(m(c))/V` for every mapped `c` (unmapped characters map to space).
pub fn conditional_prefix(model: &Construction, map: &Map) -> Result<Prefix> {
    let d = model.config().d_model;
    let mut a = Array::zeros(&[1, d]);
    for (k, v) in char_keys(map)? {
        if v.len() != 1 {
            return Err(Error::input(
                format!("--map value for {:?}", id_char(k)),
                "exactly one character (a one-to-one-character map)",
                format!("{} characters", v.len()),
            ));
        }
        a.data[k as usize] = (v[0] as f64 / V as f64) as f32;
    }
    Ok(Prefix::SoftPrompt(a))
}

/// (c) Longer responses: N0 virtual tokens, N = 2 N0 positions, inverse temperature `t`.
/// Positions `0..N0` are the virtual tokens, `N0` the user's character, and position `N0 + j`
/// decodes character `j` of the response.
pub fn long(n0: usize, t: f64) -> Construction {
    let n = 2 * n0;
    let (d, embed, pos) = content_heads(n);
    let mut c = cfg("long", n, d, t, &[("back", n), ("user", 1)], V, n0);
    c.extra.insert("n0".into(), n0 as f64);
    let mut w = Weights::new();
    w.put("embed", embed);
    w.put("pos", pos);
    // Head "back": position p >= N0 queries e_{p - N0}, keys are one-hot positions: it reads virtual
    // token p - N0, the one holding character p - N0 of every response.
    let (mut q, mut k) = (Mat::zeros(d, n), Mat::zeros(d, n));
    for p in 0..n {
        k.set(V + p, p, 1.0);
        if p >= n0 {
            q.set(V + p, p - n0, 1.0);
        }
    }
    w.head("back", q, k, content_value(d));
    // Head "user": everyone attends to position N0 and returns the user's one-hot.
    let (mut q, mut k) = (Mat::zeros(d, 1), Mat::zeros(d, 1));
    for i in 0..n {
        q.set(V + i, 0, 1.0);
    }
    k.set(V + n0, 0, 1.0);
    w.head("user", q, k, content_value(d));
    w.finish(&c)
}

/// (c)'s virtual tokens: token `j` holds `id(m(c)[j])/V` at coordinate `c` (responses padded with
/// spaces to N0).
pub fn long_prefix(model: &Construction, map: &Map) -> Result<Prefix> {
    let c = model.config();
    let (n0, d) = (c.n_virtual, c.d_model);
    let mut a = Array::zeros(&[n0, d]);
    for (k, v) in char_keys(map)? {
        if v.len() > n0 {
            return Err(Error::input(
                format!("--map value for {:?}", id_char(k)),
                format!("at most {n0} characters (N0, the number of virtual tokens)"),
                format!("{} characters", v.len()),
            ));
        }
        for (j, &id) in v.iter().enumerate() {
            a.data[j * d + k as usize] = (id as f64 / V as f64) as f32;
        }
    }
    Ok(Prefix::SoftPrompt(a))
}

/// Layout of the two-token construction, derived from its alphabet and packing.
#[derive(Debug, Clone, Copy)]
struct TwoLayout {
    /// Token id of the alphabet's first character; the alphabet is `first..first + k`.
    first: u32,
    k: usize,
    /// Base-k digits per packed coordinate.
    digits: usize,
    /// Packed coordinates per first letter: ceil(k / digits).
    groups: usize,
}

impl TwoLayout {
    fn from_config(c: &ConstructionConfig) -> Option<Self> {
        let g = |k: &str| c.extra.get(k).map(|&x| x as usize);
        let (first, k, digits) = (g("alphabet_first")?, g("alphabet_size")?, g("digits")?);
        Some(TwoLayout {
            first: first as u32,
            k,
            digits,
            groups: k.div_ceil(digits),
        })
    }
    fn packed(&self) -> usize {
        self.k * self.groups
    }
    /// `k^digits`: the packed integer's range.
    fn scale(&self) -> f64 {
        (self.k as f64).powi(self.digits as i32)
    }
}

/// (d) Two-token conditioning: the user types two letters of the alphabet `first..first+k`
/// (default A..J) and the model answers `m(c1, c2)`, a letter of the same alphabet.
///
/// The one virtual token holds all `k²` entries in `k · ceil(k / digits)` coordinates: for each first
/// letter `i`, the row `m(i, 0..k)` is cut into groups of `digits` base-`k` digits, and each group is
/// one coordinate `y / k^digits` with `y = Σ_l d_l k^(digits-1-l)`. Nothing is unpacked on the host:
///
/// 1. attention (positions: 0 virtual token, 1 first letter, 2 second letter; heads summed into
///    `[packed | onehot(c1) | onehot(c2)]`): head "map" reads position 0, head "first" position 1,
///    head "second" each position itself;
/// 2. MLP "gate": unit `(i, g)` is `ReLU(S r_{i,g} + S [c1 = i] - S)` with `S = k^digits`: it passes
///    `y_{i,g}` for the row of `c1` and nothing else; the output sums over `i`, leaving row `c1`'s
///    packed integers;
/// 3. MLPs "digit 0" .. "digit digits-1": each peels off one base-`k` digit of every group with
///    `k - 1` steps `ReLU(2(y - θ) + 1/2) - ReLU(2(y - θ) - 1/2)` at `θ = t k^(digits-1-l) - 1/2`
///    (the integers are 1/2 away from every threshold, so an error below 1/4 changes nothing) and
///    subtracts it from the remainder; carried values pass through `ReLU(x) = x` (all are >= 0);
/// 4. MLP "readout": `h_j = onehot(c2)_j + (first + digit_j)/V`, and the usual decoder
///    `ReLU(h - 1)` keeps `j = c2`, so `z = id(m(c1, c2))/V`.
///
/// The notebook's version used one coordinate per row (ten digits, an f64-only 1e-10 resolution) and
/// unpacked with a Python function; this one fits f32 virtual tokens and does the unpacking in the
/// model.
pub fn two_token(first: char, k: usize, digits: usize, t: f64) -> Result<Construction> {
    let f = char_id(first)
        .ok_or_else(|| Error::input("alphabet start", vocabulary_text(V), format!("{first:?}")))?;
    if k < 2 || f as usize + k > V {
        return Err(Error::input(
            "alphabet size",
            format!("2..={} letters starting at {first:?}", V - f as usize),
            k.to_string(),
        ));
    }
    if digits == 0 || (k as f64).powi(digits as i32) > 4.0e6 {
        return Err(Error::input(
            "digits per coordinate",
            "k^digits <= 4e6 (f32 must keep the packed integers exact to 1/4)",
            format!("{k}^{digits}"),
        ));
    }
    let lay = TwoLayout {
        first: f,
        k,
        digits,
        groups: k.div_ceil(digits),
    };
    let (kp, g) = (lay.packed(), lay.groups);
    let n = 3;
    let (o_let, o_pos) = (kp, kp + k);
    let d = kp + k + n;
    let d_head = kp + 2 * k;
    let mut c = cfg(
        "two-token",
        n,
        d,
        t,
        &[("map", 1), ("first", 1), ("second", n)],
        d_head,
        1,
    );
    c.extra.insert("alphabet_first".into(), f as f64);
    c.extra.insert("alphabet_size".into(), k as f64);
    c.extra.insert("digits".into(), digits as f64);
    let mut w = Weights::new();
    let mut embed = Mat::zeros(V, d);
    for j in 0..k {
        embed.set(f as usize + j, o_let + j, 1.0);
    }
    w.put("embed", embed);
    let mut pos = Mat::zeros(n, d);
    for i in 0..n {
        pos.set(i, o_pos + i, 1.0);
    }
    w.put("pos", pos);
    // Attention: three heads writing disjoint blocks of [packed | c1 | c2].
    let ones_q = || {
        let mut q = Mat::zeros(d, 1);
        for i in 0..n {
            q.set(o_pos + i, 0, 1.0);
        }
        q
    };
    let key_at = |p: usize| {
        let mut k = Mat::zeros(d, 1);
        k.set(o_pos + p, 0, 1.0);
        k
    };
    let mut v = Mat::zeros(d, d_head);
    for i in 0..kp {
        v.set(i, i, 1.0);
    }
    w.head("map", ones_q(), key_at(0), v);
    let mut v = Mat::zeros(d, d_head);
    for j in 0..k {
        v.set(o_let + j, kp + j, 1.0);
    }
    w.head("first", ones_q(), key_at(1), v);
    let mut qk = Mat::zeros(d, n);
    for i in 0..n {
        qk.set(o_pos + i, i, 1.0);
    }
    let mut v = Mat::zeros(d, d_head);
    for j in 0..k {
        v.set(o_let + j, kp + k + j, 1.0);
    }
    w.head("second", qk.clone(), qk, v);

    // The MLP stack works on [remainder (g) | digits (g·digits) | onehot(c2) (k)].
    let width = g + g * digits + k;
    let (o_dig, o_c2) = (g, g + g * digits);
    let s = lay.scale();
    let mut mlps = vec![];
    // Gate: select row c1.
    {
        let hidden = kp + k;
        let (mut w1, mut b1, mut w2) = (
            Mat::zeros(d_head, hidden),
            vec![0.0; hidden],
            Mat::zeros(hidden, width),
        );
        for i in 0..k {
            for gg in 0..g {
                let u = i * g + gg;
                w1.set(u, u, s);
                w1.set(kp + i, u, s);
                b1[u] = -s;
                w2.set(u, gg, 1.0);
            }
        }
        for j in 0..k {
            w1.set(kp + k + j, kp + j, 1.0);
            w2.set(kp + j, o_c2 + j, 1.0);
        }
        w.put("mlp.0.w1", w1);
        w.put_vec("mlp.0.b1", b1);
        w.put("mlp.0.w2", w2);
        w.put_vec("mlp.0.b2", vec![0.0; width]);
        mlps.push(MlpConfig {
            name: "gate".into(),
            hidden,
            d_out: width,
        });
    }
    // Digit levels.
    for l in 0..digits {
        let i = mlps.len();
        let place = (k as f64).powi((digits - 1 - l) as i32);
        let n_steps = g * (k - 1) * 2;
        let hidden = n_steps + width;
        let (mut w1, mut b1, mut w2) = (
            Mat::zeros(width, hidden),
            vec![0.0; hidden],
            Mat::zeros(hidden, width),
        );
        for gg in 0..g {
            for t in 1..k {
                let theta = t as f64 * place - 0.5;
                let ua = (gg * (k - 1) + (t - 1)) * 2;
                let ub = ua + 1;
                w1.set(gg, ua, 2.0);
                w1.set(gg, ub, 2.0);
                b1[ua] = -2.0 * theta + 0.5;
                b1[ub] = -2.0 * theta - 0.5;
                // The step is (a - b): it adds one to this digit and takes `place` off the remainder.
                let slot = o_dig + gg * digits + l;
                w2.set(ua, slot, 1.0);
                w2.set(ub, slot, -1.0);
                w2.set(ua, gg, -place);
                w2.set(ub, gg, place);
            }
        }
        for c_ in 0..width {
            w1.set(c_, n_steps + c_, 1.0);
            w2.set(n_steps + c_, c_, 1.0);
        }
        w.put(format!("mlp.{i}.w1"), w1);
        w.put_vec(format!("mlp.{i}.b1"), b1);
        w.put(format!("mlp.{i}.w2"), w2);
        w.put_vec(format!("mlp.{i}.b2"), vec![0.0; width]);
        mlps.push(MlpConfig {
            name: format!("digit {l}"),
            hidden,
            d_out: width,
        });
    }
    // Readout: h_j = onehot(c2)_j + (first + digit_j)/V.
    {
        let i = mlps.len();
        let hidden = width - g;
        let (mut w1, mut w2) = (Mat::zeros(width, hidden), Mat::zeros(hidden, k));
        for u in 0..hidden {
            w1.set(g + u, u, 1.0);
        }
        for j in 0..k {
            // Digit j of row c1 sits in group j / digits, place j % digits.
            let slot = (j / digits) * digits + (j % digits);
            w2.set(slot, j, 1.0 / V as f64);
            w2.set(g * digits + j, j, 1.0);
        }
        w.put(format!("mlp.{i}.w1"), w1);
        w.put_vec(format!("mlp.{i}.b1"), vec![0.0; hidden]);
        w.put(format!("mlp.{i}.w2"), w2);
        w.put_vec(format!("mlp.{i}.b2"), vec![f as f64 / V as f64; k]);
        mlps.push(MlpConfig {
            name: "readout".into(),
            hidden,
            d_out: k,
        });
    }
    c.mlps = mlps;
    Ok(w.finish(&c))
}

/// (d)'s virtual token: each first letter's row packed as base-k digits (see [`two_token`]).
/// Pairs missing from the map answer the alphabet's first letter.
pub fn two_token_prefix(model: &Construction, map: &Map) -> Result<Prefix> {
    let c = model.config();
    let lay = TwoLayout::from_config(c)
        .ok_or_else(|| Error::input("construction", "a two-token construction", c.name.clone()))?;
    let in_alpha = |field: String, s: &str| -> Result<Vec<usize>> {
        encode(&field, s)?
            .into_iter()
            .map(|id| {
                let j = id.wrapping_sub(lay.first) as usize;
                if j < lay.k {
                    Ok(j)
                } else {
                    Err(Error::input(
                        field.clone(),
                        format!(
                            "letters {:?}..={:?}",
                            id_char(lay.first),
                            id_char(lay.first + lay.k as u32 - 1)
                        ),
                        format!("{:?}", id_char(id)),
                    ))
                }
            })
            .collect()
    };
    let mut table = vec![vec![0usize; lay.k]; lay.k];
    for (key, val) in map {
        let kk = in_alpha(format!("--map key {key:?}"), key)?;
        if kk.len() != 2 {
            return Err(Error::input(
                format!("--map key {key:?}"),
                "exactly two characters (a two-token map)",
                format!("{} characters", kk.len()),
            ));
        }
        let vv = in_alpha(format!("--map value for {key:?}"), val)?;
        if vv.len() != 1 {
            return Err(Error::input(
                format!("--map value for {key:?}"),
                "exactly one character",
                format!("{} characters", vv.len()),
            ));
        }
        table[kk[0]][kk[1]] = vv[0];
    }
    let mut a = Array::zeros(&[1, c.d_model]);
    let s = lay.scale();
    for (i, row) in table.iter().enumerate() {
        for gg in 0..lay.groups {
            let mut y = 0f64;
            for l in 0..lay.digits {
                let j = gg * lay.digits + l;
                let dgt = if j < lay.k { row[j] } else { 0 };
                y += dgt as f64 * (lay.k as f64).powi((lay.digits - 1 - l) as i32);
            }
            a.data[i * lay.groups + gg] = (y / s) as f32;
        }
    }
    Ok(Prefix::SoftPrompt(a))
}

/// One thing to ask a built construction: the user's characters, and what the target says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Case {
    pub input: String,
    pub expected: String,
}

/// A model, its virtual tokens, and the cases they encode.
pub struct Built {
    pub kind: Kind,
    pub model: Construction,
    /// The virtual tokens, `(P, d_model)`: an ordinary soft prompt, editable like any other.
    pub prefix: Prefix,
    /// The coordinates of each virtual token that carry the target (the rest are zero and the model
    /// adds the position itself): what a slider view should show.
    pub content: Range<usize>,
    pub cases: Vec<Case>,
}

/// What a case produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub input: String,
    pub expected: String,
    pub generated: String,
    /// The smallest decoder margin over the generated characters (see [`Generation::margins`]).
    pub margin: f64,
}

/// (a) for `target`, with the notebook's N = 20, T = 50.
pub fn build_target(target: &str) -> Result<Built> {
    if target.is_empty() {
        return Err(Error::input(
            "target",
            format!(
                "1 to {UNCONDITIONAL_N} characters, each {}",
                vocabulary_text(V)
            ),
            "an empty string",
        ));
    }
    let model = unconditional(UNCONDITIONAL_N, UNCONDITIONAL_T);
    let prefix = unconditional_prefix(&model, target)?;
    Ok(Built {
        kind: Kind::Unconditional,
        prefix,
        content: 0..UNCONDITIONAL_N,
        cases: vec![Case {
            input: String::new(),
            expected: target.to_string(),
        }],
        model,
    })
}

/// (b), (c) or (d) for `map` (`kind` = None: inferred from the map's shape).
pub fn build_map(map: &Map, kind: Option<Kind>) -> Result<Built> {
    if map.is_empty() {
        return Err(Error::input(
            "--map",
            "at least one KEY=VALUE entry",
            "none",
        ));
    }
    let kind = match kind {
        Some(k) => k,
        None => infer_kind(map)?,
    };
    let (model, prefix, content) = match kind {
        Kind::Unconditional => {
            return Err(Error::input(
                "--construction",
                "conditional, long or two-token with --map",
                "unconditional",
            ))
        }
        Kind::Conditional => {
            let m = conditional(CONDITIONAL_T);
            let p = conditional_prefix(&m, map)?;
            (m, p, 0..V)
        }
        Kind::Long => {
            let m = long(LONG_N0, LONG_T);
            let p = long_prefix(&m, map)?;
            (m, p, 0..V)
        }
        Kind::TwoToken => {
            let m = two_token(TWO_TOKEN_FIRST, TWO_TOKEN_K, TWO_TOKEN_DIGITS, TWO_TOKEN_T)?;
            let p = two_token_prefix(&m, map)?;
            let kp = TWO_TOKEN_K * TWO_TOKEN_K.div_ceil(TWO_TOKEN_DIGITS);
            (m, p, 0..kp)
        }
    };
    let cases = map
        .iter()
        .map(|(k, v)| Case {
            input: k.clone(),
            expected: v.clone(),
        })
        .collect();
    Ok(Built {
        kind,
        model,
        prefix,
        content,
        cases,
    })
}

/// Generate after the virtual tokens and the user's `input`; `max_new` = None fills the positions.
pub fn generate_text(
    model: &Construction,
    prefix: &Prefix,
    input: &str,
    max_new: Option<usize>,
) -> Result<(String, Generation)> {
    let ids = encode("input", input)?;
    let g = model.generate(Some(prefix), &ids, max_new)?;
    Ok((decode(&g.ids), g))
}

/// Run every case of `built` (each generates as many characters as its expected answer, at least one).
pub fn run_cases(built: &Built) -> Result<Vec<Outcome>> {
    built
        .cases
        .iter()
        .map(|c| {
            let want = c.expected.chars().count().max(1);
            let (generated, g) = generate_text(&built.model, &built.prefix, &c.input, Some(want))?;
            Ok(Outcome {
                input: c.input.clone(),
                expected: c.expected.clone(),
                generated,
                margin: g.margin(),
            })
        })
        .collect()
}

/// The content tokens an attention view of a construction shows: the user's `input` then the
/// `generated` characters, cut to the positions left after the virtual tokens (the last generated
/// character was predicted at position N-1 and has no position of its own).
pub fn content_for_views(
    model: &Construction,
    prefix: &Prefix,
    input: &str,
    generated: &str,
) -> Result<Vec<u32>> {
    let mut ids = encode("input", input)?;
    ids.extend(encode("generated", generated)?);
    let room = model.config().n_positions.saturating_sub(prefix.len());
    ids.truncate(room);
    if ids.is_empty() {
        return Err(Error::input(
            "content",
            "at least one input or generated character to show",
            "none",
        ));
    }
    Ok(ids)
}
