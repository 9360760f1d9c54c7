//! Per-character labels for C source: a small lexer that says, for every character, whether it
//! sits in a string, a character literal, a comment, an `if (...)` condition or a preprocessor
//! line, and how deep it is in parentheses and braces.
//!
//! Positions are character indices (`text[i]` is the `i`-th `char`), because the model reads one
//! character per step and its activation matrix has one row per character.
//!
//! The lexer is one left-to-right pass with a handful of modes (code, string, char literal, block
//! comment, line comment). It is deliberately forgiving: it never fails, and it bounds the damage
//! one malformed construct can do, so that a single stray quote or bracket cannot colour the rest
//! of a file:
//!
//! - an unterminated string or character literal ends at the end of its line;
//! - a preprocessor directive is its own bracket scope: brackets it leaves open are dropped at its
//!   end, and closers inside it never close brackets opened before it (`#define END )`);
//! - parentheses belong to the brace block they were opened in: a `)` only closes a `(` of the
//!   same block, and a `}` drops the parentheses its block left open;
//! - closers with nothing to close are ignored, so depths never underflow.
//!
//! Backslash-newline continues a `//` comment, a preprocessor line, a string or a character
//! literal onto the next line, as C's line splicing does. `\r\n` line endings are understood.
//! Not handled: trigraphs, C++ raw strings and digit separators, and `#if`/`#else` branches that
//! each open a brace (both are counted).

use regex::Regex;
use serde::Serialize;

use super::{AnalysisError, Concept, Labels};

/// Per-character C features of a text; every vector has one entry per input character.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CFeatures {
    /// Inside a double-quoted string literal, both quotes included.
    pub string: Vec<bool>,
    /// Inside a character literal such as `'a'` or `'\''`, both quotes included.
    pub char_literal: Vec<bool>,
    /// Inside a `/* ... */` (markers included) or `// ...` comment (the ending newline excluded).
    pub comment: Vec<bool>,
    /// Inside the parentheses of an `if (...)` condition, both parentheses included.
    pub if_condition: Vec<bool>,
    /// Number of open `(`; an opening `(` already counts itself and a closing `)` still counts
    /// the pair it closes, so both brackets are "inside".
    pub paren_depth: Vec<u32>,
    /// Number of open `{`, with the same convention as `paren_depth`.
    pub brace_depth: Vec<u32>,
    /// Position within the line: 0 for the first character after a newline; the newline itself
    /// has the column it sits at. A tab counts as one column.
    pub column: Vec<u32>,
    /// On a preprocessor line: from the `#` that is the line's first non-blank character to the
    /// end of the line (ending newline excluded), through backslash-continued lines.
    pub preprocessor: Vec<bool>,
}

impl CFeatures {
    /// The labels for one concept, without lexing the text again.
    pub(crate) fn labels(&self, concept: Concept) -> Labels {
        let graded = |v: &[u32]| Labels::Graded(v.iter().map(|&d| d as f32).collect());
        match concept {
            Concept::String => Labels::Binary(self.string.clone()),
            Concept::Char => Labels::Binary(self.char_literal.clone()),
            Concept::Comment => Labels::Binary(self.comment.clone()),
            Concept::If => Labels::Binary(self.if_condition.clone()),
            Concept::ParenDepth => graded(&self.paren_depth),
            Concept::BraceDepth => graded(&self.brace_depth),
            Concept::Column => graded(&self.column),
            Concept::Preprocessor => Labels::Binary(self.preprocessor.clone()),
        }
    }
}

/// Lexes `text` as C and returns its per-character features. Never fails: see the module doc
/// for how malformed code is treated.
pub fn c_features(text: &[char]) -> CFeatures {
    let mut lexer = Lexer::new(text);
    for i in 0..text.len() {
        lexer.step(i);
    }
    lexer.out
}

/// Marks every character inside a match of `re` in the text.
///
/// The regex runs on the UTF-8 string, so byte offsets are mapped back to character indices.
/// Empty matches mark nothing.
pub(crate) fn regex_mask(text: &[char], re: &Regex) -> Vec<bool> {
    let s: String = text.iter().collect();
    // char_at[b] is the index of the character starting at byte b; match bounds always fall on
    // character boundaries, and s.len() maps to text.len().
    let mut char_at = vec![0usize; s.len() + 1];
    for (ci, (b, _)) in s.char_indices().enumerate() {
        char_at[b] = ci;
    }
    char_at[s.len()] = text.len();
    let mut mask = vec![false; text.len()];
    for m in re.find_iter(&s) {
        for slot in &mut mask[char_at[m.start()]..char_at[m.end()]] {
            *slot = true;
        }
    }
    mask
}

/// Marks the half-open character ranges `start..end` in a mask of `len` characters.
///
/// Spans may overlap or be empty. A span with `start > end` or `end > len` is an error, so a
/// client's off-by-one is reported instead of silently clipped.
pub(crate) fn span_mask(len: usize, spans: &[(usize, usize)]) -> Result<Vec<bool>, AnalysisError> {
    let mut mask = vec![false; len];
    for (index, &(start, end)) in spans.iter().enumerate() {
        if start > end {
            return Err(AnalysisError::SpanReversed { index, start, end });
        }
        if end > len {
            return Err(AnalysisError::SpanOutOfBounds { index, end, len });
        }
        for slot in &mut mask[start..end] {
            *slot = true;
        }
    }
    Ok(mask)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Code,
    Str,
    Chr,
    /// `opened` is the index of the `/` of `/*`, so `/*/` is not taken as open-and-close.
    Block {
        opened: usize,
    },
    Line,
}

#[derive(Debug, Clone, Copy)]
struct OpenParen {
    /// Brace depth when the `(` was seen: it can only be closed in that same block.
    braces: u32,
    /// Opened right after an `if` keyword.
    is_if: bool,
}

/// Bracket state saved when a directive starts, restored when it ends.
#[derive(Debug, Clone, Copy)]
struct Floor {
    parens: usize,
    braces: u32,
}

struct Lexer<'a> {
    text: &'a [char],
    out: CFeatures,
    mode: Mode,
    /// In a string or char literal, the previous character was an escaping backslash.
    escaped: bool,
    parens: Vec<OpenParen>,
    /// How many entries of `parens` are `if` conditions; > 0 means "inside a condition".
    if_parens: usize,
    braces: u32,
    column: u32,
    /// Only blanks seen so far on this line, so a `#` here starts a directive.
    line_start: bool,
    /// Some while inside a preprocessor directive.
    directive: Option<Floor>,
    /// The next word is the directive's name (`#if`, `# ifdef`), not C code.
    directive_name_next: bool,
    /// Set just after an `if` keyword ending at this index; the next non-blank code character
    /// decides whether it opens a condition. Comments may sit in between.
    if_keyword_end: Option<usize>,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a [char]) -> Self {
        let n = text.len();
        Lexer {
            text,
            out: CFeatures {
                string: vec![false; n],
                char_literal: vec![false; n],
                comment: vec![false; n],
                if_condition: vec![false; n],
                paren_depth: vec![0; n],
                brace_depth: vec![0; n],
                column: vec![0; n],
                preprocessor: vec![false; n],
            },
            mode: Mode::Code,
            escaped: false,
            parens: Vec::new(),
            if_parens: 0,
            braces: 0,
            column: 0,
            line_start: true,
            directive: None,
            directive_name_next: false,
            if_keyword_end: None,
        }
    }

    fn step(&mut self, i: usize) {
        let c = self.text[i];
        self.out.column[i] = self.column;

        let starts_directive = self.mode == Mode::Code && self.line_start && c == '#' && self.directive.is_none();
        if starts_directive {
            self.directive = Some(Floor { parens: self.parens.len(), braces: self.braces });
        }
        if !is_blank(c) && c != '\n' {
            self.line_start = false;
        }

        // Closers record the depth they close, so take the snapshot before the mode handler
        // pops; openers record the depth they open, so take it after.
        let before = self.snapshot();
        let closer = self.mode == Mode::Code && matches!(c, ')' | '}');
        match self.mode {
            Mode::Code => self.code(i, c),
            Mode::Str => self.quoted(i, c, '"'),
            Mode::Chr => self.quoted(i, c, '\''),
            Mode::Block { opened } => {
                self.out.comment[i] = true;
                if c == '/' && i >= opened + 3 && self.text[i - 1] == '*' {
                    self.mode = Mode::Code;
                }
            }
            Mode::Line => {
                if self.ends_line(i) && !self.continues(i) {
                    self.mode = Mode::Code;
                } else {
                    self.out.comment[i] = true;
                }
            }
        }
        let (parens, braces, in_if) = if closer { before } else { self.snapshot() };
        self.out.paren_depth[i] = parens;
        self.out.brace_depth[i] = braces;
        self.out.if_condition[i] = in_if;
        self.out.preprocessor[i] = self.directive.is_some();

        if starts_directive {
            // After `code` has seen the `#` itself, so only the word after it is the name.
            self.directive_name_next = true;
        }
        if c == '\n' {
            self.newline(i);
        } else {
            self.column = self.column.saturating_add(1);
        }
    }

    fn snapshot(&self) -> (u32, u32, bool) {
        let parens = u32::try_from(self.parens.len()).unwrap_or(u32::MAX);
        (parens, self.braces, self.if_parens > 0)
    }

    fn newline(&mut self, i: usize) {
        self.column = 0;
        let continued = self.continues(i);
        // A block comment inside a directive carries it on, since comments are whitespace to
        // the preprocessor.
        let in_block = matches!(self.mode, Mode::Block { .. });
        if self.directive.is_some() && !continued && !in_block {
            // The line break, `\r` included, is not part of the directive, as for comments.
            self.out.preprocessor[i] = false;
            if i > 0 && self.text[i - 1] == '\r' {
                self.out.preprocessor[i - 1] = false;
            }
            self.end_directive();
        }
        // A spliced line is the same logical line, so a `#` after it starts nothing.
        self.line_start = !continued;
    }

    fn end_directive(&mut self) {
        if let Some(floor) = self.directive.take() {
            self.truncate_parens(floor.parens);
            self.braces = floor.braces;
        }
        self.directive_name_next = false;
        self.if_keyword_end = None;
    }

    fn code(&mut self, i: usize, c: char) {
        let next = self.text.get(i + 1).copied();
        // Whitespace and comments between `if` and `(` (or `#` and its name) keep them pending;
        // only the first character of a comment is seen here, the rest is lexed in its mode.
        let insignificant = c.is_whitespace() || (c == '/' && matches!(next, Some('*' | '/')));
        if let Some(end) = self.if_keyword_end {
            if i >= end && !insignificant && c != '(' {
                self.if_keyword_end = None;
            }
        }
        let directive_name = self.directive_name_next;
        if !insignificant {
            self.directive_name_next = false;
        }
        match c {
            '"' => {
                self.mode = Mode::Str;
                self.escaped = false;
                self.out.string[i] = true;
            }
            '\'' => {
                self.mode = Mode::Chr;
                self.escaped = false;
                self.out.char_literal[i] = true;
            }
            '/' if next == Some('*') => {
                self.mode = Mode::Block { opened: i };
                self.out.comment[i] = true;
            }
            '/' if next == Some('/') => {
                self.mode = Mode::Line;
                self.out.comment[i] = true;
            }
            '(' => {
                let is_if = self.if_keyword_end.take().is_some();
                self.parens.push(OpenParen { braces: self.braces, is_if });
                self.if_parens += usize::from(is_if);
            }
            ')' => {
                let floor = self.directive.map_or(0, |f| f.parens);
                let closes = self.parens.len() > floor && self.parens.last().is_some_and(|p| p.braces == self.braces);
                if closes {
                    self.truncate_parens(self.parens.len() - 1);
                }
            }
            '{' => self.braces = self.braces.saturating_add(1),
            '}' => {
                let floor = self.directive.map_or(0, |f| f.braces);
                if self.braces > floor {
                    // Parentheses opened in this block and never closed end with it.
                    let keep = self.parens.iter().rposition(|p| p.braces < self.braces).map_or(0, |k| k + 1);
                    let paren_floor = self.directive.map_or(0, |f| f.parens);
                    self.truncate_parens(keep.max(paren_floor));
                    self.braces -= 1;
                }
            }
            _ if is_ident(c) && (i == 0 || !is_ident(self.text[i - 1])) => {
                let end = (i..self.text.len()).find(|&j| !is_ident(self.text[j])).unwrap_or(self.text.len());
                if !directive_name && self.text[i..end] == ['i', 'f'] {
                    self.if_keyword_end = Some(end);
                }
            }
            _ => {}
        }
    }

    fn quoted(&mut self, i: usize, c: char, quote: char) {
        let mark = if quote == '"' { &mut self.out.string } else { &mut self.out.char_literal };
        if self.escaped {
            mark[i] = true;
            // A backslash before `\r\n` escapes the whole line break.
            self.escaped = c == '\r' && self.text.get(i + 1) == Some(&'\n');
        } else if c == '\\' {
            mark[i] = true;
            self.escaped = true;
        } else if c == quote {
            mark[i] = true;
            self.mode = Mode::Code;
        } else if c == '\n' || (c == '\r' && self.text.get(i + 1) == Some(&'\n')) {
            // Unterminated: stop at the end of the line, leaving the line break outside.
            self.mode = Mode::Code;
        } else {
            mark[i] = true;
        }
    }

    /// `i` is a line break: `\n`, or the `\r` of `\r\n`.
    fn ends_line(&self, i: usize) -> bool {
        let c = self.text[i];
        c == '\n' || (c == '\r' && self.text.get(i + 1) == Some(&'\n'))
    }

    /// The line break at `i` is preceded by a backslash, so the next line continues this one.
    fn continues(&self, i: usize) -> bool {
        let start = if self.text[i] == '\n' && i > 0 && self.text[i - 1] == '\r' { i - 1 } else { i };
        start > 0 && self.text[start - 1] == '\\'
    }

    fn truncate_parens(&mut self, len: usize) {
        while self.parens.len() > len {
            if self.parens.pop().is_some_and(|p| p.is_if) {
                self.if_parens -= 1;
            }
        }
    }
}

/// Horizontal whitespace: what may precede the `#` of a directive.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    /// Renders a mask as `^` where set and `_` where not, so a failing assertion shows which
    /// characters were wrong.
    fn show(mask: &[bool]) -> String {
        mask.iter().map(|&b| if b { '^' } else { '_' }).collect()
    }

    /// The characters of `text` that `mask` marks, one string per contiguous run.
    fn runs(text: &str, mask: &[bool]) -> Vec<String> {
        let t = chars(text);
        let mut out = Vec::new();
        let mut cur = String::new();
        for (i, &m) in mask.iter().enumerate() {
            if m {
                cur.push(t[i]);
            } else if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn f(text: &str) -> CFeatures {
        let feats = c_features(&chars(text));
        assert_eq!(feats.column.len(), text.chars().count());
        feats
    }

    #[test]
    fn string_with_escaped_quote_is_one_literal() {
        let src = r#"x = "a\"b"; y"#;
        let s = f(src).string;
        assert_eq!(runs(src, &s), vec![r#""a\"b""#], "{}", show(&s));
    }

    #[test]
    fn escaped_backslash_ends_string() {
        let src = r#"s = "\\"; t = 1;"#;
        assert_eq!(runs(src, &f(src).string), vec![r#""\\""#]);
    }

    #[test]
    fn double_quote_in_char_literal_opens_nothing() {
        let src = r#"c = '"'; d = "x";"#;
        let feats = f(src);
        assert_eq!(runs(src, &feats.char_literal), vec![r#"'"'"#]);
        assert_eq!(runs(src, &feats.string), vec![r#""x""#]);
    }

    #[test]
    fn escaped_apostrophe_char_literal() {
        let src = r"c = '\''; d = 'x';";
        assert_eq!(runs(src, &f(src).char_literal), vec![r"'\''", "'x'"]);
    }

    #[test]
    fn comment_markers_inside_strings_are_not_comments() {
        let src = r#"a = "/*"; b = "//"; c = 1; /* real */"#;
        let feats = f(src);
        assert_eq!(runs(src, &feats.comment), vec!["/* real */"]);
        assert_eq!(runs(src, &feats.string), vec![r#""/*""#, r#""//""#]);
    }

    #[test]
    fn comment_markers_inside_char_literals_are_not_comments() {
        let src = "a = '/'; b = '*'; c = '/' * 2; x";
        assert!(f(src).comment.iter().all(|&b| !b));
    }

    #[test]
    fn quotes_inside_comments_open_nothing() {
        let src = "/* it's \"quoted\" */ x = 1; // don't\ny = 2;";
        let feats = f(src);
        assert!(feats.string.iter().all(|&b| !b));
        assert!(feats.char_literal.iter().all(|&b| !b));
        assert_eq!(runs(src, &feats.comment), vec!["/* it's \"quoted\" */", "// don't"]);
    }

    #[test]
    fn block_comment_needs_separate_closing_star() {
        let src = "/*/ x */ y /**/ z";
        assert_eq!(runs(src, &f(src).comment), vec!["/*/ x */", "/**/"]);
    }

    #[test]
    fn unterminated_block_comment_runs_to_end() {
        let src = "a /* b\nc";
        assert_eq!(runs(src, &f(src).comment), vec!["/* b\nc"]);
    }

    #[test]
    fn line_comment_stops_before_newline_unless_continued() {
        let src = "a; // one \\\ntwo\nthree";
        let feats = f(src);
        assert_eq!(runs(src, &feats.comment), vec!["// one \\\ntwo"]);
    }

    #[test]
    fn line_comment_with_crlf_continuation() {
        let src = "// a\\\r\nb\r\nc";
        assert_eq!(runs(src, &f(src).comment), vec!["// a\\\r\nb"]);
    }

    #[test]
    fn unterminated_string_stops_at_end_of_line() {
        let src = "a = \"oops;\nif (x) { }";
        let feats = f(src);
        assert_eq!(runs(src, &feats.string), vec!["\"oops;"]);
        assert_eq!(runs(src, &feats.if_condition), vec!["(x)"]);
    }

    #[test]
    fn unterminated_char_stops_at_end_of_line() {
        let src = "a = 'x;\nb = 'y';";
        assert_eq!(runs(src, &f(src).char_literal), vec!["'x;", "'y'"]);
    }

    #[test]
    fn string_continued_by_backslash_newline() {
        let src = "s = \"ab\\\ncd\"; e";
        assert_eq!(runs(src, &f(src).string), vec!["\"ab\\\ncd\""]);
    }

    #[test]
    fn simple_if_condition_includes_parens() {
        let src = "if (a > b) return;";
        let feats = f(src);
        assert_eq!(runs(src, &feats.if_condition), vec!["(a > b)"]);
    }

    #[test]
    fn if_condition_with_nested_parens_ends_at_matching_paren() {
        let src = "if (f(a) && (b || c)) g(d);";
        assert_eq!(runs(src, &f(src).if_condition), vec!["(f(a) && (b || c))"]);
    }

    #[test]
    fn multi_line_condition_with_comment_before_paren() {
        let src = "if /* why */\n  (a &&\n   b)\n  x();";
        let feats = f(src);
        assert_eq!(runs(src, &feats.if_condition), vec!["(a &&\n   b)"]);
        assert_eq!(runs(src, &feats.comment), vec!["/* why */"]);
    }

    #[test]
    fn line_comment_between_if_and_paren() {
        let src = "if // c\n(a) b;";
        assert_eq!(runs(src, &f(src).if_condition), vec!["(a)"]);
    }

    #[test]
    fn else_if_counts() {
        let src = "if (a) x; else if (b) y; else z(c);";
        assert_eq!(runs(src, &f(src).if_condition), vec!["(a)", "(b)"]);
    }

    #[test]
    fn only_whole_word_if() {
        let src = "xif (a); ifdef (b); elif (c); if_ (d); iff(e); if(f)";
        assert_eq!(runs(src, &f(src).if_condition), vec!["(f)"]);
    }

    #[test]
    fn preprocessor_if_is_not_a_condition() {
        let src = "#if (A > 1)\n# if (B)\n#elif (C)\nif (d) x;\n#endif";
        let feats = f(src);
        assert_eq!(runs(src, &feats.if_condition), vec!["(d)"]);
        assert_eq!(runs(src, &feats.preprocessor), vec!["#if (A > 1)", "# if (B)", "#elif (C)", "#endif"]);
    }

    #[test]
    fn if_inside_macro_body_is_a_condition() {
        let src = "#define CHECK(x) do { if (!(x)) bug(); } while (0)\nint y;";
        let feats = f(src);
        assert_eq!(runs(src, &feats.if_condition), vec!["(!(x))"]);
        assert_eq!(runs(src, &feats.preprocessor), vec!["#define CHECK(x) do { if (!(x)) bug(); } while (0)"]);
    }

    #[test]
    fn nested_if_in_statement_expression() {
        let src = "if (a && ({ int t = 0; if (b) t = 1; t; })) go();";
        let feats = f(src);
        let expected = "(a && ({ int t = 0; if (b) t = 1; t; }))";
        assert_eq!(runs(src, &feats.if_condition), vec![expected]);
        // The inner `if` did not end the outer condition at its own `)`.
        let after_inner = src.find("t = 1").expect("fixture");
        assert!(feats.if_condition[after_inner]);
    }

    #[test]
    fn if_inside_macro_argument() {
        let src = "WARN(if (x) y, z); w(v);";
        assert_eq!(runs(src, &f(src).if_condition), vec!["(x)"]);
    }

    #[test]
    fn if_not_followed_by_paren_opens_nothing() {
        let src = "if x (y); f(z);";
        assert!(f(src).if_condition.iter().all(|&b| !b));
    }

    #[test]
    fn if_in_string_or_comment_is_ignored() {
        let src = "s = \"if (a)\"; /* if (b) */ // if (c)\n";
        assert!(f(src).if_condition.iter().all(|&b| !b));
    }

    #[test]
    fn depths_count_both_brackets_as_inside() {
        let src = "f(a(b)) { { x } }";
        let feats = f(src);
        let want: Vec<u32> = vec![0, 1, 1, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(feats.paren_depth, want);
        let want: Vec<u32> = vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 1, 1];
        assert_eq!(feats.brace_depth, want);
    }

    #[test]
    fn brackets_in_strings_chars_and_comments_do_not_count() {
        let src = "f(\"(\", ')', /* ( */ x) y";
        let feats = f(src);
        let y = src.find('y').expect("fixture");
        assert_eq!(feats.paren_depth[y], 0);
        // Characters inside the string still sit at the surrounding depth.
        assert_eq!(feats.paren_depth[3], 1);
    }

    #[test]
    fn stray_closers_never_underflow() {
        let src = ") } ) f(x) }";
        let feats = f(src);
        assert!(feats.brace_depth.iter().all(|&d| d == 0));
        assert_eq!(runs(src, &feats.paren_depth.iter().map(|&d| d > 0).collect::<Vec<_>>()), vec!["(x)"]);
    }

    #[test]
    fn stray_close_paren_does_not_end_an_open_if() {
        let src = "if (a && { b) }) c;";
        // The `)` inside the braces belongs to no parenthesis of that block, so the condition
        // continues until its own `)`.
        assert_eq!(runs(src, &f(src).if_condition), vec!["(a && { b) })"]);
    }

    #[test]
    fn unclosed_paren_is_dropped_at_end_of_its_block() {
        let src = "void f() { if (a && b { x; } y; } z;";
        let feats = f(src);
        // Inside the function the `{` might still be a statement expression, so the condition
        // runs on; the function's closing brace ends it.
        let y = src.find('y').expect("fixture");
        assert!(feats.if_condition[y]);
        let z = src.find('z').expect("fixture");
        assert_eq!(feats.paren_depth[z], 0);
        assert!(!feats.if_condition[z], "{}", show(&feats.if_condition));
        assert_eq!(feats.brace_depth[z], 0);
    }

    #[test]
    fn directive_is_its_own_bracket_scope() {
        let src = "f(a,\n#define OPEN ( {\n#define CLOSE ) }\nb)";
        let feats = f(src);
        let b = src.rfind('b').expect("fixture");
        // `(` and `{` in the first define are dropped at its end; `)` and `}` in the second
        // cannot close the `(` of `f(` opened before it.
        assert_eq!(feats.paren_depth[b], 1);
        assert_eq!(feats.brace_depth[b], 0);
        assert_eq!(*feats.paren_depth.last().expect("fixture"), 1);
    }

    #[test]
    fn preprocessor_continued_by_backslash() {
        let src = "  #define M(x) \\\n    ((x) + 1)\nint y;\n";
        let feats = f(src);
        assert_eq!(runs(src, &feats.preprocessor), vec!["#define M(x) \\\n    ((x) + 1)"]);
    }

    #[test]
    fn crlf_line_breaks_stay_outside_directives_and_comments() {
        let src = "#define A \\\r\n  1\r\nx; // c\r\ny";
        let feats = f(src);
        assert_eq!(runs(src, &feats.preprocessor), vec!["#define A \\\r\n  1"]);
        assert_eq!(runs(src, &feats.comment), vec!["// c"]);
    }

    #[test]
    fn preprocessor_continued_through_block_comment() {
        let src = "#define A 1 /* spans\n lines */\nint b;";
        assert_eq!(runs(src, &f(src).preprocessor), vec!["#define A 1 /* spans\n lines */"]);
    }

    #[test]
    fn hash_not_at_line_start_is_not_preprocessor() {
        let src = "x = 1; # y\n/* c */ #z\n#w";
        assert_eq!(runs(src, &f(src).preprocessor), vec!["#w"]);
    }

    #[test]
    fn hash_in_block_comment_line_is_not_preprocessor() {
        let src = "/*\n#not\n*/\n";
        assert!(f(src).preprocessor.iter().all(|&b| !b));
    }

    #[test]
    fn column_resets_after_newline() {
        let feats = f("ab\ncd\n\ne");
        assert_eq!(feats.column, vec![0, 1, 2, 0, 1, 2, 0, 0]);
    }

    #[test]
    fn empty_text() {
        assert!(f("").column.is_empty());
    }

    #[test]
    fn multibyte_chars_are_single_positions() {
        let src = "s = \"é€\"; // ü";
        let feats = f(src);
        assert_eq!(runs(src, &feats.string), vec!["\"é€\""]);
        assert_eq!(feats.column[src.chars().count() - 1], 13);
    }

    #[test]
    fn labels_pick_the_matching_feature() {
        let feats = f("if (a) { \"s\"; }");
        assert_eq!(feats.labels(Concept::String), Labels::Binary(feats.string.clone()));
        match feats.labels(Concept::BraceDepth) {
            Labels::Graded(v) => assert_eq!(v[7], 1.0),
            other => panic!("brace depth should be graded, got {other:?}"),
        }
    }

    #[test]
    fn regex_mask_maps_bytes_to_chars() {
        let text = chars("é foo ü foo");
        let re = Regex::new("foo").expect("valid regex");
        let mask = regex_mask(&text, &re);
        assert_eq!(show(&mask), "__^^^___^^^");
    }

    #[test]
    fn regex_mask_empty_matches_mark_nothing() {
        let text = chars("abc");
        let re = Regex::new("x*").expect("valid regex");
        assert_eq!(regex_mask(&text, &re), vec![false; 3]);
        let re = Regex::new("^").expect("valid regex");
        assert_eq!(regex_mask(&[], &re), Vec::<bool>::new());
    }

    #[test]
    fn span_mask_marks_half_open_ranges() {
        let mask = span_mask(6, &[(1, 3), (2, 4), (5, 5), (5, 6)]).expect("valid spans");
        assert_eq!(show(&mask), "_^^^_^");
    }

    #[test]
    fn span_mask_rejects_bad_spans() {
        assert!(matches!(span_mask(4, &[(0, 1), (3, 2)]), Err(AnalysisError::SpanReversed { index: 1, .. })));
        assert!(matches!(span_mask(4, &[(2, 5)]), Err(AnalysisError::SpanOutOfBounds { index: 0, end: 5, len: 4 })));
        assert!(span_mask(0, &[(0, 0)]).is_ok());
    }
}
