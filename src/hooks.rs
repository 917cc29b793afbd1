//! The one vocabulary of captured activations: TransformerLens-style hook names
//! (`blocks.{l}.attn.hook_pattern` and friends), used by the library, the exports
//! (`prefixscope attention`) and the docs (`docs/activations.md` has the table).
//!
//! TransformerLens (`HookedTransformer`, `hook_points.py`) names attention activations
//! `blocks.{l}.attn.hook_{q,k,v,attn_scores,pattern,z,result}` and the block's attention output
//! `blocks.{l}.hook_attn_out`. We use those names where the meaning is the same, and a
//! `hook_<name>_<qualifier>` suffix where TransformerLens has no such activation (the pretrained
//! run's pattern, the renormalized pattern, the prefix mass). Layouts drop TransformerLens's batch
//! dimension and put the head first: `hook_pattern` is `(H, N, P+N)` (TransformerLens: `[batch,
//! head, query, key]`), `hook_z` is `(H, N, head_dim)` (TransformerLens: `[batch, pos, head,
//! d_head]`). Query rows are the content tokens only; key columns are `[prefix | content]`.
//!
//! Until 0.2 a file written by 0.1 (`with_prefix_L{l}`, `renormalized_L{l}`, `pretrained_L{l}`,
//! `prefix_mass_L{l}`) is still read: [`lookup`] maps an old name to its new one and says it was
//! old, and [`Activations::read`] prints one deprecation note on stderr for such a file.

use crate::arrays::{read_arrays, Array};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The last release that reads the old (0.1) export names.
pub const OLD_NAMES_READ_UNTIL: &str = "0.2";

/// A per-layer activation. `H` heads, `N` content tokens, `P` prefix positions, `hd` head dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `blocks.{l}.attn.hook_pattern`, `(H, N, P+N)`: attention with the prefix, columns
    /// `[prefix | content]` (TransformerLens's `hook_pattern`).
    Pattern,
    /// `blocks.{l}.attn.hook_pattern_renormalized`, `(H, N, N)`: `hook_pattern[..., P:]` divided by
    /// its row sums (the paper's `A[i,j]` recovered from `A_pt[i,j] = A[i,j] (1 - a_i)`).
    PatternRenormalized,
    /// `blocks.{l}.attn.hook_pattern_pretrained`, `(H, N, N)`: the same model's attention over the
    /// content with no prefix (see `docs/conventions.md` for learned-position models).
    PatternPretrained,
    /// `blocks.{l}.attn.hook_prefix_mass`, `(H, N)`: `a_i`, the attention each content query puts
    /// on the prefix columns (`hook_pattern[..., :P].sum(-1)`).
    PrefixMass,
    /// `blocks.{l}.attn.hook_z`, `(H, N, hd)`: per-head attention output with the prefix, before
    /// `W_O` (TransformerLens's `hook_z`).
    Z,
    /// `blocks.{l}.attn.hook_z_pretrained`, `(H, N, hd)`: the pretrained run's `t_i = sum_j A[i,j] v_j`.
    ZPretrained,
    /// `blocks.{l}.attn.hook_v_prefix`, `(H, P, hd)`: the prefix value vectors each head reads
    /// (key/value heads repeated for grouped-query attention).
    VPrefix,
    /// `blocks.{l}.hook_attn_out`, `(N, d_model)`: the attention block's output after `W_O` and its
    /// bias, what the residual stream receives (TransformerLens's `hook_attn_out`).
    AttnOut,
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::Pattern,
        Hook::PatternRenormalized,
        Hook::PatternPretrained,
        Hook::PrefixMass,
        Hook::Z,
        Hook::ZPretrained,
        Hook::VPrefix,
        Hook::AttnOut,
    ];

    /// What `prefixscope attention` writes per layer (the pretrained pattern alone without a prefix).
    pub const EXPORTED: [Hook; 4] = [
        Hook::Pattern,
        Hook::PatternRenormalized,
        Hook::PatternPretrained,
        Hook::PrefixMass,
    ];

    /// The name after `blocks.{l}.`.
    pub const fn path(self) -> &'static str {
        match self {
            Hook::Pattern => "attn.hook_pattern",
            Hook::PatternRenormalized => "attn.hook_pattern_renormalized",
            Hook::PatternPretrained => "attn.hook_pattern_pretrained",
            Hook::PrefixMass => "attn.hook_prefix_mass",
            Hook::Z => "attn.hook_z",
            Hook::ZPretrained => "attn.hook_z_pretrained",
            Hook::VPrefix => "attn.hook_v_prefix",
            Hook::AttnOut => "hook_attn_out",
        }
    }

    /// The full name at layer `layer`, e.g. `blocks.3.attn.hook_pattern`.
    pub fn name(self, layer: usize) -> String {
        format!("blocks.{layer}.{}", self.path())
    }

    /// The 0.1 export's stem (`{stem}_L{l}`), for the hooks 0.1 wrote.
    pub const fn old_stem(self) -> Option<&'static str> {
        match self {
            Hook::Pattern => Some("with_prefix"),
            Hook::PatternRenormalized => Some("renormalized"),
            Hook::PatternPretrained => Some("pretrained"),
            Hook::PrefixMass => Some("prefix_mass"),
            _ => None,
        }
    }

    /// Number of dimensions of the array.
    pub const fn rank(self) -> usize {
        match self {
            Hook::PrefixMass | Hook::AttnOut => 2,
            _ => 3,
        }
    }

    /// The shape, in the letters of the module doc.
    pub const fn shape(self) -> &'static str {
        match self {
            Hook::Pattern => "(H, N, P+N)",
            Hook::PatternRenormalized | Hook::PatternPretrained => "(H, N, N)",
            Hook::PrefixMass => "(H, N)",
            Hook::Z | Hook::ZPretrained => "(H, N, hd)",
            Hook::VPrefix => "(H, P, hd)",
            Hook::AttnOut => "(N, d_model)",
        }
    }
}

/// A hook at a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookName {
    pub layer: usize,
    pub hook: Hook,
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.hook.path())
    }
}

/// `token_ids` `(N,)` as f32: the content tokens.
pub const TOKEN_IDS: &str = "token_ids";
/// `logits_last_pretrained` `(vocab,)`: final-position logits without the prefix.
pub const LOGITS_LAST_PRETRAINED: &str = "logits_last_pretrained";
/// `logits_last_prefixed` `(vocab,)`: final-position logits with the prefix.
pub const LOGITS_LAST_PREFIXED: &str = "logits_last_prefixed";
/// The arrays of an export that belong to no layer (the same name in 0.1).
pub const GLOBALS: [&str; 3] = [TOKEN_IDS, LOGITS_LAST_PRETRAINED, LOGITS_LAST_PREFIXED];

/// What a name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Name {
    Layer(HookName),
    Global(&'static str),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Layer(h) => h.fmt(f),
            Name::Global(g) => f.write_str(g),
        }
    }
}

/// A layer index as written in a name: decimal digits, no sign, no leading zero (so that one name
/// means one array).
fn layer_index(s: &str) -> Option<usize> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

/// A current name (`blocks.{l}.attn.hook_pattern`, ...), else `None`.
pub fn parse(name: &str) -> Option<HookName> {
    let rest = name.strip_prefix("blocks.")?;
    let (l, path) = rest.split_once('.')?;
    let layer = layer_index(l)?;
    let hook = Hook::ALL.into_iter().find(|h| h.path() == path)?;
    Some(HookName { layer, hook })
}

/// A 0.1 export name (`with_prefix_L3`, `renormalized_L3`, `pretrained_L3`, `prefix_mass_L3`), else
/// `None`.
pub fn parse_old(name: &str) -> Option<HookName> {
    let (stem, l) = name.rsplit_once("_L")?;
    let layer = layer_index(l)?;
    let hook = Hook::ALL.into_iter().find(|h| h.old_stem() == Some(stem))?;
    Some(HookName { layer, hook })
}

/// The names the vocabulary accepts, for messages.
pub const EXPECTED: &str = "an activation name: blocks.{l}.attn.hook_pattern, \
    hook_pattern_renormalized, hook_pattern_pretrained, hook_prefix_mass, hook_z, hook_z_pretrained, \
    hook_v_prefix, blocks.{l}.hook_attn_out, token_ids, logits_last_pretrained, \
    logits_last_prefixed (docs/activations.md)";

/// Look a name up: the meaning, and whether it was spelt the 0.1 way (`true`: read until
/// [`OLD_NAMES_READ_UNTIL`], then refused). An unknown name is refused in one line.
pub fn lookup(name: &str) -> Result<(Name, bool)> {
    if let Some(g) = GLOBALS.into_iter().find(|g| *g == name) {
        return Ok((Name::Global(g), false));
    }
    if let Some(h) = parse(name) {
        return Ok((Name::Layer(h), false));
    }
    if let Some(h) = parse_old(name) {
        return Ok((Name::Layer(h), true));
    }
    Err(Error::input(
        "activation name",
        EXPECTED,
        format!("'{name}'"),
    ))
}

/// Activations read back from a file, under their current names whichever way the file spelt them.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    arrays: BTreeMap<Name, Array>,
    /// `(old, new)` for every array the file named the 0.1 way.
    pub renamed: Vec<(String, String)>,
}

impl Activations {
    /// Read an activation file (`.npz`, or anything [`read_arrays`] reads) and print one
    /// deprecation note on stderr when it uses 0.1 names.
    pub fn read(path: &Path) -> Result<Self> {
        let a = Self::from_named(path, read_arrays(path)?)?;
        if let Some(note) = a.deprecation_note(path) {
            eprintln!("{note}");
        }
        Ok(a)
    }

    /// Take named arrays from `file`: every name must be in the vocabulary (current or 0.1), each
    /// meaning at most once, each array of its hook's rank; else one line naming the array.
    pub fn from_named(
        file: &Path,
        named: impl IntoIterator<Item = (String, Array)>,
    ) -> Result<Self> {
        let mut named: Vec<(String, Array)> = named.into_iter().collect();
        // A file's member order is its own; sort so that messages and `renamed` do not depend on it.
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Activations::default();
        for (raw, a) in named {
            let (name, old) = lookup(&raw).map_err(|_| {
                Error::format(file, format!("array '{raw}'"), EXPECTED, format!("'{raw}'"))
            })?;
            let rank = match name {
                Name::Layer(h) => h.hook.rank(),
                Name::Global(_) => 1,
            };
            if a.shape.len() != rank {
                let want = match name {
                    Name::Layer(h) => h.hook.shape(),
                    Name::Global(_) => "(len,)",
                };
                return Err(Error::format(
                    file,
                    format!("array '{raw}'"),
                    format!("{rank} dimensions {want}"),
                    format!("shape {:?}", a.shape),
                ));
            }
            if out.arrays.contains_key(&name) {
                return Err(Error::format(
                    file,
                    format!("array '{raw}'"),
                    format!("one array named {name} (old or new spelling, not both)"),
                    "a second one",
                ));
            }
            if old {
                out.renamed.push((raw, name.to_string()));
            }
            out.arrays.insert(name, a);
        }
        Ok(out)
    }

    /// One line for stderr when the file used 0.1 names, else `None`.
    pub fn deprecation_note(&self, file: &Path) -> Option<String> {
        let (old, new) = self.renamed.first()?;
        Some(format!(
            "note: {}: {} array(s) use the 0.1 names ('{old}' is now '{new}'); they are read until \
             {OLD_NAMES_READ_UNTIL}, see docs/activations.md",
            file.display(),
            self.renamed.len(),
        ))
    }

    pub fn get(&self, hook: Hook, layer: usize) -> Option<&Array> {
        self.arrays.get(&Name::Layer(HookName { layer, hook }))
    }

    pub fn global(&self, name: &str) -> Option<&Array> {
        let (n, _) = lookup(name).ok()?;
        self.arrays.get(&n)
    }

    /// Any name (current or 0.1) to its array.
    pub fn by_name(&self, name: &str) -> Option<&Array> {
        let (n, _) = lookup(name).ok()?;
        self.arrays.get(&n)
    }

    /// Every array under its current name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (String, &Array)> {
        self.arrays.iter().map(|(n, a)| (n.to_string(), a))
    }

    /// The layers holding `hook`, ascending.
    pub fn layers(&self, hook: Hook) -> Vec<usize> {
        self.arrays
            .keys()
            .filter_map(|n| match n {
                Name::Layer(h) if h.hook == hook => Some(h.layer),
                _ => None,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.arrays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arrays.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_transformerlens_spellings() {
        assert_eq!(Hook::Pattern.name(3), "blocks.3.attn.hook_pattern");
        assert_eq!(Hook::Z.name(0), "blocks.0.attn.hook_z");
        assert_eq!(Hook::AttnOut.name(12), "blocks.12.hook_attn_out");
    }

    #[test]
    fn every_name_parses_back() {
        for h in Hook::ALL {
            for l in [0, 7, 29] {
                assert_eq!(parse(&h.name(l)), Some(HookName { layer: l, hook: h }));
                if let Some(stem) = h.old_stem() {
                    let old = format!("{stem}_L{l}");
                    assert_eq!(parse_old(&old), Some(HookName { layer: l, hook: h }));
                    assert_eq!(
                        lookup(&old).unwrap(),
                        (Name::Layer(HookName { layer: l, hook: h }), true)
                    );
                }
            }
        }
    }

    #[test]
    fn old_names_map_as_documented() {
        for (old, new) in [
            ("with_prefix_L0", "blocks.0.attn.hook_pattern"),
            (
                "renormalized_L15",
                "blocks.15.attn.hook_pattern_renormalized",
            ),
            ("pretrained_L2", "blocks.2.attn.hook_pattern_pretrained"),
            ("prefix_mass_L9", "blocks.9.attn.hook_prefix_mass"),
        ] {
            let (n, was_old) = lookup(old).unwrap();
            assert!(was_old);
            assert_eq!(n.to_string(), new);
        }
    }

    #[test]
    fn near_misses_are_refused() {
        for bad in [
            "blocks.3.attn.pattern",
            "blocks.03.attn.hook_pattern",
            "blocks.-1.attn.hook_pattern",
            "blocks.3.attn.hook_pattern.x",
            "blocks..attn.hook_pattern",
            "with_prefix_L",
            "with_prefix_L+3",
            "renorm_L3",
            "soft_with_prefix_L3",
            "hook_pattern",
            "",
        ] {
            let e = lookup(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("'{bad}'")) && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }
}
