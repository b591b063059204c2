//! A small YAML tree with source positions, built from `yaml-rust2` events.
//!
//! Azure Pipelines YAML is a plain tree of mappings, sequences and scalars; anchors, aliases and
//! tags are not part of it, so they are rejected here with a position.

use crate::error::{Pos, YamlError};
use std::collections::HashSet;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML node with the position (1-based line and column) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `~`, `null` or an empty value.
    Null,
    /// A scalar; `plain` is false when it was quoted or a block scalar.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys are scalars (checked when building); duplicates are rejected.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A short name of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "an empty value",
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a sequence",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// Largest pipeline file, in bytes. Azure Pipelines caps the memory for parsing a pipeline at
/// 10 MB, which Microsoft says is "typically between 600 KB and 2 MB of on-disk YAML"; the upper
/// end of that is the cap here, checked before a byte is parsed.
pub const MAX_FILE_BYTES: usize = 2 * 1024 * 1024;
/// Deepest nesting of mappings and sequences. Real pipelines nest about 10 levels; the parser
/// and the tree are bounded by this, so no input can exhaust a thread's stack.
pub const MAX_DEPTH: usize = 100;
/// Most YAML nodes (every key, value and list item) in one file: a few times what a 2 MB
/// pipeline of ordinary steps has, small enough that compiling never takes long.
pub const MAX_NODES: usize = 200_000;
/// Longest mapping key, in bytes (keys are names: steps, variables, inputs).
pub const MAX_KEY_BYTES: usize = 1024;

/// How many bytes `n` is, for messages (`2 MiB`, `1.5 KiB`, `10 bytes`).
pub fn human_bytes(n: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenth = (n % size) * 10 / size;
            return if tenth == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenth} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

fn too_deep() -> String {
    format!("mappings and lists are nested more than {MAX_DEPTH} levels deep; that is the limit")
}

enum Frame {
    Seq(Pos, Vec<Node>),
    /// Entries, the key waiting for its value, and the keys seen (duplicates in O(1)).
    Map(Pos, Vec<(Node, Node)>, Option<Node>, HashSet<String>),
}

struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    nodes: usize,
    error: Option<(Pos, String)>,
}

impl Builder {
    fn fail(&mut self, p: Pos, msg: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some((p, msg.into()));
        }
    }

    /// Counts a node and checks the limits that apply where it starts.
    fn count(&mut self, p: Pos) {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(
                p,
                format!("the pipeline has more than {MAX_NODES} YAML nodes (keys, values and list items together); that is the limit"),
            );
        }
    }

    fn open(&mut self, p: Pos, frame: Frame) {
        if self.stack.len() >= MAX_DEPTH {
            self.fail(p, too_deep());
            return;
        }
        self.stack.push(frame);
    }

    fn check_key(&mut self, node: &Node) -> Result<(), (Pos, String)> {
        let Some(Frame::Map(_, _, _, seen)) = self.stack.last_mut() else {
            return Ok(());
        };
        match &node.kind {
            NodeKind::Scalar { value, .. } if value.len() > MAX_KEY_BYTES => Err((
                node.pos,
                format!(
                    "a mapping key is {} bytes long; keys may be at most {MAX_KEY_BYTES} bytes",
                    value.len()
                ),
            )),
            NodeKind::Scalar { value, .. } if !seen.insert(value.clone()) => {
                Err((node.pos, format!("duplicate key `{value}` in mapping")))
            }
            NodeKind::Scalar { .. } => Ok(()),
            _ => Err((
                node.pos,
                format!("mapping keys must be scalars, found {}", node.type_name()),
            )),
        }
    }

    fn push_node(&mut self, node: Node) {
        let is_key = matches!(self.stack.last(), Some(Frame::Map(_, _, None, _)));
        if is_key {
            if let Err((p, msg)) = self.check_key(&node) {
                self.fail(p, msg);
            }
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending, _)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        let p = pos(&mark);
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                self.count(p);
                if anchor != 0 || tag.is_some() {
                    self.fail(p, "YAML anchors and tags are not supported");
                }
                let plain = style == TScalarStyle::Plain;
                let kind = if plain && (value.is_empty() || value == "~" || value == "null") {
                    NodeKind::Null
                } else {
                    NodeKind::Scalar { value, plain }
                };
                self.push_node(Node { pos: p, kind });
            }
            Event::SequenceStart(anchor, tag) => {
                self.count(p);
                if anchor != 0 || tag.is_some() {
                    self.fail(p, "YAML anchors and tags are not supported");
                }
                self.open(p, Frame::Seq(p, Vec::new()));
            }
            Event::MappingStart(anchor, tag) => {
                self.count(p);
                if anchor != 0 || tag.is_some() {
                    self.fail(p, "YAML anchors and tags are not supported");
                }
                self.open(p, Frame::Map(p, Vec::new(), None, HashSet::new()));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(sp, items)) = self.stack.pop() {
                    self.push_node(Node {
                        pos: sp,
                        kind: NodeKind::Seq(items),
                    });
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(mp, entries, _, _)) = self.stack.pop() {
                    // The start marker of a block mapping is after its first key; report
                    // the first key's position instead.
                    let mp = entries.first().map(|(k, _)| k.pos).unwrap_or(mp);
                    self.push_node(Node {
                        pos: mp,
                        kind: NodeKind::Map(entries),
                    });
                }
            }
            Event::Alias(_) => {
                self.fail(p, "YAML aliases are not supported");
            }
            Event::DocumentStart if !self.docs.is_empty() => {
                self.fail(p, "a pipeline file must contain a single YAML document");
            }
            _ => {}
        }
    }
}

/// Parse one YAML document into a [`Node`] tree. An empty document is `Null`.
///
/// Bounded by [`MAX_FILE_BYTES`], [`MAX_DEPTH`], [`MAX_NODES`] and [`MAX_KEY_BYTES`]; the
/// first limit crossed (or any other error) stops the parse at once. Events are pulled one at
/// a time (yaml-rust2's own `load` recurses once per nesting level).
pub fn parse(file: &str, text: &str) -> Result<Node, YamlError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(YamlError::new(
            file,
            Pos { line: 1, column: 1 },
            format!(
                "the pipeline file is {} ({} bytes); the limit is {} (Azure Pipelines' practical limit)",
                human_bytes(text.len()),
                text.len(),
                human_bytes(MAX_FILE_BYTES)
            ),
        ));
    }
    let mut b = Builder {
        stack: Vec::new(),
        docs: Vec::new(),
        nodes: 0,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| {
            // The scanner looks ahead through flow collections and stops at 255 levels.
            let msg = match e.info() {
                "recursion limit exceeded" => too_deep(),
                info => format!("invalid YAML: {info}"),
            };
            YamlError::new(file, pos(e.marker()), msg)
        })?;
        if ev == Event::StreamEnd {
            break;
        }
        b.on_event(ev, mark);
        if let Some((p, msg)) = b.error.take() {
            return Err(YamlError::new(file, p, msg));
        }
    }
    Ok(b.docs.pop().unwrap_or(Node {
        pos: Pos { line: 1, column: 1 },
        kind: NodeKind::Null,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("f.yml", "a: 1\nb:\n  - x\n  - 'y'\n").unwrap();
        let NodeKind::Map(entries) = &n.kind else {
            panic!()
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        assert_eq!(
            items[1].kind,
            NodeKind::Scalar {
                value: "y".into(),
                plain: false
            }
        );
    }

    #[test]
    fn rejects_duplicates_aliases_and_bad_yaml() {
        let e = parse("f.yml", "a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (2, 1));
        assert!(e.message.contains("duplicate key `a`"));
        let e = parse("f.yml", "a: &x 1\nb: *x\n").unwrap_err();
        assert!(e.message.contains("not supported"), "{e}");
        let e = parse("f.yml", "a: [1,\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        assert_eq!(e.to_string().split(':').next(), Some("f.yml"));
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("f", "").unwrap().kind, NodeKind::Null);
        assert_eq!(
            parse("f", "# only a comment\n").unwrap().kind,
            NodeKind::Null
        );
    }

    fn flow_list(items: usize) -> String {
        format!("[{}]", vec!["1"; items].join(","))
    }

    #[test]
    fn file_size_is_capped_before_parsing() {
        let big = format!("#{}\n", "x".repeat(MAX_FILE_BYTES));
        let e = parse("big.yml", &big).unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (1, 1));
        assert_eq!(
            e.to_string(),
            format!("big.yml:1:1: the pipeline file is 2 MiB ({} bytes); the limit is 2 MiB (Azure Pipelines' practical limit)", MAX_FILE_BYTES + 2)
        );
        let at_limit = format!("#{}\n", "x".repeat(MAX_FILE_BYTES - 2));
        assert_eq!(at_limit.len(), MAX_FILE_BYTES);
        assert_eq!(parse("f", &at_limit).unwrap().kind, NodeKind::Null);
    }

    #[test]
    fn nesting_is_capped_without_recursion() {
        let ok = format!("{}x\n", "- ".repeat(MAX_DEPTH));
        assert!(parse("f", &ok).is_ok());
        let e = parse("f", &format!("{}x\n", "- ".repeat(MAX_DEPTH + 1))).unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (1, 2 * MAX_DEPTH + 1));
        assert_eq!(
            e.message,
            "mappings and lists are nested more than 100 levels deep; that is the limit"
        );
        // 100,000 levels: yaml-rust2's recursive loader (and a recursive drop of the tree)
        // overflowed the stack and aborted the process.
        let e = parse("f", &format!("{}x\n", "- ".repeat(100_000))).unwrap_err();
        assert_eq!(e.pos.column, 2 * MAX_DEPTH + 1);
        for deep in ["[".repeat(100_000), "{a: ".repeat(100_000)] {
            let e = parse("f", &deep).unwrap_err();
            assert!(e.message.contains("nested more than 100 levels"), "{e}");
        }
        let mut block = String::new();
        for i in 0..=MAX_DEPTH {
            block.push_str(&format!("{}a:\n", " ".repeat(i)));
        }
        let e = parse("f", &block).unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (MAX_DEPTH + 1, MAX_DEPTH + 2));
    }

    #[test]
    fn node_count_is_capped() {
        // The list itself is one node.
        let n = parse("f", &flow_list(MAX_NODES - 1)).unwrap();
        let NodeKind::Seq(items) = n.kind else {
            panic!()
        };
        assert_eq!(items.len(), MAX_NODES - 1);
        let e = parse("f", &flow_list(MAX_NODES)).unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (1, 2 * MAX_NODES));
        assert_eq!(
            e.message,
            "the pipeline has more than 200000 YAML nodes (keys, values and list items together); that is the limit"
        );
    }

    #[test]
    fn key_length_is_capped() {
        let ok = format!("{}: 1\n", "k".repeat(MAX_KEY_BYTES));
        assert!(parse("f", &ok).is_ok());
        // Implicit keys stop at 1024 characters in YAML itself; explicit ones are checked here.
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let e = parse("f", &format!("a: 1\n? {long}\n: 1\n")).unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (2, 3));
        assert_eq!(
            e.message,
            "a mapping key is 1025 bytes long; keys may be at most 1024 bytes"
        );
        let e = parse("f", &format!("{long}: 1\n")).unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn duplicates_in_a_large_mapping() {
        // 90,000 distinct keys (checked through a hash set), then one repeated.
        let mut m = String::from("{");
        for i in 0..90_000 {
            m.push_str(&format!("k{i}: 1, "));
        }
        let n = parse("f", &format!("{m}}}")).unwrap();
        let NodeKind::Map(e) = n.kind else { panic!() };
        assert_eq!(e.len(), 90_000);
        let dup = format!("{m}k17: 2}}");
        let e = parse("f", &dup).unwrap_err();
        assert_eq!(e.message, "duplicate key `k17` in mapping");
        assert_eq!(e.pos.column, m.len() + 1);
        // Keys are compared as written (case-sensitive, as YAML is).
        assert!(parse("f", "a: 1\nA: 2\n").is_ok());
    }

    #[test]
    fn a_second_document_is_refused_where_it_starts() {
        let e = parse("f", "a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(
            e.message,
            "a pipeline file must contain a single YAML document"
        );
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn sizes_for_messages() {
        assert_eq!(human_bytes(10), "10 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(2 * 1024 * 1024), "2 MiB");
        assert_eq!(human_bytes(10 * 1024 * 1024 + 9), "10 MiB");
    }
}
