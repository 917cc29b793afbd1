//! The compute worker's ordering rule: of the requests waiting, only the newest is answered, and an
//! answer is never older than one already given (the UI shows the newest state of the sliders).
//! Six requests are queued back to back on the small HF folder, each with a different prefix length;
//! the answers must come in increasing generation, end with the newest request's own prefix, and a
//! drained queue must leave at most one quick and one full answer per request.
#![cfg(feature = "gui")]

mod common;

use prefixscope::app::worker::{ComputeRequest, Reply, Worker};
use prefixscope::prefix::{Prefix, PrefixKind};
use std::time::{Duration, Instant};

/// Poll the worker until `done` says stop, failing (not timing anything) after two minutes.
fn drain(w: &Worker, mut done: impl FnMut(&Reply) -> bool) -> Vec<Reply> {
    let t0 = Instant::now();
    let mut all = Vec::new();
    loop {
        for r in w.poll() {
            let stop = done(&r);
            all.push(r);
            if stop {
                return all;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the worker never answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn only_the_newest_request_is_answered_and_never_an_older_one_after_it() {
    let mut w = Worker::new();
    let job = w.load(
        common::repo_path("tests/regressions/hostile-files/tiny-hf-folder-valid"),
        false,
    );
    let mut info = None;
    drain(&w, |r| match r {
        Reply::Loaded(l) => {
            info = Some(l.info.clone());
            true
        }
        Reply::LoadFailed { message, .. } => panic!("load failed: {message}"),
        _ => false,
    });
    let info = info.unwrap();
    let ids: Vec<u32> = vec![5, 17, 200, 3, 44, 9, 120, 31];
    for gen in 1..=6u64 {
        let mut prefix = Prefix::zeros(PrefixKind::Hidden, gen as usize, &info);
        for (i, x) in prefix.values_mut().enumerate() {
            *x = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 2.0;
        }
        w.compute(ComputeRequest {
            gen,
            model_gen: job.model_gen,
            ids: ids.clone(),
            prefix: Some(prefix),
            view_layer: 1,
            view_head: 0,
        });
    }
    let replies = drain(
        &w,
        |r| matches!(r, Reply::Computed(c) if c.gen == 6 && c.full),
    );
    let mut last = 0;
    let mut answers = 0;
    for r in &replies {
        match r {
            Reply::Computed(c) => {
                assert!(c.gen >= last, "answer {} after answer {last}", c.gen);
                last = c.gen;
                answers += 1;
                // Each answer is for its own request: generation k asked for P = k.
                assert_eq!(
                    c.capture.p, c.gen as usize,
                    "answer {} shows another request",
                    c.gen
                );
            }
            Reply::ComputeFailed { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    assert!(answers <= 2 * 6, "{answers} answers for 6 requests");
    assert_eq!(last, 6);
    // Nothing older arrives afterwards.
    std::thread::sleep(Duration::from_millis(300));
    for r in w.poll() {
        if let Reply::Computed(c) = r {
            assert!(c.gen >= 6, "a late answer for request {}", c.gen);
        }
    }
}
