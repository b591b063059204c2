//! Errors with a source position.

use std::fmt;

/// A 1-based line and column in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A problem in a pipeline file: where it is and which rule it breaks.
///
/// Displays as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl YamlError {
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        YamlError {
            file: file.to_string(),
            pos,
            message: message.into(),
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.column, self.message
        )
    }
}

impl std::error::Error for YamlError {}
