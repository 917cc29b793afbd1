//! The matmul backend as the binary reports and uses it (the decision rules themselves are unit tests
//! in `src/model/blas.rs`, on made-up CPUs and timings):
//! - with no BLAS library at all, or with it turned off, everything runs on candle's gemm and gives
//!   the same attention as the default backend;
//! - where OpenBLAS is installed and the CPU has AVX2, a library stuck on its SSE3 fallback kernel
//!   (simulated with `PREFIXSCOPE_BLAS_SIMULATE_CORE=Prescott`, the Xeon case) is never used
//!   as it is: its kernel is forced to the CPU's, or candle's gemm is used.

mod common;

use std::process::Command;

fn run_with(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(common::bin());
    c.args(args)
        .env_remove("PREFIXSCOPE_BLAS")
        .env_remove("PREFIXSCOPE_BLAS_SIMULATE_CORE")
        .env_remove("OPENBLAS_CORETYPE");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run prefixscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn matmul_line(env: &[(&str, &str)], model: &str) -> String {
    let (code, out, err) = run_with(env, &["inspect", "--model", model, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["matmul"].as_str().unwrap().to_string()
}

fn openblas_installed() -> bool {
    // SAFETY: loading the system's OpenBLAS runs its initializers only.
    unsafe { libloading::Library::new("libopenblas.so.0") }.is_ok()
}

#[test]
fn without_blas_the_binary_runs_on_candle_and_gives_the_same_attention() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let model = model.to_str().unwrap();
    let none = [("PREFIXSCOPE_BLAS", "/nonexistent/libopenblas.so.0")];
    assert_eq!(matmul_line(&none, model), "candle gemm");
    let off = [("PREFIXSCOPE_BLAS", "off")];
    assert!(matmul_line(&off, model).starts_with("candle gemm"));
    let dir = common::temp_dir("blas_choice");
    let ids = (0..40)
        .map(|k| (k * 997 % 49152).to_string())
        .collect::<Vec<_>>();
    let ids = ids.join(",");
    let mut outs = Vec::new();
    for (name, env) in [("default", &[][..]), ("none", &none[..])] {
        let out = dir.join(format!("{name}.npz"));
        let (code, _, err) = run_with(
            env,
            &[
                "attention",
                "--model",
                model,
                "--ids",
                &ids,
                "--layers",
                "0,29",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{name}: {err}");
        outs.push(out);
    }
    let (ma, mb) = (common::npz_f32(&outs[0]), common::npz_f32(&outs[1]));
    for key in [
        "blocks.0.attn.hook_pattern_pretrained",
        "blocks.29.attn.hook_pattern_pretrained",
    ] {
        let ((sa, a), (sb, b)) = (&ma[key], &mb[key]);
        assert_eq!(sa, sb);
        let d = common::max_abs_diff(a, b);
        assert!(
            d < 1e-5,
            "{key}: default backend against candle's gemm: {d}"
        );
    }
}

#[test]
fn a_fallback_kernel_is_forced_or_beaten_never_kept() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let avx2 = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    };
    if !common::available_or_skip(
        openblas_installed() && avx2,
        "OpenBLAS on an AVX2 CPU",
        "apt-get install libopenblas0-pthread",
    ) {
        return;
    }
    let model = model.to_str().unwrap();
    let line = matmul_line(&[("PREFIXSCOPE_BLAS_SIMULATE_CORE", "Prescott")], model);
    let forced = line.starts_with("OpenBLAS")
        && line.contains("(forced: Prescott was chosen by the library)")
        && (line.contains("core SkylakeX") || line.contains("core Haswell"));
    let beaten = line.starts_with("candle gemm (OpenBLAS") && line.contains("measured slower");
    assert!(forced || beaten, "{line}");
    // A kernel the user set is respected (named in the line, never "forced").
    let line = matmul_line(&[("OPENBLAS_CORETYPE", "Haswell")], model);
    assert!(!line.contains("forced"), "{line}");
}
