//! A serde `Deserializer` over a [`Node`] tree that keeps going after an error.
//!
//! serde's derived code stops at the first error. To report *every* problem at once, this
//! deserializer never hands a type error back to the derived code when it can recover: it
//! records the problem (with the node's location and path) and feeds the visitor a
//! placeholder of the requested type instead. Unknown keys are dropped and recorded with a
//! "did you mean" hint, using the field list serde passes to `deserialize_struct`. Leaf types
//! that parse strings (durations, addresses) report through [`soft_error`] for the same reason.
//! Whatever still aborts (a missing required field) is recorded once at its location.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

use crate::diag::{Diagnostic, did_you_mean};
use crate::tree::{Entry, Location, Node, Scalar, Value};

#[derive(Debug)]
pub struct DeError {
    msg: String,
    recorded: bool,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            msg: msg.to_string(),
            recorded: false,
        }
    }
}

/// Struct name that lets a type accept a list where a mapping is expected (see `Plugins`).
pub const SEQ_OR_MAP: &str = "$kos::SeqOrMap";
/// Struct name that lets a type accept a scalar where a mapping is expected (see `Oidc`).
pub const SCALAR_OR_MAP: &str = "$kos::ScalarOrMap";

thread_local! {
    /// Placeholders handed out for values that already have an error, so a leaf type does
    /// not report the same value a second time.
    static PLACEHOLDERS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static SOFT: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Reports a recoverable error from inside a `Deserialize` impl. Returns `true` when a
/// tolerant load is running (the caller then returns a placeholder value), `false` otherwise
/// (the caller returns the error as usual).
pub fn soft_error(msg: String) -> bool {
    SOFT.with(|s| match s.borrow_mut().as_mut() {
        Some(v) => {
            v.push(msg);
            true
        }
        None => false,
    })
}

/// Turns a parse result into a deserialization result, recovering through [`soft_error`].
pub fn soft<T, E: de::Error>(
    r: Result<T, String>,
    placeholder: impl FnOnce() -> T,
) -> Result<T, E> {
    match r {
        Ok(v) => Ok(v),
        Err(msg) => {
            if soft_error(msg.clone()) {
                Ok(placeholder())
            } else {
                Err(E::custom(msg))
            }
        }
    }
}

fn soft_len() -> usize {
    SOFT.with(|s| s.borrow().as_ref().map_or(0, Vec::len))
}

fn soft_drain(from: usize) -> Vec<String> {
    SOFT.with(|s| {
        s.borrow_mut()
            .as_mut()
            .map(|v| v.split_off(from.min(v.len())))
            .unwrap_or_default()
    })
}

#[derive(Default)]
struct Sink {
    diags: RefCell<Vec<Diagnostic>>,
}

impl Sink {
    fn error(&self, loc: &Location, path: &str, msg: impl Into<String>) {
        crate::diag::push_capped(
            &mut self.diags.borrow_mut(),
            Diagnostic::error(loc.clone(), path, msg),
        );
    }
}

/// Deserializes `root` into `T`, collecting every problem. Returns the value when no error
/// aborted the derived code (it may still hold placeholders if diagnostics were recorded).
pub fn from_node<T: DeserializeOwned>(root: &Node) -> (Option<T>, Vec<Diagnostic>) {
    let sink = Sink::default();
    let previous = SOFT.with(|s| s.borrow_mut().replace(Vec::new()));
    let result = T::deserialize(De {
        node: root,
        path: String::new(),
        sink: &sink,
    });
    let leftover = SOFT
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), previous))
        .unwrap_or_default();
    for m in leftover {
        sink.error(&root.loc, "", m);
    }
    let value = match result {
        Ok(v) => Some(v),
        Err(e) => {
            if !e.recorded {
                sink.error(&root.loc, "", e.msg);
            }
            None
        }
    };
    (value, sink.diags.into_inner())
}

/// The field names serde knows for a struct type (used to map environment variables).
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe;
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl fmt::Display for Found {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Found(&[])
        }
    }
    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Ok(_) => &[],
        Err(Found(f)) => f,
    }
}

struct De<'a> {
    node: &'a Node,
    path: String,
    sink: &'a Sink,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> De<'a> {
    fn mismatch(&self, expected: &str) {
        PLACEHOLDERS.with(|p| p.set(p.get() + 1));
        self.sink.error(
            &self.node.loc,
            &self.path,
            format!("expected {expected}, found {}", self.node.kind_name()),
        );
    }

    fn scalar(&self) -> Option<&'a Scalar> {
        match &self.node.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn parse<T: std::str::FromStr>(&self, expected: &str) -> Option<T> {
        match self.scalar() {
            Some(s) => match s.text.trim().replace('_', "").parse() {
                Ok(v) => Some(v),
                Err(_) => {
                    self.mismatch(expected);
                    None
                }
            },
            None => {
                self.mismatch(expected);
                None
            }
        }
    }
}

macro_rules! int_method {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let expected = format!("an integer between {} and {}", <$ty>::MIN, <$ty>::MAX);
            let n: $ty = self.parse(&expected).unwrap_or_default();
            v.$visit(n)
        }
    };
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => v.visit_unit(),
            Value::Scalar(s) if s.quoted => v.visit_str(&s.text),
            Value::Scalar(s) => {
                let t = s.text.as_str();
                match t {
                    "true" | "True" | "TRUE" => return v.visit_bool(true),
                    "false" | "False" | "FALSE" => return v.visit_bool(false),
                    _ => {}
                }
                if let Ok(i) = t.parse::<i64>() {
                    return v.visit_i64(i);
                }
                if let Ok(u) = t.parse::<u64>() {
                    return v.visit_u64(u);
                }
                if t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
                    && let Ok(f) = t.parse::<f64>()
                {
                    return v.visit_f64(f);
                }
                v.visit_str(t)
            }
            Value::Seq(items) => v.visit_seq(SeqDe {
                items: items.iter().collect(),
                i: 0,
                path: self.path,
                sink: self.sink,
            }),
            Value::Map(entries) => {
                v.visit_map(MapDe::new(entries.iter().collect(), self.path, self.sink))
            }
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let b = match self.scalar().map(|s| s.text.as_str()) {
            Some("true" | "True" | "TRUE") => true,
            Some("false" | "False" | "FALSE") => false,
            _ => {
                self.mismatch("a boolean (true or false)");
                false
            }
        };
        v.visit_bool(b)
    }

    int_method!(deserialize_i8, visit_i8, i8);
    int_method!(deserialize_i16, visit_i16, i16);
    int_method!(deserialize_i32, visit_i32, i32);
    int_method!(deserialize_i64, visit_i64, i64);
    int_method!(deserialize_u8, visit_u8, u8);
    int_method!(deserialize_u16, visit_u16, u16);
    int_method!(deserialize_u32, visit_u32, u32);
    int_method!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f32(self.parse("a number").unwrap_or_default())
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f64(self.parse("a number").unwrap_or_default())
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            Some(s) => v.visit_str(&s.text),
            None => {
                self.mismatch("a string");
                v.visit_str("")
            }
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => v.visit_seq(SeqDe {
                items: items.iter().collect(),
                i: 0,
                path: self.path,
                sink: self.sink,
            }),
            Value::Null => v.visit_seq(SeqDe {
                items: Vec::new(),
                i: 0,
                path: self.path,
                sink: self.sink,
            }),
            Value::Scalar(s) if s.env => {
                // Environment variables carry lists as comma-separated values.
                let items: Vec<Node> = s
                    .text
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| Node::plain(p, self.node.loc.clone()))
                    .collect();
                let owned = OwnedSeq {
                    items,
                    path: self.path,
                    sink: self.sink,
                };
                owned.visit(v)
            }
            _ => {
                self.mismatch("a list");
                v.visit_seq(SeqDe {
                    items: Vec::new(),
                    i: 0,
                    path: self.path,
                    sink: self.sink,
                })
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => {
                v.visit_map(MapDe::new(entries.iter().collect(), self.path, self.sink))
            }
            Value::Null => v.visit_map(MapDe::new(Vec::new(), self.path, self.sink)),
            _ => {
                self.mismatch("a mapping");
                v.visit_map(MapDe::new(Vec::new(), self.path, self.sink))
            }
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => {
                let mut known = Vec::with_capacity(entries.len());
                for e in entries {
                    if fields.contains(&e.key.as_str()) {
                        known.push(e);
                    } else {
                        let mut msg = format!("unknown key `{}`", e.key);
                        if let Some(s) = did_you_mean(&e.key, fields.iter().copied()) {
                            msg.push_str(&format!(" (did you mean `{s}`?)"));
                        } else {
                            msg.push_str(&format!("; expected one of: {}", fields.join(", ")));
                        }
                        self.sink.error(&e.key_loc, &join(&self.path, &e.key), msg);
                    }
                }
                v.visit_map(MapDe::new(known, self.path, self.sink))
            }
            Value::Null => v.visit_map(MapDe::new(Vec::new(), self.path, self.sink)),
            // Only a type that asks for it accepts a list in place of a mapping; for any other
            // struct serde would fill the fields by position, which is never what a user meant.
            Value::Seq(items) if name == SEQ_OR_MAP => v.visit_seq(SeqDe {
                items: items.iter().collect(),
                i: 0,
                path: self.path,
                sink: self.sink,
            }),
            Value::Scalar(sc) if name == SCALAR_OR_MAP => v.visit_str(&sc.text),
            Value::Seq(_) | Value::Scalar(_) => {
                self.mismatch("a mapping");
                v.visit_map(MapDe::new(Vec::new(), self.path, self.sink))
            }
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let text = self.scalar().map(|s| s.text.as_str());
        let chosen = match text {
            Some(t) if variants.contains(&t) => t,
            _ => {
                let mut msg = match text {
                    Some(t) => format!(
                        "unknown value `{t}`; expected one of: {}",
                        variants.join(", ")
                    ),
                    None => format!(
                        "expected one of: {}, found {}",
                        variants.join(", "),
                        self.node.kind_name()
                    ),
                };
                if let Some(t) = text
                    && let Some(s) = did_you_mean(t, variants.iter().copied())
                {
                    msg.push_str(&format!(" (did you mean `{s}`?)"));
                }
                self.sink.error(&self.node.loc, &self.path, msg);
                variants.first().copied().unwrap_or_default()
            }
        };
        v.visit_enum(IntoDeserializer::<DeError>::into_deserializer(chosen))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

/// Runs `f` on a child node, attaching any soft error or unrecorded error to the child.
fn with_child<T>(
    node: &Node,
    path: String,
    sink: &Sink,
    f: impl FnOnce(De<'_>) -> Result<T, DeError>,
) -> Result<T, DeError> {
    let before = soft_len();
    let placeholders = PLACEHOLDERS.with(std::cell::Cell::get);
    let loc = node.loc.clone();
    let r = f(De {
        node,
        path: path.clone(),
        sink,
    });
    let soft = soft_drain(before);
    // A leaf that got a placeholder already has its error; its parse of the placeholder
    // would only repeat it.
    if PLACEHOLDERS.with(std::cell::Cell::get) == placeholders {
        for m in soft {
            sink.error(&loc, &path, m);
        }
    }
    r.map_err(|mut e| {
        if !e.recorded {
            sink.error(&loc, &path, e.msg.clone());
            e.recorded = true;
        }
        e
    })
}

struct SeqDe<'a> {
    items: Vec<&'a Node>,
    i: usize,
    path: String,
    sink: &'a Sink,
}

impl<'de> SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.get(self.i) else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.i);
        self.i += 1;
        with_child(node, path, self.sink, |d| seed.deserialize(d)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.i)
    }
}

struct OwnedSeq<'a> {
    items: Vec<Node>,
    path: String,
    sink: &'a Sink,
}

impl OwnedSeq<'_> {
    fn visit<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_seq(SeqDe {
            items: self.items.iter().collect(),
            i: 0,
            path: self.path,
            sink: self.sink,
        })
    }
}

struct MapDe<'a> {
    entries: Vec<&'a Entry>,
    i: usize,
    path: String,
    sink: &'a Sink,
}

impl<'a> MapDe<'a> {
    fn new(entries: Vec<&'a Entry>, path: String, sink: &'a Sink) -> Self {
        Self {
            entries,
            i: 0,
            path,
            sink,
        }
    }
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(e) = self.entries.get(self.i) else {
            return Ok(None);
        };
        let key_de: de::value::StrDeserializer<'_, DeError> = e.key.as_str().into_deserializer();
        seed.deserialize(key_de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let e = self.entries[self.i];
        self.i += 1;
        with_child(&e.value, join(&self.path, &e.key), self.sink, |d| {
            seed.deserialize(d)
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::parse_yaml;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        port: u16,
        on: bool,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        #[default]
        Alpha,
        Beta,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Inner,
        kind: Kind,
        list: Vec<u8>,
    }

    #[test]
    fn collects_every_error() {
        let n = parse_yaml("name: x\ninner:\n  port: 99999\n  on: maybe\n  prot: 1\nkind: betta\nlist: [1, x]\nextra: 1\n", "t.yaml").unwrap();
        let (v, d) = from_node::<Outer>(&n);
        let v = v.unwrap();
        assert_eq!(v.name, "x");
        let msgs: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(msgs.len(), 6, "{msgs:#?}");
        assert!(
            msgs.contains(
                &"t.yaml:3:9: inner.port: expected an integer between 0 and 65535, found `99999`"
                    .to_string()
            ),
            "{msgs:#?}"
        );
        assert!(msgs.contains(
            &"t.yaml:4:7: inner.on: expected a boolean (true or false), found `maybe`".to_string()
        ));
        assert!(msgs.contains(
            &"t.yaml:5:3: inner.prot: unknown key `prot` (did you mean `port`?)".to_string()
        ));
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("t.yaml:6:7: kind: unknown value `betta`")
                    && m.contains("did you mean `beta`"))
        );
        assert!(msgs.contains(
            &"t.yaml:7:11: list[1]: expected an integer between 0 and 255, found `x`".to_string()
        ));
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("t.yaml:8:1: extra: unknown key `extra`"))
        );
    }

    #[test]
    fn probe_lists_fields() {
        assert_eq!(struct_fields::<Outer>(), &["name", "inner", "kind", "list"]);
    }
}
