//! The character vocabulary: one character per id, in the order the model was trained with.

use std::collections::HashMap;

/// Maps characters to ids and back. Built from `cellscope.vocab` (a JSON array of
/// one-character strings, index = id).
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

/// Why a list of characters is not a vocabulary.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VocabError {
    #[error("vocabulary is empty")]
    Empty,
    #[error("vocabulary entry {index} is {entry:?}, not exactly one character")]
    NotOneChar { index: usize, entry: String },
    #[error("vocabulary holds {ch:?} twice (ids {first} and {second})")]
    Duplicate { ch: char, first: usize, second: usize },
    #[error("vocabulary is not a JSON array of strings: {0}")]
    NotJson(String),
}

/// A text turned into ids. Characters outside the vocabulary get `None` and are
/// listed in `unknown`; they are kept in place so positions never shift.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub chars: Vec<char>,
    pub ids: Vec<Option<u32>>,
    /// Positions (character indices) of characters not in the vocabulary.
    pub unknown: Vec<usize>,
}

impl Vocab {
    /// Builds a vocabulary from its characters in id order.
    pub fn new(chars: Vec<char>) -> Result<Self, VocabError> {
        if chars.is_empty() {
            return Err(VocabError::Empty);
        }
        let mut ids = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if let Some(first) = ids.insert(c, i as u32) {
                return Err(VocabError::Duplicate { ch: c, first: first as usize, second: i });
            }
        }
        Ok(Self { chars, ids })
    }

    /// Parses the `cellscope.vocab` metadata value.
    pub(crate) fn from_json(json: &str) -> Result<Self, VocabError> {
        let entries: Vec<String> = serde_json::from_str(json).map_err(|e| VocabError::NotJson(e.to_string()))?;
        let mut chars = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let mut it = entry.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => return Err(VocabError::NotOneChar { index, entry }),
            }
        }
        Self::new(chars)
    }

    /// The vocabulary of a corpus: its distinct characters in code-point order.
    pub fn from_text(text: &str) -> Result<Self, VocabError> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::new(chars)
    }

    /// The `cellscope.vocab` metadata value.
    pub(crate) fn to_json(&self) -> String {
        let entries: Vec<String> = self.chars.iter().map(|c| c.to_string()).collect();
        serde_json::to_string(&entries).expect("strings serialise")
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn id(&self, c: char) -> Option<u32> {
        self.ids.get(&c).copied()
    }

    /// Encodes a text; unknown characters are reported, never dropped.
    pub fn encode(&self, text: &str) -> Encoded {
        let chars: Vec<char> = text.chars().collect();
        let mut unknown = Vec::new();
        let ids = chars
            .iter()
            .enumerate()
            .map(|(t, &c)| {
                let id = self.id(c);
                if id.is_none() {
                    unknown.push(t);
                }
                id
            })
            .collect();
        Encoded { chars, ids, unknown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_reports_unknown_positions_without_dropping() {
        let v = Vocab::new(vec!['a', 'b', ' ']).unwrap();
        let e = v.encode("ab é a");
        assert_eq!(e.chars.len(), 6);
        assert_eq!(e.unknown, vec![3]);
        assert_eq!(e.ids[3], None);
        assert_eq!(e.ids[5], Some(0));
    }

    #[test]
    fn bad_vocabularies_say_why() {
        assert_eq!(Vocab::from_json(r#"["a","b","a"]"#), Err(VocabError::Duplicate { ch: 'a', first: 0, second: 2 }));
        assert!(matches!(Vocab::from_json(r#"["ab"]"#), Err(VocabError::NotOneChar { index: 0, .. })));
        assert!(matches!(Vocab::from_json(r#"[""]"#), Err(VocabError::NotOneChar { .. })));
        assert_eq!(Vocab::from_json("[]"), Err(VocabError::Empty));
        assert!(matches!(Vocab::from_json("{"), Err(VocabError::NotJson(_))));
    }

    #[test]
    fn json_round_trip() {
        let v = Vocab::from_text("hello \"world\"\n\t").unwrap();
        assert_eq!(Vocab::from_json(&v.to_json()).unwrap(), v);
    }
}
