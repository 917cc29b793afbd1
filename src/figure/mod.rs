//! Figures and data export: one drawing path for the GUI's Export buttons, `prefixscope render` and
//! `prefixscope figures`.
//!
//! - [`svg`] draws a [`svg::Figure`] (heat-map or scatter panels) as SVG text;
//! - [`raster`] rasterizes that same SVG to PNG with resvg, [`pdf`] converts it with svg2pdf;
//! - [`data`] writes the matrices and token lists behind a figure as CSV, NPY/NPZ or JSON.
//!
//! Every file is written atomically and an existing file is only replaced when the caller says so.

pub mod data;
pub mod paper;
pub mod pdf;
pub mod raster;
pub mod svg;

use crate::arrays::{extension, write_atomic};
use crate::capture::{Capture, LayerCapture};
use crate::error::{Error, Result};
use std::path::Path;
pub use svg::{Annotate, Figure, Heatmap, Panel, Scale, Scatter, Series};

/// The views of one head that a figure can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    /// The attention with the prefix, prefix columns included: `(N, P+N)`.
    Raw,
    /// The content columns of the raw attention divided by their row sums: `(N, N)`.
    Renormalized,
    /// The attention of the same content without the prefix: `(N, N)`.
    Pretrained,
    /// `renormalized - pretrained` on a diverging scale (zero in the first layer).
    Difference,
    /// The pretrained attention scaled down by `1 - a_i` (`a_i` the prefix mass): what the paper says
    /// the content part of the raw attention equals.
    Scaled,
}

impl ViewKind {
    pub const ALL: [ViewKind; 5] = [
        ViewKind::Raw,
        ViewKind::Renormalized,
        ViewKind::Pretrained,
        ViewKind::Difference,
        ViewKind::Scaled,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            ViewKind::Raw => "raw",
            ViewKind::Renormalized => "renormalized",
            ViewKind::Pretrained => "pretrained",
            ViewKind::Difference => "difference",
            ViewKind::Scaled => "scaled",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            ViewKind::Raw => "With prefix (raw)",
            ViewKind::Renormalized => "Renormalized over content",
            ViewKind::Pretrained => "Pretrained (no prefix)",
            ViewKind::Difference => "Renormalized \u{2212} pretrained",
            ViewKind::Scaled => "Pretrained \u{00d7} (1 \u{2212} prefix mass)",
        }
    }

    pub fn parse(s: &str) -> Result<ViewKind> {
        ViewKind::ALL
            .iter()
            .copied()
            .find(|v| v.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::input(
                    "--panels",
                    "raw, renormalized, pretrained, difference or scaled",
                    format!("'{s}'"),
                )
            })
    }

    /// A comma-separated list such as `raw,renormalized`.
    pub fn parse_list(s: &str) -> Result<Vec<ViewKind>> {
        let v: Vec<ViewKind> = s
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(ViewKind::parse)
            .collect::<Result<_>>()?;
        if v.is_empty() {
            return Err(Error::input("--panels", "at least one view", "none"));
        }
        Ok(v)
    }
}

/// Labels of the `p` prefix columns.
pub fn prefix_labels(p: usize) -> Vec<String> {
    if p == 1 {
        vec!["[prefix]".to_string()]
    } else {
        (1..=p).map(|k| format!("[P{k}]")).collect()
    }
}

/// A heat map of attention rows `(n, p + n)` with columns `[prefix (p) | content (n)]`: the keys after
/// each query (the causal mask) are left undrawn, and a divider marks where the content starts.
pub fn attention_heatmap(
    name: impl Into<String>,
    title: impl Into<String>,
    row_labels: &[String],
    col_labels: &[String],
    values: &[f32],
    p: usize,
    scale: Scale,
) -> Result<Heatmap> {
    let (n, cols) = (row_labels.len(), col_labels.len());
    if values.len() != n * cols || cols < p || cols - p < n {
        return Err(Error::shape(
            "<figure>",
            name.into(),
            (n, p + n),
            format!("{} values for {n} rows x {cols} columns", values.len()),
        ));
    }
    let mut v = values.to_vec();
    for i in 0..n {
        for j in p..cols {
            if j - p > i {
                v[i * cols + j] = f32::NAN;
            }
        }
    }
    Ok(Heatmap {
        name: name.into(),
        title: title.into(),
        row_labels: row_labels.to_vec(),
        col_labels: col_labels.to_vec(),
        values: v,
        scale,
        col_dividers: if p > 0 { vec![p] } else { vec![] },
        row_dividers: vec![],
        col_groups: vec![],
        row_groups: vec![],
        x_label: "key".into(),
        y_label: "query".into(),
        value_label: "attention".into(),
    })
}

fn layer_of(cap: &Capture, layer: usize) -> Result<&LayerCapture> {
    cap.layer(layer).ok_or_else(|| {
        let have: Vec<String> = cap.layers.iter().map(|l| l.layer.to_string()).collect();
        Error::input(
            "layer",
            format!("a captured layer ({})", have.join(", ")),
            layer.to_string(),
        )
    })
}

/// One head's slice `[head]` of an `(H, a, b)` array.
fn head_slice(a: &crate::arrays::Array, head: usize) -> &[f32] {
    let per = a.data.len() / a.shape[0].max(1);
    &a.data[head * per..(head + 1) * per]
}

/// The heat map of one view of one head. `labels` are the content tokens' labels.
pub fn view_heatmap(
    cap: &Capture,
    labels: &[String],
    layer: usize,
    head: usize,
    view: ViewKind,
) -> Result<Heatmap> {
    let lc = layer_of(cap, layer)?;
    let n = cap.token_ids.len();
    if labels.len() != n {
        return Err(Error::input(
            "token labels",
            format!("{n} labels (one per content token)"),
            labels.len().to_string(),
        ));
    }
    if head >= lc.n_heads() {
        return Err(Error::input(
            "head",
            format!("a head index below {}", lc.n_heads()),
            head.to_string(),
        ));
    }
    let p = cap.p;
    let need_prefix = |what: &str| {
        Error::input(
            "view",
            format!("a prefix for the '{what}' view"),
            "a capture without a prefix",
        )
    };
    let name = format!("{}_L{layer}_H{head}", view.name());
    let title = view.title();
    let pre = head_slice(&lc.pretrained, head);
    match view {
        ViewKind::Raw => {
            let w = lc.with_prefix.as_ref().ok_or_else(|| need_prefix("raw"))?;
            let mut cols = prefix_labels(p);
            cols.extend_from_slice(labels);
            attention_heatmap(
                name,
                title,
                labels,
                &cols,
                head_slice(w, head),
                p,
                Scale::probability(),
            )
        }
        ViewKind::Renormalized => {
            let r = lc
                .renormalized
                .as_ref()
                .ok_or_else(|| need_prefix("renormalized"))?;
            attention_heatmap(
                name,
                title,
                labels,
                labels,
                head_slice(r, head),
                0,
                Scale::probability(),
            )
        }
        ViewKind::Pretrained => {
            attention_heatmap(name, title, labels, labels, pre, 0, Scale::probability())
        }
        ViewKind::Difference => {
            let r = lc
                .renormalized
                .as_ref()
                .ok_or_else(|| need_prefix("difference"))?;
            let d: Vec<f32> = head_slice(r, head)
                .iter()
                .zip(pre)
                .map(|(a, b)| a - b)
                .collect();
            let mut h =
                attention_heatmap(name, title, labels, labels, &d, 0, Scale::diverging_for(&d))?;
            h.value_label = "difference".into();
            Ok(h)
        }
        ViewKind::Scaled => {
            let m = lc
                .prefix_mass
                .as_ref()
                .ok_or_else(|| need_prefix("scaled"))?;
            let mass = head_slice(m, head);
            let s: Vec<f32> = pre
                .iter()
                .enumerate()
                .map(|(k, v)| v * (1.0 - mass[k / n]))
                .collect();
            attention_heatmap(name, title, labels, labels, &s, 0, Scale::probability())
        }
    }
}

/// Output options shared by the GUI export and the CLI.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// PNG scale (2 or 4 for print).
    pub scale: f32,
    /// Replace an existing file (otherwise refuse).
    pub overwrite: bool,
    pub title: Option<String>,
    pub annotate: Annotate,
    /// Panels per grid row; 0 puts every panel on one row.
    pub columns: usize,
    /// The attention panels' colour map as the window draws it; `None`: the paper's reversed magma.
    pub cmap: Option<crate::colormap::ColorMap>,
    /// With `cmap`: the window's value scale (linear, log, power) for those panels.
    pub value_scale: crate::colormap::ValueScale,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            scale: 2.0,
            overwrite: false,
            title: None,
            annotate: Annotate::Auto,
            columns: 0,
            cmap: None,
            value_scale: Default::default(),
        }
    }
}

/// The figure of several views of one head, side by side.
pub fn views_figure(
    cap: &Capture,
    labels: &[String],
    layer: usize,
    head: usize,
    views: &[ViewKind],
    opts: &ExportOptions,
) -> Result<Figure> {
    let panels = views
        .iter()
        .map(|&v| {
            let mut h = view_heatmap(cap, labels, layer, head, v)?;
            if let (Some(cmap), Scale::Sequential { min, max }) = (opts.cmap, h.scale) {
                h.scale = Scale::Map {
                    min,
                    max,
                    cmap,
                    value: opts.value_scale,
                };
            }
            Ok(Panel::Heatmap(h))
        })
        .collect::<Result<Vec<_>>>()?;
    let cols = if opts.columns == 0 {
        panels.len()
    } else {
        opts.columns
    };
    let mut fig = Figure::new(panels, cols);
    fig.annotate = opts.annotate;
    fig.title = Some(
        opts.title
            .clone()
            .unwrap_or_else(|| format!("Layer {layer}, head {head}")),
    );
    let lc = layer_of(cap, layer)?;
    let mut note = format!(
        "{} content tokens, prefix length {}; layer and head indices are 0-based.",
        cap.token_ids.len(),
        cap.p
    );
    if let Some(d) = lc.max_renorm_diff(Some(head)) {
        note.push_str(&format!(
            " max |renormalized \u{2212} pretrained| = {}.",
            svg::fmt_measure(d)
        ));
    }
    fig.note = Some(note);
    Ok(fig)
}

/// Refuse to replace an existing file unless asked to.
pub fn ensure_writable(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::input(
            path.display().to_string(),
            "a path that does not exist yet (or --force to replace it)",
            "an existing file",
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
    }
    Ok(())
}

/// Write a figure as `.svg`, `.png` or `.pdf` (by extension), atomically.
pub fn save_figure(fig: &Figure, path: &Path, scale: f32, overwrite: bool) -> Result<()> {
    ensure_writable(path, overwrite)?;
    let svg = fig.to_svg();
    match extension(path).as_str() {
        "svg" => write_atomic(path, svg.as_bytes()),
        "png" => write_atomic(path, &raster::png_bytes(&svg, scale)?),
        "pdf" => write_atomic(path, &pdf::pdf_bytes(&svg)?),
        other => Err(Error::unsupported(
            path,
            "figure format",
            format!("'.{other}'"),
            ".svg, .png, .pdf",
        )),
    }
}

/// The GUI's Export: the chosen views of one head to `path`, whose extension picks the output:
/// a figure (`.svg`, `.png`, `.pdf`) or the data behind it (`.csv`, `.npz`, `.npy` for one view, `.json`).
pub fn export_views(
    cap: &Capture,
    labels: &[String],
    layer: usize,
    head: usize,
    views: &[ViewKind],
    path: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    match extension(path).as_str() {
        "csv" | "npz" | "npy" | "json" => {
            let maps = views
                .iter()
                .map(|&v| view_heatmap(cap, labels, layer, head, v))
                .collect::<Result<Vec<_>>>()?;
            let meta = data::Meta {
                token_ids: cap.token_ids.clone(),
                tokens: labels.to_vec(),
                prefix_len: cap.p,
                layer: Some(layer),
                head: Some(head),
            };
            data::write_heatmaps(path, &maps, &meta, opts.overwrite)
        }
        _ => {
            let fig = views_figure(cap, labels, layer, head, views, opts)?;
            save_figure(&fig, path, opts.scale, opts.overwrite)
        }
    }
}

/// The figure of some views as straight RGBA pixels `(width, height, bytes)`, for the GUI's
/// copy-to-clipboard (the same drawing as the SVG and PNG exports; opaque, on white).
pub fn views_rgba(
    cap: &Capture,
    labels: &[String],
    layer: usize,
    head: usize,
    views: &[ViewKind],
    opts: &ExportOptions,
) -> Result<(u32, u32, Vec<u8>)> {
    let fig = views_figure(cap, labels, layer, head, views, opts)?;
    let pix = raster::rasterize(&fig.to_svg(), opts.scale)?;
    // Painted on an opaque white background: premultiplied equals straight alpha.
    Ok((pix.width(), pix.height(), pix.data().to_vec()))
}
