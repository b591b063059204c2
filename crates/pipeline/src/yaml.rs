//! A small YAML tree with source positions, built from `yaml-rust2` events.
//!
//! Azure Pipelines YAML is a plain tree of mappings, sequences and scalars; anchors, aliases and
//! tags are not part of it, so they are rejected here with a position.

use crate::error::{Pos, YamlError};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
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

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    error: Option<(Pos, String)>,
}

impl Builder {
    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    if self.error.is_none() {
                        match &node.kind {
                            NodeKind::Scalar { value, .. } => {
                                if entries.iter().any(|(k, _)| k.as_str() == Some(value)) {
                                    self.error = Some((
                                        node.pos,
                                        format!("duplicate key `{value}` in mapping"),
                                    ));
                                }
                            }
                            _ => {
                                self.error = Some((
                                    node.pos,
                                    format!(
                                        "mapping keys must be scalars, found {}",
                                        node.type_name()
                                    ),
                                ))
                            }
                        }
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let p = pos(&mark);
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                if (anchor != 0 || tag.is_some()) && self.error.is_none() {
                    self.error = Some((p, "YAML anchors and tags are not supported".into()));
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
                if (anchor != 0 || tag.is_some()) && self.error.is_none() {
                    self.error = Some((p, "YAML anchors and tags are not supported".into()));
                }
                self.stack.push(Frame::Seq(p, Vec::new()));
            }
            Event::MappingStart(anchor, tag) => {
                if (anchor != 0 || tag.is_some()) && self.error.is_none() {
                    self.error = Some((p, "YAML anchors and tags are not supported".into()));
                }
                self.stack.push(Frame::Map(p, Vec::new(), None));
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
                if let Some(Frame::Map(mp, entries, _)) = self.stack.pop() {
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
                if self.error.is_none() {
                    self.error = Some((p, "YAML aliases are not supported".into()));
                }
                self.push_node(Node {
                    pos: p,
                    kind: NodeKind::Null,
                });
            }
            _ => {}
        }
    }
}

/// Parse one YAML document into a [`Node`] tree. An empty document is `Null`.
pub fn parse(file: &str, text: &str) -> Result<Node, YamlError> {
    let mut b = Builder {
        stack: Vec::new(),
        docs: Vec::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        let p = pos(e.marker());
        return Err(YamlError::new(
            file,
            p,
            format!("invalid YAML: {}", e.info()),
        ));
    }
    if let Some((p, msg)) = b.error {
        return Err(YamlError::new(file, p, msg));
    }
    if b.docs.len() > 1 {
        return Err(YamlError::new(
            file,
            b.docs[1].pos,
            "a pipeline file must contain a single YAML document",
        ));
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
}
