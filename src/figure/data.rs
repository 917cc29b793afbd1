//! The data behind a figure: the matrices shown and their token lists, as CSV, NPY/NPZ or JSON.
//!
//! Masked cells (keys after the query) are written as 0, their attention probability.
//! - CSV: one tidy table, `panel,row,row_token,col,col_token,value`, one line per cell.
//! - NPZ: one `(rows, cols)` array per panel, named as the panel (e.g. `renormalized_L0_H3`), plus
//!   `token_ids` and `prefix_len` (token strings do not fit f32 arrays: use JSON or CSV for those).
//! - NPY: exactly one panel.
//! - JSON: `{layer, head, prefix_len, token_ids, tokens, panels: [{name, title, rows, cols, values}]}`.

use super::svg::Heatmap;
use crate::arrays::{extension, write_arrays, write_atomic, Array};
use crate::error::{Error, Result};
use std::path::Path;

/// What the matrices were computed from.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub token_ids: Vec<u32>,
    pub tokens: Vec<String>,
    pub prefix_len: usize,
    pub layer: Option<usize>,
    pub head: Option<usize>,
}

/// A panel's values as an array, masked cells as 0.
pub fn heatmap_array(h: &Heatmap) -> Array {
    Array {
        shape: vec![h.rows(), h.cols()],
        data: h
            .values
            .iter()
            .map(|&v| if v.is_finite() { v } else { 0.0 })
            .collect(),
    }
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The CSV text of some panels.
pub fn to_csv(maps: &[Heatmap]) -> String {
    let mut out = String::from("panel,row,row_token,col,col_token,value\n");
    for h in maps {
        let a = heatmap_array(h);
        for r in 0..h.rows() {
            for c in 0..h.cols() {
                out.push_str(&format!(
                    "{},{r},{},{c},{},{}\n",
                    csv_field(&h.name),
                    csv_field(&h.row_labels[r]),
                    csv_field(&h.col_labels[c]),
                    a.data[r * h.cols() + c]
                ));
            }
        }
    }
    out
}

/// The JSON value of some panels with their metadata.
pub fn to_json(maps: &[Heatmap], meta: &Meta) -> serde_json::Value {
    let panels: Vec<serde_json::Value> = maps
        .iter()
        .map(|h| {
            let a = heatmap_array(h);
            let rows: Vec<Vec<f64>> = a
                .data
                .chunks(h.cols().max(1))
                .map(|r| r.iter().map(|&x| x as f64).collect())
                .collect();
            serde_json::json!({
                "name": h.name,
                "title": h.title,
                "rows": h.row_labels,
                "cols": h.col_labels,
                "values": rows,
            })
        })
        .collect();
    serde_json::json!({
        "layer": meta.layer,
        "head": meta.head,
        "prefix_len": meta.prefix_len,
        "token_ids": meta.token_ids,
        "tokens": meta.tokens,
        "panels": panels,
    })
}

/// Write panels to `path` (format from the extension), atomically; refuse to replace a file unless
/// `overwrite`.
pub fn write_heatmaps(path: &Path, maps: &[Heatmap], meta: &Meta, overwrite: bool) -> Result<()> {
    super::ensure_writable(path, overwrite)?;
    match extension(path).as_str() {
        "csv" => write_atomic(path, to_csv(maps).as_bytes()),
        "json" => {
            let text = serde_json::to_string_pretty(&to_json(maps, meta))
                .map_err(|e| Error::format(path, "json", "serializable data", e.to_string()))?;
            write_atomic(path, text.as_bytes())
        }
        "npy" => {
            if maps.len() != 1 {
                return Err(Error::input(
                    path.display().to_string(),
                    "exactly one panel for .npy (use .npz for several)",
                    format!("{} panels", maps.len()),
                ));
            }
            let a = heatmap_array(&maps[0]);
            write_arrays(path, &[(maps[0].name.as_str(), &a)])
        }
        "npz" => {
            let mut named: Vec<(String, Array)> = maps
                .iter()
                .map(|h| (h.name.clone(), heatmap_array(h)))
                .collect();
            named.push((
                "token_ids".into(),
                Array {
                    shape: vec![meta.token_ids.len()],
                    data: meta.token_ids.iter().map(|&t| t as f32).collect(),
                },
            ));
            named.push((
                "prefix_len".into(),
                Array {
                    shape: vec![1],
                    data: vec![meta.prefix_len as f32],
                },
            ));
            let refs: Vec<(&str, &Array)> = named.iter().map(|(n, a)| (n.as_str(), a)).collect();
            write_arrays(path, &refs)
        }
        other => Err(Error::unsupported(
            path,
            "data format",
            format!("'.{other}'"),
            ".csv, .json, .npy, .npz",
        )),
    }
}
