//! SCIM filters (RFC 7644 §3.4.2.2): parsing `filter=` expressions and
//! evaluating them against stored JSON resources.
//!
//! The parser is a bounded recursive-descent parser over a small token list:
//! it never panics and refuses input longer than [`MAX_FILTER_LEN`], nesting
//! deeper than [`MAX_FILTER_DEPTH`] or more than [`MAX_FILTER_TERMS`]
//! comparisons, so a hostile filter cannot make the service do unbounded work.
//!
//! Besides the RFC grammar it accepts what Entra ID and its test tools send:
//! keywords in any case, unquoted values (`id eq 54D382A4-... and manager eq
//! 2819c223-...`, `userName sw O`), `True`/`False` in any case, `not` without
//! parentheses, and `emails[type eq "work"].value eq "x"`, which is read as
//! "some email has type work and value x".

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Number, Value};

use crate::scim::error::{ScimError, ScimType};
use crate::scim::schema::{self, AttrType, AttributeDef, ResourceKind};

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting accepted: parentheses, `not` and `[...]` counted together.
pub const MAX_FILTER_DEPTH: usize = 16;
/// Most comparisons (`eq`, `pr`, ...) accepted in one filter.
pub const MAX_FILTER_TERMS: usize = 64;

/// An attribute path as the client wrote it: optional schema URN, attribute
/// name and optional sub-attribute (`urn:...:User:name.givenName`). Names
/// keep the client's spelling; resolve them with [`schema::find_attribute`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttrPath {
    /// Schema URN prefix, without the final `:`.
    pub urn: Option<String>,
    /// Attribute name.
    pub name: String,
    /// Sub-attribute name, from `name.sub`.
    pub sub: Option<String>,
}

impl AttrPath {
    /// A path with just an attribute name.
    pub fn simple(name: impl Into<String>) -> Self {
        AttrPath {
            urn: None,
            name: name.into(),
            sub: None,
        }
    }

    /// A path `name.sub`.
    pub fn with_sub(name: impl Into<String>, sub: impl Into<String>) -> Self {
        AttrPath {
            urn: None,
            name: name.into(),
            sub: Some(sub.into()),
        }
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// equal
    Eq,
    /// not equal
    Ne,
    /// contains
    Co,
    /// starts with
    Sw,
    /// ends with
    Ew,
    /// greater than
    Gt,
    /// greater than or equal
    Ge,
    /// less than
    Lt,
    /// less than or equal
    Le,
}

impl CompareOp {
    /// The operator keyword, lower-case.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    fn from_word(w: &str) -> Option<Self> {
        const ALL: [CompareOp; 9] = [
            CompareOp::Eq,
            CompareOp::Ne,
            CompareOp::Co,
            CompareOp::Sw,
            CompareOp::Ew,
            CompareOp::Gt,
            CompareOp::Ge,
            CompareOp::Lt,
            CompareOp::Le,
        ];
        ALL.into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(w))
    }
}

/// The literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompValue {
    /// A quoted string, or an unquoted word accepted leniently.
    Str(String),
    /// A JSON number.
    Num(Number),
    /// `true` / `false` (any case).
    Bool(bool),
    /// `null` (any case).
    Null,
}

impl CompValue {
    /// The value as text when it is a string or number (how a bare-word id
    /// such as `12345` compares with a string attribute).
    pub fn as_text(&self) -> Option<String> {
        match self {
            CompValue::Str(s) => Some(s.clone()),
            CompValue::Num(n) => Some(n.to_string()),
            CompValue::Bool(_) | CompValue::Null => None,
        }
    }
}

impl fmt::Display for CompValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Value's Display writes a JSON string with escapes.
            CompValue::Str(s) => write!(f, "{}", Value::String(s.clone())),
            CompValue::Num(n) => write!(f, "{n}"),
            CompValue::Bool(b) => write!(f, "{b}"),
            CompValue::Null => f.write_str("null"),
        }
    }
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `path op value`.
    Compare {
        /// The attribute compared.
        path: AttrPath,
        /// The operator.
        op: CompareOp,
        /// The literal.
        value: CompValue,
    },
    /// `path pr`: the attribute has a non-empty value.
    Present(AttrPath),
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// The inner filter does not hold.
    Not(Box<Filter>),
    /// `emails[type eq "work" and primary eq true]`: some value of the
    /// (complex) attribute satisfies the inner filter, whose paths are
    /// relative to the value (`type`, not `emails.type`).
    ValuePath {
        /// The multi-valued (or complex) attribute.
        path: AttrPath,
        /// The condition on one of its values.
        filter: Box<Filter>,
    },
}

impl Filter {
    /// `Some((path, value))` when the filter is exactly `path eq value`, the
    /// shape the database layer can answer with an indexed column.
    pub fn as_simple_eq(&self) -> Option<(&AttrPath, &CompValue)> {
        match self {
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value,
            } => Some((path, value)),
            _ => None,
        }
    }

    /// The terms of a conjunction, with nested `And`s flattened in order:
    /// `a and (b and c)` gives `[a, b, c]`; any other filter gives `[self]`.
    /// The database layer pushes the simple `eq` terms into SQL and checks
    /// the whole filter with [`matches`] afterwards.
    pub fn conjuncts(&self) -> Vec<&Filter> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(f) = stack.pop() {
            match f {
                Filter::And(l, r) => {
                    // Push right first so the left term comes out first.
                    stack.push(r);
                    stack.push(l);
                }
                other => out.push(other),
            }
        }
        out
    }
}

impl fmt::Display for Filter {
    /// Renders the filter in RFC syntax, parenthesising nested logical
    /// expressions so the text parses back to the same tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn operand(f: &mut fmt::Formatter<'_>, x: &Filter, parens: bool) -> fmt::Result {
            if parens {
                write!(f, "({x})")
            } else {
                write!(f, "{x}")
            }
        }
        match self {
            Filter::Compare { path, op, value } => write!(f, "{path} {} {value}", op.as_str()),
            Filter::Present(path) => write!(f, "{path} pr"),
            // Parsing is left-associative and `and` binds tighter than `or`,
            // so only these operands need parentheses to keep their shape.
            Filter::And(l, r) => {
                operand(f, l, matches!(**l, Filter::Or(..)))?;
                f.write_str(" and ")?;
                operand(f, r, matches!(**r, Filter::And(..) | Filter::Or(..)))
            }
            Filter::Or(l, r) => {
                operand(f, l, false)?;
                f.write_str(" or ")?;
                operand(f, r, matches!(**r, Filter::Or(..)))
            }
            Filter::Not(x) => write!(f, "not ({x})"),
            Filter::ValuePath { path, filter } => write!(f, "{path}[{filter}]"),
        }
    }
}

// ---------------------------------------------------------------------------
// Attribute paths
// ---------------------------------------------------------------------------

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '$'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '$'
}

fn check_name(name: &str, whole: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err(format!("'{whole}' has an empty attribute name")),
        Some(c) if !is_name_start(c) => Err(format!(
            "'{whole}' is not a valid attribute path: an attribute name must start with a letter"
        )),
        Some(_) => match chars.find(|c| !is_name_char(*c)) {
            Some(bad) => Err(format!(
                "'{whole}' is not a valid attribute path: '{bad}' is not allowed in an attribute name"
            )),
            None => Ok(()),
        },
    }
}

/// Splits `[urn ":"] name ["." sub]`. The URN is everything up to the last
/// `:` (URNs contain dots, as in `2.0`, but attribute names contain no `:`).
fn split_attr_path(text: &str) -> Result<AttrPath, String> {
    if text.is_empty() {
        return Err("an attribute path is empty".to_owned());
    }
    let (urn, rest) = match text.rfind(':') {
        Some(i) => {
            let urn = text.get(..i).unwrap_or_default();
            let rest = text.get(i + 1..).unwrap_or_default();
            let looks_like_urn = urn.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"));
            if !looks_like_urn {
                return Err(format!(
                    "'{text}' is not a valid attribute path: a schema prefix must be a URN such as \
                     'urn:ietf:params:scim:schemas:core:2.0:User:'"
                ));
            }
            if rest.is_empty() {
                return Err(format!(
                    "'{text}' ends with ':'; put the attribute name after the schema URN"
                ));
            }
            (Some(urn.to_owned()), rest)
        }
        None => (None, text),
    };
    let mut parts = rest.split('.');
    let name = parts.next().unwrap_or_default();
    let sub = parts.next();
    if parts.next().is_some() {
        return Err(format!(
            "'{text}' has too many '.' parts; use 'attribute' or 'attribute.subAttribute'"
        ));
    }
    check_name(name, text)?;
    if let Some(sub) = sub {
        check_name(sub, text)?;
    }
    Ok(AttrPath {
        urn,
        name: name.to_owned(),
        sub: sub.map(str::to_owned),
    })
}

/// Parses one attribute path, as used by the `attributes=`,
/// `excludedAttributes=` and `sortBy=` parameters: `userName`,
/// `name.familyName`, `urn:...:enterprise:2.0:User:department`.
/// Errors are 400 `invalidPath`.
pub fn parse_attr_path(input: &str) -> Result<AttrPath, ScimError> {
    split_attr_path(input.trim())
        .map_err(|m| ScimError::bad_request(ScimType::InvalidPath, format!("attribute path: {m}")))
}

/// A PATCH path split up: the attribute, and for `attr[filter].sub` the
/// filter and the optional sub-attribute.
pub(crate) type PatchPathParts = (AttrPath, Option<(Filter, Option<String>)>);

/// Parses a PATCH path (RFC 7644 §3.5.2: `attrPath / valuePath [subAttr]`):
/// the attribute, and when brackets are present the value filter and the
/// optional sub-attribute after `]`. Errors are 400 `invalidPath`.
pub(crate) fn parse_patch_path_parts(input: &str) -> Result<PatchPathParts, ScimError> {
    let text = input.trim();
    let bad =
        |m: String| ScimError::bad_request(ScimType::InvalidPath, format!("path '{text}': {m}"));
    let Some(open) = text.find('[') else {
        return split_attr_path(text).map(|p| (p, None)).map_err(bad);
    };
    let head = text.get(..open).unwrap_or_default();
    let path = split_attr_path(head).map_err(bad)?;
    if path.sub.is_some() {
        return Err(bad(
            "a '[filter]' must follow an attribute name, as in emails[type eq \"work\"].value"
                .to_owned(),
        ));
    }
    // Find the closing bracket outside string literals.
    let after_open = text.get(open + 1..).unwrap_or_default();
    let mut in_string = false;
    let mut escaped = false;
    let mut close = None;
    for (i, c) in after_open.char_indices() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ']' {
            close = Some(i);
            break;
        }
    }
    let Some(close) = close else {
        return Err(bad("the '[' is never closed with ']'".to_owned()));
    };
    let inner = after_open.get(..close).unwrap_or_default();
    let tail = after_open.get(close + 1..).unwrap_or_default();
    let filter = parse_filter_with(inner, true).map_err(|e| bad(e.detail))?;
    let sub = if tail.is_empty() {
        None
    } else if let Some(name) = tail.strip_prefix('.') {
        check_name(name, text).map_err(bad)?;
        Some(name.to_owned())
    } else {
        return Err(bad(format!(
            "unexpected '{tail}' after ']'; only '.subAttribute' may follow"
        )));
    };
    Ok((path, Some((filter, sub))))
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// A quoted JSON string, unescaped.
    Str(String),
    /// Any other run of characters: keyword, attribute path, bare value.
    Word(String),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Character position (0-based) of the token's first character.
    pos: usize,
}

fn filter_error(msg: impl fmt::Display) -> ScimError {
    ScimError::bad_request(ScimType::InvalidFilter, format!("filter: {msg}"))
}

fn read_hex4(
    chars: &mut std::iter::Peekable<std::iter::Enumerate<std::str::Chars<'_>>>,
) -> Option<u32> {
    let mut v: u32 = 0;
    for _ in 0..4 {
        let (_, c) = chars.next()?;
        v = v.checked_mul(16)?.checked_add(c.to_digit(16)?)?;
    }
    Some(v)
}

fn lex(input: &str) -> Result<Vec<Token>, ScimError> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().enumerate().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' => {
                chars.next();
                let tok = match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    _ => Tok::RBracket,
                };
                tokens.push(Token { tok, pos });
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some((epos, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => {
                            let Some((_, e)) = chars.next() else { break };
                            let decoded = match e {
                                '"' => '"',
                                '\\' => '\\',
                                '/' => '/',
                                'b' => '\u{8}',
                                'f' => '\u{c}',
                                'n' => '\n',
                                'r' => '\r',
                                't' => '\t',
                                'u' => decode_unicode_escape(&mut chars).ok_or_else(|| {
                                    filter_error(format!(
                                        "invalid \\u escape in the string at position {epos}; \
                                         use \\uXXXX with four hex digits"
                                    ))
                                })?,
                                other => {
                                    return Err(filter_error(format!(
                                        "invalid escape '\\{other}' in the string at position {epos}"
                                    )));
                                }
                            };
                            s.push(decoded);
                        }
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err(filter_error(format!(
                        "the string starting at position {pos} is not closed with '\"'"
                    )));
                }
                refuse_nul(&s, pos)?;
                tokens.push(Token {
                    tok: Tok::Str(s),
                    pos,
                });
            }
            _ => {
                let mut w = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                refuse_nul(&w, pos)?;
                tokens.push(Token {
                    tok: Tok::Word(w),
                    pos,
                });
            }
        }
    }
    Ok(tokens)
}

/// Refuses U+0000 in a token, sent as is or as `\u0000`: no stored value
/// holds it (PostgreSQL TEXT cannot), and the database would refuse the
/// query rather than match nothing.
fn refuse_nul(token: &str, pos: usize) -> Result<(), ScimError> {
    if token.contains('\0') {
        return Err(filter_error(format!(
            "the value at position {pos} contains the character U+0000 (NUL), which no value \
             can hold; remove it"
        )));
    }
    Ok(())
}

fn decode_unicode_escape(
    chars: &mut std::iter::Peekable<std::iter::Enumerate<std::str::Chars<'_>>>,
) -> Option<char> {
    let first = read_hex4(chars)?;
    if (0xD800..0xDC00).contains(&first) {
        // A high surrogate must be followed by `\uDC00`-`\uDFFF`.
        if chars.next()?.1 != '\\' || chars.next()?.1 != 'u' {
            return None;
        }
        let second = read_hex4(chars)?;
        if !(0xDC00..0xE000).contains(&second) {
            return None;
        }
        let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
        char::from_u32(code)
    } else {
        char::from_u32(first)
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    depth: usize,
    terms: usize,
    in_brackets: bool,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::LParen => "'('".to_owned(),
        Tok::RParen => "')'".to_owned(),
        Tok::LBracket => "'['".to_owned(),
        Tok::RBracket => "']'".to_owned(),
        Tok::Str(s) => format!("the string {}", Value::String(s.clone())),
        Tok::Word(w) => format!("'{w}'"),
    }
}

fn is_keyword(w: &str, kw: &str) -> bool {
    w.eq_ignore_ascii_case(kw)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.next).cloned();
        if t.is_some() {
            self.next += 1;
        }
        t
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if is_keyword(w, kw))
    }

    fn enter(&mut self) -> Result<(), ScimError> {
        self.depth += 1;
        if self.depth > MAX_FILTER_DEPTH {
            return Err(filter_error(format!(
                "nesting is deeper than {MAX_FILTER_DEPTH} levels (parentheses, 'not' and \
                 '[...]' counted together); simplify the filter"
            )));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn count_term(&mut self) -> Result<(), ScimError> {
        self.terms += 1;
        if self.terms > MAX_FILTER_TERMS {
            return Err(filter_error(format!(
                "more than {MAX_FILTER_TERMS} comparisons; split the query"
            )));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.parse_and()?;
        while self.peek_keyword("or") {
            self.next += 1;
            let right = self.parse_and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.parse_not()?;
        while self.peek_keyword("and") {
            self.next += 1;
            let right = self.parse_not()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_not(&mut self) -> Result<Filter, ScimError> {
        if self.peek_keyword("not") {
            self.next += 1;
            self.enter()?;
            // RFC 7644 requires `not (...)`; `not userName eq "x"` is accepted
            // too because it is unambiguous.
            let inner = self.parse_not()?;
            self.leave();
            return Ok(Filter::Not(Box::new(inner)));
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Filter, ScimError> {
        let Some(token) = self.bump() else {
            return Err(filter_error(
                "the filter ends where an attribute name or '(' was expected",
            ));
        };
        match token.tok {
            Tok::LParen => {
                let open = token.pos;
                self.enter()?;
                let inner = self.parse_or()?;
                match self.bump() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => {}
                    Some(t) => {
                        return Err(filter_error(format!(
                            "expected ')' to close the '(' at position {open}, found {} at position {}",
                            describe(&t.tok),
                            t.pos
                        )));
                    }
                    None => {
                        return Err(filter_error(format!(
                            "the '(' at position {open} is never closed with ')'"
                        )));
                    }
                }
                self.leave();
                Ok(inner)
            }
            Tok::Word(w) if is_keyword(&w, "and") || is_keyword(&w, "or") => {
                Err(filter_error(format!(
                    "expected an attribute name or '(' at position {}, found the keyword '{w}'",
                    token.pos
                )))
            }
            Tok::Word(w) => self.parse_attr_expr(w, token.pos),
            other => Err(filter_error(format!(
                "expected an attribute name or '(' at position {}, found {}",
                token.pos,
                describe(&other)
            ))),
        }
    }

    fn parse_attr_expr(&mut self, word: String, pos: usize) -> Result<Filter, ScimError> {
        let path =
            split_attr_path(&word).map_err(|m| filter_error(format!("{m} (at position {pos})")))?;
        if matches!(
            self.peek(),
            Some(Token {
                tok: Tok::LBracket,
                ..
            })
        ) {
            return self.parse_value_path(path, &word, pos);
        }
        self.parse_condition(path, &word)
    }

    /// `attr[filter]`, optionally followed by `.sub op value` (Entra's
    /// `emails[type eq "work"].value eq "x"`), folded into the value filter.
    fn parse_value_path(
        &mut self,
        path: AttrPath,
        word: &str,
        pos: usize,
    ) -> Result<Filter, ScimError> {
        let open = self.bump().map(|t| t.pos).unwrap_or(pos);
        if self.in_brackets {
            return Err(filter_error(format!(
                "'[' at position {open} is inside another '[...]'; value filters cannot be nested"
            )));
        }
        if path.sub.is_some() {
            return Err(filter_error(format!(
                "'[' at position {open} must follow an attribute name without '.sub', \
                 as in emails[type eq \"work\"]"
            )));
        }
        self.enter()?;
        self.in_brackets = true;
        let inner = self.parse_or()?;
        self.in_brackets = false;
        match self.bump() {
            Some(Token {
                tok: Tok::RBracket, ..
            }) => {}
            Some(t) => {
                return Err(filter_error(format!(
                    "expected ']' to close the '[' at position {open}, found {} at position {}",
                    describe(&t.tok),
                    t.pos
                )));
            }
            None => {
                return Err(filter_error(format!(
                    "the '[' at position {open} is never closed with ']'"
                )));
            }
        }
        self.leave();
        let mut filter = inner;
        let sub_word = match self.peek() {
            Some(Token {
                tok: Tok::Word(w),
                pos,
            }) if w.starts_with('.') => Some((w.clone(), *pos)),
            _ => None,
        };
        if let Some((w, sub_pos)) = sub_word {
            self.next += 1;
            let sub = w.get(1..).unwrap_or_default();
            check_name(sub, &format!("{word}[...]{w}"))
                .map_err(|m| filter_error(format!("{m} (at position {sub_pos})")))?;
            let cond = self.parse_condition(AttrPath::simple(sub), &w)?;
            filter = Filter::And(Box::new(filter), Box::new(cond));
        }
        Ok(Filter::ValuePath {
            path,
            filter: Box::new(filter),
        })
    }

    /// The operator and value after an attribute path.
    fn parse_condition(&mut self, path: AttrPath, word: &str) -> Result<Filter, ScimError> {
        let op_token = self.bump();
        let (op_word, op_pos) = match op_token {
            Some(Token {
                tok: Tok::Word(w),
                pos,
            }) => (w, pos),
            Some(t) => {
                return Err(filter_error(format!(
                    "expected a comparison operator (eq, ne, co, sw, ew, pr, gt, ge, lt, le) \
                     after '{word}' at position {}, found {}",
                    t.pos,
                    describe(&t.tok)
                )));
            }
            None => {
                return Err(filter_error(format!(
                    "expected a comparison operator (eq, ne, co, sw, ew, pr, gt, ge, lt, le) \
                     after '{word}', but the filter ends"
                )));
            }
        };
        if is_keyword(&op_word, "pr") {
            self.count_term()?;
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::from_word(&op_word) else {
            return Err(filter_error(format!(
                "expected a comparison operator (eq, ne, co, sw, ew, pr, gt, ge, lt, le) \
                 after '{word}' at position {op_pos}, found '{op_word}'"
            )));
        };
        let value = self.parse_value(&op_word, op_pos)?;
        self.count_term()?;
        Ok(Filter::Compare { path, op, value })
    }

    fn parse_value(&mut self, op_word: &str, op_pos: usize) -> Result<CompValue, ScimError> {
        let expected = "a quoted string, a number, true, false or null";
        match self.bump() {
            Some(Token {
                tok: Tok::Str(s), ..
            }) => Ok(CompValue::Str(s)),
            Some(Token {
                tok: Tok::Word(w),
                pos,
            }) => {
                if is_keyword(&w, "true") {
                    Ok(CompValue::Bool(true))
                } else if is_keyword(&w, "false") {
                    Ok(CompValue::Bool(false))
                } else if is_keyword(&w, "null") {
                    Ok(CompValue::Null)
                } else if ["and", "or", "not"].iter().any(|k| is_keyword(&w, k)) {
                    Err(filter_error(format!(
                        "expected {expected} after '{op_word}' at position {op_pos}, found the \
                         keyword '{w}' at position {pos}; quote string values"
                    )))
                } else if let Some(n) = w.parse::<Number>().ok().filter(|n| n.to_string() == w) {
                    // Only words that read back identically become numbers, so
                    // a bare id keeps its exact text.
                    Ok(CompValue::Num(n))
                } else {
                    // Entra's legacy reference check sends unquoted ids.
                    Ok(CompValue::Str(w))
                }
            }
            Some(t) => Err(filter_error(format!(
                "expected {expected} after '{op_word}' at position {op_pos}, found {} at position {}",
                describe(&t.tok),
                t.pos
            ))),
            None => Err(filter_error(format!(
                "expected {expected} after '{op_word}' at position {op_pos}, but the filter ends"
            ))),
        }
    }
}

fn parse_filter_with(input: &str, in_brackets: bool) -> Result<Filter, ScimError> {
    if input.len() > MAX_FILTER_LEN {
        return Err(filter_error(format!(
            "the filter is {} bytes long; the limit is {MAX_FILTER_LEN}",
            input.len()
        )));
    }
    let tokens = lex(input)?;
    if tokens.is_empty() {
        return Err(filter_error(
            "the filter is empty; send an expression such as userName eq \"alice@example.com\"",
        ));
    }
    let mut p = Parser {
        tokens,
        next: 0,
        depth: usize::from(in_brackets),
        terms: 0,
        in_brackets,
    };
    let f = p.parse_or()?;
    if let Some(t) = p.peek() {
        return Err(filter_error(format!(
            "unexpected {} at position {}; expected 'and', 'or' or the end of the filter",
            describe(&t.tok),
            t.pos
        )));
    }
    Ok(f)
}

/// Parses a `filter=` expression (RFC 7644 §3.4.2.2). Errors are 400
/// `invalidFilter` with a detail that says what was expected where.
pub fn parse_filter(input: &str) -> Result<Filter, ScimError> {
    parse_filter_with(input, false)
}

/// Checks that every attribute a filter names exists in the schema of
/// `kind` and that each operator suits the attribute's type (no `gt` or `co`
/// on booleans, no `gt` on binaries, a dateTime compared with a date and
/// time, no comparison on a whole complex attribute without a `value`
/// sub-attribute). The HTTP layer can call it to answer 400
/// `invalidFilter` instead of silently matching nothing.
pub fn validate_filter(filter: &Filter, kind: ResourceKind) -> Result<(), ScimError> {
    validate_in(filter, Scope::Resource(kind))
}

fn validate_in(filter: &Filter, scope: Scope) -> Result<(), ScimError> {
    let unknown = |path: &AttrPath| match scope {
        Scope::Resource(kind) => {
            filter_error(format!("'{path}' is not an attribute of {}", kind.name()))
        }
        Scope::Element(parent) => filter_error(format!(
            "'{path}' is not a sub-attribute of '{}'",
            parent.map(|p| p.name).unwrap_or("the attribute")
        )),
    };
    match filter {
        Filter::Compare { path, op, value } => {
            let leaf = scope_leaf(scope, path).ok_or_else(|| unknown(path))?;
            let def = if leaf.is_complex() && path.sub.is_none() {
                schema::find_sub_attribute(leaf, "value").ok_or_else(|| {
                    filter_error(format!(
                        "'{path}' is complex; compare one of its sub-attributes, as in {path}.{} eq \"...\"",
                        leaf.sub_attributes.first().map(|s| s.name).unwrap_or("value")
                    ))
                })?
            } else {
                leaf
            };
            let text_op = matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew);
            let order_op = matches!(
                op,
                CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
            );
            if def.ty == AttrType::Boolean && (text_op || order_op) {
                return Err(filter_error(format!(
                    "'{}' cannot be used with the boolean attribute '{path}'; use eq or ne",
                    op.as_str()
                )));
            }
            // RFC 7644 §3.4.2.2: ordering on a Binary attribute is 400.
            if def.ty == AttrType::Binary && order_op {
                return Err(filter_error(format!(
                    "'{}' cannot be used with the binary attribute '{path}'; use eq or ne",
                    op.as_str()
                )));
            }
            // A dateTime compares as an instant, which the value must name;
            // co/sw/ew match its text, and `eq null` means absent.
            let readable = match value {
                CompValue::Str(s) => instant(s).is_some(),
                CompValue::Null => true,
                CompValue::Num(_) | CompValue::Bool(_) => false,
            };
            if def.ty == AttrType::DateTime && !text_op && !readable {
                return Err(filter_error(format!(
                    "'{path}' is a dateTime: compare it with an RFC 3339 date and time such as \
                     \"2026-01-05T10:00:00Z\", not {value}"
                )));
            }
            Ok(())
        }
        Filter::Present(path) => scope_leaf(scope, path)
            .map(|_| ())
            .ok_or_else(|| unknown(path)),
        Filter::And(l, r) | Filter::Or(l, r) => {
            validate_in(l, scope)?;
            validate_in(r, scope)
        }
        Filter::Not(x) => validate_in(x, scope),
        Filter::ValuePath { path, filter } => {
            let def = scope_leaf(scope, path).ok_or_else(|| unknown(path))?;
            if !def.is_complex() {
                return Err(filter_error(format!(
                    "'{path}' is not a complex attribute, so '[...]' cannot be applied to it"
                )));
            }
            validate_in(filter, Scope::Element(Some(def)))
        }
    }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/// What attribute paths are relative to: the resource, or one value of a
/// complex attribute inside `[...]`.
#[derive(Clone, Copy)]
enum Scope {
    Resource(ResourceKind),
    Element(Option<&'static AttributeDef>),
}

fn scope_leaf(scope: Scope, path: &AttrPath) -> Option<&'static AttributeDef> {
    match scope {
        Scope::Resource(kind) => schema::find_attribute(kind, path),
        Scope::Element(parent) => {
            let def = schema::find_sub_attribute(parent?, &path.name)?;
            match &path.sub {
                Some(s) => schema::find_sub_attribute(def, s),
                None => Some(def),
            }
        }
    }
}

/// Case-insensitive object member lookup: stored resources use the schema's
/// spelling, but this keeps matching robust for data written by older code.
pub(crate) fn get_ci<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The attribute a path selects in `json`, with its definition.
struct Located<'v> {
    raw: Option<&'v Value>,
    attr: Option<&'static AttributeDef>,
    sub: Option<&'v str>,
}

fn locate<'v, 'p>(scope: Scope, path: &'p AttrPath, json: &'v Value) -> Located<'v>
where
    'p: 'v,
{
    match scope {
        Scope::Resource(kind) => match schema::resolve_attribute(kind, path) {
            Some(r) => {
                let container = if r.in_extension() {
                    get_ci(json, r.schema.id)
                } else {
                    Some(json)
                };
                Located {
                    raw: container.and_then(|c| get_ci(c, r.attr.name)),
                    attr: Some(r.attr),
                    sub: path.sub.as_deref(),
                }
            }
            None => {
                // Unknown attribute: look it up generically so filters on data
                // the schema does not describe still work where they can.
                let container = match &path.urn {
                    Some(urn) if schema::schema_by_urn(kind, urn).is_none() => None,
                    Some(urn) if !urn.eq_ignore_ascii_case(kind.core_schema().id) => {
                        get_ci(json, urn)
                    }
                    _ => Some(json),
                };
                Located {
                    raw: container.and_then(|c| get_ci(c, &path.name)),
                    attr: None,
                    sub: path.sub.as_deref(),
                }
            }
        },
        Scope::Element(parent) => Located {
            raw: get_ci(json, &path.name),
            attr: parent.and_then(|p| schema::find_sub_attribute(p, &path.name)),
            sub: path.sub.as_deref(),
        },
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(is_empty_value),
        Value::Object(o) => o.values().all(is_empty_value),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The values a comparison looks at, and the definition that says how to
/// compare them. Multi-valued attributes contribute every element; a complex
/// attribute without `.sub` contributes its `value` sub-attribute.
fn leaf_values<'v>(loc: &Located<'v>) -> (Vec<&'v Value>, Option<&'static AttributeDef>) {
    let mut out = Vec::new();
    let elems: Vec<&Value> = match loc.raw {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    };
    let is_complex = loc.attr.is_some_and(|a| a.is_complex());
    for e in elems {
        let leaf = match (loc.sub, e) {
            (Some(s), Value::Object(_)) => get_ci(e, s),
            (Some(_), _) => None,
            (None, Value::Object(_)) => get_ci(e, "value"),
            (None, v) => Some(v),
        };
        match leaf {
            Some(Value::Array(items)) => out.extend(items.iter()),
            Some(Value::Null) | None => {}
            Some(v) => out.push(v),
        }
    }
    let def = match (loc.attr, loc.sub) {
        (Some(a), Some(s)) => schema::find_sub_attribute(a, s),
        (Some(a), None) if is_complex => schema::find_sub_attribute(a, "value"),
        (Some(a), None) => Some(a),
        (None, _) => None,
    };
    (out, def)
}

/// A string as comparisons see it: lower-cased unless the attribute is
/// `caseExact`.
pub(crate) fn fold(s: &str, case_exact: bool) -> String {
    if case_exact {
        s.to_owned()
    } else {
        s.to_lowercase()
    }
}

fn bool_word(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

fn cmp_number_text(a: &Number, text: &str) -> Option<Ordering> {
    let b: Number = text.trim().parse().ok()?;
    cmp_numbers(a, &b)
}

/// A dateTime read as an instant: RFC 3339, the profile of xsd:dateTime
/// with an offset, which is how the service renders them.
fn instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Orders an attribute value against a literal, when the two are comparable.
fn compare(v: &Value, lit: &CompValue, def: Option<&AttributeDef>) -> Option<Ordering> {
    if def.is_some_and(|d| d.ty == AttrType::DateTime) {
        // RFC 7644 §3.4.2.2: chronologically. As text, "10:00:00.250Z"
        // sorts before "10:00:00Z" and offsets compare as digits.
        let (Value::String(s), CompValue::Str(t)) = (v, lit) else {
            return None;
        };
        return Some(instant(s)?.cmp(&instant(t)?));
    }
    let case_exact = def.is_some_and(|d| d.case_exact);
    match (v, lit) {
        (Value::String(s), CompValue::Str(t)) => {
            Some(fold(s, case_exact).cmp(&fold(t, case_exact)))
        }
        (Value::String(s), CompValue::Num(n)) => {
            if *s == n.to_string() {
                Some(Ordering::Equal)
            } else {
                cmp_number_text(n, s).map(Ordering::reverse)
            }
        }
        (Value::Number(a), CompValue::Num(b)) => cmp_numbers(a, b),
        (Value::Number(a), CompValue::Str(t)) => cmp_number_text(a, t),
        _ => None,
    }
}

fn equals(v: &Value, lit: &CompValue, def: Option<&AttributeDef>) -> bool {
    match (v, lit) {
        (Value::Bool(a), CompValue::Bool(b)) => a == b,
        // Entra-style "True"/"False" strings on either side.
        (Value::Bool(a), CompValue::Str(t)) => bool_word(t) == Some(*a),
        (Value::String(s), CompValue::Bool(b)) => bool_word(s) == Some(*b),
        _ => compare(v, lit, def) == Some(Ordering::Equal),
    }
}

fn text_match(v: &Value, lit: &CompValue, def: Option<&AttributeDef>, op: CompareOp) -> bool {
    let (Value::String(s), Some(t)) = (v, lit.as_text()) else {
        return false;
    };
    let case_exact = def.is_some_and(|d| d.case_exact);
    let (s, t) = (fold(s, case_exact), fold(&t, case_exact));
    match op {
        CompareOp::Co => s.contains(&t),
        CompareOp::Sw => s.starts_with(&t),
        CompareOp::Ew => s.ends_with(&t),
        _ => false,
    }
}

fn eval_compare(
    scope: Scope,
    path: &AttrPath,
    op: CompareOp,
    lit: &CompValue,
    json: &Value,
) -> bool {
    let loc = locate(scope, path, json);
    let (values, def) = leaf_values(&loc);
    let present = values.iter().any(|v| !is_empty_value(v));
    if *lit == CompValue::Null {
        // `eq null` means "not present" and `ne null` "present"; other
        // operators have no meaning against null.
        return match op {
            CompareOp::Eq => !present,
            CompareOp::Ne => present,
            _ => false,
        };
    }
    if def.is_some_and(|d| d.ty == AttrType::Boolean)
        && !matches!(op, CompareOp::Eq | CompareOp::Ne)
    {
        return false;
    }
    if def.is_some_and(|d| d.ty == AttrType::Binary)
        && matches!(
            op,
            CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
        )
    {
        return false;
    }
    match op {
        CompareOp::Eq => values.iter().any(|v| equals(v, lit, def)),
        // An absent attribute is "not equal" to any value; for multi-valued
        // attributes any element that differs is enough (the "any element
        // matches" rule applied to ne).
        CompareOp::Ne => values.is_empty() || values.iter().any(|v| !equals(v, lit, def)),
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => {
            values.iter().any(|v| text_match(v, lit, def, op))
        }
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => values.iter().any(|v| {
            if matches!(lit, CompValue::Bool(_)) {
                return false;
            }
            compare(v, lit, def).is_some_and(|o| match op {
                CompareOp::Gt => o == Ordering::Greater,
                CompareOp::Ge => o != Ordering::Less,
                CompareOp::Lt => o == Ordering::Less,
                _ => o != Ordering::Greater,
            })
        }),
    }
}

fn eval(filter: &Filter, scope: Scope, json: &Value) -> bool {
    match filter {
        Filter::Compare { path, op, value } => eval_compare(scope, path, *op, value, json),
        Filter::Present(path) => {
            let loc = locate(scope, path, json);
            if loc.sub.is_some() {
                leaf_values(&loc).0.iter().any(|v| !is_empty_value(v))
            } else {
                loc.raw.is_some_and(|v| !is_empty_value(v))
            }
        }
        Filter::And(l, r) => eval(l, scope, json) && eval(r, scope, json),
        Filter::Or(l, r) => eval(l, scope, json) || eval(r, scope, json),
        Filter::Not(x) => !eval(x, scope, json),
        Filter::ValuePath { path, filter } => {
            let loc = locate(scope, path, json);
            let inner = Scope::Element(loc.attr);
            match loc.raw {
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|e| e.is_object() && eval(filter, inner, e)),
                Some(e @ Value::Object(_)) => eval(filter, inner, e),
                _ => false,
            }
        }
    }
}

/// Evaluates a value filter (the part inside `[...]`) against one value of
/// the complex attribute `parent`, as PATCH does to select elements.
pub(crate) fn matches_value(
    filter: &Filter,
    parent: &'static AttributeDef,
    element: &Value,
) -> bool {
    eval(filter, Scope::Element(Some(parent)), element)
}

/// Evaluates a filter against a stored resource of the given kind.
///
/// Rules (RFC 7644 §3.4.2.2): a multi-valued attribute matches if any value
/// matches; strings compare case-insensitively unless the schema marks the
/// attribute `caseExact`; `gt`/`ge`/`lt`/`le` order strings
/// lexicographically, numbers numerically and dateTimes chronologically,
/// and never match booleans or binaries; dateTimes are instants read as RFC
/// 3339 for `eq`/`ne` too, whatever their offset or fraction of a second;
/// `co`/`sw`/`ew` apply to strings only; `pr` needs a value that is not
/// null, `""` or empty; `eq null` matches an absent attribute. A complex
/// attribute compared without `.sub` (`emails eq "x"`) compares its `value`.
pub fn matches(filter: &Filter, kind: ResourceKind, resource: &Value) -> bool {
    eval(filter, Scope::Resource(kind), resource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn p(s: &str) -> Filter {
        parse_filter(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn perr(s: &str) -> ScimError {
        let e = parse_filter(s).expect_err(s);
        assert_eq!(e.status, 400, "{s}");
        assert_eq!(e.scim_type, Some(ScimType::InvalidFilter), "{s}");
        e
    }

    fn cmp(path: AttrPath, op: CompareOp, value: CompValue) -> Filter {
        Filter::Compare { path, op, value }
    }

    fn s(v: &str) -> CompValue {
        CompValue::Str(v.to_owned())
    }

    fn user() -> Value {
        json!({
            "schemas": [schema::USER_SCHEMA, schema::ENTERPRISE_USER_SCHEMA],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "Bjensen",
            "userName": "Bjensen@Example.com",
            "name": {"familyName": "Jensen", "givenName": "Barbara"},
            "displayName": "Babs Jensen",
            "title": "",
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "meta": {
                "resourceType": "User",
                "created": "2011-08-01T18:29:49.793Z",
                "lastModified": "2011-08-01T18:29:49.793Z"
            },
            schema::ENTERPRISE_USER_SCHEMA: {
                "employeeNumber": "701984",
                "department": "Tour Operations",
                "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}
            }
        })
    }

    fn user_matches(f: &str) -> bool {
        matches(&p(f), ResourceKind::User, &user())
    }

    // --- parsing -----------------------------------------------------------

    #[test]
    fn entra_test_connection_filter_parses_to_a_simple_eq() {
        let f = p(r#"userName eq "cf4d78e8-cc4f-4d5d-b8b9-183561c0104a""#);
        let (path, value) = f.as_simple_eq().unwrap();
        assert_eq!(path, &AttrPath::simple("userName"));
        assert_eq!(value, &s("cf4d78e8-cc4f-4d5d-b8b9-183561c0104a"));
    }

    #[test]
    fn operators_and_logic_keywords_are_case_insensitive() {
        let f = p(r#"userName EQ "a" AND Active Eq TRUE Or NOT (title PR)"#);
        assert_eq!(
            f,
            Filter::Or(
                Box::new(Filter::And(
                    Box::new(cmp(AttrPath::simple("userName"), CompareOp::Eq, s("a"))),
                    Box::new(cmp(
                        AttrPath::simple("Active"),
                        CompareOp::Eq,
                        CompValue::Bool(true)
                    ))
                )),
                Box::new(Filter::Not(Box::new(Filter::Present(AttrPath::simple(
                    "title"
                )))))
            )
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_and() {
        let f = p("a pr or b pr and not c pr");
        let Filter::Or(l, r) = f else { panic!() };
        assert_eq!(*l, Filter::Present(AttrPath::simple("a")));
        let Filter::And(b, notc) = *r else { panic!() };
        assert_eq!(*b, Filter::Present(AttrPath::simple("b")));
        assert!(matches!(*notc, Filter::Not(_)));
    }

    #[test]
    fn parentheses_override_precedence() {
        let f = p("(a pr or b pr) and c pr");
        assert!(matches!(f, Filter::And(ref l, _) if matches!(**l, Filter::Or(..))));
    }

    #[test]
    fn rfc_example_filters_parse() {
        for f in [
            r#"userName Eq "john""#,
            r#"name.familyName co "O'Malley""#,
            r#"userName sw "J""#,
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
            "title pr",
            r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
            r#"meta.lastModified ge "2011-05-13T04:42:34Z""#,
            r#"meta.lastModified lt "2011-05-13T04:42:34Z""#,
            r#"meta.lastModified le "2011-05-13T04:42:34Z""#,
            r#"title pr and userType eq "Employee""#,
            r#"title pr or userType eq "Intern""#,
            r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#,
            r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType eq "Employee" and (emails.type eq "work")"#,
            r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
            r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
        ] {
            p(f);
        }
    }

    #[test]
    fn urn_qualified_paths_split_at_the_last_colon() {
        let f = p(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq \"701984\"",
        );
        let (path, _) = f.as_simple_eq().unwrap();
        assert_eq!(
            path.urn.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert_eq!(path.name, "employeeNumber");
        let f =
            p("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq \"x\"");
        let (path, _) = f.as_simple_eq().unwrap();
        assert_eq!(path.name, "manager");
        assert_eq!(path.sub.as_deref(), Some("value"));
    }

    #[test]
    fn string_escapes_are_decoded() {
        let f = p(r#"displayName eq "say \"hi\" \\ caf\u00e9 \ud83d\ude00""#);
        assert_eq!(f.as_simple_eq().unwrap().1, &s("say \"hi\" \\ café 😀"));
    }

    #[test]
    fn numbers_booleans_and_null_literals_parse_in_any_case() {
        assert_eq!(
            p("x eq 42").as_simple_eq().unwrap().1,
            &CompValue::Num(Number::from(42))
        );
        assert_eq!(
            p("x eq -1.5").as_simple_eq().unwrap().1,
            &CompValue::Num(Number::from_f64(-1.5).unwrap())
        );
        assert_eq!(
            p("x eq False").as_simple_eq().unwrap().1,
            &CompValue::Bool(false)
        );
        assert_eq!(p("x eq NULL").as_simple_eq().unwrap().1, &CompValue::Null);
    }

    #[test]
    fn entra_legacy_unquoted_values_are_read_as_strings() {
        let f = p(
            "id eq 54D382A4-3FD4-4A29-B7CE-5F6D2B9B5B5C and manager eq 2819c223-7f76-453a-919d-413861904646",
        );
        let terms = f.conjuncts();
        assert_eq!(terms.len(), 2);
        assert_eq!(
            terms[0].as_simple_eq().unwrap().1,
            &s("54D382A4-3FD4-4A29-B7CE-5F6D2B9B5B5C")
        );
        assert_eq!(
            terms[1].as_simple_eq().unwrap().0,
            &AttrPath::simple("manager")
        );
    }

    #[test]
    fn reference_code_postman_filters_parse() {
        p(
            "name.FamilyName eq Employee and (emails.Value co example.com or emails.Value co example.org)",
        );
        p("userName sw O");
        p("meta.Created gt 2015-10-10T14:38:21.000Z");
        p(r#"DisplayName eq "BobIsAmazing""#);
    }

    #[test]
    fn attribute_names_may_contain_dollar_dash_and_underscore() {
        let f = p(r#"members[$ref eq "x"] and my-attr_2 pr"#);
        let t = f.conjuncts();
        let Filter::ValuePath { filter, .. } = t[0] else {
            panic!()
        };
        assert_eq!(filter.as_simple_eq().unwrap().0.name, "$ref");
        assert_eq!(*t[1], Filter::Present(AttrPath::simple("my-attr_2")));
    }

    #[test]
    fn filtered_sub_attribute_comparison_folds_into_the_value_filter() {
        let f = p(r#"emails[type eq "work"].value eq "user@contoso.com""#);
        let Filter::ValuePath { path, filter } = f else {
            panic!()
        };
        assert_eq!(path, AttrPath::simple("emails"));
        assert_eq!(
            *filter,
            Filter::And(
                Box::new(cmp(AttrPath::simple("type"), CompareOp::Eq, s("work"))),
                Box::new(cmp(
                    AttrPath::simple("value"),
                    CompareOp::Eq,
                    s("user@contoso.com")
                ))
            )
        );
    }

    #[test]
    fn conjuncts_flatten_nested_ands_in_order() {
        let f = p("a pr and (b pr and c pr) and (d pr or e pr)");
        let names: Vec<String> = f.conjuncts().iter().map(|x| x.to_string()).collect();
        assert_eq!(names, ["a pr", "b pr", "c pr", "d pr or e pr"]);
        assert_eq!(p("a pr").conjuncts().len(), 1);
    }

    #[test]
    fn missing_operator_error_names_the_attribute_and_position() {
        let e = perr("userName foo \"x\"");
        assert_eq!(
            e.detail,
            "filter: expected a comparison operator (eq, ne, co, sw, ew, pr, gt, ge, lt, le) \
             after 'userName' at position 9, found 'foo'"
        );
    }

    #[test]
    fn malformed_filters_are_invalid_filter_errors() {
        for bad in [
            "",
            "   ",
            "userName",
            "userName eq",
            r#"userName eq "unterminated"#,
            r#"(userName eq "a""#,
            r#"userName eq "a")"#,
            r#"userName eq "a" and"#,
            r#"and userName eq "a""#,
            r#"userName eq "a" userName eq "b""#,
            r#"emails[type eq "work""#,
            r#"emails[type eq "work" and x[y eq "z"]]"#,
            r#"name.givenName[x eq "y"]"#,
            r#"9lives eq "x""#,
            r#"a.b.c eq "x""#,
            r#"foo:bar eq "x""#,
            r#"userName eq and"#,
            r#"x eq "\q""#,
            r#"x eq "\u12""#,
            r#"x eq "\ud800""#,
            r#"emails[type eq "work"].9 eq "x""#,
            "()",
            "[",
            "userName eq (",
        ] {
            perr(bad);
        }
    }

    #[test]
    fn nul_in_a_filter_is_invalid_filter_however_it_is_written() {
        for f in [
            "userName eq \"a\u{0}b\"",
            r#"userName eq "a\u0000b""#,
            "id eq a\u{0}",
        ] {
            let e = perr(f);
            assert!(e.detail.contains("U+0000"), "{f}: {}", e.detail);
        }
    }

    #[test]
    fn overlong_filters_are_refused() {
        let long = format!("userName eq \"{}\"", "a".repeat(MAX_FILTER_LEN));
        let e = perr(&long);
        assert!(e.detail.contains("4096"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}a pr{}", "(".repeat(17), ")".repeat(17));
        assert!(perr(&deep).detail.contains("nesting"));
        let ok = format!("{}a pr{}", "(".repeat(16), ")".repeat(16));
        p(&ok);
        let nots = format!("{}a pr", "not ".repeat(17));
        perr(&nots);
    }

    #[test]
    fn too_many_terms_are_refused() {
        let ok = vec!["a pr"; 64].join(" or ");
        p(&ok);
        let too_many = vec!["a pr"; 65].join(" or ");
        assert!(perr(&too_many).detail.contains("64"));
    }

    #[test]
    fn parse_attr_path_accepts_the_three_forms_and_rejects_junk() {
        assert_eq!(
            parse_attr_path("userName").unwrap(),
            AttrPath::simple("userName")
        );
        assert_eq!(
            parse_attr_path("name.givenName").unwrap(),
            AttrPath::with_sub("name", "givenName")
        );
        let p = parse_attr_path(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
        )
        .unwrap();
        assert_eq!(p.name, "department");
        for bad in [
            "",
            "a b",
            "1x",
            "x.",
            "a.b.c",
            "urn:x:",
            "emails[type eq \"w\"]",
        ] {
            let e = parse_attr_path(bad).expect_err(bad);
            assert_eq!(e.status, 400);
            assert_eq!(e.scim_type, Some(ScimType::InvalidPath));
        }
    }

    #[test]
    fn patch_paths_split_into_attribute_filter_and_sub() {
        let (path, rest) = parse_patch_path_parts(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(path, AttrPath::simple("emails"));
        let (filter, sub) = rest.unwrap();
        assert_eq!(
            filter,
            cmp(AttrPath::simple("type"), CompareOp::Eq, s("work"))
        );
        assert_eq!(sub.as_deref(), Some("value"));
        let (_, rest) = parse_patch_path_parts(r#"members[value eq "a]b"]"#).unwrap();
        assert_eq!(rest.unwrap().0.as_simple_eq().unwrap().1, &s("a]b"));
        for bad in [
            r#"emails[type eq "work""#,
            r#"emails[type eq "work"]value"#,
            r#"emails[type eq ]"#,
            r#"emails[x[y pr]]"#,
            r#"name.givenName[x pr]"#,
        ] {
            let e = parse_patch_path_parts(bad).expect_err(bad);
            assert_eq!(e.scim_type, Some(ScimType::InvalidPath), "{bad}");
        }
    }

    #[test]
    fn display_round_trips_through_the_parser() {
        for f in [
            r#"userName eq "a\"b" and (x pr or not (y lt 3))"#,
            r#"emails[type eq "work" and primary eq true] or urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
        ] {
            let parsed = p(f);
            assert_eq!(p(&parsed.to_string()), parsed);
        }
    }

    // --- evaluation --------------------------------------------------------

    #[test]
    fn user_name_eq_is_case_insensitive() {
        assert!(user_matches(r#"userName eq "bjensen@example.com""#));
        assert!(user_matches(r#"USERNAME eq "BJENSEN@EXAMPLE.COM""#));
        assert!(!user_matches(r#"userName eq "someone@example.com""#));
    }

    #[test]
    fn external_id_and_id_compare_case_exactly() {
        assert!(user_matches(r#"externalId eq "Bjensen""#));
        assert!(!user_matches(r#"externalId eq "bjensen""#));
        assert!(user_matches("id eq 2819c223-7f76-453a-919d-413861904646"));
        assert!(!user_matches("id eq 2819C223-7F76-453A-919D-413861904646"));
    }

    #[test]
    fn multi_valued_attribute_matches_if_any_element_matches() {
        assert!(user_matches(r#"emails.value eq "babs@jensen.org""#));
        assert!(user_matches(r#"emails eq "BABS@jensen.org""#));
        assert!(user_matches(r#"emails co "example.com""#));
        assert!(!user_matches(r#"emails.value eq "nobody@x.org""#));
    }

    #[test]
    fn value_path_filters_select_one_element() {
        assert!(user_matches(
            r#"emails[type eq "work" and primary eq true]"#
        ));
        assert!(!user_matches(
            r#"emails[type eq "home" and primary eq true]"#
        ));
        assert!(user_matches(
            r#"emails[type eq "work"].value eq "bjensen@example.com""#
        ));
        assert!(!user_matches(
            r#"emails[type eq "home"].value eq "bjensen@example.com""#
        ));
        assert!(user_matches(r#"emails[primary eq "True"]"#));
    }

    #[test]
    fn sub_attributes_and_enterprise_attributes_are_filterable() {
        assert!(user_matches(r#"name.familyName eq "jensen""#));
        assert!(user_matches(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984""#
        ));
        assert!(user_matches("employeeNumber eq 701984"));
        assert!(user_matches(
            "id eq 2819c223-7f76-453a-919d-413861904646 and manager eq 26118915-6090-4610-87e4-49d8ca9f808d"
        ));
        assert!(user_matches(
            r#"manager[value eq "26118915-6090-4610-87e4-49d8ca9f808d"]"#
        ));
    }

    #[test]
    fn presence_ignores_null_empty_strings_and_empty_arrays() {
        assert!(user_matches("emails pr"));
        assert!(user_matches("name pr"));
        assert!(!user_matches("title pr"));
        assert!(!user_matches("nickName pr"));
        let mut u = user();
        u["roles"] = json!([]);
        u["nickName"] = Value::Null;
        assert!(!matches(&p("roles pr"), ResourceKind::User, &u));
        assert!(!matches(&p("nickName pr"), ResourceKind::User, &u));
    }

    #[test]
    fn eq_null_means_absent() {
        assert!(user_matches("nickName eq null"));
        assert!(!user_matches("userName eq null"));
        assert!(user_matches("userName ne null"));
        assert!(!user_matches("userName gt null"));
    }

    #[test]
    fn ordering_operators_compare_strings_numbers_and_datetimes() {
        assert!(user_matches(
            r#"meta.lastModified gt "2011-05-13T04:42:34Z""#
        ));
        assert!(!user_matches(
            r#"meta.lastModified lt "2011-05-13T04:42:34Z""#
        ));
        assert!(user_matches("meta.Created gt 2010-10-10T14:38:21Z"));
        assert!(user_matches(r#"userName ge "BJENSEN@example.com""#));
        assert!(user_matches(r#"userName lt "c""#));
        let n = json!({"userName": "x", "count": 10});
        assert!(matches(&p("count gt 9"), ResourceKind::User, &n));
        assert!(matches(&p("count le 10.0"), ResourceKind::User, &n));
        assert!(!matches(&p("count lt 2"), ResourceKind::User, &n));
    }

    #[test]
    fn datetimes_compare_as_instants_whatever_their_form() {
        let u = json!({"userName": "x", "meta": {
            "created": "2026-01-05T10:00:00.250Z",
            "lastModified": "2026-01-05T10:00:00.000Z"
        }});
        let m = |f: &str| matches(&p(f), ResourceKind::User, &u);
        // A quarter second after the whole second, though "." sorts before "Z".
        assert!(m(r#"meta.created ge "2026-01-05T10:00:00Z""#));
        assert!(m(r#"meta.created gt "2026-01-05T10:00:00Z""#));
        assert!(!m(r#"meta.created le "2026-01-05T10:00:00Z""#));
        // 10:30+01:00 is 09:30Z, half an hour before.
        assert!(m(r#"meta.created gt "2026-01-05T10:30:00+01:00""#));
        assert!(!m(r#"meta.created lt "2026-01-05T10:30:00+01:00""#));
        assert!(m(r#"meta.created lt "2026-01-05T05:00:01-05:00""#));
        // Equality is of instants too.
        assert!(m(r#"meta.created eq "2026-01-05T11:00:00.25+01:00""#));
        assert!(!m(r#"meta.created ne "2026-01-05T11:00:00.25+01:00""#));
        assert!(m(r#"meta.lastModified eq "2026-01-05T10:00:00Z""#));
        assert!(m(r#"meta[lastModified le "2026-01-05T10:00:00Z"]"#));
        assert!(!m(r#"meta.lastModified eq "2026-01-05T10:00:00.001Z""#));
    }

    #[test]
    fn validate_filter_refuses_unreadable_datetimes_and_binary_ordering() {
        for f in [
            r#"meta.created gt "2011""#,
            r#"meta.created eq "yesterday""#,
            r#"meta.lastModified ne "2026-01-05 10:00""#,
            "meta.lastModified ge 2011",
            "meta.created lt true",
            r#"meta[created gt "soon"]"#,
            r#"x509Certificates.value gt "TUlJQ""#,
            r#"x509Certificates lt "TUlJQ""#,
            r#"x509Certificates[value ge "TUlJQ"]"#,
        ] {
            let e = validate_filter(&p(f), ResourceKind::User).expect_err(f);
            assert_eq!(e.scim_type, Some(ScimType::InvalidFilter), "{f}");
        }
        for f in [
            r#"meta.created ge "2026-01-05T10:00:00.250+01:00""#,
            "meta.created eq null",
            "meta.created pr",
            r#"meta.created sw "2026-01""#,
            r#"x509Certificates.value eq "TUlJQ""#,
        ] {
            validate_filter(&p(f), ResourceKind::User).expect(f);
        }
        assert!(!matches(
            &p(r#"x509Certificates.value gt "A""#),
            ResourceKind::User,
            &json!({"userName": "x", "x509Certificates": [{"value": "TUlJQ"}]})
        ));
    }

    #[test]
    fn ordering_and_text_operators_never_match_booleans() {
        assert!(!user_matches("active gt false"));
        assert!(!user_matches("active co \"tr\""));
        assert!(user_matches("active eq true"));
        assert!(user_matches("active eq \"True\""));
        assert!(user_matches("active ne false"));
    }

    #[test]
    fn ne_and_not_behave_as_negations() {
        assert!(user_matches(r#"userName ne "other""#));
        assert!(!user_matches(r#"userName ne "BJENSEN@example.com""#));
        assert!(user_matches(r#"nickName ne "x""#));
        assert!(user_matches(r#"not (userName eq "other")"#));
        assert!(user_matches(r#"not userName eq "other""#));
    }

    #[test]
    fn starts_and_ends_with_follow_case_exactness() {
        assert!(user_matches(r#"userName sw "bj""#));
        assert!(user_matches(r#"userName ew ".COM""#));
        assert!(!user_matches(r#"externalId sw "bj""#));
        assert!(user_matches(r#"externalId sw "Bj""#));
    }

    #[test]
    fn group_display_name_matches_case_insensitively() {
        let g = json!({"displayName": "Platform Team", "externalId": "8aa1a0c0"});
        assert!(matches(
            &p(r#"displayName eq "platform team""#),
            ResourceKind::Group,
            &g
        ));
        assert!(!matches(
            &p(r#"externalId eq "8AA1A0C0""#),
            ResourceKind::Group,
            &g
        ));
    }

    #[test]
    fn validate_filter_rejects_unknown_attributes_and_boolean_ordering() {
        validate_filter(
            &p(r#"userName eq "a" and emails[type eq "work"]"#),
            ResourceKind::User,
        )
        .unwrap();
        validate_filter(
            &p("meta.lastModified gt \"2011-05-13T04:42:34Z\""),
            ResourceKind::User,
        )
        .unwrap();
        for (f, kind) in [
            (r#"bogus eq "a""#, ResourceKind::User),
            (r#"manager eq "a""#, ResourceKind::Group),
            ("active gt true", ResourceKind::User),
            (r#"emails[bogus eq "a"]"#, ResourceKind::User),
            (r#"userName[value eq "a"]"#, ResourceKind::User),
            (r#"name eq "a""#, ResourceKind::User),
        ] {
            let e = validate_filter(&p(f), kind).expect_err(f);
            assert_eq!(e.scim_type, Some(ScimType::InvalidFilter), "{f}");
        }
    }

    // --- properties --------------------------------------------------------

    fn near_valid_filter() -> impl Strategy<Value = String> {
        let attr = prop::sample::select(vec![
            "userName",
            "name.familyName",
            "emails",
            "emails.value",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
            "meta.created",
            "active",
            "$ref",
            "x",
        ]);
        let op = prop::sample::select(vec![
            "eq", "NE", "co", "sw", "ew", "gt", "ge", "lt", "le", "pr", "Eq", "xx",
        ]);
        let val = prop::sample::select(vec![
            "\"a\"",
            "\"\\u00e9\"",
            "1",
            "-2.5e3",
            "true",
            "False",
            "null",
            "bare-id",
            "\"",
            "",
        ]);
        let term = (attr, op, val).prop_map(|(a, o, v)| {
            if o == "pr" {
                format!("{a} pr")
            } else {
                format!("{a} {o} {v}")
            }
        });
        let glue = prop::sample::select(vec![
            " and ",
            " or ",
            " AND not ",
            " or (",
            ") and ",
            "[",
            "]",
            " ",
            ")",
        ]);
        prop::collection::vec((term, glue), 1..20).prop_map(|parts| {
            parts
                .into_iter()
                .map(|(t, g)| format!("{t}{g}"))
                .collect::<String>()
        })
    }

    fn terms(f: &Filter) -> usize {
        match f {
            Filter::Compare { .. } | Filter::Present(_) => 1,
            Filter::And(l, r) | Filter::Or(l, r) => terms(l) + terms(r),
            Filter::Not(x) => terms(x),
            Filter::ValuePath { filter, .. } => terms(filter),
        }
    }

    fn depth(f: &Filter) -> usize {
        match f {
            Filter::Compare { .. } | Filter::Present(_) => 0,
            Filter::And(l, r) | Filter::Or(l, r) => depth(l).max(depth(r)),
            Filter::Not(x) => 1 + depth(x),
            Filter::ValuePath { filter, .. } => 1 + depth(filter),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_filter_never_panics_on_arbitrary_text(input in "\\PC{0,200}") {
            let _ = parse_filter(&input);
        }

        #[test]
        fn parse_filter_never_panics_on_filter_like_bytes(input in "[a-z\"\\\\()\\[\\] .:$0-9]{0,120}") {
            if let Ok(f) = parse_filter(&input) {
                prop_assert!(terms(&f) <= MAX_FILTER_TERMS);
            }
        }

        #[test]
        fn near_valid_filters_parse_within_limits_and_evaluate(input in near_valid_filter()) {
            match parse_filter(&input) {
                Ok(f) => {
                    prop_assert!(terms(&f) <= MAX_FILTER_TERMS);
                    prop_assert!(depth(&f) <= MAX_FILTER_DEPTH);
                    let _ = matches(&f, ResourceKind::User, &user());
                    let _ = validate_filter(&f, ResourceKind::User);
                    // The rendered form parses back to the same tree, unless
                    // the RFC's `not (...)` pushes it past the nesting limit.
                    match parse_filter(&f.to_string()) {
                        Ok(g) => prop_assert_eq!(g, f),
                        Err(e) => prop_assert!(e.detail.contains("nesting"), "{}", e.detail),
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e.status, 400);
                    prop_assert_eq!(e.scim_type, Some(ScimType::InvalidFilter));
                }
            }
        }

        #[test]
        fn patch_path_parsing_never_panics(input in "\\PC{0,80}") {
            if let Err(e) = parse_patch_path_parts(&input) {
                prop_assert_eq!(e.scim_type, Some(ScimType::InvalidPath));
            }
        }
    }
}
