//! Hostile files (issue 17): every input that ever crashed prefixscope, and one case per class of
//! the fix, through the CLI binary: exit status 2, exactly one line on stderr naming the file (and
//! the field or tensor), no panic text, no backtrace even with `RUST_BACKTRACE=1`.
//!
//! The nine inputs of `tests/regressions/hostile-files/` (see its README) are replayed as they are;
//! the other cases are written here from the valid tiny inputs beside them.

mod common;

use prefixscope::arrays::Array;
use std::path::{Path, PathBuf};
use std::process::Command;

fn hostile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions/hostile-files")
        .join(name)
}

fn toy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sort-1l1h/ascending.safetensors")
}

/// Run the CLI with `args`; `(status, stdout, stderr)`.
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prefixscope"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run prefixscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI refuses: status 2, one line on stderr that names `file` and holds every `words`, and no
/// panic or backtrace. Returns the line.
fn refuses(args: &[&str], file: &Path, words: &[&str]) -> String {
    let (code, _, err) = cli(args);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(code, 2, "{args:?}: status {code}, stderr {err}");
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    let line = lines[0];
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(name.as_ref()), "{line} does not name {name}");
    for w in words {
        assert!(line.contains(w), "{line} lacks {w:?}");
    }
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "  0: "] {
        assert!(!line.contains(bad), "{line}");
    }
    line.to_string()
}

fn inspect(model: &Path, words: &[&str]) -> String {
    refuses(
        &["inspect", "--model", model.to_str().unwrap()],
        model,
        words,
    )
}

#[test]
fn the_nine_regression_inputs_exit_2_with_one_line() {
    inspect(
        &hostile("directed-gguf-alignment0.gguf"),
        &["general.alignment", "power of two"],
    );
    inspect(
        &hostile("directed-gguf-novocab-embd0dims.gguf"),
        &["token_embd.weight", "dimensions"],
    );
    inspect(
        &hostile("directed-gguf-blockcount-u32max.gguf"),
        &["llama.block_count", "4294967295"],
    );
    inspect(
        &hostile("directed-hf-layers-1e12"),
        &["num_hidden_layers", "1000000000000"],
    );
    inspect(
        &hostile("directed-toy-nlayer-2e31.safetensors"),
        &["n_layer", "2147483648"],
    );
    inspect(
        &hostile("directed-hf-tokenizer-decoder-truncated"),
        &["tokenizer.json", "JSON"],
    );
    inspect(
        &hostile("directed-hf-tokenizer-precompiled-bad"),
        &["tokenizer.json", "Precompiled"],
    );
    let tiny = hostile("tiny-hf-folder-valid");
    let npy = hostile("directed-prefix-shape-overflow-tiny.npy");
    let args = [
        "attention",
        "--model",
        tiny.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--soft-prompt",
        npy.to_str().unwrap(),
        "--out",
        "/nonexistent/never-written.npz",
    ];
    refuses(&args, &npy, &["'<f4'", "C order"]);
    let smol = common::smollm2();
    let npy = hostile("directed-prefix-shape-overflow-smol.npy");
    let mut args = args;
    args[2] = smol.to_str().unwrap();
    args[6] = npy.to_str().unwrap();
    refuses(&args, &npy, &["'<f4'", "C order"]);
}

/// The valid tiny folder loads (the cases below fail for what they change, not for the folder).
#[test]
fn the_tiny_folder_is_valid() {
    let tiny = hostile("tiny-hf-folder-valid");
    let (code, out, err) = cli(&["inspect", "--model", tiny.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
}

/// A copy of the tiny folder with `config.json` edited by `edit`.
fn tiny_with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> common::Scratch {
    let dir = common::temp_dir(name);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(hostile("tiny-hf-folder-valid").join(f), dir.join(f)).unwrap();
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    dir
}

#[test]
fn config_floats_and_sizes_are_refused_by_field() {
    let d = tiny_with_config("hostile-rope0", |v| v["rope_theta"] = 0.0.into());
    refuses(
        &["inspect", "--model", d.to_str().unwrap()],
        &d.join("config.json"),
        &["rope_theta", "> 0"],
    );
    let d = tiny_with_config("hostile-eps", |v| v["rms_norm_eps"] = (-1e-5).into());
    refuses(
        &["inspect", "--model", d.to_str().unwrap()],
        &d.join("config.json"),
        &["rms_norm_eps"],
    );
    let d = tiny_with_config("hostile-vocab", |v| v["vocab_size"] = (1u64 << 40).into());
    refuses(
        &["inspect", "--model", d.to_str().unwrap()],
        &d.join("config.json"),
        &["vocab_size"],
    );
    let d = tiny_with_config("hostile-heads", |v| v["num_attention_heads"] = 1e15.into());
    refuses(
        &["inspect", "--model", d.to_str().unwrap()],
        &d.join("config.json"),
        &["num_attention_heads"],
    );
}

/// Toy file rewritten with `edit` applied to its tensors: the scratch folder (keep it alive) and the file.
fn toy_edited(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, candle_core::Tensor)>),
) -> (common::Scratch, PathBuf) {
    let f = prefixscope::load::toy::read(&toy()).unwrap();
    let mut t: Vec<(String, candle_core::Tensor)> = f.tensors.into_iter().collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut t);
    let dir = common::temp_dir(name);
    let out = dir.join("toy.safetensors");
    prefixscope::load::toy::write(&out, &t, &f.meta).unwrap();
    (dir, out)
}

#[test]
fn non_finite_weights_are_refused_naming_tensor_and_index() {
    let (_dir, out) = toy_edited("hostile-nan", |t| {
        let (_, w) = t
            .iter_mut()
            .find(|(n, _)| n == "transformer.wte.weight")
            .unwrap();
        let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[5] = f32::NAN;
        *w = candle_core::Tensor::from_vec(v, w.dims(), w.device()).unwrap();
    });
    inspect(&out, &["tensor 'transformer.wte.weight' element 5", "NaN"]);
}

#[test]
fn a_run_that_overflows_says_at_which_layer_and_writes_nothing() {
    // Finite weights so large that q.k overflows f32 in layer 0.
    let (_dir, out) = toy_edited("hostile-overflow", |t| {
        let (_, w) = t
            .iter_mut()
            .find(|(n, _)| n == "transformer.h.0.attn.c_attn.weight")
            .unwrap();
        *w = (w.clone() * 1e30).unwrap();
    });
    let dir = out.parent().unwrap();
    let target = dir.join("o.npz");
    let (code, _, err) = cli(&[
        "attention",
        "--model",
        out.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--out",
        target.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("layer 0") && err.contains("expected finite numbers"),
        "{err}"
    );
    assert!(!target.exists());
}

#[test]
fn long_and_control_character_names_print_as_one_short_line() {
    let long = format!("evil\u{1b}[2J\n{}", "x".repeat(70_000));
    let (_dir, out) = toy_edited("hostile-name", |t| {
        let w = t[0].1.clone();
        t.push((long.clone(), w));
        t.retain(|(n, _)| n != "transformer.wte.weight");
    });
    let line = inspect(&out, &["transformer.wte.weight"]);
    assert!(line.len() < 2000, "{} bytes", line.len());
    // The long name is not in this message (the missing tensor is); a header error would show it
    // cut. Write a header whose only tensor has the long name and a bad dtype.
    let dir = out.parent().unwrap();
    let header = format!(
        "{{\"{}\":{{\"dtype\":\"X9\",\"shape\":[1],\"data_offsets\":[0,4]}}}}",
        long.replace('\n', "\\n").replace('\u{1b}', "\\u001b")
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let f = dir.join("long.safetensors");
    std::fs::write(&f, bytes).unwrap();
    let line = inspect(&f, &["tensor 'evil\\u{1b}[2J", "characters)", "dtype"]);
    assert!(line.len() < 2000, "{} bytes", line.len());
}

#[test]
fn negative_ids_get_our_message() {
    let t = toy();
    let (code, _, err) = cli(&[
        "attention",
        "--model",
        t.to_str().unwrap(),
        "--ids",
        "-1",
        "--out",
        "/nonexistent/x.npz",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.trim(),
        "error: --ids: expected non-negative integer token ids, found '-1'"
    );
}

/// A tiny valid GGUF: the block-count regression input with its block count set back to 2.
pub fn tiny_gguf() -> Vec<u8> {
    let mut b = std::fs::read(hostile("directed-gguf-blockcount-u32max.gguf")).unwrap();
    let key = b"llama.block_count";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type u32 (4), then the value.
    assert_eq!(&b[at..at + 4], &4u32.to_le_bytes());
    b[at + 4..at + 8].copy_from_slice(&2u32.to_le_bytes());
    b
}

/// Byte position of tensor `name`'s table entry fields: (dims start, n_dims, type pos, offset pos).
fn tensor_entry(b: &[u8], name: &str) -> (usize, usize, usize) {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = b
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap()
        + needle.len();
    let nd = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * nd;
    (nd, ty, ty + 4)
}

#[test]
fn gguf_tensor_tables_are_checked() {
    let dir = common::temp_dir("hostile-gguf");
    let ok = dir.join("ok.gguf");
    std::fs::write(&ok, tiny_gguf()).unwrap();
    let (code, _, err) = cli(&["inspect", "--model", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "the tiny GGUF must load: {err}");
    let case = |name: &str, edit: &dyn Fn(&mut Vec<u8>), words: &[&str]| {
        let mut b = tiny_gguf();
        edit(&mut b);
        let f = dir.join(name);
        std::fs::write(&f, b).unwrap();
        inspect(&f, words);
    };
    // An offset off the alignment, one past the data, one overlapping its neighbour.
    case(
        "misaligned.gguf",
        &|b| {
            let (_, _, off) = tensor_entry(b, "blk.0.attn_norm.weight");
            let o = u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) + 4;
            b[off..off + 8].copy_from_slice(&o.to_le_bytes());
        },
        &[
            "tensor 'blk.0.attn_norm.weight'",
            "multiple of the alignment 32",
        ],
    );
    case(
        "outside.gguf",
        &|b| {
            let (_, _, off) = tensor_entry(b, "output.weight");
            b[off..off + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        },
        &["tensor 'output.weight'", "data section"],
    );
    case(
        "overlap.gguf",
        &|b| {
            let (_, _, off) = tensor_entry(b, "blk.0.ffn_up.weight");
            b[off..off + 8].copy_from_slice(&27840u64.to_le_bytes());
        },
        &["tensor 'blk.0.ffn_", "data after tensor"],
    );
    case(
        "unknown-type.gguf",
        &|b| {
            let (_, ty, _) = tensor_entry(b, "blk.1.attn_q.weight");
            b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
        },
        &["tensor 'blk.1.attn_q.weight'", "ggml type", "type 99"],
    );
    case(
        "bad-value-type.gguf",
        &|b| {
            let key = b"llama.block_count";
            let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
            b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        },
        &["metadata 'llama.block_count'", "type 99"],
    );
    case(
        "nan-norm.gguf",
        &|b| {
            // blk.0.attn_norm.weight is F32 at data offset 20416 (the data section starts at byte
            // 6720: the table ends at 6718, aligned to 32); element 3 = NaN.
            let at = 6720 + 20416 + 12;
            b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        },
        &["tensor 'blk.0.attn_norm.weight' element 3", "NaN"],
    );
    // An alignment that is not a power of two (the alignment-0 input with 3 instead).
    let mut b = std::fs::read(hostile("directed-gguf-alignment0.gguf")).unwrap();
    let key = b"general.alignment";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    b[at + 4..at + 8].copy_from_slice(&3u32.to_le_bytes());
    let f = dir.join("alignment3.gguf");
    std::fs::write(&f, b).unwrap();
    inspect(&f, &["general.alignment", "power of two", "found 3"]);
}

#[test]
fn prefix_values_are_checked_when_loaded() {
    let dir = common::temp_dir("hostile-prefix");
    let tiny = hostile("tiny-hf-folder-valid");
    let f = dir.join("sp.npy");
    let mut a = Array::zeros(&[2, 64]);
    a.data[70] = f32::INFINITY;
    prefixscope::arrays::write_arrays(&f, &[("soft_prompt", &a)]).unwrap();
    refuses(
        &[
            "attention",
            "--model",
            tiny.to_str().unwrap(),
            "--ids",
            "1,2",
            "--soft-prompt",
            f.to_str().unwrap(),
            "--out",
            dir.join("o.npz").to_str().unwrap(),
        ],
        &f,
        &["element 70", "inf"],
    );
}

#[test]
fn the_alphabet_edges_are_accepted_and_the_next_character_refused_by_its_real_range() {
    // The construction vocabulary is space..'}' (94 ids): both ends are accepted...
    let (code, out, err) = cli(&["construct", "--target", " }", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["generated"], " }");
    // ...and '~' is refused by a message that names the real last character.
    let (code, _, err) = cli(&["construct", "--target", "a~"]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "error: target character 2: expected a character of the vocabulary (space to '}', 94 characters), found '~'"
    );
    // The library's alphabets: every construction's encoder, and the two-token sub-alphabet.
    use prefixscope::construct::{alphabet_range, char_id, encode, id_char, V};
    assert_eq!(char_id(' '), Some(0));
    assert_eq!(char_id('}'), Some(V as u32 - 1));
    assert_eq!(char_id('~'), None);
    assert_eq!(char_id('\u{1f}'), None);
    assert_eq!(id_char(V as u32 - 1), '}');
    assert_eq!(alphabet_range(0, V), "space to '}'");
    assert!(encode("x", " }").is_ok());
    let c = prefixscope::construct::two_token('A', 10, 5, 100.0).unwrap();
    let mut map: prefixscope::construct::Map =
        vec![("AJ".into(), "J".into()), ("JA".into(), "A".into())];
    prefixscope::construct::two_token_prefix(&c, &map).unwrap();
    map.push(("AK".into(), "A".into()));
    let e = prefixscope::construct::two_token_prefix(&c, &map)
        .unwrap_err()
        .one_line();
    assert!(e.contains("letters 'A'..='J'") && e.contains("'K'"), "{e}");
    // The last alphabet that fits ends at '}'; one more letter is refused.
    assert!(prefixscope::construct::two_token('t', 10, 5, 100.0).is_ok());
    assert!(prefixscope::construct::two_token('u', 10, 5, 100.0).is_err());
}

#[test]
#[cfg(feature = "gui")]
fn the_app_starts_whatever_its_session_and_autosave_hold() {
    use prefixscope::app::{AppOptions, PrefixScopeApp};
    // A truncated session.json (it holds the recent list): moved aside, said on the status line.
    let dir = common::temp_dir("hostile-session");
    std::fs::write(
        dir.join("session.json"),
        b"{\"models\": {\"recent\": [\"/a\", 7",
    )
    .unwrap();
    let opts = AppOptions {
        model: Some(toy()),
        session_dir: Some(dir.to_path_buf()),
        fresh: false,
        ..Default::default()
    };
    let app = PrefixScopeApp::new(None, opts.clone());
    let note = app.startup_note.clone().expect("a note");
    assert!(
        note.contains("session.json") && note.contains("moved aside"),
        "{note}"
    );
    assert!(dir.join("session.json.corrupt").exists());
    assert!(!dir.join("session.json").exists());
    let mut h = common::gui::harness(app);
    common::gui::step_until(&mut h, "the toy loads", |a| a.model_info().is_some());

    // A session naming a corrupt autosave for this model: the model opens, the autosave is moved
    // aside and reported.
    let dir = common::temp_dir("hostile-autosave");
    let session = serde_json::json!({
        "model_path": toy(),
        "autosave_model": toy(),
        "autosave_kind": "Hidden",
        "editor_token": 0,
        "editor_layer": 0,
    });
    std::fs::write(dir.join("session.json"), session.to_string()).unwrap();
    std::fs::write(dir.join("autosave-prefix.npz"), b"PK\x03\x04 not a zip").unwrap();
    let opts = AppOptions {
        session_dir: Some(dir.to_path_buf()),
        ..opts
    };
    let mut h = common::gui::harness(PrefixScopeApp::new(None, opts));
    common::gui::step_until(&mut h, "the toy loads", |a| a.model_info().is_some());
    let note = h.state().startup_note.clone().expect("a note");
    assert!(
        note.contains("autosave-prefix.npz") && note.contains("moved aside"),
        "{note}"
    );
    assert!(dir.join("autosave-prefix.npz.corrupt").exists());
}

#[test]
#[cfg(feature = "gui")]
fn the_app_construction_reaches_both_ends_of_the_alphabet_and_names_it() {
    let mut p = prefixscope::app::construction::ConstructionPanel::default();
    p.set_target(" }");
    assert_eq!(p.error(), None);
    // (the construction writes N = 20 characters; the target's are padded with spaces)
    assert_eq!(p.generated().trim_end(), " }");
    // The sliders' ends are the alphabet's ends.
    p.set_coordinate(0, 1.0);
    p.set_coordinate(1, 0.0);
    assert_eq!(&p.generated()[..2], "} ");
    p.set_target("~");
    let e = p.error().unwrap();
    assert!(e.contains("space to '}'") && e.contains("found '~'"), "{e}");
}

/// An `.npy` header for `descr`, `fortran` and `shape` followed by `data`.
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn npz_members_declaring_huge_shapes_are_refused_and_fortran_big_endian_reads_right() {
    use std::io::Write;
    let dir = common::temp_dir("hostile-npz");
    // A member declaring (10^12, 576) floats with 8 bytes of data.
    let f = dir.join("huge.npz");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&f).unwrap());
    z.start_file("soft_prompt.npy", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(&npy("<f4", false, "(1000000000000, 576)", &[0; 8]))
        .unwrap();
    z.finish().unwrap();
    let e = prefixscope::prefix::Prefix::load(&f, prefixscope::prefix::PrefixKind::SoftPrompt)
        .unwrap_err()
        .one_line();
    assert!(
        e.contains("soft_prompt") && e.contains("'<f4'") && e.contains("C order"),
        "{e}"
    );
    // The same (2, 64) soft prompt as C-order little-endian (our writer) and as Fortran-order
    // big-endian: the same prefix.
    let mut a = Array::zeros(&[2, 64]);
    for (i, x) in a.data.iter_mut().enumerate() {
        *x = i as f32 * 0.01 - 0.3;
    }
    let c = dir.join("c.npy");
    prefixscope::arrays::write_arrays(&c, &[("soft_prompt", &a)]).unwrap();
    let mut col = Vec::new();
    for j in 0..64 {
        for i in 0..2 {
            col.extend_from_slice(&a.data[i * 64 + j].to_be_bytes());
        }
    }
    let fo = dir.join("f.npy");
    std::fs::write(&fo, npy(">f4", true, "(2, 64)", &col)).unwrap();
    let kind = prefixscope::prefix::PrefixKind::SoftPrompt;
    assert_eq!(
        prefixscope::prefix::Prefix::load(&c, kind).unwrap(),
        prefixscope::prefix::Prefix::load(&fo, kind).unwrap()
    );
}
