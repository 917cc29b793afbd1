//! Per-op timing of a forward pass, off unless asked for (`PREFIXSCOPE_PROFILE=1`, or `bench
//! --profile`): each [`span`] adds its wall time to a named total. Spans do not nest, so the totals
//! add up to the pass (less the small glue between them). candle's CPU ops are synchronous, so a
//! span's time is its op's. Off, a span costs one relaxed atomic load.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// 0: not read yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
static TOTALS: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

/// Turn the timing on or off (overrides `PREFIXSCOPE_PROFILE`).
pub fn enable(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether spans are being timed.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("PREFIXSCOPE_PROFILE").is_some_and(|v| v != "0");
            enable(on);
            on
        }
        s => s == 2,
    }
}

/// Run `f`, adding its wall time to the total named `name` when profiling is on.
#[inline]
pub fn span<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    if let Ok(mut v) = TOTALS.lock() {
        match v.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => {
                e.1 += dt;
                e.2 += 1;
            }
            None => v.push((name, dt, 1)),
        }
    }
    r
}

/// The totals since the last call, `(name, seconds, calls)` in first-seen order, and reset them.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    TOTALS
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_add_up_per_name_only_when_on() {
        enable(false);
        assert_eq!(span("off", || 3), 3);
        enable(true);
        span("a", || {
            std::thread::sleep(std::time::Duration::from_millis(2))
        });
        span("b", || ());
        span("a", || ());
        enable(false);
        let t = take();
        let a = t.iter().find(|e| e.0 == "a").unwrap();
        assert!(a.1 >= 0.002 && a.2 == 2, "{t:?}");
        assert!(t.iter().all(|e| e.0 != "off"));
        assert!(take().iter().all(|e| e.0 != "a"));
    }
}
