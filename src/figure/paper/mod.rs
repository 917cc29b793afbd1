//! The paper's figures, regenerated from the shipped toy models (`models/`) and SmolLM2:
//! (a) the 1-layer sorter, pretrained / fully fine-tuned / prefix-tuned; (b) the four-task model's
//! heads per task prefix, raw and renormalized; (c) the bias plot of the attention block outputs;
//! (d) SmolLM2 layer 0 with a one-token prefix. Each comes with its caption and the numbers it shows.
//!
//! Models are found by their safetensors metadata (`prefixscope.kind`, `.task`, `.base`, `.config`),
//! among the files `models/manifest.json` lists and the `.safetensors` files in the folder.

mod runs;
mod toys;
mod tune;

pub use tune::tune_figure;

use runs::{block_output, raw_attention};
pub use runs::{generate, sample_inputs, task_answer};
pub use toys::*;

use super::svg::{padded_range, Figure, Heatmap, Panel, Scale, Scatter, Series};
use super::{attention_heatmap, prefix_labels, ViewKind};
use crate::arrays::Array;
use crate::capture::capture;
use crate::error::{Error, Result};
use crate::load;
use crate::model::{LayerSel, Transformer};
use crate::prefix::{Prefix, PrefixKind};
use crate::train::data::Task;
use std::path::{Path, PathBuf};

/// The notebooks' test input.
pub const TEST_INPUT: [u32; 10] = [2, 6, 0, 1, 4, 6, 3, 0, 1, 2];
/// The four pretraining tasks, in the paper's order.
/// The four pretraining tasks, by name, in the order the figures show them (defined once, in
/// [`crate::train::data::Task::PRETRAIN`]).
pub const TASKS: [&str; 4] = [
    Task::PRETRAIN[0].name(),
    Task::PRETRAIN[1].name(),
    Task::PRETRAIN[2].name(),
    Task::PRETRAIN[3].name(),
];
/// The residual dimensions of the authors' saved bias plot (`02_compare_with_wo_prefix.pdf`).
pub const PAPER_BIAS_DIMS: (usize, usize) = (143, 212);
/// The DART test sentence of the LLaMA figure, without its dummy first token "X" (the prefix's place).
pub const DART_CONTENT: &str =
    " TABLE: Fourth Round Qualifying : NEW_ENTRIES_THIS_ROUND : 24 TEXT: Fourth round qualifying had 24 new entries.";

/// A figure ready to write: the drawing, its caption (markdown) and the data it shows (JSON).
pub struct PaperFigure {
    /// File stem, e.g. `a_sorter`.
    pub name: String,
    pub figure: Figure,
    pub caption: String,
    pub data: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// Labels and groups

fn digits(ids: &[u32]) -> Vec<String> {
    ids.iter().map(|i| i.to_string()).collect()
}

fn join(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mark the prefix / input / output structure of a toy heat map whose rows are `n_in` inputs then
/// outputs and whose columns are `[p prefix | content]`.
fn toy_groups(h: &mut Heatmap, p: usize, n_in: usize, prefix_name: &str) {
    let n = h.rows();
    h.col_dividers = if p > 0 { vec![p, p + n_in] } else { vec![n_in] };
    h.row_dividers = vec![n_in];
    h.col_groups = vec![
        (0, p, prefix_name.to_string()),
        (p, p + n_in, "input".into()),
        (p + n_in, p + n, "output".into()),
    ];
    h.row_groups = vec![(0, n_in, "input".into()), (n_in, n, "output".into())];
}

fn head_of(a: &Array, h: usize) -> &[f32] {
    let per = a.data.len() / a.shape[0].max(1);
    &a.data[h * per..(h + 1) * per]
}

/// Mean of the first `p` columns' mass over rows `rows` of one head's `(n, p+n)` matrix.
fn mean_prefix_mass(m: &[f32], n: usize, p: usize, rows: std::ops::Range<usize>) -> f32 {
    let cols = p + n;
    let k = rows.len().max(1) as f32;
    rows.map(|i| m[i * cols..i * cols + p].iter().sum::<f32>())
        .sum::<f32>()
        / k
}

fn max_prefix_mass(m: &[f32], n: usize, p: usize, rows: std::ops::Range<usize>) -> f32 {
    let cols = p + n;
    rows.map(|i| m[i * cols..i * cols + p].iter().sum::<f32>())
        .fold(0.0, f32::max)
}

fn maps_json(maps: &[&Heatmap]) -> serde_json::Value {
    let owned: Vec<Heatmap> = maps.iter().map(|h| (*h).clone()).collect();
    super::data::to_json(&owned, &super::data::Meta::default())["panels"].clone()
}

fn load_prefix_entry(e: &ToyEntry) -> Result<Prefix> {
    Prefix::load(&e.path, PrefixKind::Hidden)
}

// ---------------------------------------------------------------------------------------------
// (a) the sorter

pub fn sorter_figure(files: &SorterFiles) -> Result<PaperFigure> {
    let pre = load::load(&files.pretrained.path)?;
    let ft = load::load(&files.finetuned.path)?;
    let prefix = load_prefix_entry(&files.prefix)?;
    let p = prefix.len();
    let input = TEST_INPUT;
    let n_in = input.len();
    let mut panels = Vec::new();
    let mut lines = Vec::new();
    let mut mats = Vec::new();
    let rows: [(&str, &dyn Transformer, Option<&Prefix>, &str); 3] = [
        (
            "Pretrained (ascending)",
            pre.model.as_ref(),
            None,
            "ascending",
        ),
        (
            "Fully fine-tuned (descending)",
            ft.model.as_ref(),
            None,
            "descending",
        ),
        (
            "Prefix-tuned (descending)",
            pre.model.as_ref(),
            Some(&prefix),
            "descending",
        ),
    ];
    for (k, (title, model, pf, task)) in rows.iter().enumerate() {
        let out = generate(*model, &input, *pf, p, n_in)?;
        // As the notebook records it: the last generate step sees the input and 9 outputs.
        let mut ids = input.to_vec();
        ids.extend_from_slice(&out[..n_in - 1]);
        let a = raw_attention(*model, &ids, *pf, p)?;
        let labels = digits(&ids);
        let mut cols = if pf.is_some() {
            prefix_labels(p)
        } else {
            vec!["[pad]".to_string(); p]
        };
        cols.extend(labels.iter().cloned());
        let name = ["a_pretrained", "a_finetuned", "a_prefixtuned"][k];
        let mut h = attention_heatmap(
            name,
            *title,
            &labels,
            &cols,
            head_of(&a, 0),
            p,
            Scale::probability(),
        )?;
        toy_groups(&mut h, p, n_in, if pf.is_some() { "prefix" } else { "pad" });
        let n = ids.len();
        let want = task_answer(task, &input).unwrap_or_default();
        lines.push(format!(
            "- **{title}**: output `{}` ({task} is `{}`: {}); attention on the {} column: mean {:.3} over input rows, mean {:.3} and max {:.3} over output rows.",
            join(&out),
            join(&want),
            if out == want { "correct" } else { "wrong" },
            if pf.is_some() { "prefix" } else { "pad" },
            mean_prefix_mass(head_of(&a, 0), n, p, 0..n_in),
            mean_prefix_mass(head_of(&a, 0), n, p, n_in..n),
            max_prefix_mass(head_of(&a, 0), n, p, n_in..n),
        ));
        mats.push(a);
        panels.push(Panel::Heatmap(h));
    }
    // The input rows see the same tokens in every run: compare prefix-tuned with pretrained there,
    // over the content columns (raw), and after renormalizing both over the content (the theorem:
    // exactly equal in a one-layer model).
    let n = n_in * 2 - 1;
    let cols = p + n;
    let mut diff = 0f32;
    let mut renorm_diff = 0f32;
    for i in 0..n_in {
        let row = |m: &Array| m.data[i * cols..(i + 1) * cols].to_vec();
        let (a, b) = (row(&mats[2]), row(&mats[0]));
        let (sa, sb) = (a[p..].iter().sum::<f32>(), b[p..].iter().sum::<f32>());
        for j in p..cols {
            diff = diff.max((a[j] - b[j]).abs());
            renorm_diff = renorm_diff.max((a[j] / sa - b[j] / sb).abs());
        }
    }
    let mut fig = Figure::new(panels, 3);
    // Large enough cells for two-decimal values, as in the notebook's heat maps.
    fig.cell = Some(26);
    fig.title = Some(format!("1-layer, 1-head sorter on {}", join(&input)));
    fig.note = Some(
        "Raw attention (rows: queries; columns: keys), layer 0, head 0. Dashed lines separate the prefix or pad position, the input and the generated output.".into(),
    );
    // The headline states what the numbers show, not what the paper expects.
    let headline = if renorm_diff < 1e-4 {
        "A prefix only rescales the sorter's attention pattern."
    } else {
        "The prefix changes the sorter's attention pattern beyond rescaling."
    };
    let caption = format!(
        "**(a) {headline}** The 1-layer, 1-head sorter pretrained on ascending (`{}`), fully fine-tuned on descending (`{}`), and with a descending prefix of length {p} (`{}`), on the input `{}` and each model's own greedy output (the notebook's last generation step: input plus 9 outputs). On the input rows, which see the same tokens in all three runs, the prefix-tuned attention to the content differs from the pretrained one by at most **{diff:.3}** (the prefix takes a different share than the pad token did), and after renormalizing both over the content by **{renorm_diff:.1e}**: the prefix only rescales the pretrained pattern, while fine-tuning rewrites it.\n{}\n",
        files.pretrained.path.display(),
        files.finetuned.path.display(),
        files.prefix.path.display(),
        join(&input),
        lines.join("\n")
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
        "input": input,
        "max_abs_diff_input_rows_content_prefixtuned_vs_pretrained": diff,
        "max_abs_diff_input_rows_renormalized_prefixtuned_vs_pretrained": renorm_diff,
        "panels": maps_json(&maps),
    });
    Ok(PaperFigure {
        name: "a_sorter".into(),
        figure: fig,
        caption,
        data,
    })
}

// ---------------------------------------------------------------------------------------------
// (b) the four-task model's heads

pub fn four_task_figures(files: &FourTaskFiles) -> Result<Vec<PaperFigure>> {
    let loaded = load::load(&files.model.path)?;
    let model = loaded.model.as_ref();
    let n_heads = model.info().n_heads;
    let input = TEST_INPUT;
    let n_in = input.len();
    let prefixes: Vec<(String, Prefix)> = files
        .prefixes
        .iter()
        .map(|(t, e)| Ok((t.clone(), load_prefix_entry(e)?)))
        .collect::<Result<_>>()?;
    let p = prefixes.first().map_or(1, |x| x.1.len());
    let mut raw_panels = Vec::new();
    let mut ren_panels = Vec::new();
    let mut lines = Vec::new();
    let mut worst_renorm = 0f32;
    // Row 0: the pretrained model (no prefix, its own continuation).
    let out = generate(model, &input, None, p, n_in)?;
    let mut ids = input.to_vec();
    ids.extend_from_slice(&out[..n_in - 1]);
    let labels = digits(&ids);
    let cap = capture(model, &ids, None, &LayerSel::Only(vec![0]))?;
    let raw = raw_attention(model, &ids, None, p)?;
    let mut cols = vec!["[pad]".to_string(); p];
    cols.extend(labels.iter().cloned());
    for h in 0..n_heads {
        let mut m = attention_heatmap(
            format!("b_raw_pretrained_H{h}"),
            format!("No prefix \u{00b7} head {h}"),
            &labels,
            &cols,
            head_of(&raw, h),
            p,
            Scale::probability(),
        )?;
        toy_groups(&mut m, p, n_in, "pad");
        raw_panels.push(Panel::Heatmap(m));
        let mut r = attention_heatmap(
            format!("b_renormalized_pretrained_H{h}"),
            format!("No prefix \u{00b7} head {h}"),
            &labels,
            &labels,
            head_of(&cap.layers[0].pretrained, h),
            0,
            Scale::probability(),
        )?;
        toy_groups(&mut r, 0, n_in, "");
        r.col_groups.retain(|g| g.1 > g.0);
        ren_panels.push(Panel::Heatmap(r));
    }
    lines.push(format!("- no prefix: output `{}`", join(&out)));
    for (task, pf) in &prefixes {
        let out = generate(model, &input, Some(pf), p, n_in)?;
        let mut ids = input.to_vec();
        ids.extend_from_slice(&out[..n_in - 1]);
        let labels = digits(&ids);
        let cap = capture(model, &ids, Some(pf), &LayerSel::Only(vec![0]))?;
        let lc = &cap.layers[0];
        let w = lc
            .with_prefix
            .as_ref()
            .ok_or_else(|| Error::input("prefix", "a prefixed capture", "none"))?;
        let r = lc
            .renormalized
            .as_ref()
            .ok_or_else(|| Error::input("prefix", "a prefixed capture", "none"))?;
        let mut cols = prefix_labels(p);
        cols.extend(labels.iter().cloned());
        let mut masses = Vec::new();
        for h in 0..n_heads {
            let mut m = attention_heatmap(
                format!("b_raw_{task}_H{h}"),
                format!("{task} prefix \u{00b7} head {h}"),
                &labels,
                &cols,
                head_of(w, h),
                p,
                Scale::probability(),
            )?;
            toy_groups(&mut m, p, n_in, "prefix");
            raw_panels.push(Panel::Heatmap(m));
            let mut rn = attention_heatmap(
                format!("b_renormalized_{task}_H{h}"),
                format!("{task} prefix \u{00b7} head {h}"),
                &labels,
                &labels,
                head_of(r, h),
                0,
                Scale::probability(),
            )?;
            toy_groups(&mut rn, 0, n_in, "");
            rn.col_groups.retain(|g| g.1 > g.0);
            ren_panels.push(Panel::Heatmap(rn));
            masses.push(mean_prefix_mass(head_of(w, h), ids.len(), p, 0..ids.len()));
        }
        let d = lc.max_renorm_diff(None).unwrap_or(f32::NAN);
        worst_renorm = worst_renorm.max(d);
        let want = task_answer(task, &input).unwrap_or_default();
        lines.push(format!(
            "- {task} prefix: output `{}` ({}, expected `{}`); mean prefix mass per head {}; max |renormalized \u{2212} pretrained on the same tokens| = {d:.1e}",
            join(&out),
            if out == want { "correct" } else { "wrong" },
            join(&want),
            masses
                .iter()
                .map(|m| format!("{m:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
        ));
    }
    let src = files.model.path.display().to_string();
    let mut raw_fig = Figure::new(raw_panels, n_heads);
    raw_fig.cell = Some(14);
    raw_fig.title = Some(format!(
        "Four-task model ({n_heads} heads): raw attention per task prefix, input {}",
        join(&input)
    ));
    raw_fig.note = Some("Rows: no prefix, then one task prefix each; columns: heads (0-based). Each run continues the input with its own greedy output.".into());
    let mut ren_fig = Figure::new(ren_panels, n_heads);
    ren_fig.cell = Some(14);
    ren_fig.title = Some(format!(
        "Four-task model ({n_heads} heads): attention renormalized over the content, input {}",
        join(&input)
    ));
    ren_fig.note = Some(format!("Rows: no prefix (pretrained), then one task prefix each; columns: heads (0-based). max |renormalized \u{2212} pretrained| on the same tokens: {worst_renorm:.1e}."));
    let common = format!(
        "The 1-layer, {n_heads}-head model pretrained on the random mix of ascending, descending, add1 and add2 (`{src}`, no LayerNorm before attention), on the input `{}` continued greedily, without a prefix and with each task's prefix (length {p}).\n{}\n",
        join(&input),
        lines.join("\n")
    );
    let elicited = lines.iter().filter(|l| l.contains("(correct")).count();
    let raw_headline = format!(
        "{elicited} of {} task prefixes elicit their task from the same model.",
        prefixes.len()
    );
    let renorm_headline = if worst_renorm < 1e-4 {
        "Over the content, a prefix changes nothing."
    } else {
        "Over the content, the prefixed attention differs from the pretrained one."
    };
    let cap_raw = format!(
        "**(b, raw) {raw_headline}** Raw attention of every head, the prefix column included. {common}"
    );
    let cap_ren = format!(
        "**(b, renormalized) {renorm_headline}** The same runs with the prefix column removed and each row renormalized over the content, against the pretrained attention on the same tokens: worst difference over all prefixes and heads {worst_renorm:.1e} (the paper: exactly equal in a one-layer model); panels differ only where the outputs, and so the tokens, differ. {common}"
    );
    let collect = |fig: &Figure| -> Vec<Heatmap> {
        fig.panels
            .iter()
            .filter_map(|p| match p {
                Panel::Heatmap(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    };
    let raw_maps = collect(&raw_fig);
    let ren_maps = collect(&ren_fig);
    Ok(vec![
        PaperFigure {
            name: "b_four_task_raw".into(),
            data: serde_json::json!({"input": input, "panels": maps_json(&raw_maps.iter().collect::<Vec<_>>())}),
            figure: raw_fig,
            caption: cap_raw,
        },
        PaperFigure {
            name: "b_four_task_renormalized".into(),
            data: serde_json::json!({"input": input, "max_abs_renormalized_minus_pretrained": worst_renorm, "panels": maps_json(&ren_maps.iter().collect::<Vec<_>>())}),
            figure: ren_fig,
            caption: cap_ren,
        },
    ])
}

// ---------------------------------------------------------------------------------------------
// (c) the bias plot

/// Colour-blind-safe colours for the four tasks (Okabe-Ito).
pub const TASK_COLORS: [(u8, u8, u8); 4] =
    [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167)];

pub fn bias_figure(files: &FourTaskFiles, dims: Option<(usize, usize)>) -> Result<PaperFigure> {
    let loaded = load::load(&files.model.path)?;
    let model = loaded.model.as_ref();
    let d_model = model.info().d_model;
    let (d1, d2) = dims.unwrap_or(if d_model > PAPER_BIAS_DIMS.1 {
        PAPER_BIAS_DIMS
    } else {
        (0, 1)
    });
    if d1 >= d_model || d2 >= d_model {
        return Err(Error::input(
            "bias dimensions",
            format!("residual dimensions below {d_model}"),
            format!("{d1}, {d2}"),
        ));
    }
    let inputs = sample_inputs(20, 1428);
    let prefixes: Vec<(String, Prefix)> = files
        .prefixes
        .iter()
        .map(|(t, e)| Ok((t.clone(), load_prefix_entry(e)?)))
        .collect::<Result<_>>()?;
    let p = prefixes.first().map_or(1, |x| x.1.len());
    let mut base = Vec::new();
    for x in &inputs {
        base.push(block_output(model, x, None, p)?);
    }
    let mut left = vec![Series {
        name: "no prefix".into(),
        color: (90, 90, 90),
        points: base.iter().map(|o| (o[d1], o[d2])).collect(),
        hollow: true,
    }];
    let mut right_series = vec![left[0].clone()];
    let mut segments = Vec::new();
    let mut lines = Vec::new();
    let mut shifts_json = Vec::new();
    let mut cosines = Vec::new();
    for (k, (task, pf)) in prefixes.iter().enumerate() {
        let col = TASK_COLORS[k % TASK_COLORS.len()];
        let mut pts = Vec::new();
        let mut shifts: Vec<Vec<f32>> = Vec::new();
        for (x, b) in inputs.iter().zip(&base) {
            let o = block_output(model, x, Some(pf), p)?;
            pts.push((o[d1], o[d2]));
            segments.push(((b[d1], b[d2]), (o[d1], o[d2]), col));
            shifts.push(o.iter().zip(b).map(|(a, b)| a - b).collect());
        }
        // How fixed the direction is: cosine of each shift with the mean shift.
        let mean: Vec<f32> = (0..d_model)
            .map(|i| shifts.iter().map(|s| s[i]).sum::<f32>() / shifts.len() as f32)
            .collect();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos: Vec<f32> = shifts
            .iter()
            .map(|s| {
                s.iter().zip(&mean).map(|(a, b)| a * b).sum::<f32>()
                    / (norm(s) * norm(&mean)).max(1e-12)
            })
            .collect();
        let mean_cos = cos.iter().sum::<f32>() / cos.len() as f32;
        cosines.push(mean_cos);
        let min_cos = cos.iter().copied().fold(f32::INFINITY, f32::min);
        let mean_len = shifts.iter().map(|s| norm(s)).sum::<f32>() / shifts.len() as f32;
        lines.push(format!(
            "- {task} prefix: mean shift length {mean_len:.3} in the full {d_model}-dimensional space; cosine of each input's shift with the mean shift: mean {mean_cos:.3}, minimum {min_cos:.3}"
        ));
        shifts_json.push(serde_json::json!({"task": task, "points": pts, "mean_shift_length": mean_len, "mean_cosine_to_mean_shift": mean_cos, "min_cosine_to_mean_shift": min_cos}));
        right_series.push(Series {
            name: format!("{task} prefix"),
            color: col,
            points: pts,
            hollow: false,
        });
    }
    let xr = padded_range(
        right_series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
    );
    let yr = padded_range(
        right_series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    left[0].hollow = true;
    let xl = format!("attention output, dimension {d1}");
    let yl = format!("attention output, dimension {d2}");
    let lpanel = Scatter {
        name: "c_without_prefix".into(),
        title: "Without prefix".into(),
        x_label: xl.clone(),
        y_label: yl.clone(),
        series: left,
        segments: vec![],
        x_range: Some(xr),
        y_range: Some(yr),
    };
    let rpanel = Scatter {
        name: "c_with_prefix".into(),
        title: "With each task prefix".into(),
        x_label: xl,
        y_label: yl,
        series: right_series,
        segments,
        x_range: Some(xr),
        y_range: Some(yr),
    };
    let mut fig = Figure::new(vec![Panel::Scatter(lpanel), Panel::Scatter(rpanel)], 2);
    fig.title = Some("Attention block output without and with each task prefix".into());
    fig.note = Some(
        "Attention block output (after c_proj) at the last input position, layer 0, for 20 sampled inputs (seed 1428); lines join each input's point without and with a prefix.".into());
    let one_direction = cosines.iter().all(|&c| c > 0.9);
    let caption = format!(
        "**(c) {}** The four-task model (`{}`): the attention block output (after the output projection `c_proj`, with its bias) at the last input position, the one that predicts the first output, for 20 inputs from the paper's generator (seed 1428), without a prefix (hollow) and with each task prefix (filled), on residual dimensions {d1} and {d2}{}; lines join each input's two points. {}\n{}\n",
        if one_direction {
            "A prefix adds a bias in one direction to the attention block's output."
        } else {
            "A prefix shifts the attention block's output."
        },
        files.model.path.display(),
        if (d1, d2) == PAPER_BIAS_DIMS {
            " (the dimensions of the authors' saved plot)"
        } else {
            ""
        },
        if one_direction {
            "Every prefix's shifts point close to one direction (mean cosine with their mean above 0.9):"
        } else {
            "How close each prefix's shifts are to one direction:"
        },
        lines.join("\n")
    );
    let data = serde_json::json!({
        "dims": [d1, d2],
        "inputs": inputs,
        "without_prefix": base.iter().map(|o| (o[d1], o[d2])).collect::<Vec<_>>(),
        "with_prefix": shifts_json,
    });
    Ok(PaperFigure {
        name: "c_bias".into(),
        figure: fig,
        caption,
        data,
    })
}

// ---------------------------------------------------------------------------------------------
// (d) SmolLM2, layer 0

/// The SmolLM2 checkpoint in the cache `.ci/fetch-smollm2.sh` fills, if it is there.
pub fn smollm2_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PREFIXSCOPE_SMOLLM2") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cache = std::env::var_os("PREFIXSCOPE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("prefixscope"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/prefixscope"))
        })?;
    let p = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    p.is_file().then_some(p)
}

pub fn smollm2_figure(path: &Path, head: Option<usize>) -> Result<PaperFigure> {
    let loaded = load::load(path)?;
    let model = loaded.model.as_ref();
    let tok = &loaded.tokenizer;
    let ids = tok.encode(DART_CONTENT, false)?;
    // The prefix: one soft-prompt vector, the embedding of the notebook's dummy token "X".
    let x_ids = tok.encode("X", false)?;
    let x = *x_ids
        .first()
        .ok_or_else(|| Error::input("tokenizer", "a token for 'X'", "none"))?;
    let emb = model.token_embedding(x)?;
    let prefix = Prefix::SoftPrompt(Array {
        shape: vec![1, emb.len()],
        data: emb,
    });
    let cap = capture(model, &ids, Some(&prefix), &LayerSel::Only(vec![0]))?;
    let lc = &cap.layers[0];
    let mass = lc
        .prefix_mass
        .as_ref()
        .ok_or_else(|| Error::input("prefix", "a prefixed capture", "none"))?;
    let n = ids.len();
    let n_heads = lc.n_heads();
    // The head that puts the most attention on the prefix, unless one is asked for.
    let head = match head {
        Some(h) if h < n_heads => h,
        Some(h) => {
            return Err(Error::input(
                "head",
                format!("below {n_heads}"),
                h.to_string(),
            ))
        }
        None => (0..n_heads)
            .max_by(|&a, &b| {
                let s = |h: usize| head_of(mass, h).iter().sum::<f32>();
                s(a).total_cmp(&s(b))
            })
            .unwrap_or(0),
    };
    let labels = tok.labels(&ids);
    let views = [
        ViewKind::Raw,
        ViewKind::Scaled,
        ViewKind::Renormalized,
        ViewKind::Pretrained,
    ];
    let mut panels = Vec::new();
    for v in views {
        let mut h = super::view_heatmap(&cap, &labels, 0, head, v)?;
        h.name = format!("d_{}", h.name);
        panels.push(Panel::Heatmap(h));
    }
    // raw content columns vs scaled pretrained: the paper's "Max. abs. difference".
    let w = head_of(
        lc.with_prefix
            .as_ref()
            .ok_or_else(|| Error::input("prefix", "a prefixed capture", "none"))?,
        head,
    );
    let pre = head_of(&lc.pretrained, head);
    let m = head_of(mass, head);
    let p = cap.p;
    let mut scaled_diff = 0f32;
    for i in 0..n {
        for j in 0..n {
            let d = (w[i * (p + n) + p + j] - pre[i * n + j] * (1.0 - m[i])).abs();
            scaled_diff = scaled_diff.max(d);
        }
    }
    let renorm_diff = lc.max_renorm_diff(Some(head)).unwrap_or(f32::NAN);
    let ident = lc
        .head_output_identity_error(Some(head))
        .unwrap_or(f32::NAN);
    let mean_mass = m.iter().sum::<f32>() / n as f32;
    let mut fig = Figure::new(panels, 2);
    fig.cell = Some(13);
    fig.title = Some(format!(
        "SmolLM2-135M, layer 0, head {head}: a one-token prefix"
    ));
    fig.note = Some(format!(
        "max |raw content \u{2212} scaled pretrained| = {scaled_diff:.1e}; max |renormalized \u{2212} pretrained| = {renorm_diff:.1e}; mean prefix mass {mean_mass:.2}."
    ));
    let caption = format!(
        "**(d) {}** SmolLM2-135M-Instruct (`{}`), layer 0, head {head} (0-based; the head with the most attention on the prefix), on the DART sentence of the paper's LLaMA figure ({n} tokens) with a one-token prefix in place of its dummy first token: a soft prompt equal to the embedding of \"X\" (no trained prefix ships for SmolLM2). Top left: the raw attention with the prefix column; top right: the pretrained attention (no prefix) scaled down by one minus the prefix mass; bottom: the attention renormalized over the content against the pretrained attention. Max |raw content columns \u{2212} scaled pretrained| = **{scaled_diff:.2e}** (the paper reports 4.88e-04 for LLaMA-7B in fp16); max |renormalized \u{2212} pretrained| = **{renorm_diff:.2e}**; head-output identity error max |t_pt \u{2212} ((1 \u{2212} a) t + a v_prefix)| = {ident:.2e}; mean prefix mass over the content rows {mean_mass:.3}.\n",
        if scaled_diff < 1e-4 && renorm_diff < 1e-4 {
            "In layer 0 a prefix only scales the pretrained attention down."
        } else {
            "In layer 0 the prefixed attention is not the scaled pretrained attention."
        },
        path.display()
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
        "layer": 0,
        "head": head,
        "token_ids": ids,
        "tokens": labels,
        "prefix": "soft prompt = embedding of 'X'",
        "max_abs_raw_minus_scaled": scaled_diff,
        "max_abs_renormalized_minus_pretrained": renorm_diff,
        "head_output_identity_error": ident,
        "prefix_mass": m,
        "panels": maps_json(&maps),
    });
    Ok(PaperFigure {
        name: "d_smollm2".into(),
        figure: fig,
        caption,
        data,
    })
}
