//! Reading a request body into JSON, in one pass that also refuses what a
//! plain `serde_json::from_slice` would let through:
//!
//! - nesting deeper than [`MAX_BODY_DEPTH`]: serde_json itself stops at 128
//!   levels, and the queued change wraps the body in a few more, so a body
//!   near that limit would be accepted here and then fail to decode in the
//!   worker, forever;
//! - U+0000 in any string or member name: PostgreSQL `TEXT` cannot hold it,
//!   so such a value could never be stored, nor even its log row written;
//! - a member name given twice in one object, compared ignoring ASCII case
//!   as SCIM attribute names are: serde_json keeps the last one silently,
//!   so `"Operations"` twice would apply only the second list.
//!
//! The checks run while the value is built, instead of in a second walk
//! over the tree: one comparison per member and one byte scan per string.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::scim::error::{ScimError, ScimType};

/// Deepest nesting of arrays and objects a body may have. SCIM resources
/// and PATCH messages need about six levels (message, `Operations`, an
/// operation, its value, an extension, `manager`); the queued change adds
/// four more, far below serde_json's 128.
pub const MAX_BODY_DEPTH: usize = 32;

/// Objects up to this many members are searched for a repeated name one by
/// one; larger ones keep a set of folded names instead.
const SCAN_MEMBERS: usize = 16;

/// Parses a request body, refusing what no SCIM request may hold (see the
/// module docs): 400 `invalidSyntax` for malformed JSON, nesting deeper
/// than [`MAX_BODY_DEPTH`] and repeated member names, 400 `invalidValue`
/// for U+0000.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ScimError> {
    let refused = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Node {
        depth: 0,
        refused: &refused,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| match refused.take() {
        Some(mut refusal) => {
            refusal.detail = format!(
                "{} (line {}, column {})",
                refusal.detail,
                e.line(),
                e.column()
            );
            refusal
        }
        None => ScimError::bad_request(
            ScimType::InvalidSyntax,
            format!("the request body is not valid JSON: {e}"),
        ),
    })
}

/// Builds one JSON value at `depth`; a refusal is kept in `refused`, since
/// serde's errors carry only a message.
#[derive(Clone, Copy)]
struct Node<'a> {
    depth: usize,
    refused: &'a Cell<Option<ScimError>>,
}

impl Node<'_> {
    fn refuse<E: de::Error>(self, error: ScimError) -> E {
        let message = error.detail.clone();
        self.refused.set(Some(error));
        E::custom(message)
    }

    /// The node for the members or items of a container at this node,
    /// refused when it would be nested too deep.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > MAX_BODY_DEPTH {
            return Err(self.refuse(ScimError::bad_request(
                ScimType::InvalidSyntax,
                format!(
                    "the request body is nested deeper than {MAX_BODY_DEPTH} levels of arrays \
                     and objects; SCIM resources need far fewer"
                ),
            )));
        }
        Ok(Node { depth, ..self })
    }

    fn text<E: de::Error>(self, s: &str) -> Result<(), E> {
        if s.as_bytes().contains(&0) {
            return Err(self.refuse(ScimError::bad_request(
                ScimType::InvalidValue,
                "the request body contains the character U+0000 (NUL), which no attribute \
                 can hold; remove it",
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.text(v)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.text(&v)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let item = self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(item)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let member = self.enter()?;
        let mut map = Map::new();
        let mut folded = None;
        while let Some(name) = access.next_key::<String>()? {
            self.text(&name)?;
            if is_repeated(&map, &mut folded, &name) {
                return Err(self.refuse(ScimError::bad_request(
                    ScimType::InvalidSyntax,
                    format!(
                        "the member \"{name}\" is given more than once in one object (member \
                         names are case-insensitive); send it once"
                    ),
                )));
            }
            let value = access.next_value_seed(member)?;
            map.insert(name, value);
        }
        Ok(Value::Object(map))
    }
}

/// Whether `name` matches, ignoring ASCII case, a member already in `map`.
/// `folded` holds the lower-cased names once the object is large, so a
/// body of many members costs linear time, not quadratic.
fn is_repeated(map: &Map<String, Value>, folded: &mut Option<HashSet<String>>, name: &str) -> bool {
    if map.len() < SCAN_MEMBERS {
        return map.keys().any(|k| k.eq_ignore_ascii_case(name));
    }
    let seen = folded.get_or_insert_with(|| map.keys().map(|k| k.to_ascii_lowercase()).collect());
    !seen.insert(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: &str) -> ScimError {
        parse_body(body.as_bytes()).expect_err("refused")
    }

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn a_body_reads_as_serde_json_reads_it() {
        let text = r#"{"schemas": ["urn:x"], "userName": "ann", "n": -1, "x": 1.5,
                       "big": 18446744073709551615, "ok": true, "none": null,
                       "emails": [{"value": "a@b.c", "type": "work"}], "é": "ü\u00e9"}"#;
        let ours = parse_body(text.as_bytes()).expect("parses");
        let theirs: Value = serde_json::from_str(text).expect("parses");
        assert_eq!(ours, theirs);
        // Member order is kept, as serde_json's preserve_order keeps it.
        let keys: Vec<&String> = ours.as_object().expect("object").keys().collect();
        let expected: Vec<&String> = theirs.as_object().expect("object").keys().collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn nesting_is_refused_past_the_limit_only() {
        parse_body(nested(MAX_BODY_DEPTH).as_bytes()).expect("at the limit");
        let e = refused(&nested(MAX_BODY_DEPTH + 1));
        assert_eq!(
            (e.status, e.scim_type),
            (400, Some(ScimType::InvalidSyntax))
        );
        assert!(e.detail.contains("deeper than 32 levels"), "{}", e.detail);
        // Below serde_json's own limit, which used to let it through.
        let deep = format!(r#"{{"Operations": [{{"x": {}}}]}}"#, nested(125));
        assert!(refused(&deep).detail.contains("deeper than"));
        // Far beyond it, the same answer.
        assert!(refused(&nested(10_000)).detail.contains("deeper than"));
    }

    #[test]
    fn nul_in_a_string_or_a_member_name_is_invalid_value() {
        for body in [
            r#"{"userName": "a\u0000b"}"#,
            r#"{"emails": [{"value": "\u0000"}]}"#,
            r#"{"a\u0000": 1}"#,
            r#"["\u0000"]"#,
        ] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(ScimType::InvalidValue)),
                "{body}"
            );
            assert!(e.detail.contains("U+0000"), "{}", e.detail);
        }
        // Other control characters, escaped, are ordinary text.
        assert_eq!(
            parse_body(br#"{"a": "\u0001\t"}"#).expect("parses"),
            json!({"a": "\u{1}\t"})
        );
    }

    #[test]
    fn a_repeated_member_is_invalid_syntax_naming_it_at_any_level() {
        for (body, name) in [
            (r#"{"Operations": [], "Operations": []}"#, "Operations"),
            (r#"{"userName": "a", "USERNAME": "b"}"#, "USERNAME"),
            (r#"{"x": [{"value": "a", "Value": "b"}]}"#, "Value"),
        ] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(ScimType::InvalidSyntax))
            );
            assert!(e.detail.contains(&format!("\"{name}\"")), "{}", e.detail);
            assert!(e.detail.contains("line 1"), "{}", e.detail);
        }
        // The same name in different objects is not a repeat.
        parse_body(br#"[{"value": "a"}, {"value": "b"}]"#).expect("parses");
    }

    #[test]
    fn repeats_are_found_in_large_objects_too() {
        let members: Vec<String> = (0..100).map(|i| format!("\"m{i}\": {i}")).collect();
        let body = format!("{{{}}}", members.join(","));
        assert_eq!(
            parse_body(body.as_bytes())
                .expect("parses")
                .as_object()
                .map(Map::len),
            Some(100)
        );
        for repeat in ["m3", "M3", "m99"] {
            let body = format!("{{{}, \"{repeat}\": 0}}", members.join(","));
            assert!(refused(&body).detail.contains(repeat));
        }
    }

    #[test]
    fn malformed_json_says_what_serde_json_says() {
        for body in ["", "{", "{\"a\": }", "[1] x", "{\"a\": \"\\uZZZZ\"}"] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(ScimType::InvalidSyntax))
            );
            assert!(
                e.detail.starts_with("the request body is not valid JSON"),
                "{}",
                e.detail
            );
        }
    }
}
