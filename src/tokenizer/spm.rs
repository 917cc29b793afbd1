//! llama.cpp's SentencePiece tokenizer (`tokenizer.ggml.model = llama`: Llama 1/2, Mistral v0.1-0.3,
//! TinyLlama, Phi-3, Gemma), line for line after `llm_tokenizer_spm_session` in llama.cpp's
//! `src/llama-vocab.cpp`: the text is split into UTF-8 characters, adjacent pairs whose concatenation
//! is a token are merged best score first (ties: leftmost first), the merged symbols are looked up,
//! re-split along the merges that made them when they are not tokens themselves, and what is left is
//! written as byte tokens (`<0xXX>`, else the byte itself as a token).
//!
//! This is llama.cpp's algorithm, not SentencePiece's unigram Viterbi: the two agree on ordinary text,
//! and llama.cpp is the reference a GGUF file is computed against.

use crate::error::{Error, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The vocabulary lookups the algorithm needs.
pub trait SpmVocab {
    fn text_to_token(&self, text: &str) -> Option<u32>;
    fn score(&self, id: u32) -> f32;
    /// llama.cpp's `byte_to_token` for SentencePiece: `<0xXX>`, else the byte as a one-byte token.
    fn byte_to_token(&self, byte: u8) -> Option<u32>;
}

#[derive(Clone, Copy)]
struct Symbol {
    prev: isize,
    next: isize,
    start: usize,
    n: usize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

// The queue pops the highest score, and among equal scores the leftmost pair (llama.cpp's
// `llm_bigram_spm::comparator`).
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Tokenize `text` (spaces already replaced by `▁`, the space prefix already added) and append the
/// ids to `out`. Fails only when a byte has no token (llama.cpp aborts there).
pub fn tokenize(vocab: &dyn SpmVocab, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let mut s = Session {
        vocab,
        text,
        symbols: Vec::new(),
        queue: BinaryHeap::new(),
        rev_merge: HashMap::new(),
    };
    s.run(out)
}

struct Session<'a> {
    vocab: &'a dyn SpmVocab,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
    rev_merge: HashMap<&'a str, (usize, usize)>,
}

impl<'a> Session<'a> {
    fn run(&mut self, out: &mut Vec<u32>) -> Result<()> {
        let text = self.text;
        if text.is_empty() {
            return Ok(());
        }
        for (index, (start, c)) in text.char_indices().enumerate() {
            let index = index as isize;
            let end = start + c.len_utf8();
            self.symbols.push(Symbol {
                prev: index - 1,
                next: if end == text.len() { -1 } else { index + 1 },
                start,
                n: c.len_utf8(),
            });
        }
        for i in 1..self.symbols.len() {
            self.try_add_bigram(i as isize - 1, i as isize);
        }
        while let Some(b) = self.queue.pop() {
            let (l, r) = (self.symbols[b.left], self.symbols[b.right]);
            // One of the two was merged since this pair was queued.
            if l.n == 0 || r.n == 0 || l.n + r.n != b.size {
                continue;
            }
            self.symbols[b.left].n += r.n;
            self.symbols[b.right].n = 0;
            self.symbols[b.left].next = r.next;
            if r.next >= 0 {
                self.symbols[r.next as usize].prev = b.left as isize;
            }
            let left = self.symbols[b.left];
            self.try_add_bigram(left.prev, b.left as isize);
            self.try_add_bigram(b.left as isize, left.next);
        }
        let mut i = 0isize;
        while i != -1 {
            let sym = self.symbols[i as usize];
            self.resegment(sym, out, 0)?;
            i = sym.next;
        }
        Ok(())
    }

    fn sym_text(&self, s: Symbol) -> &'a str {
        let text = self.text;
        text.get(s.start..s.start + s.n).unwrap_or("")
    }

    fn resegment(&self, sym: Symbol, out: &mut Vec<u32>, depth: usize) -> Result<()> {
        let text = self.sym_text(sym);
        if let Some(t) = self.vocab.text_to_token(text) {
            out.push(t);
            return Ok(());
        }
        // llama.cpp recurses without a bound; a vocabulary that loops is refused instead.
        match self.rev_merge.get(text) {
            Some(&(l, r)) if depth < 64 => {
                self.resegment(self.symbols[l], out, depth + 1)?;
                self.resegment(self.symbols[r], out, depth + 1)
            }
            _ => {
                for &b in text.as_bytes() {
                    match self.vocab.byte_to_token(b) {
                        Some(t) => out.push(t),
                        None => {
                            return Err(Error::input(
                                "text",
                                "characters the vocabulary can spell (SentencePiece byte fallback)",
                                format!("byte 0x{b:02X}, which has no <0x{b:02X}> token"),
                            ))
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn try_add_bigram(&mut self, left: isize, right: isize) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (self.symbols[left as usize], self.symbols[right as usize]);
        let text = self.text;
        let Some(pair) = text.get(l.start..l.start + l.n + r.n) else {
            return;
        };
        let Some(tok) = self.vocab.text_to_token(pair) else {
            return;
        };
        self.queue.push(Bigram {
            left: left as usize,
            right: right as usize,
            score: self.vocab.score(tok),
            size: pair.len(),
        });
        self.rev_merge.insert(pair, (left as usize, right as usize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary given as (text, score); byte tokens `<0xXX>` for every byte.
    struct V {
        ids: HashMap<String, u32>,
        scores: Vec<f32>,
    }
    impl V {
        fn new(pieces: &[(&str, f32)]) -> V {
            let mut ids = HashMap::new();
            let mut scores = Vec::new();
            for b in 0..=255u8 {
                ids.insert(format!("<0x{b:02X}>"), scores.len() as u32);
                scores.push(0.0);
            }
            for (t, s) in pieces {
                ids.insert(t.to_string(), scores.len() as u32);
                scores.push(*s);
            }
            V { ids, scores }
        }
        fn toks(&self, text: &str) -> Vec<String> {
            let mut out = Vec::new();
            tokenize(self, text, &mut out).unwrap();
            let rev: HashMap<u32, &String> = self.ids.iter().map(|(k, v)| (*v, k)).collect();
            out.iter().map(|i| rev[i].clone()).collect()
        }
    }
    impl SpmVocab for V {
        fn text_to_token(&self, text: &str) -> Option<u32> {
            self.ids.get(text).copied()
        }
        fn score(&self, id: u32) -> f32 {
            self.scores[id as usize]
        }
        fn byte_to_token(&self, byte: u8) -> Option<u32> {
            self.ids.get(&format!("<0x{byte:02X}>")).copied()
        }
    }

    #[test]
    fn best_score_merges_first_and_ties_go_left() {
        // "ab" outscores "bc": a|b|c -> ab|c.
        let v = V::new(&[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -2.0),
            ("bc", -3.0),
        ]);
        assert_eq!(v.toks("abc"), ["ab", "c"]);
        // Equal scores: the leftmost pair wins.
        let v = V::new(&[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -2.0),
            ("bc", -2.0),
        ]);
        assert_eq!(v.toks("abc"), ["ab", "c"]);
        let v = V::new(&[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -3.0),
            ("bc", -2.0),
        ]);
        assert_eq!(v.toks("abc"), ["a", "bc"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_non_tokens_resegment() {
        let v = V::new(&[("▁", -1.0), ("h", -1.0), ("i", -1.0)]);
        assert_eq!(
            v.toks("▁hi€"),
            ["▁", "h", "i", "<0xE2>", "<0x82>", "<0xAC>"]
        );
        // "abc" is reachable only through "ab"+"c", and "ab" is a token: the result is one token.
        let v = V::new(&[
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -1.0),
            ("abc", -1.0),
        ]);
        assert_eq!(v.toks("abc"), ["abc"]);
    }
}
