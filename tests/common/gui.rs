//! Shared helpers for the egui_kittest tests that drive the real app.

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use prefixscope::app::PrefixScopeApp;
use std::time::{Duration, Instant};

/// The app's `show`, what `eframe::App::ui` draws, in a 1280 x 800 window.
pub fn harness(app: PrefixScopeApp) -> Harness<'static, PrefixScopeApp> {
    harness_sized(app, (1280.0, 800.0))
}

/// [`harness`] in a `(width, height)` window.
pub fn harness_sized(app: PrefixScopeApp, size: (f32, f32)) -> Harness<'static, PrefixScopeApp> {
    Harness::builder()
        .with_size(egui::vec2(size.0, size.1))
        .build_ui_state(|ui, app: &mut PrefixScopeApp| app.show(ui), app)
}

/// Step frames until `done` holds (the worker runs on its own threads meanwhile), failing after
/// `limit` with the app's compute and load errors.
pub fn step_until_within(
    h: &mut Harness<'_, PrefixScopeApp>,
    what: &str,
    limit: Duration,
    done: impl Fn(&PrefixScopeApp) -> bool,
) {
    let t0 = Instant::now();
    while !done(h.state()) {
        let app = h.state();
        assert!(
            t0.elapsed() < limit,
            "timed out waiting for {what} (compute error {:?}, load error {:?}, shown full {:?})",
            app.compute_error(),
            app.load_error(),
            app.shown().map(|c| (c.gen, c.full))
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

/// [`step_until_within`] three minutes.
pub fn step_until(
    h: &mut Harness<'_, PrefixScopeApp>,
    what: &str,
    done: impl Fn(&PrefixScopeApp) -> bool,
) {
    step_until_within(h, what, Duration::from_secs(180), done)
}

/// Type `text` into the text box labelled `label` like a user would: focus it, then set its value.
pub fn type_into(h: &mut Harness<'_, PrefixScopeApp>, role: Role, label: &str, text: &str) {
    h.get_by_role_and_label(role, label).focus();
    h.step();
    h.get_by_role_and_label(role, label)
        .set_text_value_accesskit(text);
    h.step();
}
