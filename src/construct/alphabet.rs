//! The constructions' vocabulary: printable ASCII from space to '}' (the notebook's 94 symbols),
//! ids, and the messages that name its ends.

use super::*;

/// The vocabulary: the printable ASCII characters from space to '}' (the notebook's 94).
pub const V: usize = 94;

/// Token id of a printable ASCII character.
pub fn char_id(c: char) -> Option<u32> {
    let code = c as u32;
    (32..32 + V as u32).contains(&code).then(|| code - 32)
}

pub fn id_char(id: u32) -> char {
    char::from_u32(id + 32).unwrap_or('?')
}

pub fn decode(ids: &[u32]) -> String {
    ids.iter().map(|&i| id_char(i)).collect()
}

/// A character for messages: `space` for ' ', else quoted.
pub(super) fn show_char(c: char) -> String {
    if c == ' ' {
        "space".to_string()
    } else {
        format!("{c:?}")
    }
}

/// The characters of ids `first..first + k`, for messages: "space to '}'". Derived from the
/// alphabet itself, so that a message can never name a character the alphabet lacks.
pub fn alphabet_range(first: u32, k: usize) -> String {
    let last = first + (k.max(1) as u32) - 1;
    format!(
        "{} to {}",
        show_char(id_char(first)),
        show_char(id_char(last))
    )
}

/// What [`encode`] accepts: "a character of the vocabulary (space to '}', 94 characters)".
pub fn vocabulary_text(vocab: usize) -> String {
    format!(
        "a character of the vocabulary ({}, {vocab} characters)",
        alphabet_range(0, vocab)
    )
}

/// Token ids of `s`, or a one-line error naming `field` and the first bad character.
pub fn encode(field: &str, s: &str) -> Result<Vec<u32>> {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            char_id(c).ok_or_else(|| {
                Error::input(
                    format!("{field} character {}", i + 1),
                    vocabulary_text(V),
                    format!("{c:?}"),
                )
            })
        })
        .collect()
}
