//! Token labels that never hide bytes: a token holding part of a UTF-8 character is shown by its bytes
//! (`<0xF0><0x9F>`), or, when it and its neighbours join into whole characters, by the joined text and
//! its place in the group (`😀[1/2]`, `😀[2/2]`), so different ids never share a bare "�".

use std::collections::HashMap;
use std::sync::OnceLock;

/// GPT-2's byte-to-character table (`bytes_to_unicode`), inverted: the printable bytes stand for
/// themselves, the others are shifted to U+0100 and up in byte order.
fn byte_level_inverse() -> &'static HashMap<char, u8> {
    static T: OnceLock<HashMap<char, u8>> = OnceLock::new();
    T.get_or_init(|| {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut m = HashMap::with_capacity(256);
        let mut shifted = 0u32;
        for b in 0..=255u8 {
            let c = if printable(b) {
                b as u32
            } else {
                shifted += 1;
                255 + shifted
            };
            m.insert(char::from_u32(c).unwrap_or('\u{FFFD}'), b);
        }
        m
    })
}

/// The bytes of a byte-level BPE token (characters outside GPT-2's table stand for their own UTF-8).
pub fn byte_level_to_bytes(token: &str) -> Vec<u8> {
    let inv = byte_level_inverse();
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match inv.get(&c) {
            Some(&b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// Whether every character of `token` is one of GPT-2's byte characters.
pub fn is_byte_level(token: &str) -> bool {
    let inv = byte_level_inverse();
    !token.is_empty() && token.chars().all(|c| inv.contains_key(&c))
}

/// `<0xAB>` -> 0xAB.
pub fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Text where the bytes are UTF-8, `<0xXX>` for each byte that is not.
pub fn bytes_label(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            s.push_str(&format!("<0x{b:02X}>"));
        }
    }
    s
}

/// What one token shows: its own label, or the bytes it stands for (to be joined with neighbours).
pub enum Piece {
    Label(String),
    Bytes(Vec<u8>),
}

/// Labels for a sequence: runs of tokens that are not UTF-8 alone but are together get the joined
/// text with `[k/n]`; a partial token that joins with nothing shows its bytes.
pub fn sequence_labels(pieces: &[Piece]) -> Vec<String> {
    // The longest run worth trying: a character is at most 4 bytes, each token holds at least one.
    const MAX_RUN: usize = 4;
    let mut out = Vec::with_capacity(pieces.len());
    let mut i = 0;
    while i < pieces.len() {
        match &pieces[i] {
            Piece::Label(l) => {
                out.push(l.clone());
                i += 1;
            }
            Piece::Bytes(b) if std::str::from_utf8(b).is_ok() => {
                out.push(String::from_utf8_lossy(b).into_owned());
                i += 1;
            }
            Piece::Bytes(first) => {
                let mut joined = first.clone();
                let mut end = None;
                for (j, p) in pieces.iter().enumerate().skip(i + 1).take(MAX_RUN - 1) {
                    let Piece::Bytes(b) = p else { break };
                    joined.extend_from_slice(b);
                    if std::str::from_utf8(&joined).is_ok() {
                        end = Some(j);
                        break;
                    }
                }
                match end {
                    Some(j) => {
                        let text = String::from_utf8_lossy(&joined).into_owned();
                        let n = j - i + 1;
                        for k in 1..=n {
                            out.push(format!("{text}[{k}/{n}]"));
                        }
                        i = j + 1;
                    }
                    None => {
                        out.push(bytes_label(first));
                        i += 1;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_gpt2s() {
        // Hand-checked against GPT-2's `bytes_to_unicode`: space is U+0120 'Ġ', newline U+010A 'Ċ',
        // byte 0xAD U+0143 'Ń', 'a' itself, 0xF0 'ð'.
        assert_eq!(byte_level_to_bytes("Ġa"), b" a");
        assert_eq!(byte_level_to_bytes("Ċ"), b"\n");
        assert_eq!(byte_level_to_bytes("Ń"), [0xAD]);
        assert_eq!(byte_level_to_bytes("ðŁĺ"), [0xF0, 0x9F, 0x98]);
    }

    #[test]
    fn partial_characters_show_bytes_or_the_joined_character() {
        let emoji = "😀".as_bytes();
        let pieces = [
            Piece::Bytes(b"Hi".to_vec()),
            Piece::Bytes(emoji[..2].to_vec()),
            Piece::Bytes(emoji[2..].to_vec()),
            Piece::Bytes(vec![0xF0, 0x9F]),
            Piece::Label("<s>".into()),
        ];
        assert_eq!(
            sequence_labels(&pieces),
            ["Hi", "😀[1/2]", "😀[2/2]", "<0xF0><0x9F>", "<s>"]
        );
        assert_eq!(bytes_label(b" \xE2\x80"), " <0xE2><0x80>");
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0x0A"), None);
    }
}
