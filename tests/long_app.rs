//! The window's compute thread on a long prompt (#16): every answer holds the maps of the viewed head
//! of the viewed layer only (bytes counted against the bound from N and P), and switching the head,
//! the layer or the prefix gives the maps a full capture of that layer gives (1e-6), computed when
//! viewed; a full answer brings the overview and the plots' figures for every layer and head.
#![cfg(feature = "gui")]

mod common;

use prefixscope::app::worker::{ComputeRequest, Computed, Reply, Worker};
use prefixscope::capture::capture;
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};
use std::time::{Duration, Instant};

/// The answer to `gen` (its full one when `full`), failing after ten minutes (never timing).
fn answer(w: &Worker, gen: u64, full: bool) -> Box<Computed> {
    let t0 = Instant::now();
    loop {
        for r in w.poll() {
            match r {
                Reply::Computed(c) if c.gen == gen && (c.full || !full) => return c,
                Reply::ComputeFailed { gen: g, message } if g == gen => panic!("{message}"),
                _ => {}
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no answer");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn a_long_prompt_holds_one_heads_maps_and_switching_computes_the_right_ones() {
    let Some(path) = common::smollm2_or_skip() else {
        return;
    };
    let mut w = Worker::new();
    let job = w.load(path.clone(), false);
    let info = loop {
        match w.poll().into_iter().next() {
            Some(Reply::Loaded(l)) => break l.info.clone(),
            Some(Reply::LoadFailed { message, .. }) => panic!("{message}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    // 30 layers x 9 heads x 4 maps of 600 x 602 floats: 1.7 GB, over the app's 1 GiB budget.
    let n = 600;
    let ids: Vec<u32> = (0..n).map(|k| ((k * 7919 + 13) % 49152) as u32).collect();
    let mut pf = Prefix::zeros(PrefixKind::KeyValue, 2, &info);
    for (i, x) in pf.values_mut().enumerate() {
        *x = (((i * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 0.5;
    }
    let mut edited = pf.clone();
    // Layer 9 of the key/value prefix (the first nine layers' values are untouched).
    let per_layer = edited.values_mut().count() / info.n_layers;
    if let Some(x) = edited.values_mut().nth(9 * per_layer + 5) {
        *x += 1.5;
    }
    let reference = prefixscope::load::load(&path).unwrap();
    let bound = 4 * n * (n + 2) * 4; // one head: raw, renormalized, pretrained, difference
    let steps: [(u64, usize, usize, &Prefix); 4] = [
        (1, 11, 0, &pf),
        (2, 11, 6, &pf),     // another head
        (3, 25, 6, &pf),     // another layer
        (4, 25, 6, &edited), // a prefix edit below the viewed layer
    ];
    for (gen, layer, head, prefix) in steps {
        w.compute(ComputeRequest {
            gen,
            model_gen: job.model_gen,
            ids: ids.clone(),
            prefix: Some(prefix.clone()),
            view_layer: layer,
            view_head: head,
        });
        // Each request is answered quick (the viewed head), then full (the overview, the plots).
        let quick = answer(&w, gen, gen == 1);
        let layers: Vec<usize> = quick.capture.layers.iter().map(|l| l.layer).collect();
        assert_eq!(layers, [layer], "gen {gen}: the viewed layer only");
        assert_eq!(quick.only_head, Some(head));
        assert!(
            quick.map_bytes() <= bound,
            "gen {gen}: {} bytes",
            quick.map_bytes()
        );
        let full = capture(
            reference.model.as_ref(),
            &ids,
            Some(prefix),
            &LayerSel::Only(vec![layer]),
        )
        .unwrap();
        let want = full.layer(layer).unwrap();
        let got = &quick.capture.layers[0];
        let per = n * (n + 2);
        let raw_want = &want.with_prefix.as_ref().unwrap().data[head * per..(head + 1) * per];
        let d = max_diff(&got.with_prefix.as_ref().unwrap().data, raw_want);
        assert!(d <= 1e-6, "gen {gen}: raw map differs by {d}");
        let sq = n * n;
        let d = max_diff(
            &got.pretrained.data,
            &want.pretrained.data[head * sq..(head + 1) * sq],
        );
        assert!(d <= 1e-6, "gen {gen}: pretrained map differs by {d}");
        let d = max_diff(
            &got.renormalized.as_ref().unwrap().data,
            &want.renormalized.as_ref().unwrap().data[head * sq..(head + 1) * sq],
        );
        assert!(d <= 1e-6, "gen {gen}: renormalized map differs by {d}");
        let diff = quick.difference[0].1.as_ref().unwrap();
        assert_eq!(diff.shape, [1, n, n]);
        drop(quick);
        let c = if gen == 1 {
            None
        } else {
            Some(answer(&w, gen, true))
        };
        if let Some(c) = &c {
            assert!(c.map_bytes() <= bound);
            assert!(c.overview_fresh);
            assert!(c.overview.iter().flatten().all(|x| x.is_some()));
            let s = c.summaries.as_ref().unwrap();
            assert_eq!(s.deviations.len(), info.n_layers);
            // The overview's viewed cell is the viewed head's own figure.
            let mx = want.max_renorm_diff(Some(head)).unwrap();
            assert!((c.overview[layer][head].unwrap() - mx).abs() <= 1e-6);
        }
    }
}
