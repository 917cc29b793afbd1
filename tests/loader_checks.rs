//! The loaders' own checks, each refusal's exact line on a file built by hand, and each bound at its
//! edge (accepted at the limit, refused one past it). Written for the cargo-mutants run over
//! `src/load/safetensors_check.rs` and `src/load/limits.rs` (docs/testing.md): the regression and
//! fuzz tests name the tensor or field (`contains`), these pin down the numbers in the line, which
//! are worked out here from the file's layout, not read back from the checker.

use prefixscope::load::limits::{self, FloatRule, MetaNum};
use prefixscope::load::safetensors_check::{check_bytes, check_file, check_finite_raw};
use std::path::Path;

const P: &str = "t.safetensors";

/// A safetensors file: 8-byte little-endian header length, the header, the data.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn refusal(bytes: &[u8]) -> String {
    check_bytes(Path::new(P), bytes).unwrap_err().one_line()
}

/// `name -> (dtype, shape, begin, end)` of what the check accepted.
fn accepted(bytes: &[u8]) -> Vec<(String, String, Vec<u64>, u64, u64)> {
    let mut v: Vec<_> = check_bytes(Path::new(P), bytes)
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.dtype, e.shape, e.begin, e.end))
        .collect();
    v.sort();
    v
}

/// One tensor of each element size: BOOL 1, F16 2, F32 4, F64 8 bytes; the spans are the sizes
/// times the element counts, back to back (3 + 4 + 8 + 8 = 23 bytes).
#[test]
fn each_dtype_has_its_element_size() {
    let h = r#"{"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},"h":{"dtype":"F16","shape":[2],"data_offsets":[3,7]},"s":{"dtype":"F32","shape":[2,1],"data_offsets":[7,15]},"d":{"dtype":"F64","shape":[1],"data_offsets":[15,23]}}"#;
    let got = accepted(&st(h, &[0; 23]));
    let want = vec![
        ("b".to_string(), "BOOL".to_string(), vec![3], 0, 3),
        ("d".into(), "F64".into(), vec![1], 15, 23),
        ("h".into(), "F16".into(), vec![2], 3, 7),
        ("s".into(), "F32".into(), vec![2, 1], 7, 15),
    ];
    assert_eq!(got, want);
    // An F32 of 2 elements in 2 bytes: the size is 4 per element, not 1.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,2]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 2])),
        "t.safetensors: tensor 'a': expected 8 bytes (F32 [2]), found 2 bytes (offsets 0..2)"
    );
    let h = r#"{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 1])),
        "t.safetensors: tensor 'a': expected a known dtype (F16, BF16, F32, F64, I8..I64, U8..U64, \
         BOOL, F8_*), found \"F4\""
    );
    for (dtype, size) in [("U8", 1), ("I16", 2), ("U32", 4), ("I64", 8), ("BF16", 2)] {
        let h = format!(
            r#"{{"a":{{"dtype":"{dtype}","shape":[3],"data_offsets":[0,{}]}}}}"#,
            3 * size
        );
        assert_eq!(accepted(&st(&h, &vec![0; 3 * size]))[0].4, 3 * size as u64);
    }
}

/// A span not starting at 0 (bytes 4..12 hold an F32 of 2): its length is `end - begin`.
#[test]
fn a_span_is_its_end_less_its_begin() {
    let h = r#"{"pad":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert_eq!(accepted(&st(h, &[0; 12])).len(), 2);
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 12])),
        "t.safetensors: tensor 'a': expected 8 bytes (F32 [2]), found 12 bytes (offsets 0..12)"
    );
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,4]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 12])),
        "t.safetensors: tensor 'a': expected data_offsets [begin, end] with begin <= end, found [8,4]"
    );
    let h = r#"{"a":{"dtype":"F32","data_offsets":[0,8]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 8])),
        "t.safetensors: tensor 'a': expected a shape (a list of sizes), found none"
    );
}

/// The data section is the file less 8 bytes less the header: a tensor ending exactly at its end is
/// accepted, one byte further is refused with the data section's length.
#[test]
fn a_tensor_must_end_inside_the_data() {
    let h = r#"{"a":{"dtype":"U8","shape":[5],"data_offsets":[0,5]}}"#;
    assert_eq!(accepted(&st(h, &[0; 5]))[0].4, 5);
    assert_eq!(
        refusal(&st(h, &[0; 4])),
        "t.safetensors: tensor 'a': expected a complete safetensors file, with this tensor's data \
         inside its 4 data bytes, found bytes 0..5 (truncated, or a bad offset)"
    );
    assert_eq!(
        refusal(&st(h, &[0; 1])),
        "t.safetensors: tensor 'a': expected a complete safetensors file, with this tensor's data \
         inside its 1 data bytes, found bytes 0..5 (truncated, or a bad offset)"
    );
}

/// Spans may touch (8..12 after 0..8) and an empty one may sit anywhere; 4..8 inside 0..8 is
/// refused, naming both tensors and the byte where the first ends.
#[test]
fn spans_touch_but_never_overlap() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#;
    assert_eq!(accepted(&st(h, &[0; 12])).len(), 3);
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 8])),
        "t.safetensors: tensor 'b': expected data after tensor 'a' (which ends at byte 8), found \
         data starting at byte 4"
    );
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[3,7]}}"#;
    assert_eq!(
        refusal(&st(h, &[0; 8])),
        "t.safetensors: tensor 'b': expected data after tensor 'a' (which ends at byte 8), found \
         data starting at byte 3"
    );
}

/// The header length: at most the file's length less 8 (a header filling the file is accepted),
/// read from the first 8 bytes; fewer than 8 bytes is refused with the count.
#[test]
fn the_header_length_fits_the_file() {
    let p = Path::new(P);
    assert_eq!(
        refusal(&[0; 7]),
        "t.safetensors: safetensors header: expected an 8-byte header length, found a file of 7 \
         bytes"
    );
    // 8 bytes: a header of length 0, which is not JSON (refused by the parse, not by the length).
    let e = refusal(&[0; 8]);
    assert!(
        e.starts_with("t.safetensors: safetensors header: expected a JSON object, found "),
        "{e}"
    );
    // A header that is the whole rest of the file: no data, no tensors.
    assert!(check_bytes(p, &st("{}", &[])).unwrap().is_empty());
    let mut b = st("{}", &[]);
    b[0] = 3; // header length 3 in a file of 10
    assert_eq!(
        refusal(&b),
        "t.safetensors: safetensors header length: expected at most 2 bytes (the file's 10 bytes \
         less 8), found 3"
    );
    // A header followed by its data: the data starts right after the header, not before.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut data = vec![0u8; 8];
    data[4..].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert_eq!(
        refusal(&st(h, &data)),
        "t.safetensors: tensor 'a' element 1: expected a finite number, found inf"
    );
    assert_eq!(
        refusal(&st("[1]", &[])),
        "t.safetensors: safetensors header: expected a JSON object, found a list"
    );
    assert_eq!(
        refusal(&st("\"x\"", &[])),
        "t.safetensors: safetensors header: expected a JSON object, found a string"
    );
}

/// The crate's 100 MB header limit, at its edge: a 100,000,000-byte header (`{}` and spaces) is
/// accepted, 100,000,001 is refused with the limit, not the file, as the bound.
#[test]
fn the_header_limit_is_100_mb() {
    const MAX: usize = 100_000_000;
    let mut b = vec![b' '; 8 + MAX + 2];
    b[..8].copy_from_slice(&(MAX as u64).to_le_bytes());
    b[8] = b'{';
    b[9] = b'}';
    assert!(check_bytes(Path::new(P), &b).unwrap().is_empty());
    b[..8].copy_from_slice(&(MAX as u64 + 1).to_le_bytes());
    assert_eq!(
        refusal(&b),
        "t.safetensors: safetensors header length: expected at most 100000000 bytes (the file's \
         100000010 bytes less 8), found 100000001"
    );
}

/// `__metadata__` is an object of strings (or null); anything else is refused by kind, and it is
/// never taken for a tensor.
#[test]
fn metadata_is_an_object_of_strings() {
    let h =
        r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    let got = accepted(&st(h, &[0]));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "a");
    assert!(
        check_bytes(Path::new(P), &st(r#"{"__metadata__":null}"#, &[]))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        refusal(&st(r#"{"__metadata__":{"n":1}}"#, &[])),
        "t.safetensors: safetensors '__metadata__': expected an object of strings, found an object"
    );
    assert_eq!(
        refusal(&st(r#"{"__metadata__":5}"#, &[])),
        "t.safetensors: safetensors '__metadata__': expected an object of strings, found a number"
    );
    assert_eq!(
        refusal(&st(r#"{"__metadata__":true}"#, &[])),
        "t.safetensors: safetensors '__metadata__': expected an object of strings, found a boolean"
    );
}

/// The first non-finite element of each float dtype is named by its index; finite values and
/// integer dtypes pass.
#[test]
fn non_finite_elements_are_named_per_dtype() {
    let p = Path::new(P);
    let mut f32s = Vec::new();
    for x in [1.5f32, -2.0, f32::NAN, f32::INFINITY] {
        f32s.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!(
        check_finite_raw(p, "w", "F32", &f32s)
            .unwrap_err()
            .one_line(),
        "t.safetensors: tensor 'w' element 2: expected a finite number, found NaN"
    );
    assert!(check_finite_raw(p, "w", "F32", &f32s[..8]).is_ok());
    let mut f64s = Vec::new();
    for x in [0.25f64, f64::NEG_INFINITY] {
        f64s.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!(
        check_finite_raw(p, "w", "F64", &f64s)
            .unwrap_err()
            .one_line(),
        "t.safetensors: tensor 'w' element 1: expected a finite number, found -inf"
    );
    assert!(check_finite_raw(p, "w", "F64", &f64s[..8]).is_ok());
    // f16: 0x3c00 = 1.0, 0x7c00 = +inf; bf16: 0x3f80 = 1.0, 0x7fc0 = NaN.
    let f16s = [0x00, 0x3c, 0x00, 0x3c, 0x00, 0x7c];
    assert_eq!(
        check_finite_raw(p, "w", "F16", &f16s)
            .unwrap_err()
            .one_line(),
        "t.safetensors: tensor 'w' element 2: expected a finite number, found inf"
    );
    assert!(check_finite_raw(p, "w", "F16", &f16s[..4]).is_ok());
    let bf16s = [0x80, 0x3f, 0xc0, 0x7f];
    assert_eq!(
        check_finite_raw(p, "w", "BF16", &bf16s)
            .unwrap_err()
            .one_line(),
        "t.safetensors: tensor 'w' element 1: expected a finite number, found NaN"
    );
    assert!(check_finite_raw(p, "w", "BF16", &bf16s[..2]).is_ok());
    assert!(check_finite_raw(p, "w", "U8", &[0xff; 4]).is_ok());
}

/// `check_file` reads the file it is given: an empty file is refused as such, a good one gives its
/// entries.
#[test]
fn check_file_reads_the_file() {
    let dir =
        std::env::temp_dir().join(format!("prefixscope-loader-checks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(
        check_file(&empty).unwrap_err().one_line(),
        format!(
            "{}: safetensors: expected an 8-byte header length, found an empty file",
            empty.display()
        )
    );
    let good = dir.join("good.safetensors");
    std::fs::write(
        &good,
        st(
            r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
            &[1, 2],
        ),
    )
    .unwrap();
    let e = check_file(&good).unwrap();
    assert_eq!((e.len(), e[0].name.as_str(), e[0].end), (1, "a", 2));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- limits.rs ----

#[test]
fn sizes_are_bounded_at_their_limit() {
    let p = Path::new("c.json");
    assert_eq!(limits::size(p, "n", 1024, limits::LAYERS).unwrap(), 1024);
    assert_eq!(
        limits::size(p, "num_hidden_layers", 1025, limits::LAYERS)
            .unwrap_err()
            .one_line(),
        "c.json: num_hidden_layers: expected at most 1024 (layers; a sane limit), found 1025"
    );
    assert_eq!(limits::product(p, "w", &[3, 5, 7]).unwrap(), 105);
    assert_eq!(limits::product(p, "w", &[]).unwrap(), 1);
    assert_eq!(
        limits::product(p, "w", &[1 << 32, 1 << 32])
            .unwrap_err()
            .one_line(),
        "c.json: w: expected a shape whose element count fits in 64 bits, found [4294967296, \
         4294967296]"
    );
    assert_eq!(limits::tensor_bytes(p, "w", &[3, 5], 4).unwrap(), 60);
    assert_eq!(
        limits::tensor_bytes(p, "w", &[1 << 62], 8).unwrap_err().one_line(),
        "c.json: w: expected a byte size that fits in 64 bits, found [4611686018427387904] x 8 bytes"
    );
    assert!(limits::within_file(p, "w", 100, 100).is_ok());
    assert_eq!(
        limits::within_file(p, "w", 101, 100)
            .unwrap_err()
            .one_line(),
        "c.json: w: expected at most the file's 100 bytes, found 101 bytes declared"
    );
    assert_eq!(limits::add(p, "o", 7, 5).unwrap(), 12);
    assert_eq!(
        limits::add(p, "o", u64::MAX, 1).unwrap_err().one_line(),
        "c.json: o: expected an offset that fits in 64 bits, found 18446744073709551615 + 1"
    );
}

#[test]
fn floats_follow_their_rule() {
    let p = Path::new("c.json");
    let f = |v: f64, r: FloatRule| limits::float(p, "x", v, r);
    assert_eq!(f(1e-300, FloatRule::Positive).unwrap(), 1e-300);
    assert_eq!(
        f(0.0, FloatRule::Positive).unwrap_err().one_line(),
        "c.json: x: expected a finite number > 0, found 0"
    );
    assert_eq!(f(0.0, FloatRule::NonNegative).unwrap(), 0.0);
    assert_eq!(
        f(-0.5, FloatRule::NonNegative).unwrap_err().one_line(),
        "c.json: x: expected a finite number >= 0, found -0.5"
    );
    assert_eq!(f(-7.0, FloatRule::Finite).unwrap(), -7.0);
    assert_eq!(
        f(f64::NAN, FloatRule::Finite).unwrap_err().one_line(),
        "c.json: x: expected a finite number, found NaN"
    );
    assert_eq!(
        f(f64::INFINITY, FloatRule::Positive)
            .unwrap_err()
            .one_line(),
        "c.json: x: expected a finite number > 0, found inf"
    );
}

/// Every size limit at its edge through `config.json` (the head and MLP sizes too, written for
/// the `<<` -> `>>` mutants of their limits, which made them 0), and values of the wrong JSON type left
/// to the family's parser, which names them (this check must not refuse them as out of range).
#[test]
fn config_json_head_and_mlp_sizes_at_their_edges_and_wrong_types_left_to_the_parser() {
    let p = Path::new("c.json");
    let check = |v: serde_json::Value| limits::check_config_json(p, &v);
    assert!(check(serde_json::json!({"head_dim": 8192, "intermediate_size": 1048576})).is_ok());
    assert_eq!(
        check(serde_json::json!({"head_dim": 8193}))
            .unwrap_err()
            .one_line(),
        "c.json: head_dim: expected at most 8192 (head dimension; a sane limit), found 8193"
    );
    assert_eq!(
        check(serde_json::json!({"intermediate_size": 1048577}))
            .unwrap_err()
            .one_line(),
        "c.json: intermediate_size: expected at most 1048576 (intermediate (MLP) size; a sane \
         limit), found 1048577"
    );
    for v in [
        serde_json::json!("576"),
        serde_json::json!(-1),
        serde_json::json!(true),
        serde_json::json!([576]),
    ] {
        assert!(
            check(serde_json::json!({ "hidden_size": v.clone() })).is_ok(),
            "{v} is the parser's to name"
        );
    }
}

/// A `tokenizer.json` over 512 MiB is refused by its size before it is read (a sparse file: no
/// disk used), a real one at a few kB passes.
#[test]
fn tokenizer_json_is_bounded_by_its_size_before_it_is_read() {
    use prefixscope::load::tokenizer_check;
    let dir = std::env::temp_dir().join(format!("prefixscope-tok-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions/hostile-files/tiny-hf-folder-valid/tokenizer.json");
    assert!(tokenizer_check::check(&real).is_ok());
    let big = dir.join("tokenizer.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((512 << 20) + 1)
        .unwrap();
    let e = tokenizer_check::check(&big).unwrap_err().one_line();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        e,
        format!(
            "{}: size: expected a tokenizer.json of at most 536870912 bytes, found 536870913 bytes",
            big.display()
        )
    );
}

#[test]
fn config_json_sizes_and_floats() {
    let p = Path::new("c.json");
    let check = |v: serde_json::Value| limits::check_config_json(p, &v);
    assert!(check(serde_json::json!({"num_hidden_layers": 1024, "vocab_size": 8388608})).is_ok());
    assert_eq!(
        check(serde_json::json!({"vocab_size": 8388609}))
            .unwrap_err()
            .one_line(),
        "c.json: vocab_size: expected at most 8388608 (vocabulary size; a sane limit), found 8388609"
    );
    // A size written as a float: 0.0 and the limit itself pass here (the typed parse refuses the
    // float later), past the limit or negative is refused here.
    assert!(check(serde_json::json!({"n_head": 1024.0, "n_layer": 0.0})).is_ok());
    assert_eq!(
        check(serde_json::json!({"n_head": 1025.0}))
            .unwrap_err()
            .one_line(),
        "c.json: n_head: expected an integer, at most 1024 (attention heads), found 1025.0"
    );
    assert_eq!(
        check(serde_json::json!({"hidden_size": -1.0}))
            .unwrap_err()
            .one_line(),
        "c.json: hidden_size: expected an integer, at most 131072 (hidden size), found -1.0"
    );
    assert_eq!(
        check(serde_json::json!({"rope_theta": 0.0}))
            .unwrap_err()
            .one_line(),
        "c.json: rope_theta: expected a finite number > 0, found 0"
    );
    assert!(check(serde_json::json!({"rms_norm_eps": 0.0})).is_ok());
    assert_eq!(
        check(serde_json::json!({"text_config": {"rms_norm_eps": -1e-6}}))
            .unwrap_err()
            .one_line(),
        "c.json: rms_norm_eps: expected a finite number >= 0, found -0.000001"
    );
    assert!(check(serde_json::json!([1, 2])).is_ok());
}

#[test]
fn config_text_is_read_up_to_16_mib() {
    let dir = std::env::temp_dir().join(format!("prefixscope-loader-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("config.json");
    let max = 16usize << 20;
    std::fs::write(&f, vec![b' '; max]).unwrap();
    assert_eq!(limits::read_config_text(&f).unwrap().len(), max);
    std::fs::write(&f, vec![b' '; max + 1]).unwrap();
    assert_eq!(
        limits::read_config_text(&f).unwrap_err().one_line(),
        format!(
            "{}: size: expected a config.json of at most 16777216 bytes, found more",
            f.display()
        )
    );
    std::fs::write(&f, [0xff, 0xfe]).unwrap();
    let e = limits::read_config_text(&f).unwrap_err().one_line();
    assert!(
        e.starts_with(&format!(
            "{}: encoding: expected UTF-8 text, found ",
            f.display()
        )),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The folder hook checks each safetensors file and `tokenizer.json` it finds.
#[test]
fn a_folder_s_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("prefixscope-loader-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(limits::check_hf_folder(&dir).is_ok());
    let w = dir.join("model.safetensors");
    std::fs::write(&w, [0u8; 7]).unwrap();
    assert_eq!(
        limits::check_hf_folder(&dir).unwrap_err().one_line(),
        format!(
            "{}: safetensors header: expected an 8-byte header length, found a file of 7 bytes",
            w.display()
        )
    );
    std::fs::write(&w, st("{}", &[])).unwrap();
    assert!(limits::check_hf_folder(&dir).is_ok());
    let t = dir.join("tokenizer.json");
    std::fs::write(&t, b"not json").unwrap();
    let e = limits::check_hf_folder(&dir).unwrap_err().one_line();
    assert!(e.starts_with(&format!("{}: ", t.display())), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_toy_config_is_bounded_field_by_field() {
    use prefixscope::model::gpt::GptConfig;
    let p = Path::new("toy.safetensors");
    let ok = GptConfig {
        vocab_size: 1 << 23,
        n_positions: 1 << 24,
        n_layer: 1024,
        n_head: 1024,
        n_embd: 1 << 17,
        skip_attn_layernorm: false,
        layer_norm_eps: 0.0,
        tied_head: false,
    };
    assert!(limits::check_gpt(p, &ok).is_ok());
    let field = |f: &str, edit: &dyn Fn(&mut GptConfig)| {
        let mut c = ok.clone();
        edit(&mut c);
        let e = limits::check_gpt(p, &c).unwrap_err().one_line();
        let head = format!("toy.safetensors: metadata 'prefixscope.config' field '{f}': expected ");
        assert!(e.starts_with(&head), "{f}: {e}");
        e[head.len()..].to_string()
    };
    assert_eq!(
        field("n_layer", &|c| c.n_layer += 1),
        "at most 1024 (layers; a sane limit), found 1025"
    );
    assert_eq!(
        field("n_head", &|c| c.n_head += 1),
        "at most 1024 (attention heads; a sane limit), found 1025"
    );
    assert_eq!(
        field("n_embd", &|c| c.n_embd += 1),
        "at most 131072 (hidden size; a sane limit), found 131073"
    );
    assert_eq!(
        field("vocab_size", &|c| c.vocab_size += 1),
        "at most 8388608 (vocabulary size; a sane limit), found 8388609"
    );
    assert_eq!(
        field("n_positions", &|c| c.n_positions += 1),
        "at most 16777216 (context length; a sane limit), found 16777217"
    );
    assert_eq!(
        field("layer_norm_eps", &|c| c.layer_norm_eps = -1.0),
        "a finite number >= 0, found -1"
    );
}

#[test]
fn gguf_metadata_sizes_and_floats() {
    let p = Path::new("m.gguf");
    let meta = |pairs: Vec<(&'static str, Vec<MetaNum>)>| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        }
    };
    let ok = meta(vec![
        ("llama.block_count", vec![MetaNum::Int(1024)]),
        // A float where a size belongs is left to the typed reader.
        ("llama.attention.head_count", vec![MetaNum::Float(1e12)]),
        (
            "llama.attention.head_count_kv",
            vec![MetaNum::Int(0), MetaNum::Int(1024)],
        ),
        ("llama.rope.freq_base", vec![MetaNum::Int(10000)]),
        (
            "llama.attention.layer_norm_rms_epsilon",
            vec![MetaNum::Float(0.0)],
        ),
    ]);
    assert!(limits::check_gguf_meta(p, "llama", &ok).is_ok());
    let e = |pairs| {
        limits::check_gguf_meta(p, "llama", &meta(pairs))
            .unwrap_err()
            .one_line()
    };
    assert_eq!(
        e(vec![(
            "llama.attention.head_count_kv",
            vec![MetaNum::Int(2), MetaNum::Int(-1)]
        )]),
        "m.gguf: metadata 'llama.attention.head_count_kv': expected a size >= 0 (key/value heads), \
         found -1"
    );
    assert_eq!(
        e(vec![("llama.context_length", vec![MetaNum::Int(1 << 24 | 1)])]),
        "m.gguf: metadata 'llama.context_length': expected at most 16777216 (context length; a sane \
         limit), found 16777217"
    );
    assert_eq!(
        e(vec![("llama.block_count", vec![MetaNum::Int(1 << 70)])]),
        "m.gguf: metadata 'llama.block_count': expected at most 1024 (layers; a sane limit), found \
         18446744073709551615"
    );
    assert_eq!(
        e(vec![("llama.rope.freq_base", vec![MetaNum::Int(0)])]),
        "m.gguf: metadata 'llama.rope.freq_base': expected a finite number > 0, found 0"
    );
    assert_eq!(
        e(vec![(
            "llama.attention.layer_norm_epsilon",
            vec![MetaNum::Float(-1e-5)]
        )]),
        "m.gguf: metadata 'llama.attention.layer_norm_epsilon': expected a finite number >= 0, \
         found -0.00001"
    );
}

// ---- gguf_check.rs ----
//
// GGUF files built byte by byte from the layout in ggml's docs/gguf.md: "GGUF", version (u32),
// tensor count and metadata count (u64; u32 in version 1), the metadata (key: a length-prefixed
// string, value type u32, value), the tensor table (name, n_dims u32, dims, ggml type u32, offset
// u64), padding to the alignment, the data. Block sizes and the byte offsets of each block's scales
// are ggml's `ggml-common.h` (`block_q4_0` ... `block_q8_K`).

mod g {
    /// A length or count: u64, or u32 in version 1.
    pub fn l(v1: bool, n: u64) -> Vec<u8> {
        if v1 {
            (n as u32).to_le_bytes().to_vec()
        } else {
            n.to_le_bytes().to_vec()
        }
    }

    pub fn s(v1: bool, x: &[u8]) -> Vec<u8> {
        let mut v = l(v1, x.len() as u64);
        v.extend_from_slice(x);
        v
    }

    /// One metadata entry of value type `t` with its encoded value.
    pub fn kv(v1: bool, key: &str, t: u32, value: &[u8]) -> Vec<u8> {
        let mut v = s(v1, key.as_bytes());
        v.extend(t.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    pub fn kv_u32(key: &str, x: u32) -> Vec<u8> {
        kv(false, key, 4, &x.to_le_bytes())
    }

    pub fn kv_str(key: &str, x: &str) -> Vec<u8> {
        kv(false, key, 8, &s(false, x.as_bytes()))
    }

    /// An array of `n` elements of type `et` whose encoded elements are `elems`.
    pub fn kv_arr(key: &str, et: u32, n: u64, elems: &[u8]) -> Vec<u8> {
        let mut v = et.to_le_bytes().to_vec();
        v.extend(n.to_le_bytes());
        v.extend_from_slice(elems);
        kv(false, key, 9, &v)
    }

    pub fn tensor(v1: bool, name: &[u8], dims: &[u64], t: u32, offset: u64) -> Vec<u8> {
        let mut v = s(v1, name);
        v.extend((dims.len() as u32).to_le_bytes());
        for &d in dims {
            v.extend(l(v1, d));
        }
        v.extend(t.to_le_bytes());
        v.extend(offset.to_le_bytes());
        v
    }

    /// The fixed header with the given counts, then `body` as it is.
    pub fn raw(version: u32, n_tensors: u64, n_kv: u64, body: &[u8]) -> Vec<u8> {
        let v1 = version == 1;
        let mut v = b"GGUF".to_vec();
        v.extend(version.to_le_bytes());
        v.extend(l(v1, n_tensors));
        v.extend(l(v1, n_kv));
        v.extend_from_slice(body);
        v
    }

    /// A whole file: header, metadata, tensor table, zero padding to `align`, data.
    pub fn file(
        version: u32,
        kvs: &[Vec<u8>],
        tensors: &[Vec<u8>],
        align: usize,
        data: &[u8],
    ) -> Vec<u8> {
        let mut v = raw(
            version,
            tensors.len() as u64,
            kvs.len() as u64,
            &[kvs.concat(), tensors.concat()].concat(),
        );
        while !v.len().is_multiple_of(align) {
            v.push(0);
        }
        v.extend_from_slice(data);
        v
    }

    pub fn v3(kvs: &[Vec<u8>], tensors: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
        file(3, kvs, tensors, 32, data)
    }

    pub fn t(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        tensor(false, name.as_bytes(), dims, ty, offset)
    }
}

fn gguf_ok(b: &[u8]) -> prefixscope::load::gguf_check::Checked {
    prefixscope::load::gguf_check::check_bytes(Path::new("m.gguf"), b).unwrap()
}

fn gguf_err(b: &[u8]) -> String {
    prefixscope::load::gguf_check::check_bytes(Path::new("m.gguf"), b)
        .unwrap_err()
        .one_line()
}

/// (ggml type id, name, elements per block, bytes per block), from `ggml-common.h`.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (30, "BF16", 1, 2),
];

/// Each known type: a (block, 2) tensor takes 2 blocks' bytes, read from the table entry exactly;
/// a first dimension of 1.5 blocks is refused with the type's name and block size; type 4 (the
/// removed Q4_2) is unknown.
#[test]
fn gguf_each_type_has_its_block_size_and_bytes() {
    for &(ty, name, block, bb) in GGML_TYPES {
        let b = g::v3(
            &[],
            &[g::t("w", &[block, 2], ty, 0)],
            &vec![0; 2 * bb as usize],
        );
        let c = gguf_ok(&b);
        assert_eq!(c.tensors.len(), 1);
        let t = &c.tensors[0];
        assert_eq!(
            (
                t.name.as_str(),
                t.dims.clone(),
                t.ggml_type,
                t.offset,
                t.bytes
            ),
            ("w", vec![block, 2], ty, 0, 2 * bb),
            "{name}"
        );
        assert_eq!(
            prefixscope::load::gguf_check::ggml_type(ty),
            Some((name, block, bb))
        );
        if block > 1 {
            let b = g::v3(
                &[],
                &[g::t("w", &[block + block / 2, 2], ty, 0)],
                &vec![0; 4 * bb as usize],
            );
            assert_eq!(
                gguf_err(&b),
                format!(
                    "m.gguf: tensor 'w': expected rows of whole {name} blocks ({block} elements), \
                     found a first dimension of {}",
                    block + block / 2
                )
            );
        }
    }
    let b = g::v3(&[], &[g::t("w", &[32], 4, 0)], &[0; 32]);
    assert_eq!(
        gguf_err(&b),
        "m.gguf: tensor 'w': expected a known ggml type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, \
         Q8_0, Q8_1, Q2_K..Q8_K), found type 4"
    );
}

/// Every quantized block's scales are read where ggml keeps them: two blocks filled with 0xff (NaN
/// as f16 or f32 wherever read) except the scales, set to 1.0, are accepted; a NaN scale in the
/// second block is refused at element `block` (the block's first element).
#[test]
fn gguf_quantized_scales_are_read_at_their_offsets() {
    // (type, offsets of f16 scales in a block); Q8_K has one f32 scale at 0.
    let scales: &[(u32, &[usize])] = &[
        (2, &[0]),
        (3, &[0, 2]),
        (6, &[0]),
        (7, &[0, 2]),
        (8, &[0]),
        (9, &[0, 2]),
        (10, &[80, 82]),
        (11, &[108]),
        (12, &[0, 2]),
        (13, &[0, 2]),
        (14, &[208]),
    ];
    let one16 = half::f16::from_f32(1.0).to_le_bytes();
    let nan16 = half::f16::NAN.to_le_bytes();
    for &(ty, offs) in scales {
        let &(_, name, block, bb) = GGML_TYPES.iter().find(|x| x.0 == ty).unwrap();
        let bb = bb as usize;
        let mut data = vec![0xffu8; 2 * bb];
        for blk in 0..2 {
            for &o in offs {
                data[blk * bb + o..blk * bb + o + 2].copy_from_slice(&one16);
            }
        }
        let b = g::v3(&[], &[g::t("w", &[block, 2], ty, 0)], &data);
        assert_eq!(gguf_ok(&b).tensors[0].bytes, 2 * bb as u64, "{name}");
        for &o in offs {
            let mut d = data.clone();
            d[bb + o..bb + o + 2].copy_from_slice(&nan16);
            let b = g::v3(&[], &[g::t("w", &[block, 2], ty, 0)], &d);
            assert_eq!(
                gguf_err(&b),
                format!("m.gguf: tensor 'w' element {block}: expected a finite number, found NaN"),
                "{name} scale at {o}"
            );
        }
    }
    // Q8_K: an f32 scale at 0.
    let mut data = vec![0xffu8; 2 * 292];
    for blk in 0..2 {
        data[blk * 292..blk * 292 + 4].copy_from_slice(&1f32.to_le_bytes());
    }
    let b = g::v3(&[], &[g::t("w", &[256, 2], 15, 0)], &data);
    assert_eq!(gguf_ok(&b).tensors[0].bytes, 584);
    data[292..296].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let b = g::v3(&[], &[g::t("w", &[256, 2], 15, 0)], &data);
    assert_eq!(
        gguf_err(&b),
        "m.gguf: tensor 'w' element 256: expected a finite number, found inf"
    );
    // F32, F16 and BF16 elements, in a tensor that is not the first in the data.
    let mut data = vec![0u8; 64];
    data[32 + 8..32 + 12].copy_from_slice(&f32::NAN.to_le_bytes());
    let b = g::v3(&[], &[g::t("a", &[8], 0, 0), g::t("b", &[8], 0, 32)], &data);
    assert_eq!(
        gguf_err(&b),
        "m.gguf: tensor 'b' element 2: expected a finite number, found NaN"
    );
    let mut data = vec![0u8; 4];
    data[2..4].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    assert_eq!(
        gguf_err(&g::v3(&[], &[g::t("h", &[2], 1, 0)], &data)),
        "m.gguf: tensor 'h' element 1: expected a finite number, found inf"
    );
    data[2..4].copy_from_slice(&half::bf16::NAN.to_le_bytes());
    assert_eq!(
        gguf_err(&g::v3(&[], &[g::t("h", &[2], 30, 0)], &data)),
        "m.gguf: tensor 'h' element 1: expected a finite number, found NaN"
    );
}

/// The fixed header: magic, version 1 to 3 (version 1 with 32-bit counts and lengths), at least
/// 24 bytes on disk.
#[test]
fn gguf_header_magic_version_and_length() {
    assert_eq!(
        gguf_err(&[b"GGUG".as_slice(), &[0; 20]].concat()),
        "m.gguf: GGUF header (magic): expected 'GGUF' (a little-endian GGUF file), found \"GGUG\""
    );
    for v in [0u32, 4] {
        assert_eq!(
            gguf_err(&g::raw(v, 0, 0, &[])),
            format!("m.gguf: GGUF header (version): expected 1, 2 or 3, found {v}")
        );
    }
    for version in [1u32, 2, 3] {
        let v1 = version == 1;
        let b = g::file(
            version,
            &[g::kv(v1, "general.alignment", 4, &64u32.to_le_bytes())],
            &[g::tensor(v1, b"w", &[2, 3], 0, 0)],
            64,
            &[0; 24],
        );
        let c = gguf_ok(&b);
        assert_eq!(
            (
                c.version,
                c.alignment,
                c.tensors[0].dims.clone(),
                c.tensors[0].bytes
            ),
            (version, 64, vec![2, 3], 24),
            "version {version}"
        );
        // The table ends at byte 74 (version 1) or 98: the data at 128.
        assert_eq!(c.data_offset, 128);
    }
    let dir = std::env::temp_dir().join(format!("prefixscope-loader-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("short.gguf");
    std::fs::write(&f, &g::raw(3, 0, 0, &[])[..23]).unwrap();
    assert_eq!(
        prefixscope::load::gguf_check::check(&f)
            .unwrap_err()
            .one_line(),
        format!(
            "{}: GGUF header: expected at least 24 bytes (magic, version, counts), found a file of \
             23 bytes",
            f.display()
        )
    );
    std::fs::write(&f, g::raw(3, 0, 0, &[])).unwrap();
    let c = prefixscope::load::gguf_check::check(&f).unwrap();
    assert_eq!((c.version, c.alignment, c.tensors.len()), (3, 32, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The counts are checked against the bytes left before anything is read: each metadata entry
/// takes at least 8 + 4 + 1 bytes (key length, type, a u8), each tensor 8 + 4 + 4 + 8 (name length,
/// n_dims, type, offset). Two entries with an empty key and a u8 value are exactly 26 bytes: accepted;
/// 25 bytes refused by the count check. One tensor in 23 bytes is refused; an empty tensor's 32-byte
/// entry (one dimension of 0) is accepted.
#[test]
fn gguf_counts_against_the_bytes_left() {
    let e = g::kv(false, "", 0, &[7]);
    assert_eq!(e.len(), 13);
    let two = [e.clone(), e.clone()].concat();
    // 26 bytes pass the count check: the two entries have one (empty) key, refused as a second
    // entry when read.
    assert_eq!(
        gguf_err(&g::raw(3, 0, 2, &two)),
        "m.gguf: metadata '': expected each key once, found a second entry"
    );
    // Distinct keys: a one-byte key in the second entry, 27 bytes.
    let a = g::kv(false, "", 0, &[7]);
    let b = g::kv(false, "k", 0, &[7]);
    let body = [a.clone(), b.clone()].concat();
    assert_eq!(body.len(), 27);
    let c = gguf_ok(&g::raw(3, 0, 2, &body));
    assert_eq!(c.tensors.len(), 0);
    // Two entries in 25 bytes: the count check (26 needed), not a read past the end.
    assert_eq!(
        gguf_err(&g::raw(3, 0, 2, &body[..25])),
        "m.gguf: GGUF header: expected counts the file can hold (25 bytes left), found 0 tensors \
         and 2 metadata entries"
    );
    // 26 bytes pass the count check; the second value is then one byte short.
    assert_eq!(
        gguf_err(&g::raw(3, 0, 2, &body[..26])),
        "m.gguf: GGUF header: metadata 'k': expected 1 bytes, found 0 bytes left in the file at \
         byte 50"
    );
    // Version 1 (u32 lengths): an empty tensor's entry is 4 + 4 + 4 + 4 + 8 = 24 bytes, the
    // count check's 20 a tensor fits.
    let t1 = g::tensor(true, b"", &[0], 0, 0);
    assert_eq!(t1.len(), 24);
    let c = gguf_ok(&g::raw(1, 1, 0, &t1));
    assert_eq!((c.version, c.tensors.len(), c.tensors[0].bytes), (1, 1, 0));
    let t = g::t("", &[0], 0, 0);
    assert_eq!(t.len(), 32);
    let c = gguf_ok(&g::raw(3, 1, 0, &t));
    assert_eq!((c.tensors.len(), c.tensors[0].bytes), (1, 0));
    assert_eq!(
        gguf_err(&g::raw(3, 1, 0, &t[..23])),
        "m.gguf: GGUF header: expected counts the file can hold (23 bytes left), found 1 tensors \
         and 0 metadata entries"
    );
    // A value cut short: 4 bytes wanted, 2 left, at byte 24 + 9 + 4.
    let k = g::kv(false, "k", 4, &[1, 2]);
    assert_eq!(
        gguf_err(&g::raw(3, 0, 1, &k)),
        "m.gguf: GGUF header: metadata 'k': expected 4 bytes, found 2 bytes left in the file at \
         byte 37"
    );
}

/// `general.alignment`: any of u8, i8, u16, i16, u32, i32 holding a power of two; negative, wider,
/// float, 0 and 48 refused. It places the data section and every tensor offset.
#[test]
fn gguf_alignment() {
    let tensors = [g::t("a", &[4], 0, 0), g::t("b", &[4], 0, 64)];
    let data = [vec![0u8; 64], 1f32.to_le_bytes().repeat(4)].concat();
    for (ty, bytes) in [
        (0u32, vec![64u8]),
        (1, vec![64]),
        (2, 64u16.to_le_bytes().to_vec()),
        (3, 64i16.to_le_bytes().to_vec()),
        (4, 64u32.to_le_bytes().to_vec()),
        (5, 64i32.to_le_bytes().to_vec()),
    ] {
        let b = g::file(
            3,
            &[g::kv(false, "general.alignment", ty, &bytes)],
            &tensors,
            64,
            &data,
        );
        let c = gguf_ok(&b);
        assert_eq!((c.alignment, c.data_offset), (64, 128), "type {ty}");
        assert_eq!(c.tensors[1].offset, 64);
    }
    let refused = |ty: u32, bytes: &[u8]| {
        gguf_err(&g::file(
            3,
            &[g::kv(false, "general.alignment", ty, bytes)],
            &[],
            64,
            &[],
        ))
    };
    let head = "m.gguf: metadata 'general.alignment': expected an unsigned 32-bit integer, found ";
    assert_eq!(refused(1, &[0xc0]), format!("{head}Num(Int(-64), 1)"));
    assert_eq!(
        refused(3, &(-64i16).to_le_bytes()),
        format!("{head}Num(Int(-64), 3)")
    );
    assert_eq!(
        refused(5, &(-64i32).to_le_bytes()),
        format!("{head}Num(Int(-64), 5)")
    );
    assert_eq!(
        refused(10, &64u64.to_le_bytes()),
        format!("{head}Num(Int(64), 10)")
    );
    assert_eq!(
        refused(11, &64i64.to_le_bytes()),
        format!("{head}Num(Int(64), 11)")
    );
    assert_eq!(
        refused(6, &64f32.to_le_bytes()),
        format!("{head}Num(Float(64.0), 6)")
    );
    assert_eq!(refused(7, &[1]), format!("{head}Bool"));
    for a in [0u32, 48] {
        assert_eq!(
            refused(4, &a.to_le_bytes()),
            format!(
                "m.gguf: metadata 'general.alignment': expected a power of two (32 by default), \
                 found {a}"
            )
        );
    }
    // Default 32: a tensor at offset 4 is refused, at 32 accepted.
    let data = vec![0u8; 48];
    let ok = g::v3(&[], &[g::t("a", &[4], 0, 0), g::t("b", &[4], 0, 32)], &data);
    assert_eq!(gguf_ok(&ok).tensors.len(), 2);
    let bad = g::v3(&[], &[g::t("a", &[1], 0, 0), g::t("b", &[4], 0, 4)], &data);
    assert_eq!(
        gguf_err(&bad),
        "m.gguf: tensor 'b': expected an offset that is a multiple of the alignment 32, found 4"
    );
}

/// The architecture's sizes and floats, read from each scalar type they come in (u64, i64, f32,
/// f64) and from per-layer arrays, are bounded by `limits` (the exact lines are those of
/// `limits::check_gguf_meta`, tested above).
#[test]
fn gguf_architecture_metadata_is_checked() {
    let arch = g::kv_str("general.architecture", "llama");
    let c = gguf_ok(&g::v3(
        &[arch.clone(), g::kv_u32("llama.block_count", 1024)],
        &[],
        &[],
    ));
    assert_eq!(c.architecture.as_deref(), Some("llama"));
    let err = |kvs: Vec<Vec<u8>>| gguf_err(&g::v3(&[vec![arch.clone()], kvs].concat(), &[], &[]));
    assert_eq!(
        err(vec![g::kv(false, "llama.block_count", 10, &1025u64.to_le_bytes())]),
        "m.gguf: metadata 'llama.block_count': expected at most 1024 (layers; a sane limit), found \
         1025"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.block_count",
            11,
            &(-3i64).to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.block_count': expected a size >= 0 (layers), found -3"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.rope.freq_base",
            6,
            &0f32.to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.rope.freq_base': expected a finite number > 0, found 0"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.attention.layer_norm_rms_epsilon",
            12,
            &(-0.5f64).to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.attention.layer_norm_rms_epsilon': expected a finite number >= 0, \
         found -0.5"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.attention.head_count",
            3,
            &(-2i16).to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.attention.head_count': expected a size >= 0 (attention heads), \
         found -2"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.attention.head_count",
            2,
            &2000u16.to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.attention.head_count': expected at most 1024 (attention heads; a \
         sane limit), found 2000"
    );
    assert_eq!(
        err(vec![g::kv(false, "llama.attention.head_count", 1, &[0x80])]),
        "m.gguf: metadata 'llama.attention.head_count': expected a size >= 0 (attention heads), \
         found -128"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.attention.head_count",
            5,
            &(-9i32).to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.attention.head_count': expected a size >= 0 (attention heads), \
         found -9"
    );
    assert_eq!(
        err(vec![g::kv(
            false,
            "llama.attention.head_count",
            4,
            &4000u32.to_le_bytes()
        )]),
        "m.gguf: metadata 'llama.attention.head_count': expected at most 1024 (attention heads; a \
         sane limit), found 4000"
    );
    // A per-layer array: the second layer's value is refused.
    let mut elems = 2u32.to_le_bytes().to_vec();
    elems.extend(1025u32.to_le_bytes());
    assert_eq!(
        err(vec![g::kv_arr("llama.attention.head_count_kv", 4, 2, &elems)]),
        "m.gguf: metadata 'llama.attention.head_count_kv': expected at most 1024 (key/value heads; \
         a sane limit), found 1025"
    );
    // Only the first 4096 elements of an array are kept (long arrays are token scores): a bad
    // 4097th is not seen, a bad 4096th is.
    let mut elems = 2u32.to_le_bytes().repeat(4097);
    elems[4 * 4096..].copy_from_slice(&5000u32.to_le_bytes());
    assert!(gguf_ok(&g::v3(
        &[
            arch.clone(),
            g::kv_arr("llama.attention.head_count_kv", 4, 4097, &elems)
        ],
        &[],
        &[]
    ))
    .architecture
    .is_some());
    elems[4 * 4095..4 * 4096].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(
        err(vec![g::kv_arr("llama.attention.head_count_kv", 4, 4097, &elems)]),
        "m.gguf: metadata 'llama.attention.head_count_kv': expected at most 1024 (key/value heads; \
         a sane limit), found 5000"
    );
    // Without an architecture nothing is bounded.
    let c = gguf_ok(&g::v3(&[g::kv_u32("llama.block_count", 5000)], &[], &[]));
    assert_eq!(c.architecture, None);
}

/// Values the check skips are still read to their end: a bool, a string, arrays of strings and of
/// arrays (nested two deep), each followed by `general.alignment` = 64, which must be found. Three
/// deep, an unknown value type, and an array count the file cannot hold are refused.
#[test]
fn gguf_values_are_read_to_their_end() {
    let align = g::kv_u32("general.alignment", 64);
    let strings = [g::s(false, b"ab"), g::s(false, b""), g::s(false, b"xyz")].concat();
    let inner = |n: u32| {
        let mut v = 0u32.to_le_bytes().to_vec(); // u8 elements
        v.extend((n as u64).to_le_bytes());
        v.extend(vec![7u8; n as usize]);
        v
    };
    let nested = [inner(2), inner(0), inner(3)].concat();
    for skipped in [
        g::kv(false, "b", 7, &[1]),
        g::kv_str("s", "hello"),
        g::kv_arr("strs", 8, 3, &strings),
        g::kv_arr("arrs", 9, 3, &nested),
        g::kv(false, "f", 12, &1.5f64.to_le_bytes()),
    ] {
        let c = gguf_ok(&g::v3(&[skipped.clone(), align.clone()], &[], &[]));
        assert_eq!(c.alignment, 64);
    }
    // Version 1: string lengths are u32.
    let b = g::file(
        1,
        &[
            g::kv(true, "s", 8, &g::s(true, b"hello")),
            g::kv(true, "general.alignment", 4, &64u32.to_le_bytes()),
        ],
        &[],
        64,
        &[],
    );
    assert_eq!(gguf_ok(&b).alignment, 64);
    // Three deep.
    let mut level2 = 9u32.to_le_bytes().to_vec(); // an array of arrays
    level2.extend(1u64.to_le_bytes());
    level2.extend(inner(1));
    let deep = g::kv_arr("deep", 9, 1, &level2);
    assert_eq!(
        gguf_err(&g::v3(&[deep], &[], &[])),
        "m.gguf: metadata 'deep': expected arrays nested at most 2 deep, found deeper nesting"
    );
    assert_eq!(
        gguf_err(&g::v3(&[g::kv(false, "k", 13, &[0; 8])], &[], &[])),
        "m.gguf: metadata 'k': expected a GGUF value type 0..=12, found type 13"
    );
    assert_eq!(
        gguf_err(&g::v3(&[g::kv_arr("k", 13, 1, &[0; 8])], &[], &[])),
        "m.gguf: metadata 'k': expected a GGUF value type 0..=12, found type 13"
    );
    // An array of 3 u32 in exactly 12 bytes at the file's end is read; 4 in the same bytes is
    // refused before any is read.
    let arr = g::kv_arr("k", 4, 3, &[0; 12]);
    assert_eq!(gguf_ok(&g::raw(3, 0, 1, &arr)).tensors.len(), 0);
    let arr = g::kv_arr("k", 4, 4, &[0; 12]);
    assert_eq!(
        gguf_err(&g::raw(3, 0, 1, &arr)),
        "m.gguf: metadata 'k': expected an array the file can hold (12 bytes left), found 4 \
         elements of type 4"
    );
    // Strings: each takes at least its 8-byte length.
    let arr = g::kv_arr("k", 8, 2, &[0; 15]);
    assert_eq!(
        gguf_err(&g::raw(3, 0, 1, &arr)),
        "m.gguf: metadata 'k': expected an array the file can hold (15 bytes left), found 2 \
         elements of type 8"
    );
}

/// The tensor table: names of at most 63 bytes, each once (trailing zero bytes dropped as candle
/// does), 1 to 4 dimensions, data inside the data section, spans that touch but never overlap.
#[test]
fn gguf_tensor_table() {
    let n63 = "n".repeat(63);
    let c = gguf_ok(&g::v3(&[], &[g::t(&n63, &[1], 0, 0)], &[0; 4]));
    assert_eq!(c.tensors[0].name, n63);
    let n64 = "n".repeat(64);
    assert_eq!(
        gguf_err(&g::v3(&[], &[g::t(&n64, &[1], 0, 0)], &[0; 4])),
        format!("m.gguf: tensor '{n64}': expected a name of at most 63 bytes, found 64 bytes")
    );
    let twice = [
        g::t("w", &[1], 0, 0),
        g::tensor(false, b"w\0\0", &[1], 0, 32),
    ];
    assert_eq!(
        gguf_err(&g::v3(&[], &twice, &[0; 36])),
        "m.gguf: tensor 'w': expected each name once, found a second entry"
    );
    for nd in [0usize, 5] {
        let dims = vec![1u64; nd];
        assert_eq!(
            gguf_err(&g::v3(&[], &[g::t("w", &dims, 0, 0)], &[0; 4])),
            format!("m.gguf: tensor 'w': expected 1 to 4 dimensions, found {nd}")
        );
    }
    let c = gguf_ok(&g::v3(&[], &[g::t("w", &[1, 2, 1, 2], 0, 0)], &[0; 16]));
    assert_eq!(c.tensors[0].bytes, 16);
    // The data section starts at the table's end rounded up to 32: here 24 + 33 = 57 -> 64.
    let c = gguf_ok(&g::v3(&[], &[g::t("w", &[3], 0, 0)], &[0; 12]));
    assert_eq!(c.data_offset, 64);
    assert_eq!(
        gguf_err(&g::v3(&[], &[g::t("w", &[3], 0, 0)], &[0; 11])),
        "m.gguf: tensor 'w': expected its full data inside the data section (bytes 0..12 of its 11, \
         from file byte 64), found a file of 75 bytes (truncated, or a bad offset)"
    );
    // Larger than the whole file: refused before the offsets are looked at.
    assert_eq!(
        gguf_err(&g::v3(&[], &[g::t("w", &[100], 0, 0)], &[0; 12])),
        "m.gguf: tensor 'w': expected at most the file's 76 bytes, found 400 bytes declared"
    );
    // Touching spans (32..96, 96..128) and an empty tensor inside another (at 64): accepted, the
    // last ending exactly at the data's end. 64..96 overlapping 32..96: refused.
    let ok = [
        g::t("a", &[16], 0, 32),
        g::t("b", &[8], 0, 96),
        g::t("e", &[0], 0, 64),
    ];
    let c = gguf_ok(&g::v3(&[], &ok, &[0; 128]));
    assert_eq!((c.tensors.len(), c.data_offset), (3, 128));
    let overlap = [g::t("a", &[16], 0, 32), g::t("b", &[8], 0, 64)];
    assert_eq!(
        gguf_err(&g::v3(&[], &overlap, &[0; 96])),
        "m.gguf: tensor 'b': expected data after tensor 'a' (which ends at data byte 96), found data \
         starting at data byte 64"
    );
}

// ---- the configs' own checks (model/llama.rs, model/gpt.rs) ----

fn llama_cfg() -> prefixscope::model::llama::LlamaConfig {
    // 6 heads of 4 over a width of 24, 3 key/value heads (2 queries each).
    let v = serde_json::json!({
        "model_type": "llama", "hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 3, "vocab_size": 50,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true
    });
    prefixscope::model::llama::LlamaConfig::from_hf_json(&v, Path::new("config.json")).unwrap()
}

/// Each size that must be non-zero, the key/value heads dividing the heads, the rotated dimensions
/// (even, non-zero, at most the head), the per-dimension RoPE factors (one per rotated pair), the
/// window and its layer pattern: each refused alone with its line, its edge accepted.
#[test]
fn a_llama_config_is_refused_field_by_field() {
    use prefixscope::model::llama::{LlamaConfig, SlidingLayers};
    use prefixscope::model::rope::RopeScaling;
    let f = Path::new("m.gguf");
    let base = llama_cfg();
    assert!(base.validate(f).is_ok());
    let refused = |edit: &dyn Fn(&mut LlamaConfig)| {
        let mut c = base.clone();
        edit(&mut c);
        c.validate(f).unwrap_err().one_line()
    };
    let accepted = |edit: &dyn Fn(&mut LlamaConfig)| {
        let mut c = base.clone();
        edit(&mut c);
        c.validate(f).map_err(|e| e.one_line())
    };
    let sizes = |h: usize, d: usize, l: usize, v: usize| {
        format!(
            "m.gguf: sizes: expected non-zero heads, hidden size, layers, vocabulary, found heads {h}, \
             hidden size {d}, layers {l}, vocabulary {v}"
        )
    };
    assert_eq!(
        refused(&|c| {
            c.num_attention_heads = 0;
            c.num_key_value_heads = Some(1);
            c.head_dim = Some(4);
        }),
        sizes(0, 24, 2, 50)
    );
    assert_eq!(refused(&|c| c.hidden_size = 0), sizes(6, 0, 2, 50));
    assert_eq!(refused(&|c| c.num_hidden_layers = 0), sizes(6, 24, 0, 50));
    assert_eq!(refused(&|c| c.vocab_size = 0), sizes(6, 24, 2, 0));
    let kv = |n: usize| {
        format!(
            "m.gguf: num_key_value_heads: expected a divisor of num_attention_heads = 6, found {n}"
        )
    };
    assert_eq!(refused(&|c| c.num_key_value_heads = Some(0)), kv(0));
    assert_eq!(refused(&|c| c.num_key_value_heads = Some(4)), kv(4));
    assert_eq!(accepted(&|c| c.num_key_value_heads = Some(6)), Ok(()));
    assert_eq!(accepted(&|c| c.num_key_value_heads = Some(1)), Ok(()));
    let rot = |rd: usize, hd: usize, prf: &str| {
        format!(
            "m.gguf: head_dim: expected an even number of rotated dimensions (RoPE rotates pairs), at \
             most the head dimension, found {rd} rotated of head dimension {hd} (partial_rotary_factor \
             {prf})"
        )
    };
    // head_dim 4: factor 0.75 rotates 3 (odd), 0.1 rotates 0, 1.5 rotates 6 > 4; 0.5 rotates 2.
    assert_eq!(
        refused(&|c| c.partial_rotary_factor = 0.75),
        rot(3, 4, "0.75")
    );
    assert_eq!(
        refused(&|c| c.partial_rotary_factor = 0.1),
        rot(0, 4, "0.1")
    );
    assert_eq!(
        refused(&|c| c.partial_rotary_factor = 1.5),
        rot(6, 4, "1.5")
    );
    assert_eq!(accepted(&|c| c.partial_rotary_factor = 0.5), Ok(()));
    // head_dim 8 (set apart from the width): all 8 rotated is the edge.
    assert_eq!(accepted(&|c| c.head_dim = Some(8)), Ok(()));
    // One factor per rotated pair: 2 for a head of 4.
    assert_eq!(
        accepted(&|c| c.rope_scaling = Some(RopeScaling::FreqFactors(vec![1.0, 2.0]))),
        Ok(())
    );
    assert_eq!(
        refused(&|c| c.rope_scaling = Some(RopeScaling::FreqFactors(vec![1.0; 3]))),
        "m.gguf: tensor 'rope_freqs.weight': expected 2 factors (rotated dimensions / 2), found 3"
    );
    assert_eq!(
        refused(&|c| c.sliding_window = Some(0)),
        "m.gguf: sliding_window: expected at least 1, found 0"
    );
    assert_eq!(accepted(&|c| c.sliding_window = Some(1)), Ok(()));
    assert_eq!(
        refused(&|c| c.sliding_layers = SlidingLayers::AllButEvery(0)),
        "m.gguf: sliding_window_pattern: expected at least 1, found 0"
    );
    assert_eq!(
        accepted(&|c| c.sliding_layers = SlidingLayers::AllButEvery(1)),
        Ok(())
    );
    assert_eq!(
        refused(&|c| c.sliding_layers = SlidingLayers::Listed(vec![true; 3])),
        "m.gguf: layer_types: expected 2 entries, found 3"
    );
    assert_eq!(
        accepted(&|c| c.sliding_layers = SlidingLayers::Listed(vec![true, false])),
        Ok(())
    );
    // A layer count the file cannot hold: at most one layer per tensor (at least 1).
    assert!(base.check_layers_against_file(f, 2).is_ok());
    assert_eq!(
        base.check_layers_against_file(f, 1).unwrap_err().one_line(),
        "m.gguf: num_hidden_layers / block_count: expected at most the 1 tensors the file holds \
         (each layer has several), found 2"
    );
    let mut one = base.clone();
    one.num_hidden_layers = 1;
    assert!(one.check_layers_against_file(f, 0).is_ok());
    assert!(one.check_layers_against_file(f, 5).is_ok());
}

/// The tensors a LLaMA-family config expects, written out from transformers' state-dict names
/// (`LlamaForCausalLM`, Qwen2's q/k/v-only biases, an untied head).
#[test]
fn a_llama_config_expects_its_tensors() {
    let mut c = llama_cfg();
    c.num_hidden_layers = 1;
    let layer = |extra: &[(&str, Vec<usize>)]| {
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![50, 24]),
            ("model.layers.0.input_layernorm.weight".into(), vec![24]),
            (
                "model.layers.0.self_attn.q_proj.weight".into(),
                vec![24, 24],
            ),
            (
                "model.layers.0.self_attn.k_proj.weight".into(),
                vec![12, 24],
            ),
            (
                "model.layers.0.self_attn.v_proj.weight".into(),
                vec![12, 24],
            ),
            (
                "model.layers.0.self_attn.o_proj.weight".into(),
                vec![24, 24],
            ),
            (
                "model.layers.0.post_attention_layernorm.weight".into(),
                vec![24],
            ),
            ("model.layers.0.mlp.gate_proj.weight".into(), vec![32, 24]),
            ("model.layers.0.mlp.up_proj.weight".into(), vec![32, 24]),
            ("model.layers.0.mlp.down_proj.weight".into(), vec![24, 32]),
            ("model.norm.weight".into(), vec![24]),
        ];
        v.extend(extra.iter().map(|(n, s)| (n.to_string(), s.clone())));
        v.sort();
        v
    };
    let sorted = |c: &prefixscope::model::llama::LlamaConfig| {
        let mut v = c.expected_tensors();
        v.sort();
        v
    };
    assert_eq!(sorted(&c), layer(&[]));
    c.qkv_bias = true;
    assert_eq!(
        sorted(&c),
        layer(&[
            ("model.layers.0.self_attn.q_proj.bias", vec![24]),
            ("model.layers.0.self_attn.k_proj.bias", vec![12]),
            ("model.layers.0.self_attn.v_proj.bias", vec![12]),
        ])
    );
    c.qkv_bias = false;
    c.tie_word_embeddings = false;
    assert_eq!(sorted(&c), layer(&[("lm_head.weight", vec![50, 24])]));
}

#[test]
fn a_gpt_config_is_refused_field_by_field() {
    use prefixscope::model::gpt::GptConfig;
    let f = Path::new("toy.safetensors");
    let ok = GptConfig {
        vocab_size: 10,
        n_positions: 20,
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        skip_attn_layernorm: false,
        layer_norm_eps: 1e-5,
        tied_head: false,
    };
    assert!(ok.validate(f).is_ok());
    assert_eq!(ok.head_dim(), 4);
    let edits: [fn(&mut GptConfig); 5] = [
        |c: &mut GptConfig| c.n_layer = 0,
        |c: &mut GptConfig| c.n_head = 0,
        |c: &mut GptConfig| c.n_embd = 0,
        |c: &mut GptConfig| c.vocab_size = 0,
        |c: &mut GptConfig| c.n_positions = 0,
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut c = ok.clone();
        edit(&mut c);
        let e = c.validate(f).unwrap_err().one_line();
        assert!(
            e.starts_with(
                "toy.safetensors: GPT config: expected non-zero layers, heads, width, vocabulary \
                 and positions, found GptConfig {"
            ),
            "case {i}: {e}"
        );
    }
    let mut c = ok.clone();
    c.n_embd = 9;
    assert_eq!(
        c.validate(f).unwrap_err().one_line(),
        "toy.safetensors: n_embd: expected a multiple of n_head = 2, found 9"
    );
    // minGPT's state dict for one layer (ln_1 present unless skipped; lm_head unless tied).
    let names = |c: &GptConfig| {
        let mut v: Vec<String> = c.expected_tensors().into_iter().map(|(n, _)| n).collect();
        v.sort();
        v
    };
    let mut want: Vec<String> = [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.ln_2.weight",
        "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_fc.bias",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.0.mlp.c_proj.bias",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(names(&ok), want);
    let mut c = ok.clone();
    c.skip_attn_layernorm = true;
    c.tied_head = true;
    want.retain(|n| !n.contains("ln_1") && n != "lm_head.weight");
    assert_eq!(names(&c), want);
}

// ---- the families' key readers (model/family/mod.rs) ----

/// `config.json` keys: each typed reader refuses a value of the wrong JSON type with the key and
/// the value, reads `null` as absent, and `finish` refuses a key nobody read unless it is neutral.
#[test]
fn hf_keys_read_each_type_and_refuse_the_rest() {
    use prefixscope::model::family::HfKeys;
    let p = Path::new("config.json");
    let json = serde_json::json!({
        "n": 3, "neg": -1, "x": 0.5, "b": true, "s": "silu", "nul": null, "arr": [1],
        "torch_dtype": "bfloat16"
    });
    assert_eq!(
        HfKeys::new(p, &serde_json::json!([1]))
            .err()
            .unwrap()
            .one_line(),
        "config.json: config.json: expected a JSON object, found another value"
    );
    let mut k = HfKeys::new(p, &json).unwrap();
    assert_eq!(k.path(), p);
    assert_eq!(k.usize("n").unwrap(), Some(3));
    assert_eq!(k.req_usize("n").unwrap(), 3);
    assert_eq!(k.usize("nul").unwrap(), None);
    assert_eq!(k.usize("absent").unwrap(), None);
    assert_eq!(
        k.usize("neg").unwrap_err().one_line(),
        "config.json: config key 'neg': expected a non-negative integer, found -1"
    );
    assert_eq!(
        k.req_usize("absent").unwrap_err().one_line(),
        "config.json: config key 'absent': expected present, found missing"
    );
    assert_eq!(k.f64("x").unwrap(), Some(0.5));
    assert_eq!(k.f64("n").unwrap(), Some(3.0));
    assert_eq!(k.f64("nul").unwrap(), None);
    assert_eq!(
        k.f64("s").unwrap_err().one_line(),
        "config.json: config key 's': expected a number, found \"silu\""
    );
    assert_eq!(k.bool("b").unwrap(), Some(true));
    assert_eq!(k.bool("nul").unwrap(), None);
    assert_eq!(
        k.bool("n").unwrap_err().one_line(),
        "config.json: config key 'n': expected true or false, found 3"
    );
    assert_eq!(k.string("s").unwrap(), Some("silu".to_string()));
    assert_eq!(k.string("nul").unwrap(), None);
    assert_eq!(
        k.string("arr").unwrap_err().one_line(),
        "config.json: config key 'arr': expected a string, found [1]"
    );
    assert!(k.has("nul") && !k.has("absent"));
    assert!(k
        .only("s", &[serde_json::json!("silu")], "silu only")
        .is_ok());
    assert!(k.only("nul", &[], "nothing").is_ok());
    assert_eq!(
        k.only("x", &[serde_json::json!(1.0)], "1.0 only")
            .unwrap_err()
            .one_line(),
        "config.json: unsupported config key 'x': 0.5 (supported: 1.0 only)"
    );
    k.finish().unwrap();
    // take: removes the key (the shared readers then see it absent).
    let mut k = HfKeys::new(p, &json).unwrap();
    assert_eq!(k.take_f64("x").unwrap(), Some(0.5));
    assert_eq!(k.f64("x").unwrap(), None);
    assert_eq!(k.take_f64("nul").unwrap(), None);
    assert_eq!(
        k.take_f64("s").unwrap_err().one_line(),
        "config.json: config key 's': expected a number, found \"silu\""
    );
    assert_eq!(k.take("b"), Some(serde_json::json!(true)));
    // Not read: n, neg, arr (torch_dtype is neutral).
    let e = k.finish().unwrap_err().one_line();
    assert_eq!(
        e,
        "config.json: unsupported config key 'arr': [1] (supported: the keys of the family, and \
         those that do not change the numbers (README, Families))"
    );
}

/// GGUF `{arch}.*` keys: sizes from u32, u64 or non-negative i32, floats from f32 or f64, strings,
/// the layer pattern (a period or one boolean per layer), and `finish` over the namespaces.
#[test]
fn gguf_keys_read_each_type_and_refuse_the_rest() {
    use candle_core::quantized::gguf_file::Value;
    use prefixscope::model::family::GgufKeys;
    use prefixscope::model::llama::SlidingLayers;
    use std::collections::HashMap;
    let p = Path::new("m.gguf");
    let meta: HashMap<String, Value> = [
        ("q.a", Value::U32(7)),
        ("q.b", Value::U64(8)),
        ("q.c", Value::I32(9)),
        ("q.neg", Value::I32(-1)),
        ("q.f32", Value::F32(0.5)),
        ("q.f64", Value::F64(0.25)),
        ("q.s", Value::String("x".into())),
        ("q.period", Value::U32(3)),
        ("q.zero", Value::U32(0)),
        (
            "q.flags",
            Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "q.mixed",
            Value::Array(vec![Value::Bool(true), Value::U32(1)]),
        ),
        ("q.context_length", Value::U32(100)),
        ("general.name", Value::String("n".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut k = GgufKeys::new(p, "q", &meta);
    assert_eq!((k.path(), k.arch()), (p, "q"));
    assert_eq!(k.usize("a").unwrap(), Some(7));
    assert_eq!(k.usize("b").unwrap(), Some(8));
    assert_eq!(k.usize("c").unwrap(), Some(9));
    assert_eq!(k.usize("absent").unwrap(), None);
    assert_eq!(k.req_usize("a").unwrap(), 7);
    assert_eq!(
        k.usize("neg").unwrap_err().one_line(),
        "m.gguf: metadata 'q.neg': expected a non-negative integer, found I32(-1)"
    );
    assert_eq!(
        k.req_usize("absent").unwrap_err().one_line(),
        "m.gguf: metadata 'q.absent': expected present, found missing"
    );
    assert_eq!(k.f64("f32").unwrap(), Some(0.5));
    assert_eq!(k.f64("f64").unwrap(), Some(0.25));
    assert_eq!(k.f64("absent").unwrap(), None);
    assert_eq!(
        k.f64("s").unwrap_err().one_line(),
        "m.gguf: metadata 'q.s': expected a float, found String(\"x\")"
    );
    assert_eq!(k.string("s").unwrap(), Some("x".to_string()));
    assert_eq!(k.string("absent").unwrap(), None);
    assert_eq!(
        k.string("a").unwrap_err().one_line(),
        "m.gguf: metadata 'q.a': expected a string, found U32(7)"
    );
    assert_eq!(
        k.layer_pattern("period", 4).unwrap(),
        Some(SlidingLayers::AllButEvery(3))
    );
    assert_eq!(
        k.layer_pattern("flags", 2).unwrap(),
        Some(SlidingLayers::Listed(vec![true, false]))
    );
    assert_eq!(k.layer_pattern("absent", 2).unwrap(), None);
    assert_eq!(
        k.layer_pattern("flags", 3).unwrap_err().one_line(),
        "m.gguf: metadata 'q.flags': expected 3 booleans (one per layer), found Array([Bool(true), \
         Bool(false)])"
    );
    assert_eq!(
        k.layer_pattern("mixed", 2).unwrap_err().one_line(),
        "m.gguf: metadata 'q.mixed': expected 2 booleans (one per layer), found Array([Bool(true), \
         U32(1)])"
    );
    assert_eq!(
        k.layer_pattern("zero", 2).unwrap_err().one_line(),
        "m.gguf: metadata 'q.zero': expected a positive period or one boolean per layer, found \
         U32(0)"
    );
    assert!(k.only_usize("a", 7, "7 only").is_ok());
    assert!(k.only_usize("absent", 7, "7 only").is_ok());
    assert_eq!(
        k.only_usize("b", 7, "7 only").unwrap_err().one_line(),
        "m.gguf: unsupported metadata 'q.b': 8 (supported: 7 only)"
    );
    // Every q.* key read except q.context_length, which is neutral; general.* and tokenizer.* are
    // neutral namespaces.
    k.finish().unwrap();
    let mut k = GgufKeys::new(p, "q", &meta);
    k.usize("a").unwrap();
    assert_eq!(
        k.finish().unwrap_err().one_line(),
        "m.gguf: unsupported metadata 'q.b': U64(8) (supported: the 'q.*' keys of the family, and those \
         that do not change the numbers (README, Families))"
    );
    // A key outside the architecture's namespace and the neutral ones.
    let other: HashMap<String, Value> = [("other.x".to_string(), Value::U32(1))].into();
    assert_eq!(
        GgufKeys::new(p, "q", &other).finish().unwrap_err().one_line(),
        "m.gguf: unsupported metadata 'other.x': U32(1) (supported: the 'q.*' keys of the family, and \
         those that do not change the numbers (README, Families))"
    );
}
