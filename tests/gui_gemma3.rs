//! The app opens the real Gemma 3 270M GGUF (`.ci/fetch-gemma3.sh`): the model, its SentencePiece
//! tokenizer (labels with no "�") and the first views, whose layer-0 claims
//! hold.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until};
use prefixscope::app::{AppOptions, PrefixScopeApp};

#[test]
fn the_app_opens_gemma3_and_draws_its_first_views() {
    let model = common::gemma3();
    let dir = common::temp_dir("gui-gemma3");
    let opts = AppOptions {
        model: Some(model),
        prompt: Some("The café crab sat on the mat".into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "Gemma 3 and its first views", |a| a.is_current());
    let app = h.state();
    let labels = &app.prompt.labels;
    assert!(!labels.is_empty());
    assert!(labels.iter().all(|l| !l.contains('\u{FFFD}')), "{labels:?}");
    let c = app.shown().expect("a result on screen");
    assert_eq!(c.capture.layers.len(), 18);
    let l0 = c.layer0_renorm_diff.expect("prefixed");
    assert!(
        l0 < 1e-5,
        "layer 0 renormalized differs from pretrained by {l0}"
    );
    // The head-output identity, relative to Gemma's large head outputs (absolute f32 rounding on
    // them reached 1.3e-4 and showed the Checks line as a failure).
    let id0 = c.layer0_identity_error.expect("prefixed");
    assert!(id0 < 1e-5, "layer 0 head-output identity error {id0:e}");
}
