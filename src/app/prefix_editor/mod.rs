//! The prefix editor: the prefix's kind and length, which vector is edited (virtual token, layer,
//! key/value part), a slider per dimension in a virtualized list with an index filter, whole-vector
//! tools, prefix files, and undo/redo. The state (`PrefixEditor`, here) is apart from the drawing
//! (`ui.rs`); the vector maths is the library's (`crate::prefix_math`).

mod peft_adapter;
mod ui;

use crate::model::ModelInfo;
use crate::prefix::{Prefix, PrefixKind};
use crate::prefix_math::{self, gaussian, norm, resize_axis};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

const MAX_UNDO: usize = 200;

/// For a key/value prefix: which of the two arrays is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KvPart {
    Keys,
    Values,
}

/// One direction through the edited vector, driven by a single slider: `vector = base + alpha * unit`.
#[derive(Debug, Clone)]
pub struct Direction {
    pub base: Vec<f32>,
    pub unit: Vec<f32>,
    pub alpha: f32,
    pub what: String,
}

/// Two saved prefixes and the position between them.
#[derive(Debug, Clone, Default)]
pub struct Interpolation {
    pub a_path: String,
    pub b_path: String,
    pub a: Option<Prefix>,
    pub b: Option<Prefix>,
    pub t: f32,
}

/// Something the editor needs from outside (the worker or the model).
pub enum EditorRequest {
    /// The embedding row of this token id.
    Embedding(u32),
    /// Open this PEFT adapter (folder or file) for the loaded model ([`PrefixEditor::open_adapter`]).
    OpenAdapter(PathBuf),
    /// Save the prefix as a PEFT adapter folder, replacing an adapter folder there when the flag is
    /// set ([`PrefixEditor::save_adapter`]).
    SaveAdapter(PathBuf, bool),
}

pub struct PrefixEditor {
    pub prefix: Option<Prefix>,
    pub kind: PrefixKind,
    pub p: usize,
    pub token: usize,
    pub layer: usize,
    pub kv_part: KvPart,
    pub kv_head: usize,
    pub filter: String,
    /// Slider range: each dimension's slider spans -range..=range (typed values may go beyond).
    pub range: f32,
    pub seed: u64,
    pub sigma: f32,
    pub target_norm: f32,
    pub axis: usize,
    pub token_text: String,
    pub file_path: String,
    pub direction: Option<Direction>,
    pub interp: Interpolation,
    /// Bumped on every change of the prefix (the app recomputes when it moves).
    pub version: u64,
    /// The last autosaved version.
    pub saved_version: u64,
    /// Last message (error or confirmation) and whether it is an error.
    pub message: Option<(bool, String)>,
    pub waiting_for_embedding: Option<u32>,
    /// PEFT adapters opened, newest first (kept in egui's persisted memory; see `peft_adapter`).
    pub recent_adapters: Vec<PathBuf>,
    undo: Vec<Prefix>,
    redo: Vec<Prefix>,
    /// Where the first visible dimension's slider was drawn (for `--bench-fps` to drag it).
    pub first_slider: Option<(usize, egui::Rect, f32)>,
    /// The widget whose drag is in progress (one undo step per gesture).
    gesture: Option<egui::Id>,
    filtered: (String, usize, Vec<usize>),
}

impl Default for PrefixEditor {
    fn default() -> Self {
        PrefixEditor {
            prefix: None,
            kind: PrefixKind::SoftPrompt,
            p: 1,
            token: 0,
            layer: 0,
            kv_part: KvPart::Keys,
            kv_head: 0,
            filter: String::new(),
            range: 2.0,
            seed: 0,
            sigma: 0.5,
            target_norm: 1.0,
            axis: 0,
            token_text: String::new(),
            file_path: String::new(),
            direction: None,
            interp: Interpolation::default(),
            version: 0,
            saved_version: 0,
            message: None,
            waiting_for_embedding: None,
            recent_adapters: Vec::new(),
            undo: Vec::new(),
            redo: Vec::new(),
            first_slider: None,
            gesture: None,
            filtered: (String::from("\u{0}"), 0, Vec::new()),
        }
    }
}

/// Indices kept by a filter such as `12`, `0-99`, `3, 7, 100-120` (empty keeps all).
pub fn parse_filter(filter: &str, len: usize) -> std::result::Result<Vec<usize>, String> {
    let f = filter.trim();
    if f.is_empty() {
        return Ok((0..len).collect());
    }
    let mut out = Vec::new();
    for part in f.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || format!("'{part}': expected an index or a range like 10-20");
        if let Some((a, b)) = part
            .split_once(['-', ':'])
            .or_else(|| part.split_once(".."))
        {
            let a: usize = a
                .trim()
                .trim_start_matches('d')
                .parse()
                .map_err(|_| bad())?;
            let b: usize = b
                .trim()
                .trim_start_matches('.')
                .parse()
                .map_err(|_| bad())?;
            out.extend(a.min(len)..(b + 1).min(len));
        } else {
            let i: usize = part.trim_start_matches('d').parse().map_err(|_| bad())?;
            if i < len {
                out.push(i);
            }
        }
    }
    out.dedup();
    Ok(out)
}

impl PrefixEditor {
    /// Replace the prefix (from a file, the default, or a restored session) and reset the history.
    pub fn set_prefix(&mut self, prefix: Prefix) {
        self.kind = prefix.kind();
        self.p = prefix.len();
        // The sliders must reach every value of the prefix (trained prefixes exceed the default ±2).
        let arrays: Vec<&crate::arrays::Array> = match &prefix {
            Prefix::SoftPrompt(a) | Prefix::Hidden(a) => vec![a],
            Prefix::KeyValue { keys, values } => vec![keys, values],
        };
        let widest = arrays
            .iter()
            .flat_map(|a| a.data.iter())
            .filter(|x| x.is_finite())
            .fold(0f32, |m, x| m.max(x.abs()));
        if widest > self.range {
            self.range = (widest * 1.25 * 10.0).ceil() / 10.0;
        }
        self.prefix = Some(prefix);
        self.undo.clear();
        self.redo.clear();
        self.direction = None;
        self.clamp_selection(None);
        self.version += 1;
    }

    /// Show a prefix being tuned (the Tune panel): the call with `first` records the state before
    /// tuning as one undo step; the others replace the prefix without new steps, so that undo takes
    /// back a whole tuning run at once.
    pub fn show_tuned(&mut self, prefix: Prefix, first: bool) {
        if first {
            self.gesture = None;
            self.begin_edit(None);
        }
        self.kind = prefix.kind();
        self.p = prefix.len();
        self.prefix = Some(prefix);
        self.direction = None;
        self.clamp_selection(None);
        self.changed();
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Record the state before an edit (once per drag gesture of widget `id`).
    fn begin_edit(&mut self, id: Option<egui::Id>) {
        if id.is_some() && self.gesture == id {
            return;
        }
        self.gesture = id;
        if let Some(p) = &self.prefix {
            self.undo.push(p.clone());
            if self.undo.len() > MAX_UNDO {
                self.undo.remove(0);
            }
        }
        self.redo.clear();
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    pub fn undo(&mut self) {
        if let Some(prev) = self.undo.pop() {
            if let Some(cur) = self.prefix.replace(prev) {
                self.redo.push(cur);
            }
            self.after_history();
        }
    }

    pub fn redo(&mut self) {
        if let Some(next) = self.redo.pop() {
            if let Some(cur) = self.prefix.replace(next) {
                self.undo.push(cur);
            }
            self.after_history();
        }
    }

    fn after_history(&mut self) {
        if let Some(p) = &self.prefix {
            self.kind = p.kind();
            self.p = p.len();
        }
        self.direction = None;
        self.gesture = None;
        self.clamp_selection(None);
        self.changed();
    }

    fn clamp_selection(&mut self, info: Option<&ModelInfo>) {
        self.token = self.token.min(self.p.saturating_sub(1));
        if let Some(info) = info {
            self.layer = self.layer.min(info.n_layers.saturating_sub(1));
            self.kv_head = self.kv_head.min(info.n_kv_heads.saturating_sub(1));
        }
    }

    /// Where the edited vector lives: (keys array?, offset, length).
    fn slot(&self) -> Option<(bool, usize, usize)> {
        let t = self.token;
        match self.prefix.as_ref()? {
            Prefix::SoftPrompt(a) => {
                let d = a.shape[1];
                (t < a.shape[0]).then_some((true, t * d, d))
            }
            Prefix::Hidden(a) => {
                let (l, p, d) = (a.shape[0], a.shape[1], a.shape[2]);
                (self.layer < l && t < p).then_some((true, (self.layer * p + t) * d, d))
            }
            Prefix::KeyValue { keys, .. } => {
                let (l, kv, p, hd) = (keys.shape[0], keys.shape[1], keys.shape[2], keys.shape[3]);
                (self.layer < l && self.kv_head < kv && t < p).then_some((
                    self.kv_part == KvPart::Keys,
                    ((self.layer * kv + self.kv_head) * p + t) * hd,
                    hd,
                ))
            }
        }
    }

    /// The edited vector.
    pub fn vector(&self) -> Option<&[f32]> {
        let (first, off, len) = self.slot()?;
        let a = match self.prefix.as_ref()? {
            Prefix::SoftPrompt(a) | Prefix::Hidden(a) => a,
            Prefix::KeyValue { keys, values } => {
                if first {
                    keys
                } else {
                    values
                }
            }
        };
        a.data.get(off..off + len)
    }

    pub fn vector_mut(&mut self) -> Option<&mut [f32]> {
        let (first, off, len) = self.slot()?;
        let a = match self.prefix.as_mut()? {
            Prefix::SoftPrompt(a) | Prefix::Hidden(a) => a,
            Prefix::KeyValue { keys, values } => {
                if first {
                    keys
                } else {
                    values
                }
            }
        };
        a.data.get_mut(off..off + len)
    }

    /// Set one dimension of the edited vector (what a slider does), as one undo step per gesture.
    pub fn set_dim(&mut self, i: usize, value: f32, gesture: Option<egui::Id>) {
        self.begin_edit(gesture);
        if let Some(v) = self.vector_mut() {
            if let Some(x) = v.get_mut(i) {
                *x = value;
            }
        }
        self.rebase_direction();
        self.changed();
    }

    /// Replace the whole edited vector (one undo step).
    pub fn set_vector(&mut self, values: &[f32]) {
        self.begin_edit(None);
        if let Some(v) = self.vector_mut() {
            if v.len() == values.len() {
                v.copy_from_slice(values);
            }
        }
        self.direction = None;
        self.changed();
    }

    /// Keep a direction slider's base consistent after another edit of the same vector.
    fn rebase_direction(&mut self) {
        let cur = self.vector().map(|v| v.to_vec());
        if let (Some(d), Some(cur)) = (self.direction.as_mut(), cur) {
            d.base = cur
                .iter()
                .zip(&d.unit)
                .map(|(x, u)| x - d.alpha * u)
                .collect();
        }
    }

    pub fn zero(&mut self) {
        if let Some(len) = self.vector().map(|v| v.len()) {
            self.set_vector(&vec![0.0; len]);
        }
    }

    pub fn randomize(&mut self) {
        if let Some(len) = self.vector().map(|v| v.len()) {
            let g: Vec<f32> = gaussian(self.seed, len)
                .iter()
                .map(|x| x * self.sigma)
                .collect();
            self.set_vector(&g);
        }
    }

    pub fn scale_norm(&mut self) {
        if let Some(v) = self.vector() {
            let n = norm(v);
            if n > 0.0 {
                let s = self.target_norm / n;
                let scaled: Vec<f32> = v.iter().map(|x| x * s).collect();
                self.set_vector(&scaled);
            } else {
                self.message = Some((
                    true,
                    "the vector is zero: randomize it before scaling its norm".into(),
                ));
            }
        }
    }

    /// Start a single-slider direction: a seeded random unit vector, or axis `axis`.
    pub fn start_direction(&mut self, random: bool) {
        let Some(base) = self.vector().map(|v| v.to_vec()) else {
            return;
        };
        let len = base.len();
        let (unit, what) = if random {
            let g = gaussian(self.seed.wrapping_add(0x9e37_79b9), len);
            let n = norm(&g).max(f32::MIN_POSITIVE);
            (
                g.iter().map(|x| x / n).collect(),
                format!("random direction (seed {})", self.seed),
            )
        } else {
            let mut u = vec![0.0; len];
            let k = self.axis.min(len.saturating_sub(1));
            if len > 0 {
                u[k] = 1.0;
            }
            (u, format!("axis d{k}"))
        };
        self.direction = Some(Direction {
            base,
            unit,
            alpha: 0.0,
            what,
        });
    }

    /// Move along the current direction to `alpha`.
    pub fn set_alpha(&mut self, alpha: f32, gesture: Option<egui::Id>) {
        let Some(d) = self.direction.as_mut() else {
            return;
        };
        d.alpha = alpha;
        let values: Vec<f32> = d
            .base
            .iter()
            .zip(&d.unit)
            .map(|(b, u)| b + alpha * u)
            .collect();
        self.begin_edit(gesture);
        if let Some(v) = self.vector_mut() {
            if v.len() == values.len() {
                v.copy_from_slice(&values);
            }
        }
        self.changed();
    }

    /// The embedding the worker sent for the token asked for.
    pub fn embedding_arrived(&mut self, token: u32, result: std::result::Result<Vec<f32>, String>) {
        if self.waiting_for_embedding != Some(token) {
            return;
        }
        self.waiting_for_embedding = None;
        match result {
            Ok(e) => {
                if self.vector().is_some_and(|v| v.len() == e.len()) {
                    self.set_vector(&e);
                    self.message = Some((false, format!("set to the embedding of token {token}")));
                } else {
                    self.message = Some((
                        true,
                        "a token embedding has d_model entries; this vector does not".into(),
                    ));
                }
            }
            Err(e) => self.message = Some((true, e)),
        }
    }

    /// Change the kind: a zero prefix of the new kind (one undo step).
    pub fn set_kind(&mut self, kind: PrefixKind, info: &ModelInfo) {
        self.begin_edit(None);
        // "loaded …" described the prefix this replaces.
        self.message = None;
        self.kind = kind;
        self.prefix = Some(Prefix::zeros(kind, self.p.max(1), info));
        self.direction = None;
        self.clamp_selection(Some(info));
        self.changed();
    }

    /// Change P, keeping the existing virtual tokens (one undo step).
    pub fn set_len(&mut self, p: usize, info: &ModelInfo) {
        let p = p.max(1);
        self.begin_edit(None);
        self.p = p;
        self.prefix = Some(match self.prefix.take() {
            Some(Prefix::SoftPrompt(a)) => Prefix::SoftPrompt(resize_axis(&a, 0, p)),
            Some(Prefix::Hidden(a)) => Prefix::Hidden(resize_axis(&a, 1, p)),
            Some(Prefix::KeyValue { keys, values }) => Prefix::KeyValue {
                keys: resize_axis(&keys, 2, p),
                values: resize_axis(&values, 2, p),
            },
            None => Prefix::zeros(self.kind, p, info),
        });
        self.direction = None;
        self.clamp_selection(Some(info));
        self.changed();
    }

    /// Load a prefix file of the current kind, checked against the model.
    pub fn load_file(&mut self, path: &Path, info: &ModelInfo) {
        match Prefix::load_for(path, self.kind, info) {
            Ok(p) => {
                self.begin_edit(None);
                self.p = p.len();
                self.prefix = Some(p);
                self.direction = None;
                self.clamp_selection(Some(info));
                self.changed();
                self.message = Some((false, format!("loaded {}", path.display())));
            }
            Err(e) => self.message = Some((true, e.one_line())),
        }
    }

    pub fn save_file(&mut self, path: &Path) {
        let Some(p) = &self.prefix else { return };
        self.message = Some(match p.save(path) {
            Ok(()) => (false, format!("saved {}", path.display())),
            Err(e) => (true, e.one_line()),
        });
    }

    /// Set the prefix to (1 - t) A + t B.
    pub fn apply_interpolation(&mut self, gesture: Option<egui::Id>) {
        let (Some(a), Some(b)) = (&self.interp.a, &self.interp.b) else {
            return;
        };
        let Some(next) = prefix_math::interpolate(a, b, self.interp.t) else {
            return;
        };
        self.begin_edit(gesture);
        self.p = next.len();
        self.prefix = Some(next);
        self.direction = None;
        self.changed();
    }

    fn load_interp_end(&mut self, second: bool, info: &ModelInfo) {
        let path = PathBuf::from(
            if second {
                &self.interp.b_path
            } else {
                &self.interp.a_path
            }
            .trim(),
        );
        match Prefix::load_for(&path, self.kind, info) {
            Ok(p) => {
                let other = if second {
                    &self.interp.a
                } else {
                    &self.interp.b
                };
                if other.as_ref().is_some_and(|o| o.len() != p.len()) {
                    self.message = Some((
                        true,
                        format!(
                            "{}: P = {}, the other end has P = {}",
                            path.display(),
                            p.len(),
                            other.as_ref().map_or(0, |o| o.len())
                        ),
                    ));
                    return;
                }
                if second {
                    self.interp.b = Some(p);
                } else {
                    self.interp.a = Some(p);
                }
                self.message = Some((false, format!("loaded {}", path.display())));
            }
            Err(e) => self.message = Some((true, e.one_line())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_ranges_and_indices() {
        assert_eq!(parse_filter("", 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_filter("2, 5-7, 100", 8).unwrap(), vec![2, 5, 6, 7]);
        assert!(parse_filter("x", 8).is_err());
    }
}
