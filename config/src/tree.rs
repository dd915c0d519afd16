//! A YAML document as a tree whose every node remembers where it came from.
//!
//! The configuration is assembled from several sources (built-in preset, profile file,
//! `klp/klp_settings.yaml`, `agents/*.yaml`, `system.env`, `secrets.env`, the process
//! environment). Each is turned into a [`Node`] tree and the trees are overlaid; because
//! every node keeps its [`Location`], an error found later still names the exact file, line
//! and column the offending value came from.

use std::fmt;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::diag::Diagnostic;

/// Where a value came from: a file with line and column (both 1-based), or a named source
/// without lines (an environment variable, a request body field).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// File path relative to the config directory, or a description such as
    /// `environment variable KOS_API__LISTEN`.
    pub source: Arc<str>,
    /// 1-based line; 0 when the source has no lines.
    pub line: u32,
    /// 1-based column; 0 when the source has no lines.
    pub column: u32,
}

impl Location {
    /// A location inside a text source.
    pub fn new(source: &Arc<str>, line: u32, column: u32) -> Self {
        Self {
            source: source.clone(),
            line,
            column,
        }
    }

    /// A location for a source without lines.
    pub fn whole(source: impl Into<Arc<str>>) -> Self {
        Self {
            source: source.into(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.source)
        } else {
            write!(f, "{}:{}:{}", self.source, self.line, self.column)
        }
    }
}

/// A scalar as written: its text, and whether it was quoted (a quoted scalar is always a
/// string, a plain one may be a number, a boolean or null).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    pub quoted: bool,
    /// Came from an environment-style source (`KEY=value`): lists are comma-separated.
    pub env: bool,
}

/// One key of a mapping, with its own location (used for "unknown key" errors).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_loc: Location,
    pub value: Node,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub loc: Location,
}

impl Node {
    pub fn new(value: Value, loc: Location) -> Self {
        Self { value, loc }
    }

    /// An empty mapping (used as the root when a source is empty).
    pub fn empty_map(loc: Location) -> Self {
        Self {
            value: Value::Map(Vec::new()),
            loc,
        }
    }

    /// A plain scalar from a source without YAML typing (environment variables).
    pub fn plain(text: impl Into<String>, loc: Location) -> Self {
        Self {
            value: Value::Scalar(Scalar {
                text: text.into(),
                quoted: false,
                env: true,
            }),
            loc,
        }
    }

    /// A short description of the node's kind, for "expected X, found Y" messages.
    pub fn kind_name(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Scalar(s) => format!("`{}`", truncate(&s.text, 40)),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// The value of a mapping key, if this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// The entry of a mapping key (value and key location).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Scalar text, if this node is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// Follows a dotted path (`federation.klp.enabled`, `llms[1]`).
    pub fn at_path(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for seg in path_segments(path) {
            node = match seg {
                Seg::Key(k) => node.get(k)?,
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i)?,
                    _ => return None,
                },
            };
        }
        Some(node)
    }

    /// The most precise location known for a path: the node itself if it exists, otherwise
    /// its nearest existing ancestor.
    pub fn locate(&self, path: &str) -> &Location {
        let mut node = self;
        for seg in path_segments(path) {
            let next = match seg {
                Seg::Key(k) => node.get(k),
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i),
                    _ => None,
                },
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        &node.loc
    }

    /// Overlays `top` onto `self`: mappings merge key by key, anything else is replaced.
    pub fn overlay(&mut self, top: Node) {
        match (&mut self.value, top.value) {
            (Value::Map(base), Value::Map(entries)) => {
                for e in entries {
                    if let Some(b) = base.iter_mut().find(|b| b.key == e.key) {
                        b.key_loc = e.key_loc;
                        b.value.overlay(e.value);
                    } else {
                        base.push(e);
                    }
                }
            }
            (_, value) => {
                self.value = value;
                self.loc = top.loc;
            }
        }
    }

    /// Sets the value at `keys` (creating mappings on the way), overlaying if both are maps.
    pub fn set_path(&mut self, keys: &[String], value: Node) {
        let Some((first, rest)) = keys.split_first() else {
            self.overlay(value);
            return;
        };
        if !matches!(self.value, Value::Map(_)) {
            self.value = Value::Map(Vec::new());
            self.loc = value.loc.clone();
        }
        let Value::Map(entries) = &mut self.value else {
            return;
        };
        let idx = match entries.iter().position(|e| &e.key == first) {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    key: first.clone(),
                    key_loc: value.loc.clone(),
                    value: Node::empty_map(value.loc.clone()),
                });
                entries.len() - 1
            }
        };
        entries[idx].key_loc = value.loc.clone();
        if rest.is_empty() {
            // A leaf replaces; a mapping merges.
            entries[idx].value.overlay(value);
        } else {
            entries[idx].value.set_path(rest, value);
        }
    }

    /// Removes a top-level key, returning its entry.
    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        match &mut self.value {
            Value::Map(entries) => {
                let i = entries.iter().position(|e| e.key == key)?;
                Some(entries.remove(i))
            }
            _ => None,
        }
    }
}

pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

pub(crate) fn path_segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Largest YAML source accepted (config files are small; this bounds memory on bad input).
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Deepest nesting accepted (counted after alias expansion).
pub const MAX_DEPTH: usize = 64;
/// Most nodes (scalars, keys, lists, mappings) one document may build, counting every copy
/// made by an alias and the copy kept for every anchor. Bounds the tree's memory whatever
/// the aliases ("billion laughs"): at about 100 bytes a node, ~10 MiB.
pub const MAX_NODES: usize = 100_000;
/// Most bytes of scalar and key text one document may build, counting alias copies.
pub const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// Reads a YAML source file, but never more than one byte past [`MAX_SOURCE_BYTES`]: a
/// huge or endless file costs no more memory than one at the limit, and is an error
/// (`InvalidData`, "larger than the limit of ... bytes").
pub fn read_source(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SOURCE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than the limit of {MAX_SOURCE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| Error::new(ErrorKind::InvalidData, e))
}

/// Parses one YAML document into a [`Node`] tree. `source` names the file in diagnostics.
///
/// Rejected, each with its location: syntax errors, more than one document, non-scalar
/// keys, duplicate keys, merge keys (`<<`), unknown aliases, too deep nesting, too large input,
/// and documents whose aliases would expand beyond [`MAX_NODES`] nodes, [`MAX_TEXT_BYTES`]
/// bytes of text or [`MAX_DEPTH`] levels. Expansion is checked before any copy is made, so
/// a small document cannot make the parser allocate more than those bounds.
pub fn parse_yaml(text: &str, source: &str) -> Result<Node, Vec<Diagnostic>> {
    let src: Arc<str> = Arc::from(source);
    let whole = Location::new(&src, 1, 1);
    if text.len() > MAX_SOURCE_BYTES {
        return Err(vec![Diagnostic::error(
            whole,
            "",
            format!("larger than the limit of {MAX_SOURCE_BYTES} bytes"),
        )]);
    }
    let mut builder = Builder {
        src: src.clone(),
        stack: Vec::new(),
        anchors: std::collections::HashMap::new(),
        budget: Weight::default(),
        root: None,
        docs: 0,
        errors: Vec::new(),
    };
    for item in Parser::new_from_str(text) {
        match item {
            Ok((event, span)) => {
                let loc =
                    Location::new(&src, span.start.line() as u32, span.start.col() as u32 + 1);
                if let Err(d) = builder.event(event, loc) {
                    builder.errors.push(d);
                    break;
                }
            }
            Err(e) => {
                let m = e.marker();
                builder.errors.push(Diagnostic::error(
                    Location::new(&src, m.line() as u32, m.col() as u32 + 1),
                    "",
                    format!("invalid YAML: {}", e.info()),
                ));
                break;
            }
        }
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(builder
        .root
        .unwrap_or_else(|| Node::new(Value::Null, whole)))
}

enum Frame {
    Seq {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        pending_key: Option<(String, Location)>,
        /// Keys seen so far, with their line (duplicate check without a scan).
        keys: std::collections::HashMap<String, u32>,
    },
}

/// What a subtree costs: its nodes, its text bytes and its depth (a scalar has depth 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Weight {
    nodes: usize,
    bytes: usize,
    depth: usize,
}

impl Weight {
    /// One node without text: a list, a mapping, a null, a key seen as a node.
    const ONE_NODE: Weight = Weight {
        nodes: 1,
        bytes: 0,
        depth: 0,
    };

    fn of(node: &Node) -> Weight {
        match &node.value {
            Value::Null => Weight {
                nodes: 1,
                bytes: 0,
                depth: 0,
            },
            Value::Scalar(s) => Weight {
                nodes: 1,
                bytes: s.text.len(),
                depth: 0,
            },
            Value::Seq(items) => items.iter().fold(
                Weight {
                    nodes: 1,
                    bytes: 0,
                    depth: 1,
                },
                |w, n| w.with_child(Weight::of(n), 0),
            ),
            Value::Map(entries) => entries.iter().fold(
                Weight {
                    nodes: 1,
                    bytes: 0,
                    depth: 1,
                },
                // Each key was a node (a scalar) when it was parsed: count it as one.
                |w, e| {
                    w.with_child(Weight::of(&e.value), e.key.len()).with_child(
                        Weight {
                            nodes: 1,
                            bytes: 0,
                            depth: 0,
                        },
                        0,
                    )
                },
            ),
        }
    }

    fn with_child(self, child: Weight, key_bytes: usize) -> Weight {
        Weight {
            nodes: self.nodes.saturating_add(child.nodes),
            bytes: self
                .bytes
                .saturating_add(child.bytes)
                .saturating_add(key_bytes),
            depth: self.depth.max(child.depth.saturating_add(1)),
        }
    }
}

struct Builder {
    src: Arc<str>,
    stack: Vec<Frame>,
    /// Anchored nodes (by anchor id; a redefined anchor replaces the earlier one) with what
    /// one copy of each costs.
    anchors: std::collections::HashMap<usize, (Node, Weight)>,
    /// What the document has built so far, alias copies and anchor copies included.
    budget: Weight,
    root: Option<Node>,
    docs: usize,
    errors: Vec<Diagnostic>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, loc: Location) -> Result<(), Diagnostic> {
        match event {
            Event::DocumentStart(_) => {
                self.docs += 1;
                if self.docs > 1 {
                    return Err(Diagnostic::error(
                        loc,
                        "",
                        "expected a single YAML document, found a second one",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.charge(
                    Weight {
                        nodes: 1,
                        bytes: text.len(),
                        depth: 0,
                    },
                    &loc,
                )?;
                let tagged_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let quoted = tagged_str || !matches!(style, ScalarStyle::Plain);
                let value = if !quoted && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar(Scalar {
                        text: text.into_owned(),
                        quoted,
                        env: false,
                    })
                };
                self.push(Node::new(value, loc), anchor)?;
            }
            Event::Alias(id) => {
                let Some((_, weight)) = self.anchors.get(&id) else {
                    return Err(Diagnostic::error(
                        loc,
                        "",
                        "alias refers to an unknown anchor",
                    ));
                };
                let weight = *weight;
                // Checked before the copy is made: a bomb fails here, small.
                if self.stack.len().saturating_add(weight.depth) > MAX_DEPTH {
                    return Err(Diagnostic::error(
                        loc,
                        "",
                        format!("this alias nests the document deeper than {MAX_DEPTH} levels"),
                    ));
                }
                self.charge(weight, &loc)?;
                let Some((node, _)) = self.anchors.get(&id) else {
                    return Err(Diagnostic::error(
                        loc,
                        "",
                        "alias refers to an unknown anchor",
                    ));
                };
                let node = node.clone();
                self.push(node, 0)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.check_depth(&loc)?;
                self.charge(Weight::ONE_NODE, &loc)?;
                self.stack.push(Frame::Seq {
                    node: Node::new(Value::Seq(Vec::new()), loc),
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                self.check_depth(&loc)?;
                self.charge(Weight::ONE_NODE, &loc)?;
                self.stack.push(Frame::Map {
                    node: Node::new(Value::Map(Vec::new()), loc),
                    anchor,
                    pending_key: None,
                    keys: std::collections::HashMap::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let (node, anchor) = match frame {
                        Frame::Seq { node, anchor } | Frame::Map { node, anchor, .. } => {
                            (node, anchor)
                        }
                    };
                    self.push(node, anchor)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_depth(&self, loc: &Location) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::error(
                loc.clone(),
                "",
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    /// Adds `w` to what the document has built; refuses, at `loc`, past the bounds.
    fn charge(&mut self, w: Weight, loc: &Location) -> Result<(), Diagnostic> {
        let nodes = self.budget.nodes.saturating_add(w.nodes);
        let bytes = self.budget.bytes.saturating_add(w.bytes);
        if nodes > MAX_NODES {
            return Err(Diagnostic::error(
                loc.clone(),
                "",
                format!(
                    "the document expands to more than {MAX_NODES} values (aliases count every copy); write it with fewer aliases"
                ),
            ));
        }
        if bytes > MAX_TEXT_BYTES {
            return Err(Diagnostic::error(
                loc.clone(),
                "",
                format!(
                    "the document expands to more than {MAX_TEXT_BYTES} bytes of text (aliases count every copy); write it with fewer aliases"
                ),
            ));
        }
        self.budget.nodes = nodes;
        self.budget.bytes = bytes;
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            // The anchor table keeps its own copy: that costs as much as the node.
            let weight = Weight::of(&node);
            self.charge(weight, &node.loc)?;
            self.anchors.insert(anchor, (node.clone(), weight));
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
            }
            Some(Frame::Seq { node: parent, .. }) => {
                if let Value::Seq(items) = &mut parent.value {
                    items.push(node);
                }
            }
            Some(Frame::Map {
                node: parent,
                pending_key,
                keys,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match &node.value {
                        Value::Scalar(s) => s.text.clone(),
                        Value::Null => String::new(),
                        _ => {
                            return Err(Diagnostic::error(
                                node.loc,
                                "",
                                "mapping keys must be plain strings",
                            ));
                        }
                    };
                    if key == "<<" {
                        return Err(Diagnostic::error(
                            node.loc,
                            "",
                            "merge keys (`<<`) are not supported; write the keys out",
                        ));
                    }
                    if let Some(first_line) = keys.get(&key) {
                        return Err(Diagnostic::error(
                            node.loc,
                            "",
                            format!("duplicate key `{key}` (first defined at line {first_line})"),
                        ));
                    }
                    keys.insert(key.clone(), node.loc.line);
                    *pending_key = Some((key, node.loc));
                }
                Some((key, key_loc)) => {
                    if let Value::Map(entries) = &mut parent.value {
                        entries.push(Entry {
                            key,
                            key_loc,
                            value: node,
                        });
                    }
                }
            },
        }
        let _ = &self.src;
        Ok(())
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based() {
        let n = parse_yaml("a:\n  b: 1\n  c: [x, y]\n", "f.yaml").unwrap();
        let b = n.at_path("a.b").unwrap();
        assert_eq!((b.loc.line, b.loc.column), (2, 6));
        let y = n.at_path("a.c[1]").unwrap();
        assert_eq!(y.as_str(), Some("y"));
        assert_eq!((y.loc.line, y.loc.column), (3, 10));
        assert_eq!(
            n.entry("a")
                .unwrap()
                .value
                .entry("c")
                .unwrap()
                .key_loc
                .column,
            3
        );
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_are_located() {
        let e = parse_yaml("a: 1\nb: 2\na: 3\n", "f.yaml").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "f.yaml:3:1: duplicate key `a` (first defined at line 1)"
        );
        let e = parse_yaml("a: [1, 2\nb: 3\n", "f.yaml").unwrap_err();
        assert!(e[0].location.line >= 1, "{:?}", e);
        assert!(e[0].message.starts_with("invalid YAML"));
    }

    /// "Billion laughs": nine levels of nine aliases each (432 bytes) would expand to
    /// 9^9 scalars. It is refused at the alias that crosses the bound, before the copy.
    fn alias_bomb(levels: usize) -> String {
        let mut doc = String::from(
            "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..levels {
            let p = i - 1;
            let refs = vec![format!("*a{p}"); 9].join(",");
            doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        doc
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        let doc = alias_bomb(9);
        assert!(doc.len() < 512, "{}", doc.len());
        let e = parse_yaml(&doc, "bomb.yaml").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].message.contains("expands to more than 100000 values"),
            "{}",
            e[0]
        );
        // Located at the alias that would have crossed the bound.
        assert_eq!(&*e[0].location.source, "bomb.yaml");
        assert!(e[0].location.line >= 5, "{}", e[0]);
        // Long text copied by aliases is bounded too.
        let big = "x".repeat(500_000);
        let doc = format!("a: &a \"{big}\"\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
        let e = parse_yaml(&doc, "t.yaml").unwrap_err();
        assert!(e[0].message.contains("bytes of text"), "{}", e[0]);
        assert_eq!(e[0].location.line, 2, "{}", e[0]);
        // So is depth through aliases: a deep anchor repeated inside itself.
        let deep = format!(
            "a: &a {}x{}\nb: {}*a{}\n",
            "[".repeat(40),
            "]".repeat(40),
            "[".repeat(30),
            "]".repeat(30)
        );
        let e = parse_yaml(&deep, "d.yaml").unwrap_err();
        assert!(e[0].message.contains("deeper than 64"), "{}", e[0]);
    }

    #[test]
    fn oversized_files_are_read_only_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.yaml");
        std::fs::write(&p, format!("a: \"{}\"\n", "é".repeat(MAX_SOURCE_BYTES))).unwrap();
        let e = read_source(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("larger than the limit of {MAX_SOURCE_BYTES} bytes")
        );
        std::fs::write(&p, "a: 1\n").unwrap();
        assert_eq!(read_source(&p).unwrap(), "a: 1\n");
        let e = parse_yaml(&"x".repeat(MAX_SOURCE_BYTES + 1), "body").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            format!("body:1:1: larger than the limit of {MAX_SOURCE_BYTES} bytes")
        );
    }

    #[test]
    fn aliased_mappings_count_their_keys() {
        // 600 keys; each alias copy is 1201 nodes (the map, 600 keys, 600 values).
        let keys: Vec<String> = (0..600).map(|i| format!("k{i}: {i}")).collect();
        let base = format!("m: &m {{{}}}\n", keys.join(", "));
        let within = format!("{base}c: [{}]\n", vec!["*m"; 70].join(", "));
        assert!(parse_yaml(&within, "f").is_ok());
        // 85 copies are 102 085 nodes: over the bound only when keys count.
        let over = format!("{base}c: [{}]\n", vec!["*m"; 85].join(", "));
        let e = parse_yaml(&over, "f").unwrap_err();
        assert!(e[0].message.contains("100000 values"), "{}", e[0]);
    }

    #[test]
    fn many_keys_and_anchors_are_looked_up_by_index() {
        // 30 000 keys in one mapping and 15 000 anchors (duplicate keys and aliases are found
        // through hash maps, not by scanning every earlier key or anchor).
        let mut doc = String::new();
        for i in 0..15_000 {
            doc.push_str(&format!("k{i}: &a{i} {i}\n"));
        }
        for i in 0..15_000 {
            doc.push_str(&format!("r{i}: *a{i}\n"));
        }
        let n = parse_yaml(&doc, "f").unwrap();
        assert_eq!(n.at_path("r14999").unwrap().as_str(), Some("14999"));
        let e = parse_yaml(&format!("{doc}k7: 1\n"), "f").unwrap_err();
        assert_eq!(e[0].message, "duplicate key `k7` (first defined at line 8)");
    }

    #[test]
    fn ordinary_aliases_still_work() {
        let n = parse_yaml(
            "base: &b {x: 1, y: [2, 3]}\ncopy: *b\nlevels: &l 4\nagain: *l\n",
            "f",
        )
        .unwrap();
        assert_eq!(n.at_path("copy.y[1]").unwrap().as_str(), Some("3"));
        assert_eq!(n.at_path("again").unwrap().as_str(), Some("4"));
        // Four levels of the bomb (9^4 = 6561 scalars) is within the bounds.
        let n = parse_yaml(&alias_bomb(4), "b").unwrap();
        assert_eq!(n.at_path("a3[8][8][8][8]").unwrap().as_str(), Some("lol"));
    }

    #[test]
    fn overlay_merges_maps_and_replaces_leaves() {
        let mut a = parse_yaml("x: {y: 1, z: 2}\nl: [1]\n", "a").unwrap();
        let b = parse_yaml("x: {z: 3}\nl: [4, 5]\n", "b").unwrap();
        a.overlay(b);
        assert_eq!(a.at_path("x.y").unwrap().as_str(), Some("1"));
        assert_eq!(a.at_path("x.z").unwrap().as_str(), Some("3"));
        assert_eq!(&*a.at_path("x.z").unwrap().loc.source, "b");
        assert_eq!(a.at_path("l[1]").unwrap().as_str(), Some("5"));
    }

    #[test]
    fn set_path_creates_intermediate_maps() {
        let mut a = parse_yaml("x: 1\n", "a").unwrap();
        a.set_path(
            &["p".into(), "q".into()],
            Node::plain("v", Location::whole("env")),
        );
        assert_eq!(a.at_path("p.q").unwrap().as_str(), Some("v"));
        assert_eq!(a.locate("p.q.r").to_string(), "env");
    }
}
