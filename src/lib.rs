//! prefixscope: what a prefix does to a transformer's attention.
//!
//! The maths of Petrov, Torr and Bibi (ICLR 2024) made visible: for one head with a prefix at
//! positions `0..p` and content after it, `A_pt[i,j] = A[i,j] (1 - a_i)` for content `i, j`, where
//! `a_i` is the attention query `i` puts on the prefix, and the head output is
//! `t_pt_i = (1 - a_i) t_i + sum_k A_pt[i,k] v_k(prefix)`.
//!
//! This crate holds the maths and the file formats; the GUI (feature `gui`, on by default) and the
//! CLI are thin layers over it. `ARCHITECTURE.md` shows how the modules fit together.

#[cfg(feature = "gui")]
pub mod app;
pub mod arrays;
pub mod bias;
pub mod bundled;
pub mod capture;
pub mod colormap;
pub mod construct;
pub mod error;
pub mod figure;
pub mod glyphs;
pub mod head_views;
pub mod hooks;
pub mod incremental;
pub mod load;
pub mod metrics;
pub mod model;
pub mod peft;
pub mod prefix;
pub mod prefix_math;
pub mod tokenizer;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
