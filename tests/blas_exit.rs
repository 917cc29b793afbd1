//! A process that exits while other threads are inside OpenBLAS products must exit, not hang.
//!
//! OpenBLAS's destructor wakes its worker threads with an "exit" job and joins them; a product started
//! meanwhile on another thread replaces that job, and the join waits forever (reproduced with
//! Debian's OpenBLAS 0.3.21 from Python too). prefixscope's window can close while its compute thread
//! is in a forward, and a test can return while its worker computes. `model::blas` registers an
//! `atexit` handler that waits for the products in flight and stops new ones before the destructor
//! runs. This file is its own test harness: run plainly, it starts itself as a child (`CHILD` set)
//! many times; each child starts two threads multiplying through OpenBLAS and returns from `main` at
//! once. Without the handler about one child in twenty hangs; with it none may.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "PREFIXSCOPE_BLAS_EXIT_CHILD";
const RUNS: usize = 40;

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    prefixscope::model::blas::init();
    if !common::available_or_skip(
        prefixscope::model::blas::active(),
        "OpenBLAS (libopenblas.so.0)",
        "apt-get install libopenblas0-pthread",
    ) {
        return;
    }
    let exe = std::env::current_exe().expect("the test's own path");
    for run in 0..RUNS {
        let mut c = Command::new(&exe)
            .env(CHILD, "1")
            .spawn()
            .expect("start the child");
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().expect("wait for the child") {
                assert!(status.success(), "run {run}: the child failed: {status}");
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("run {run} of {RUNS}: the process hung in exit with OpenBLAS products in flight");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    println!("blas_exit: {RUNS} processes exited with products in flight");
}

/// Two threads multiplying `(256, 256)` matrices (large enough for OpenBLAS's worker threads) until
/// the process ends; `main` returns while they run.
fn child() {
    use candle_core::{Device, Tensor};
    prefixscope::model::blas::init();
    let x = Tensor::ones((256, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
    let started = std::sync::Arc::new(std::sync::Barrier::new(3));
    for _ in 0..2 {
        let (x, started) = (x.clone(), started.clone());
        std::thread::spawn(move || {
            started.wait();
            loop {
                std::hint::black_box(prefixscope::model::blas::matmul(&x, &x).unwrap());
            }
        });
    }
    started.wait();
    std::thread::sleep(Duration::from_millis(20));
}
