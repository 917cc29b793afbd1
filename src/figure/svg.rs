//! The one drawing code path: a figure (titled heat-map panels, or scatter panels) written directly as
//! SVG text. The PNG is this same SVG rasterized (`raster.rs`), so a vector and a raster export of one
//! view can never disagree.
//!
//! Geometry is in CSS pixels on integer coordinates so that heat-map cells stay crisp at 1x, 2x and 4x.

use std::fmt::Write;

/// Font stack: DejaVu Sans where installed (Debian `fonts-dejavu-core`), else the Ubuntu face the
/// rasterizer always embeds, else whatever sans-serif the viewer has.
pub const FONT_FAMILY: &str = "DejaVu Sans, Ubuntu, sans-serif";

/// How values map to colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Perceptual, colour-blind-safe magma (reversed: 0 is pale, 1 is dark, like the paper's `rocket_r`).
    Sequential { min: f32, max: f32 },
    /// A colour map as the window draws it (0 at the map's start): what an export from the window
    /// uses, so the file shows the colours the screen showed.
    Map {
        min: f32,
        max: f32,
        cmap: crate::colormap::ColorMap,
        /// The window's linear, log or power scale (from `min`).
        value: crate::colormap::ValueScale,
    },
    /// Diverging red-blue around 0 (ColorBrewer RdBu, colour-blind safe) for differences: `[-limit, limit]`.
    Diverging { limit: f32 },
}

impl Scale {
    /// Attention probabilities: the fixed 0..1 range, so panels are comparable at a glance.
    pub fn probability() -> Self {
        Scale::Sequential { min: 0.0, max: 1.0 }
    }

    /// A symmetric diverging scale covering every finite value (never empty, so 0 stays white).
    pub fn diverging_for(values: &[f32]) -> Self {
        let m = values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |a, v| a.max(v.abs()));
        Scale::Diverging {
            limit: if m > 0.0 { m } else { 1e-6 },
        }
    }

    pub fn range(&self) -> (f32, f32) {
        match *self {
            Scale::Sequential { min, max } | Scale::Map { min, max, .. } => (min, max),
            Scale::Diverging { limit } => (-limit, limit),
        }
    }

    /// RGB of a value (clamped to the range).
    pub fn color(&self, v: f32) -> (u8, u8, u8) {
        let (lo, hi) = self.range();
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        let t = t.clamp(0.0, 1.0);
        // The window's tables (`crate::colormap`), so a figure and the screen agree.
        let [r, g, b] = match self {
            Scale::Sequential { .. } => crate::colormap::ColorMap::Magma.sample(1.0 - t),
            Scale::Map {
                cmap, value, min, ..
            } => cmap.sample(value.position(v.clamp(lo, hi) - min, hi - min)),
            // `diverging` takes -1..=1 and paints positive differences red.
            Scale::Diverging { .. } => crate::colormap::diverging(2.0 * t - 1.0),
        };
        (r, g, b)
    }
}

/// One titled heat map: rows are queries, columns are keys.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Machine name for data export, e.g. `renormalized_L0_H3`.
    pub name: String,
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// Row-major `rows x cols`; NaN marks a cell that is not drawn (the causal mask's upper triangle).
    pub values: Vec<f32>,
    pub scale: Scale,
    /// Column indices before which a divider is drawn (the prefix/content boundary, input/output).
    pub col_dividers: Vec<usize>,
    pub row_dividers: Vec<usize>,
    /// Named column ranges written above the matrix: `(start, end, label)`, e.g. prefix / input / output.
    pub col_groups: Vec<(usize, usize, String)>,
    pub row_groups: Vec<(usize, usize, String)>,
    pub x_label: String,
    pub y_label: String,
    /// Title of the colour bar.
    pub value_label: String,
}

impl Heatmap {
    pub fn rows(&self) -> usize {
        self.row_labels.len()
    }
    pub fn cols(&self) -> usize {
        self.col_labels.len()
    }
    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.values[r * self.cols() + c]
    }
}

/// A labelled point set of a scatter panel.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: (u8, u8, u8),
    pub points: Vec<(f32, f32)>,
    /// Hollow markers (used for the reference points segments start from).
    pub hollow: bool,
}

/// A line from one point to another, in a colour.
pub type Segment = ((f32, f32), (f32, f32), (u8, u8, u8));

/// A scatter panel with optional segments joining pairs of points.
#[derive(Debug, Clone)]
pub struct Scatter {
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// `(from, to, colour)`.
    pub segments: Vec<Segment>,
    /// Shared axis ranges (so side-by-side panels are comparable); computed from the data when None.
    pub x_range: Option<(f32, f32)>,
    pub y_range: Option<(f32, f32)>,
}

#[derive(Debug, Clone)]
pub enum Panel {
    Heatmap(Heatmap),
    Scatter(Scatter),
}

impl Panel {
    pub fn title(&self) -> &str {
        match self {
            Panel::Heatmap(h) => &h.title,
            Panel::Scatter(s) => &s.title,
        }
    }
}

/// When to print values inside heat-map cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annotate {
    /// Only where cells are large enough to hold two decimals legibly (small matrices).
    Auto,
    Always,
    Never,
}

/// A figure: panels on a grid, an optional title above and a note below.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: Option<String>,
    pub note: Option<String>,
    pub panels: Vec<Panel>,
    /// Panels per grid row.
    pub columns: usize,
    pub annotate: Annotate,
    /// Cell size in px; None picks one from the largest matrix.
    pub cell: Option<u32>,
}

impl Figure {
    pub fn new(panels: Vec<Panel>, columns: usize) -> Self {
        Figure {
            title: None,
            note: None,
            panels,
            columns: columns.max(1),
            annotate: Annotate::Auto,
            cell: None,
        }
    }

    /// The SVG document.
    pub fn to_svg(&self) -> String {
        render(self)
    }

    /// Width and height in px (at scale 1).
    pub fn size(&self) -> (u32, u32) {
        let l = layout(self);
        (l.width, l.height)
    }
}

// ---------------------------------------------------------------------------------------------
// Text helpers

/// XML-escape and make a token printable: control characters shown as escapes, surrounding
/// whitespace made visible so " the" and "the" stay distinguishable.
pub fn token_text(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            ' ' => out.push('\u{2423}'),
            c => out.push(c),
        }
    }
    // Inner spaces read fine as spaces; only the edges need the visible marker.
    let chars: Vec<char> = out.chars().collect();
    let first = chars.iter().position(|&c| c != '\u{2423}');
    let last = chars.iter().rposition(|&c| c != '\u{2423}');
    match (first, last) {
        (Some(f), Some(l)) => chars
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if i > f && i < l && c == '\u{2423}' {
                    ' '
                } else {
                    c
                }
            })
            .collect(),
        _ => out,
    }
}

/// Escaped label text with the visible-space marker drawn light grey, so it reads as a marker.
fn label_markup(s: &str) -> String {
    esc(s).replace('\u{2423}', "<tspan fill=\"#aaaaaa\">\u{2423}</tspan>")
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    // A character no font has is written as its code point (`crate::glyphs`), never a box.
    for c in crate::glyphs::drawable(s).chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

/// Width estimate of a string in DejaVu Sans (average advance ~0.62 em; wide glyphs count double).
pub fn text_width(s: &str, size: f32) -> f32 {
    s.chars()
        .map(|c| {
            if c.is_ascii() {
                if "il.,:;'|!".contains(c) {
                    0.35
                } else if c.is_ascii_uppercase() || "mw@%".contains(c) {
                    0.8
                } else {
                    0.62
                }
            } else if (c as u32) >= 0x1100 {
                1.0
            } else {
                0.7
            }
        })
        .sum::<f32>()
        * size
}

/// Shorten long labels with an ellipsis so axes stay readable.
fn clip_label(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        t.push('\u{2026}');
        t
    }
}

/// A measured quantity for notes and captions: 3 significant decimals, scientific when tiny.
pub fn fmt_measure(v: f32) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e-2 && v.abs() < 1e4 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// A short number for cells, ticks and captions.
pub fn fmt_num(v: f32, step: f32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = step.abs().max(f32::MIN_POSITIVE);
    if s >= 1.0 && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if s >= 1e-4 {
        // Enough decimals to tell neighbouring ticks apart (0.25 needs 2, 0.2 needs 1).
        let mut d = 0usize;
        while d < 6 && ((s * 10f32.powi(d as i32)).round() - s * 10f32.powi(d as i32)).abs() > 1e-3
        {
            d += 1;
        }
        format!("{v:.d$}")
    } else {
        format!("{v:.1e}")
    }
}

/// "Nice" ticks (1, 2, 5 x 10^k) covering `lo..=hi`.
pub fn nice_ticks(lo: f32, hi: f32, target: usize) -> (Vec<f32>, f32) {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return (vec![lo], 1.0);
    }
    let raw = (hi - lo) / target.max(1) as f32;
    let mag = 10f32.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|k| k as f32 * step).collect();
    (ticks, step)
}

fn rgb((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn luminance((r, g, b): (u8, u8, u8)) -> f32 {
    (0.2126 * r as f32 + 0.7152 * g as f32 + 0.0722 * b as f32) / 255.0
}

// ---------------------------------------------------------------------------------------------
// Layout

const PAD: u32 = 16;
const TITLE_SIZE: f32 = 15.0;
const LABEL_SIZE_MAX: f32 = 12.0;
const AXIS_TITLE: f32 = 12.0;
const BAR_W: u32 = 14;
const SCATTER_W: u32 = 360;
const SCATTER_H: u32 = 300;

struct HeatGeom {
    cell: u32,
    label_size: f32,
    /// Width of the row-label column (incl. the y-axis title and row groups).
    left: u32,
    /// Height above the matrix: title + column groups.
    top: u32,
    /// Height below the matrix: column labels + x-axis title.
    bottom: u32,
    rotate_cols: bool,
    annotate: bool,
    /// Colour bar to the right (with its tick labels).
    bar: bool,
    bar_w: u32,
}

struct Placed {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    geom: Option<HeatGeom>,
}

struct Layout {
    width: u32,
    height: u32,
    title_h: u32,
    placed: Vec<Placed>,
}

fn pick_cell(fig: &Figure) -> u32 {
    if let Some(c) = fig.cell {
        return c.max(4);
    }
    let n = fig
        .panels
        .iter()
        .filter_map(|p| match p {
            Panel::Heatmap(h) => Some(h.rows().max(h.cols())),
            _ => None,
        })
        .max()
        .unwrap_or(10)
        .max(1) as u32;
    // About 340 px per matrix side, cells between 10 and 34 px.
    (340 / n).clamp(10, 34)
}

fn bar_tick_width(scale: &Scale, size: f32) -> u32 {
    bar_ticks(scale)
        .iter()
        .map(|(_, text)| text_width(text, size))
        .fold(0.0, f32::max) as u32
}

/// The colour bar's ticks: (position from the bottom in 0..=1, label). A log or power scale puts
/// five ticks at even positions, labelled with their values (as the window's colour bar does).
fn bar_ticks(scale: &Scale) -> Vec<(f32, String)> {
    let (lo, hi) = scale.range();
    match *scale {
        Scale::Map { value, min, .. } if value != crate::colormap::ValueScale::Linear => (0..=4)
            .map(|k| {
                let t = k as f32 / 4.0;
                let v = min + value.value_at(t, hi - min);
                let text = if v != 0.0 && v.abs() < 0.01 {
                    format!("{v:.0e}")
                } else {
                    format!("{v:.2}")
                };
                (t, text)
            })
            .collect(),
        _ => {
            let (ticks, step) = nice_ticks(lo, hi, 5);
            ticks
                .into_iter()
                .map(|t| ((t - lo) / (hi - lo), fmt_num(t, step)))
                .collect()
        }
    }
}

/// The colour at a colour-bar position `t` (0..=1 from the bottom).
fn bar_colour(scale: &Scale, t: f32) -> (u8, u8, u8) {
    match *scale {
        Scale::Map { cmap, .. } => {
            let [r, g, b] = cmap.sample(t);
            (r, g, b)
        }
        _ => {
            let (lo, hi) = scale.range();
            scale.color(lo + t * (hi - lo))
        }
    }
}

fn heat_geom(h: &Heatmap, cell: u32, annotate: Annotate, bar: bool) -> HeatGeom {
    let label_size = (cell as f32 * 0.75).clamp(7.0, LABEL_SIZE_MAX);
    let row_w = h
        .row_labels
        .iter()
        .map(|l| text_width(&clip_label(&token_text(l), 16), label_size))
        .fold(0.0, f32::max);
    let col_w = h
        .col_labels
        .iter()
        .map(|l| text_width(&clip_label(&token_text(l), 16), label_size))
        .fold(0.0, f32::max);
    let rotate_cols = col_w > cell as f32 - 2.0;
    let group_w = if h.row_groups.is_empty() { 0 } else { 16 };
    let left = row_w.ceil() as u32 + 6 + group_w + AXIS_TITLE as u32 + 6;
    let top = TITLE_SIZE as u32 + 10 + if h.col_groups.is_empty() { 0 } else { 16 };
    let bottom = if rotate_cols {
        col_w.ceil() as u32
    } else {
        label_size as u32
    } + 6
        + AXIS_TITLE as u32
        + 8;
    let range = {
        let (lo, hi) = h.scale.range();
        hi - lo
    };
    let annotate = match annotate {
        Annotate::Always => true,
        Annotate::Never => false,
        Annotate::Auto => cell >= 24 && range >= 0.05,
    };
    let bar_w = if bar {
        BAR_W + 4 + bar_tick_width(&h.scale, 10.0) + 8 + 14
    } else {
        0
    };
    HeatGeom {
        cell,
        label_size,
        left,
        top,
        bottom,
        rotate_cols,
        annotate,
        bar,
        bar_w,
    }
}

fn layout(fig: &Figure) -> Layout {
    let cell = pick_cell(fig);
    let cols = fig.columns.max(1);
    let title_h = if fig.title.is_some() { 30 } else { 0 };
    let mut placed: Vec<Placed> = Vec::new();
    for (i, p) in fig.panels.iter().enumerate() {
        match p {
            Panel::Heatmap(h) => {
                // A colour bar after the last panel of a grid row, or before a panel with another scale.
                let next_same_row = (i + 1) % cols != 0 && i + 1 < fig.panels.len();
                let bar = !next_same_row
                    || match &fig.panels[i + 1] {
                        Panel::Heatmap(n) => n.scale != h.scale,
                        _ => true,
                    };
                let g = heat_geom(h, cell, fig.annotate, bar);
                let w = g.left + h.cols() as u32 * cell + g.bar_w + PAD;
                let ht = g.top + h.rows() as u32 * cell + g.bottom + PAD;
                placed.push(Placed {
                    x: 0,
                    y: 0,
                    w,
                    h: ht,
                    geom: Some(g),
                });
            }
            Panel::Scatter(_) => placed.push(Placed {
                x: 0,
                y: 0,
                w: SCATTER_W + 70 + PAD,
                h: SCATTER_H + TITLE_SIZE as u32 + 10 + 50 + PAD,
                geom: None,
            }),
        }
    }
    // Panels on one grid row share their title and axis-label bands, so their matrices line up.
    let n_rows = placed.len().div_ceil(cols);
    for r in 0..n_rows {
        let range = r * cols..((r + 1) * cols).min(placed.len());
        let top = placed[range.clone()]
            .iter()
            .filter_map(|p| p.geom.as_ref().map(|g| g.top))
            .max();
        let bottom = placed[range.clone()]
            .iter()
            .filter_map(|p| p.geom.as_ref().map(|g| g.bottom))
            .max();
        if let (Some(top), Some(bottom)) = (top, bottom) {
            for p in &mut placed[range] {
                if let Some(g) = p.geom.as_mut() {
                    p.h += (top - g.top) + (bottom - g.bottom);
                    g.top = top;
                    g.bottom = bottom;
                }
            }
        }
    }
    // Grid: column widths and row heights are the maxima of their panels.
    let mut col_w = vec![0u32; cols];
    let mut row_h = vec![0u32; n_rows];
    for (i, p) in placed.iter().enumerate() {
        col_w[i % cols] = col_w[i % cols].max(p.w);
        row_h[i / cols] = row_h[i / cols].max(p.h);
    }
    for (i, p) in placed.iter_mut().enumerate() {
        p.x = PAD + col_w[..i % cols].iter().sum::<u32>();
        p.y = PAD + title_h + row_h[..i / cols].iter().sum::<u32>();
    }
    let legend_h = legend_height(fig);
    let note_h = if fig.note.is_some() { 22 } else { 0 };
    let width = (PAD + col_w.iter().sum::<u32>())
        .max(
            fig.title
                .as_ref()
                .map_or(0, |t| text_width(t, TITLE_SIZE + 1.0) as u32 + 2 * PAD),
        )
        .max(
            fig.note
                .as_ref()
                .map_or(0, |t| text_width(t, 11.0) as u32 + 2 * PAD),
        );
    let height = PAD + title_h + row_h.iter().sum::<u32>() + legend_h + note_h;
    Layout {
        width,
        height,
        title_h,
        placed,
    }
}

fn legend_height(fig: &Figure) -> u32 {
    let has = fig
        .panels
        .iter()
        .any(|p| matches!(p, Panel::Scatter(s) if !s.series.is_empty()));
    if has {
        26
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing

fn render(fig: &Figure) -> String {
    let l = layout(fig);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}">"#,
        w = l.width,
        h = l.height
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"#,
        l.width, l.height
    );
    if let Some(t) = &fig.title {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="{}" font-weight="bold" text-anchor="middle">{}</text>"#,
            l.width / 2,
            PAD + 18,
            TITLE_SIZE + 1.0,
            esc(t)
        );
    }
    for (p, pl) in fig.panels.iter().zip(&l.placed) {
        match p {
            Panel::Heatmap(h) => {
                if let Some(g) = &pl.geom {
                    draw_heatmap(&mut s, h, g, pl.x, pl.y);
                }
            }
            Panel::Scatter(sc) => draw_scatter(&mut s, sc, pl.x, pl.y),
        }
    }
    let grid_bottom = l
        .placed
        .iter()
        .map(|p| p.y + p.h)
        .max()
        .unwrap_or(l.title_h);
    let mut y = grid_bottom;
    if legend_height(fig) > 0 {
        draw_legend(&mut s, fig, PAD, y + 4);
        y += legend_height(fig);
    }
    if let Some(n) = &fig.note {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-size="11" fill="#444">{}</text>"##,
            PAD,
            y + 14,
            esc(n)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn draw_heatmap(s: &mut String, h: &Heatmap, g: &HeatGeom, x0: u32, y0: u32) {
    let c = g.cell;
    let (nr, nc) = (h.rows() as u32, h.cols() as u32);
    let mx = x0 + g.left;
    let my = y0 + g.top;
    let _ = writeln!(s, r#"<g class="panel" id="{}">"#, esc(&h.name));
    // Title, centred over the matrix.
    let _ = writeln!(
        s,
        r#"<text class="title" x="{}" y="{}" font-size="{}" font-weight="bold" text-anchor="middle">{}</text>"#,
        mx + nc * c / 2,
        y0 + TITLE_SIZE as u32,
        TITLE_SIZE,
        esc(&h.title)
    );
    // Column groups (prefix / input / output) above the matrix, with a bracket line.
    for (a, b, name) in &h.col_groups {
        let (a, b) = (*a as u32, (*b as u32).min(nc));
        if b <= a {
            continue;
        }
        let yb = my - 5;
        let _ = writeln!(
            s,
            r##"<path d="M{} {yb}H{}" stroke="#555" stroke-width="1"/><text x="{}" y="{}" font-size="11" fill="#333" text-anchor="middle">{}</text>"##,
            mx + a * c + 1,
            mx + b * c - 1,
            mx + (a + b) * c / 2,
            yb - 3,
            esc(name)
        );
    }
    // Cells. crispEdges: no antialiasing seams between neighbours at any scale.
    let _ = writeln!(s, r#"<g shape-rendering="crispEdges">"#);
    for r in 0..nr {
        for col in 0..nc {
            let v = h.get(r as usize, col as usize);
            if !v.is_finite() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{c}" height="{c}" fill="{}"><title>{} → {}: {:.4}</title></rect>"#,
                mx + col * c,
                my + r * c,
                rgb(h.scale.color(v)),
                esc(&token_text(&h.row_labels[r as usize])),
                esc(&token_text(&h.col_labels[col as usize])),
                v
            );
        }
    }
    let _ = writeln!(s, "</g>");
    // Values in cells.
    if g.annotate {
        let fs = (c as f32 * 0.34).clamp(6.0, 11.0);
        for r in 0..nr {
            for col in 0..nc {
                let v = h.get(r as usize, col as usize);
                if !v.is_finite() {
                    continue;
                }
                let fill = if luminance(h.scale.color(v)) > 0.5 {
                    "black"
                } else {
                    "white"
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-size="{fs:.1}" fill="{fill}" text-anchor="middle">{}</text>"#,
                    mx + col * c + c / 2,
                    my + r * c + c / 2 + (fs * 0.36) as u32,
                    cell_text(v)
                );
            }
        }
    }
    // Frame and dividers.
    let _ = writeln!(
        s,
        r##"<rect x="{mx}" y="{my}" width="{}" height="{}" fill="none" stroke="#888" stroke-width="0.5"/>"##,
        nc * c,
        nr * c
    );
    for &d in &h.col_dividers {
        let x = mx + d as u32 * c;
        let _ = writeln!(
            s,
            r##"<path class="divider" d="M{x} {}V{}" stroke="#1f77b4" stroke-width="2" stroke-dasharray="5 3"/>"##,
            my - 3,
            my + nr * c + 3
        );
    }
    for &d in &h.row_dividers {
        let y = my + d as u32 * c;
        let _ = writeln!(
            s,
            r##"<path class="divider" d="M{} {y}H{}" stroke="#1f77b4" stroke-width="2" stroke-dasharray="5 3"/>"##,
            mx - 3,
            mx + nc * c + 3
        );
    }
    // Row labels (queries), right-aligned against the matrix.
    let ls = g.label_size;
    for (r, lab) in h.row_labels.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text class="row-label" x="{}" y="{}" font-size="{ls:.1}" text-anchor="end">{}</text>"#,
            mx - 4,
            my + r as u32 * c + c / 2 + (ls * 0.36) as u32,
            label_markup(&clip_label(&token_text(lab), 16))
        );
    }
    // Column labels (keys), rotated when they do not fit a cell.
    let ly = my + nr * c + 4;
    for (col, lab) in h.col_labels.iter().enumerate() {
        let cx = mx + col as u32 * c + c / 2;
        let t = label_markup(&clip_label(&token_text(lab), 16));
        if g.rotate_cols {
            let _ = writeln!(
                s,
                r#"<text class="col-label" x="{cx}" y="{ly}" font-size="{ls:.1}" text-anchor="end" transform="rotate(-90 {cx} {ly}) translate(0 {})">{t}</text>"#,
                (ls * 0.36) as u32
            );
        } else {
            let _ = writeln!(
                s,
                r#"<text class="col-label" x="{cx}" y="{}" font-size="{ls:.1}" text-anchor="middle">{t}</text>"#,
                ly + ls as u32
            );
        }
    }
    // Axis titles.
    // At the foot of the label band, which panels of one grid row share: the axis titles line up.
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" font-size="{AXIS_TITLE}" fill="#333" text-anchor="middle">{}</text>"##,
        mx + nc * c / 2,
        my + nr * c + g.bottom - 6,
        esc(&h.x_label)
    );
    let ax = x0 + AXIS_TITLE as u32;
    let ay = my + nr * c / 2;
    let _ = writeln!(
        s,
        r##"<text x="{ax}" y="{ay}" font-size="{AXIS_TITLE}" fill="#333" text-anchor="middle" transform="rotate(-90 {ax} {ay})">{}</text>"##,
        esc(&h.y_label)
    );
    for (a, b, name) in &h.row_groups {
        let (a, b) = (*a as u32, (*b as u32).min(nr));
        if b <= a {
            continue;
        }
        let gx = x0 + AXIS_TITLE as u32 + 14;
        let gy = my + (a + b) * c / 2;
        let _ = writeln!(
            s,
            r##"<text x="{gx}" y="{gy}" font-size="11" fill="#333" text-anchor="middle" transform="rotate(-90 {gx} {gy})">{}</text>"##,
            esc(name)
        );
    }
    if g.bar {
        draw_colorbar(s, h, mx + nc * c + 10, my, (nr * c).max(100));
    }
    let _ = writeln!(s, "</g>");
}

fn cell_text(v: f32) -> String {
    // Two decimals like the paper's heat maps, without the leading zero so it fits small cells.
    let t = format!("{v:.2}");
    // -0.004 prints as "-0.00": a sign on a zero reads as a real negative value.
    let t = if t == "-0.00" { "0.00".to_string() } else { t };
    let t = t.replace("-0.", "-.");
    if let Some(r) = t.strip_prefix("0.") {
        format!(".{r}")
    } else {
        t
    }
}

fn draw_colorbar(s: &mut String, h: &Heatmap, x: u32, y: u32, len: u32) {
    let id = format!(
        "bar-{}",
        h.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    let _ = writeln!(
        s,
        r#"<defs><linearGradient id="{id}" x1="0" y1="1" x2="0" y2="0">"#
    );
    for k in 0..=32 {
        let t = k as f32 / 32.0;
        let _ = writeln!(
            s,
            r#"<stop offset="{t:.4}" stop-color="{}"/>"#,
            rgb(bar_colour(&h.scale, t))
        );
    }
    let _ = writeln!(s, "</linearGradient></defs>");
    let _ = writeln!(
        s,
        r##"<rect class="colorbar" x="{x}" y="{y}" width="{BAR_W}" height="{len}" fill="url(#{id})" stroke="#888" stroke-width="0.5"/>"##
    );
    for (t, text) in bar_ticks(&h.scale) {
        let ty = y as f32 + (1.0 - t) * len as f32;
        let _ = writeln!(
            s,
            r##"<path d="M{} {ty:.1}h4" stroke="#333" stroke-width="1"/><text class="tick" x="{}" y="{:.1}" font-size="10">{}</text>"##,
            x + BAR_W,
            x + BAR_W + 6,
            ty + 3.5,
            esc(&text)
        );
    }
    if !h.value_label.is_empty() {
        let lx = x + BAR_W + 6 + bar_tick_width(&h.scale, 10.0) + 12;
        let ly = y + len / 2;
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{ly}" font-size="11" fill="#333" text-anchor="middle" transform="rotate(-90 {lx} {ly})">{}</text>"##,
            esc(&h.value_label)
        );
    }
}

fn data_range(sc: &Scatter, x: bool) -> (f32, f32) {
    let fixed = if x { sc.x_range } else { sc.y_range };
    if let Some(r) = fixed {
        return r;
    }
    let vals = sc
        .series
        .iter()
        .flat_map(|se| se.points.iter())
        .chain(sc.segments.iter().flat_map(|(a, b, _)| [a, b]))
        .map(|p| if x { p.0 } else { p.1 })
        .filter(|v| v.is_finite());
    padded_range(vals)
}

/// The range of some values with 6% padding on each side (never empty).
pub fn padded_range(vals: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = vals.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.06).max(1e-6);
    (lo - pad, hi + pad)
}

fn draw_scatter(s: &mut String, sc: &Scatter, x0: u32, y0: u32) {
    let (ox, oy) = (x0 + 64, y0 + TITLE_SIZE as u32 + 10);
    let (w, h) = (SCATTER_W as f32, SCATTER_H as f32);
    let (xl, xh) = data_range(sc, true);
    let (yl, yh) = data_range(sc, false);
    let px = |v: f32| ox as f32 + (v - xl) / (xh - xl) * w;
    let py = |v: f32| oy as f32 + (1.0 - (v - yl) / (yh - yl)) * h;
    let _ = writeln!(s, r#"<g class="panel" id="{}">"#, esc(&sc.name));
    let _ = writeln!(
        s,
        r#"<text class="title" x="{}" y="{}" font-size="{TITLE_SIZE}" font-weight="bold" text-anchor="middle">{}</text>"#,
        ox as f32 + w / 2.0,
        y0 + TITLE_SIZE as u32,
        esc(&sc.title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{ox}" y="{oy}" width="{w}" height="{h}" fill="none" stroke="#888" stroke-width="1"/>"##
    );
    let (xt, xs) = nice_ticks(xl, xh, 5);
    for t in xt {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<path d="M{x:.1} {oy}v{h}" stroke="#eee" stroke-width="1"/><path d="M{x:.1} {}v4" stroke="#333"/><text class="tick" x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
            oy as f32 + h,
            oy as f32 + h + 15.0,
            fmt_num(t, xs)
        );
    }
    let (yt, ys) = nice_ticks(yl, yh, 5);
    for t in yt {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<path d="M{ox} {y:.1}h{w}" stroke="#eee" stroke-width="1"/><path d="M{} {y:.1}h4" stroke="#333"/><text class="tick" x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            ox - 4,
            ox - 6,
            y + 3.5,
            fmt_num(t, ys)
        );
    }
    for (a, b, col) in &sc.segments {
        let _ = writeln!(
            s,
            r#"<path d="M{:.2} {:.2}L{:.2} {:.2}" stroke="{}" stroke-width="1" stroke-opacity="0.6"/>"#,
            px(a.0),
            py(a.1),
            px(b.0),
            py(b.1),
            rgb(*col)
        );
    }
    for se in &sc.series {
        for &(x, y) in &se.points {
            let (fill, stroke) = if se.hollow {
                ("white".to_string(), rgb(se.color))
            } else {
                (rgb(se.color), "white".to_string())
            };
            let _ = writeln!(
                s,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{fill}" stroke="{stroke}" stroke-width="1"><title>{}: ({x:.4}, {y:.4})</title></circle>"#,
                px(x),
                py(y),
                esc(&se.name)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" font-size="{AXIS_TITLE}" fill="#333" text-anchor="middle">{}</text>"##,
        ox as f32 + w / 2.0,
        oy as f32 + h + 34.0,
        esc(&sc.x_label)
    );
    let (ax, ay) = (x0 + 14, oy as f32 + h / 2.0);
    let _ = writeln!(
        s,
        r##"<text x="{ax}" y="{ay}" font-size="{AXIS_TITLE}" fill="#333" text-anchor="middle" transform="rotate(-90 {ax} {ay})">{}</text>"##,
        esc(&sc.y_label)
    );
    let _ = writeln!(s, "</g>");
}

/// One legend row under the grid with every distinct series name of the scatter panels.
fn draw_legend(s: &mut String, fig: &Figure, x0: u32, y0: u32) {
    let mut seen: Vec<(String, (u8, u8, u8), bool)> = Vec::new();
    for p in &fig.panels {
        if let Panel::Scatter(sc) = p {
            for se in &sc.series {
                if !seen.iter().any(|(n, _, _)| *n == se.name) {
                    seen.push((se.name.clone(), se.color, se.hollow));
                }
            }
        }
    }
    let mut x = x0 as f32 + 64.0;
    let y = y0 as f32 + 10.0;
    let _ = writeln!(s, r#"<g class="legend">"#);
    for (name, col, hollow) in seen {
        let (fill, stroke) = if hollow {
            ("white".to_string(), rgb(col))
        } else {
            (rgb(col), rgb(col))
        };
        let _ = writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{fill}" stroke="{stroke}" stroke-width="1"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            x + 8.0,
            y + 4.0,
            esc(&name)
        );
        x += 8.0 + text_width(&name, 11.0) + 22.0;
    }
    let _ = writeln!(s, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        let (t, step) = nice_ticks(0.0, 1.0, 4);
        assert_eq!(step, 0.5);
        assert_eq!(t, vec![0.0, 0.5, 1.0]);
        let (t, step) = nice_ticks(0.0, 1.0, 5);
        assert_eq!(step, 0.2);
        assert_eq!(t.len(), 6);
        assert_eq!(fmt_num(0.25, 0.05), "0.25");
        let (t, step) = nice_ticks(-3e-7, 3e-7, 4);
        assert!((step - 2e-7).abs() < 1e-12, "{step}");
        assert_eq!(t.len(), 3);
        assert_eq!(fmt_num(2e-7, step), "2.0e-7");
        assert_eq!(fmt_num(0.4, 0.2), "0.4");
    }

    #[test]
    fn cell_values_have_no_signed_zero() {
        assert_eq!(cell_text(-0.001), ".00");
        assert_eq!(cell_text(-0.25), "-.25");
        assert_eq!(cell_text(1.0), "1.00");
        assert_eq!(fmt_measure(2.09e-7), "2.09e-7");
        assert_eq!(fmt_measure(0.805), "0.805");
    }

    #[test]
    fn tokens_keep_edge_spaces_visible_and_xml_safe() {
        assert_eq!(token_text(" the"), "\u{2423}the");
        assert_eq!(token_text("a b"), "a b");
        assert_eq!(token_text("\n"), "\\n");
        assert_eq!(esc("<&>"), "&lt;&amp;&gt;");
    }

    #[test]
    fn colour_scales_hit_their_ends() {
        let s = Scale::probability();
        // magma reversed: 0 is the pale end, 1 the dark end.
        assert!(luminance(s.color(0.0)) > 0.9);
        assert!(luminance(s.color(1.0)) < 0.1);
        let d = Scale::diverging_for(&[-2.0, 1.0, f32::NAN]);
        assert_eq!(d, Scale::Diverging { limit: 2.0 });
        let mid = d.color(0.0);
        assert!(luminance(mid) > 0.9, "{mid:?}");
        let (r, _, b) = d.color(2.0);
        assert!(r > b, "positive differences are red");
    }
}
