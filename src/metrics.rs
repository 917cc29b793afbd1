//! Per-head and per-layer summaries of a [`Capture`], for the window's plots and overview colourings
//! (issue 19): how far the renormalized attention is from the pretrained one, layer by layer (the
//! paper's cross-layer effect: exactly 0 in layer 0, growing after it), and head metrics from the
//! interpretability literature.
//!
//! Shapes are those of [`LayerCapture`]: patterns `(H, N, cols)` with content query rows; the
//! with-prefix pattern has `cols = P + N`, columns `[prefix | content]`, the others `cols = N`.
//! Cells after the query (`j > i`) are 0 in every pattern (the causal mask).

use crate::arrays::Array;
use crate::capture::{Capture, LayerCapture};

/// max and mean |renormalized − pretrained| of one layer, per head.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDeviations {
    pub layer: usize,
    /// `(max, mean)` per head: the max over the head's `N x N` cells, the mean over its causal
    /// cells `j <= i` (`N (N + 1) / 2` of them: the masked cells are 0 on both sides and would only
    /// dilute the mean).
    pub per_head: Vec<(f32, f32)>,
}

impl LayerDeviations {
    /// `(max, mean)` of head `h`.
    pub fn head(&self, h: usize) -> Option<(f32, f32)> {
        self.per_head.get(h).copied()
    }

    /// `(max, mean)` over every head (every head has the same number of causal cells, so the mean
    /// of the heads' means is the mean over all cells).
    pub fn all(&self) -> (f32, f32) {
        let max = self.per_head.iter().map(|x| x.0).fold(0f32, f32::max);
        let mean = self.per_head.iter().map(|x| x.1 as f64).sum::<f64>()
            / self.per_head.len().max(1) as f64;
        (max, mean as f32)
    }
}

/// `(max, mean)` of |a − b| over head `h`'s causal cells of two `(H, N, N)` arrays.
fn head_abs_diff(a: &Array, b: &Array, h: usize) -> (f32, f32) {
    let n = a.shape[1];
    let (mut max, mut sum) = (0f32, 0f64);
    for i in 0..n {
        let row = (h * n + i) * n;
        for j in 0..=i {
            let d = (a.data[row + j] - b.data[row + j]).abs();
            max = max.max(d);
            sum += d as f64;
        }
    }
    (max, (sum / (n * (n + 1) / 2).max(1) as f64) as f32)
}

/// [`LayerDeviations`] of every captured layer that has a prefix, ascending by layer.
pub fn deviations(cap: &Capture) -> Vec<LayerDeviations> {
    let mut out: Vec<LayerDeviations> = cap.layers.iter().filter_map(layer_deviations).collect();
    out.sort_by_key(|d| d.layer);
    out
}

/// [`LayerDeviations`] of one layer's views (`None` without a prefix).
pub fn layer_deviations(lc: &LayerCapture) -> Option<LayerDeviations> {
    let r = lc.renormalized.as_ref()?;
    Some(LayerDeviations {
        layer: lc.layer,
        per_head: (0..lc.n_heads())
            .map(|h| head_abs_diff(r, &lc.pretrained, h))
            .collect(),
    })
}

/// A head metric the overview can be coloured by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum HeadMetric {
    /// max |renormalized − pretrained| over the head's cells (the paper's measure; what the worker
    /// computes for the overview).
    #[default]
    Deviation,
    /// Mean over queries of the row entropy `-sum_j A[i,j] ln A[i,j]`, in nats (`0 ln 0 = 0`).
    Entropy,
    /// Mean over queries of the attention on the first content token (the "attention sink").
    SinkMass,
    /// Mean over queries `i >= 1` of the attention on the previous token, `A[i, i-1]` (the
    /// previous-token-head score); undefined for a one-token prompt.
    PreviousToken,
    /// Mean over queries of the prefix mass `a_i`; undefined without a prefix.
    PrefixMass,
}

impl HeadMetric {
    pub const ALL: [HeadMetric; 5] = [
        HeadMetric::Deviation,
        HeadMetric::Entropy,
        HeadMetric::SinkMass,
        HeadMetric::PreviousToken,
        HeadMetric::PrefixMass,
    ];

    /// Short name for menus.
    pub fn label(self) -> &'static str {
        match self {
            HeadMetric::Deviation => "max |renormalized − pretrained|",
            HeadMetric::Entropy => "attention entropy (nats)",
            HeadMetric::SinkMass => "first-token (sink) mass",
            HeadMetric::PreviousToken => "previous-token score",
            HeadMetric::PrefixMass => "mean prefix mass",
        }
    }

    /// Whether a log colour scale suits the values: the deviation spans rounding (1e-7, layer 0)
    /// to order 1; the others are probabilities or entropies on a linear scale.
    pub fn log_scale(self) -> bool {
        self == HeadMetric::Deviation
    }
}

/// The pattern the attention metrics read and the column where its content starts: the with-prefix
/// pattern when there is one (what the model attends to), else the pretrained one.
fn source(lc: &LayerCapture) -> (&Array, usize) {
    match &lc.with_prefix {
        Some(w) => (w, w.shape[2] - w.shape[1]),
        None => (&lc.pretrained, 0),
    }
}

/// Mean over rows of `-sum A ln A` (nats) for a row-major `rows x cols` block.
pub fn mean_row_entropy(block: &[f32], rows: usize, cols: usize) -> f32 {
    if rows == 0 {
        return 0.0;
    }
    let total: f64 = block
        .chunks(cols.max(1))
        .take(rows)
        .map(|row| {
            row.iter()
                .filter(|&&x| x > 0.0)
                .map(|&x| -(x as f64) * (x as f64).ln())
                .sum::<f64>()
        })
        .sum();
    (total / rows as f64) as f32
}

/// Head `head`'s value of `metric` in one layer (`None` where undefined: see [`HeadMetric`]).
pub fn head_metric(lc: &LayerCapture, head: usize, metric: HeadMetric) -> Option<f32> {
    if head >= lc.n_heads() {
        return None;
    }
    let (a, c0) = source(lc);
    let (n, cols) = (a.shape[1], a.shape[2]);
    let block = &a.data[head * n * cols..(head + 1) * n * cols];
    let mean = |f: &dyn Fn(usize) -> f32, from: usize| -> Option<f32> {
        (n > from).then(|| (from..n).map(|i| f(i) as f64).sum::<f64>() as f32 / (n - from) as f32)
    };
    match metric {
        HeadMetric::Deviation => lc.max_renorm_diff(Some(head)),
        HeadMetric::Entropy => Some(mean_row_entropy(block, n, cols)),
        HeadMetric::SinkMass => mean(&|i| block[i * cols + c0], 0),
        HeadMetric::PreviousToken => mean(&|i| block[i * cols + c0 + i - 1], 1),
        HeadMetric::PrefixMass => {
            let m = lc.prefix_mass.as_ref()?;
            mean(&|i| m.data[head * n + i], 0)
        }
    }
}

/// `grid[layer][head]` of `metric` for layers `0..n_layers` (a layer the capture lacks is a row
/// of `None`), the overview's layout.
pub fn head_metric_grid(
    cap: &Capture,
    n_layers: usize,
    n_heads: usize,
    metric: HeadMetric,
) -> Vec<Vec<Option<f32>>> {
    (0..n_layers)
        .map(|l| match cap.layer(l) {
            Some(lc) => (0..n_heads).map(|h| head_metric(lc, h, metric)).collect(),
            None => vec![None; n_heads],
        })
        .collect()
}

/// Head `head`'s prefix mass per content query, `a_i` (`None` without a prefix).
pub fn prefix_mass_per_query(lc: &LayerCapture, head: usize) -> Option<&[f32]> {
    let m = lc.prefix_mass.as_ref()?;
    let n = m.shape[1];
    m.data.get(head * n..(head + 1) * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize], data: &[f32]) -> Array {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Array {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    /// One layer, two heads, N = 2, P = 1. Rows of the with-prefix pattern sum to 1; the
    /// renormalized rows are the content part divided by its sum.
    fn layer() -> LayerCapture {
        #[rustfmt::skip]
        let with = [
            // head 0: [prefix | c0 c1]
            0.5, 0.5, 0.0,
            0.2, 0.4, 0.4,
            // head 1
            0.0, 1.0, 0.0,
            0.6, 0.1, 0.3,
        ];
        #[rustfmt::skip]
        let renorm = [
            1.0, 0.0,   0.5, 0.5,
            1.0, 0.0,   0.25, 0.75,
        ];
        #[rustfmt::skip]
        let pre = [
            1.0, 0.0,   0.9, 0.1,
            1.0, 0.0,   0.25, 0.75,
        ];
        let z = Array::zeros(&[2, 2, 1]);
        LayerCapture {
            layer: 3,
            with_prefix: Some(arr(&[2, 2, 3], &with)),
            renormalized: Some(arr(&[2, 2, 2], &renorm)),
            pretrained: arr(&[2, 2, 2], &pre),
            prefix_mass: Some(arr(&[2, 2], &[0.5, 0.2, 0.0, 0.6])),
            z_prefixed: Some(z.clone()),
            z_pretrained: z,
            prefix_values: Some(Array::zeros(&[2, 1, 1])),
        }
    }

    fn capture() -> Capture {
        Capture {
            token_ids: vec![1, 2],
            p: 1,
            layers: vec![layer()],
            logits_last_pretrained: vec![0.0],
            logits_last_prefixed: Some(vec![0.0]),
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn deviation_by_hand() {
        let d = deviations(&capture());
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!(d.layer, 3);
        // Head 0: |0.5 - 0.9| = 0.4 and |0.5 - 0.1| = 0.4 in row 1; row 0 equal. Causal cells: 3.
        let (max, mean) = d.head(0).unwrap();
        assert!(close(max, 0.4) && close(mean, 0.8 / 3.0));
        // Head 1 is equal everywhere: over all heads, max 0.4, mean 0.8 / 6.
        assert_eq!(d.head(1), Some((0.0, 0.0)));
        let (max, mean) = d.all();
        assert!(close(max, 0.4) && close(mean, 0.8 / 6.0));
        assert_eq!(d.head(2), None);
        let mut no_prefix = capture();
        no_prefix.layers[0].renormalized = None;
        assert!(deviations(&no_prefix).is_empty());
    }

    #[test]
    fn head_metrics_by_hand() {
        let lc = layer();
        let ln = |x: f32| x.ln();
        // Head 0 entropy: row 0 = ln 2; row 1 = -(0.2 ln 0.2 + 2 * 0.4 ln 0.4).
        let h0 = (ln(2.0) + -(0.2 * ln(0.2) + 0.8 * ln(0.4))) / 2.0;
        assert!(close(head_metric(&lc, 0, HeadMetric::Entropy).unwrap(), h0));
        // Head 1: row 0 is one-hot (0), row 1 = -(0.6 ln 0.6 + 0.1 ln 0.1 + 0.3 ln 0.3).
        let h1 = -(0.6 * ln(0.6) + 0.1 * ln(0.1) + 0.3 * ln(0.3)) / 2.0;
        assert!(close(head_metric(&lc, 1, HeadMetric::Entropy).unwrap(), h1));
        // Sink: the first content column (index P = 1): head 0 (0.5 + 0.4) / 2.
        assert!(close(
            head_metric(&lc, 0, HeadMetric::SinkMass).unwrap(),
            0.45
        ));
        assert!(close(
            head_metric(&lc, 1, HeadMetric::SinkMass).unwrap(),
            0.55
        ));
        // Previous token: only row 1, column P + 0.
        assert!(close(
            head_metric(&lc, 0, HeadMetric::PreviousToken).unwrap(),
            0.4
        ));
        assert!(close(
            head_metric(&lc, 1, HeadMetric::PreviousToken).unwrap(),
            0.1
        ));
        assert!(close(
            head_metric(&lc, 0, HeadMetric::PrefixMass).unwrap(),
            0.35
        ));
        assert!(close(
            head_metric(&lc, 1, HeadMetric::PrefixMass).unwrap(),
            0.3
        ));
        assert!(close(
            head_metric(&lc, 0, HeadMetric::Deviation).unwrap(),
            0.4
        ));
        assert_eq!(head_metric(&lc, 2, HeadMetric::Entropy), None);
        assert_eq!(prefix_mass_per_query(&lc, 1), Some(&[0.0, 0.6][..]));
    }

    #[test]
    fn without_a_prefix_the_pretrained_pattern_is_read() {
        let mut lc = layer();
        lc.with_prefix = None;
        lc.renormalized = None;
        lc.prefix_mass = None;
        // Pretrained head 0: rows [1, 0], [0.9, 0.1]: sink (1 + 0.9) / 2, previous 0.9.
        assert!(close(
            head_metric(&lc, 0, HeadMetric::SinkMass).unwrap(),
            0.95
        ));
        assert!(close(
            head_metric(&lc, 0, HeadMetric::PreviousToken).unwrap(),
            0.9
        ));
        assert_eq!(head_metric(&lc, 0, HeadMetric::PrefixMass), None);
        assert_eq!(head_metric(&lc, 0, HeadMetric::Deviation), None);
        let cap = Capture {
            layers: vec![lc],
            ..capture()
        };
        let g = head_metric_grid(&cap, 5, 2, HeadMetric::SinkMass);
        assert_eq!(g.len(), 5);
        assert_eq!(g[0], vec![None, None], "layer 0 not captured");
        assert!(close(g[3][0].unwrap(), 0.95));
    }

    #[test]
    fn one_token_has_no_previous_token() {
        let mut lc = layer();
        lc.with_prefix = Some(arr(&[2, 1, 2], &[0.5, 0.5, 0.3, 0.7]));
        assert_eq!(head_metric(&lc, 0, HeadMetric::PreviousToken), None);
    }
}
