//! Figure (e): what tuning a prefix can and cannot do on a real model. On SmolLM2-135M, a soft prompt
//! of length 4 is tuned (every weight frozen, Adam, seed 0) to make " Berlin" follow "The capital of
//! France is": the target's probability rises from almost 0 to almost 1 (what a prefix can do), while
//! layer 0's attention over the content, renormalized, stays the pretrained attention to rounding at
//! every logged step, so no head of layer 0 changes which content token it attends to most (what it
//! cannot do); the deepest layer's attention moves freely.

use super::{maps_json, PaperFigure};
use crate::arrays::Array;
use crate::capture::{capture, LayerCapture};
use crate::error::{Error, Result};
use crate::figure::svg::{Figure, Heatmap, Panel, Scatter, Series};
use crate::figure::ViewKind;
use crate::load;
use crate::model::LayerSel;
use crate::prefix::PrefixKind;
use crate::tune::{initial_prefix, Example, RenormCheck, StepStats, TuneConfig, Tuner};
use std::path::Path;
use std::sync::Arc;

pub const PROMPT: &str = "The capital of France is";
pub const TARGET: &str = " Berlin";
/// Steps tuned, and how often the layer-0 check runs.
pub const STEPS: usize = 30;
const CHECK_EVERY: usize = 5;

/// Rows `(head, query)` whose most-attended content column differs between two `(H, N, N)` maps.
fn argmax_changes(a: &Array, b: &Array) -> usize {
    let n = a.shape[2];
    a.data
        .chunks(n)
        .zip(b.data.chunks(n))
        .filter(|(x, y)| argmax(x) != argmax(y))
        .count()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The head of `lc` whose renormalized map moved most from the pretrained one.
fn most_moved_head(lc: &LayerCapture) -> usize {
    (0..lc.n_heads())
        .max_by(|&a, &b| {
            let d = |h| lc.max_renorm_diff(Some(h)).unwrap_or(0.0);
            d(a).total_cmp(&d(b))
        })
        .unwrap_or(0)
}

fn curve(name: &str, title: &str, y: &str, pts: Vec<(f32, f32)>, color: (u8, u8, u8)) -> Panel {
    let segments = pts.windows(2).map(|w| (w[0], w[1], color)).collect();
    Panel::Scatter(Scatter {
        name: name.into(),
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        series: vec![Series {
            name: y.into(),
            color,
            points: pts,
            hollow: false,
        }],
        segments,
        x_range: None,
        y_range: None,
    })
}

pub fn tune_figure(path: &Path) -> Result<PaperFigure> {
    let loaded = load::load(path)?;
    let tok = loaded.tokenizer;
    let prompt = tok.encode(PROMPT, false)?;
    let target = tok.encode(TARGET, false)?;
    let model: Arc<dyn crate::model::Transformer> = Arc::from(loaded.model);
    let cfg = TuneConfig {
        kind: PrefixKind::SoftPrompt,
        length: 4,
        lr: 0.01,
        seed: 0,
    };
    let start = initial_prefix(model.as_ref(), &cfg)?;
    let mut t = Tuner::new(
        model.clone(),
        vec![Example {
            prompt: prompt.clone(),
            target: target.clone(),
        }],
        cfg,
        &start,
    )?;
    let first = t.evaluate()?;
    let check0 = t.renorm_check()?;
    let mut history: Vec<StepStats> = Vec::new();
    let mut checks: Vec<(usize, RenormCheck)> = vec![(0, check0)];
    let t0 = std::time::Instant::now();
    while t.steps_done() < STEPS {
        history.push(t.step()?);
        if t.steps_done().is_multiple_of(CHECK_EVERY) {
            checks.push((t.steps_done(), t.renorm_check()?));
        }
    }
    let step_s = t0.elapsed().as_secs_f64() / STEPS as f64;
    let end = t.evaluate()?;
    history.push(end);
    let last = model.info().n_layers - 1;
    let tuned = t.prefix()?;
    let cap = capture(
        model.as_ref(),
        &prompt,
        Some(&tuned),
        &LayerSel::Only(vec![0, last]),
    )?;
    let (l0, ld) = match (cap.layer(0), cap.layer(last)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(Error::Internal("capture lacks a requested layer")),
    };
    let changes = |lc: &LayerCapture| -> Result<usize> {
        let r = lc
            .renormalized
            .as_ref()
            .ok_or(Error::Internal("no renormalized map with a prefix"))?;
        Ok(argmax_changes(r, &lc.pretrained))
    };
    let (ch0, chd) = (changes(l0)?, changes(ld)?);
    let rows = l0.n_heads() * prompt.len();
    let rows_d = ld.n_heads() * prompt.len();
    let worst0 = checks.iter().map(|c| c.1.layer0).fold(0f32, f32::max);
    let end_check = checks.last().map(|c| c.1).unwrap_or(check0);

    let labels = tok.labels(&prompt);
    let head_d = most_moved_head(ld);
    let mut panels = vec![
        curve(
            "e_loss",
            "loss (target cross-entropy)",
            "loss",
            history
                .iter()
                .map(|s| (s.step as f32, s.loss as f32))
                .collect(),
            (31, 119, 180),
        ),
        curve(
            "e_p_target",
            "p(\u{201c} Berlin\u{201d})",
            "p(target)",
            history
                .iter()
                .map(|s| (s.step as f32, s.p_target as f32))
                .collect(),
            (214, 39, 40),
        ),
    ];
    for (layer, head) in [(0, head_d), (last, head_d)] {
        for v in [ViewKind::Renormalized, ViewKind::Pretrained] {
            let mut h = crate::figure::view_heatmap(&cap, &labels, layer, head, v)?;
            h.name = format!("e_l{layer}_{}", h.name);
            h.title = format!("layer {layer}, head {head}: {}", h.title);
            panels.push(Panel::Heatmap(h));
        }
    }
    let mut fig = Figure::new(panels, 2);
    fig.cell = Some(22);
    fig.title = Some(format!(
        "SmolLM2-135M: a length-4 soft prompt tuned for \u{201c}{TARGET}\u{201d}"
    ));
    fig.note = Some(format!(
        "p(target) {:.4} \u{2192} {:.4}; layer 0 max |renormalized \u{2212} pretrained| \u{2264} {worst0:.1e} at every check; layer {last}: {:.2}.",
        first.p_target, end.p_target, end_check.deepest
    ));
    let caption = format!(
        "**(e) A tuned prefix flips a fact, and cannot change layer 0's attention over the content.** SmolLM2-135M-Instruct (`{}`), every weight frozen; a soft prompt of length 4 (started from the embeddings of 4 seeded random vocabulary tokens) tuned with Adam (lr 0.01, seed 0, {STEPS} steps, {step_s:.2} s a step on this machine) so that \u{201c}{TARGET}\u{201d} follows \u{201c}{PROMPT}\u{201d}. Loss {:.3} \u{2192} **{:.4}**, p(target) {:.4} \u{2192} **{:.4}**, target-token accuracy {:.0} \u{2192} {:.0}. Layer 0's attention over the content, renormalized, against the pretrained attention: max |renormalized \u{2212} pretrained| = {:.1e} before tuning, {:.1e} after, at most **{worst0:.1e}** at every check (every {CHECK_EVERY} steps); the most-attended content token changed in **{ch0} of {rows}** (head, query) rows. Layer {last} (the deepest): {:.3} before, **{:.3}** after, most-attended token changed in {chd} of {rows_d} rows. Top: loss and target probability per step; middle: layer 0, head {head_d}, renormalized (tuned) and pretrained; bottom: layer {last}, head {head_d} (the head of layer {last} that moved most), the same two views.\n",
        path.display(),
        first.loss,
        end.loss,
        first.p_target,
        end.p_target,
        first.accuracy,
        end.accuracy,
        check0.layer0,
        end_check.layer0,
        check0.deepest,
        end_check.deepest,
    );
    let maps: Vec<&Heatmap> = fig
        .panels
        .iter()
        .filter_map(|p| match p {
            Panel::Heatmap(h) => Some(h),
            _ => None,
        })
        .collect();
    let data = serde_json::json!({
        "model": path.display().to_string(),
        "prompt": PROMPT,
        "target": TARGET,
        "prompt_ids": prompt,
        "target_ids": target,
        "kind": "soft prompt",
        "length": 4,
        "lr": 0.01,
        "seed": 0,
        "steps": STEPS,
        "step_seconds": step_s,
        "loss": history.iter().map(|s| s.loss).collect::<Vec<_>>(),
        "p_target": history.iter().map(|s| s.p_target).collect::<Vec<_>>(),
        "accuracy": history.iter().map(|s| s.accuracy).collect::<Vec<_>>(),
        "checks": checks.iter().map(|(s, c)| serde_json::json!({
            "step": s, "layer0_max_abs_renorm_minus_pretrained": c.layer0,
            "deepest_max_abs_renorm_minus_pretrained": c.deepest,
        })).collect::<Vec<_>>(),
        "deepest_layer": last,
        "argmax_changes_layer0": ch0,
        "argmax_changes_deepest": chd,
        "rows": rows,
        "panels": maps_json(&maps),
    });
    Ok(PaperFigure {
        name: "e_tune_smollm2".into(),
        figure: fig,
        caption,
        data,
    })
}
