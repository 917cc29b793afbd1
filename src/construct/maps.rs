//! Character maps for the conditional constructions: the `--map` syntax, presets, and which
//! construction a map needs.

use super::*;

/// A map as `(key, value)` pairs in the user's order.
pub type Map = Vec<(String, String)>;

/// Parse `--map`.
///
/// Syntax: a preset name, or `KEY=VALUE` entries separated by commas; a backslash makes the next
/// character literal (`\,` `\=` `\\`), so every printable character can be a key or a value.
/// Presets: `case-flip` (a=A, A=a for all 26 letters), `random2` or `random2:SEED` (a random map from
/// every pair of A..J to a letter of A..J).
/// Examples: `f=F,F=f`; `a=pple pie,b=lueberry` (long responses); `AB=C,BA=D` (two tokens).
pub fn parse_map(spec: &str) -> Result<Map> {
    let spec_t = spec.trim();
    if spec_t == "case-flip" {
        return Ok(case_flip());
    }
    if let Some(rest) = spec_t.strip_prefix("random2") {
        let seed = match rest.strip_prefix(':') {
            None if rest.is_empty() => 0,
            Some(s) => s.parse::<u64>().map_err(|_| {
                Error::input(
                    "--map random2:SEED",
                    "a non-negative integer seed",
                    format!("'{s}'"),
                )
            })?,
            _ => {
                return Err(Error::input(
                    "--map",
                    "'random2' or 'random2:SEED'",
                    format!("'{spec_t}'"),
                ))
            }
        };
        return Ok(random_two_token_map(seed));
    }
    let mut entries: Map = vec![];
    let (mut key, mut val, mut in_val, mut esc) = (String::new(), String::new(), false, false);
    let mut push = |key: &mut String, val: &mut String, in_val: bool, idx: usize| -> Result<()> {
        if !in_val {
            return Err(Error::input(
                format!("--map entry {idx}"),
                "KEY=VALUE (or a preset: case-flip, random2[:SEED])",
                format!("'{key}'"),
            ));
        }
        if key.is_empty() {
            return Err(Error::input(
                format!("--map entry {idx}"),
                "a non-empty KEY before '='",
                format!("'={val}'"),
            ));
        }
        if entries.iter().any(|(k, _)| k == key) {
            return Err(Error::input(
                format!("--map entry {idx}"),
                "each key once",
                format!("key {key:?} repeated"),
            ));
        }
        entries.push((std::mem::take(key), std::mem::take(val)));
        Ok(())
    };
    let mut idx = 1;
    for ch in spec.chars() {
        if esc {
            if in_val {
                val.push(ch)
            } else {
                key.push(ch)
            }
            esc = false;
        } else if ch == '\\' {
            esc = true;
        } else if ch == '=' && !in_val {
            in_val = true;
        } else if ch == ',' {
            push(&mut key, &mut val, in_val, idx)?;
            in_val = false;
            idx += 1;
        } else if in_val {
            val.push(ch);
        } else {
            key.push(ch);
        }
    }
    push(&mut key, &mut val, in_val, idx)?;
    Ok(entries)
}

/// `a=A, ..., z=Z, A=a, ..., Z=z`.
pub fn case_flip() -> Map {
    let mut m: Map = ('a'..='z')
        .map(|c| (c.to_string(), c.to_ascii_uppercase().to_string()))
        .collect();
    m.extend(('A'..='Z').map(|c| (c.to_string(), c.to_ascii_lowercase().to_string())));
    m
}

/// Every pair of A..J mapped to a random letter of A..J.
pub fn random_two_token_map(seed: u64) -> Map {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let letters: Vec<char> = ('A'..='J').collect();
    let mut m = vec![];
    for &a in &letters {
        for &b in &letters {
            let v = letters[rng.random_range(0..letters.len())];
            m.push((format!("{a}{b}"), v.to_string()));
        }
    }
    m
}

/// Which construction a map needs: one-character keys and values (b), one-character keys with longer
/// values (c), two-character keys (d).
pub fn infer_kind(map: &Map) -> Result<Kind> {
    let klen: HashSet<usize> = map.iter().map(|(k, _)| k.chars().count()).collect();
    let vmax = map
        .iter()
        .map(|(_, v)| v.chars().count())
        .max()
        .unwrap_or(0);
    match (klen.len(), klen.iter().next()) {
        (1, Some(1)) if vmax <= 1 => Ok(Kind::Conditional),
        (1, Some(1)) => Ok(Kind::Long),
        (1, Some(2)) => Ok(Kind::TwoToken),
        _ => Err(Error::input(
            "--map keys",
            "all one character (conditional, long responses) or all two characters (two-token)",
            format!("key lengths {:?}", {
                let mut v: Vec<_> = klen.into_iter().collect();
                v.sort();
                v
            }),
        )),
    }
}
