//! The options of `prefixscope` with no subcommand: the window.

#[cfg(feature = "gui")]
use prefixscope::app::AppOptions;
#[cfg(feature = "gui")]
use prefixscope::error::Error;
#[cfg(feature = "gui")]
use prefixscope::prefix::PrefixKind;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Default)]
pub struct GuiArgs {
    /// Open this checkpoint (toy .safetensors, .gguf or Hugging Face folder) instead of the last or
    /// the bundled default one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Start from this prefix file (.npz/.npy/.safetensors); its kind comes from --prefix-kind.
    #[arg(long)]
    pub prefix: Option<PathBuf>,
    /// Start from this PEFT adapter (folder or adapter_model.safetensors; its kind is the adapter's).
    #[arg(long, conflicts_with = "prefix")]
    pub adapter: Option<PathBuf>,
    /// Kind of the --prefix file: soft, hidden (the paper's per-layer prefix) or kv.
    #[arg(long, value_parser = ["soft", "hidden", "kv"])]
    pub prefix_kind: Option<String>,
    /// Start with this prompt text.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Keep the session and the prefix autosave in this folder instead of the user's data folder.
    #[arg(long)]
    pub session_dir: Option<PathBuf>,
    /// Do not restore the previous session.
    #[arg(long)]
    pub fresh: bool,
    /// Close the window this many seconds after all views are filled (scripts, CI).
    #[arg(long, value_name = "SECONDS")]
    pub quit_after: Option<f32>,
    /// Repaint continuously and print frames per second to stderr every second.
    #[arg(long)]
    pub bench_fps: bool,
    /// Print start-up timings (model load, all views filled) to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Window size in points, e.g. 1920x1080.
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
}

impl GuiArgs {
    /// Open the window with these options; returns when it is closed.
    #[cfg(feature = "gui")]
    pub fn open(self) -> prefixscope::Result<()> {
        self.into_options().and_then(prefixscope::app::run)
    }

    /// Without the `gui` feature there is no window to open: say so on one line.
    #[cfg(not(feature = "gui"))]
    pub fn open(self) -> prefixscope::Result<()> {
        Err(prefixscope::error::Error::input(
            "subcommand",
            "one of the subcommands (see --help): this build has no window (feature `gui` off)",
            "none",
        ))
    }

    #[cfg(feature = "gui")]
    pub fn into_options(self) -> prefixscope::Result<AppOptions> {
        let size = match &self.size {
            None => None,
            Some(s) => {
                let bad =
                    || Error::input("--size", "WIDTHxHEIGHT, e.g. 1280x800", format!("'{s}'"));
                let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
                let w: f32 = w.trim().parse().map_err(|_| bad())?;
                let h: f32 = h.trim().parse().map_err(|_| bad())?;
                if !(100.0..=10000.0).contains(&w) || !(100.0..=10000.0).contains(&h) {
                    return Err(bad());
                }
                Some((w, h))
            }
        };
        if let Some(q) = self.quit_after {
            if !(q.is_finite() && q > 0.0) {
                return Err(Error::input(
                    "--quit-after",
                    "a positive number of seconds",
                    q.to_string(),
                ));
            }
        }
        Ok(AppOptions {
            model: self.model,
            // An adapter folder is recognised by its adapter_config.json when the prefix is opened.
            prefix: self.adapter.or(self.prefix),
            prefix_kind: self.prefix_kind.as_deref().map(|k| match k {
                "hidden" => PrefixKind::Hidden,
                "kv" => PrefixKind::KeyValue,
                _ => PrefixKind::SoftPrompt,
            }),
            prompt: self.prompt,
            session_dir: self.session_dir,
            fresh: self.fresh,
            quit_after: self.quit_after,
            bench_fps: self.bench_fps,
            timings: self.timings,
            size,
        })
    }
}
