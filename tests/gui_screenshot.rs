//! The real window under Xvfb: `.ci/screenshot-check.sh` starts the built binary on the default model,
//! waits until every view is filled, takes a screenshot, checks it is the app (size, many colours, the
//! dark theme's brightness) and that the process closes itself with status 0 (`--quit-after`).
//! Skipped with a notice when Xvfb or ImageMagick is missing (`.ci/run` installs them).
#![cfg(feature = "gui")]

use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn real_window_screenshot_is_the_app_and_exits_cleanly() {
    if !["Xvfb", "import", "identify"].iter().all(|t| have(t)) {
        // In CI (.ci/run sets nothing up by hand, but installs these) a missing tool is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Xvfb and ImageMagick (.ci/run installs them)"
        );
        eprintln!("SKIPPED: Xvfb and ImageMagick are needed (apt-get install xvfb imagemagick; .ci/run does)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out =
        std::env::temp_dir().join(format!("prefixscope-screenshot-{}.png", std::process::id()));
    let res = Command::new("bash")
        .arg(format!("{root}/.ci/screenshot-check.sh"))
        .args([
            "--bin",
            env!("CARGO_BIN_EXE_prefixscope"),
            "--size",
            "1280x800",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run .ci/screenshot-check.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    println!("{text}");
    assert!(res.status.success(), "screenshot check failed:\n{text}");
    assert!(text.contains("startup: all views filled"), "{text}");
    let _ = std::fs::remove_file(out);
}
