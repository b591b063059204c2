//! Azure Pipelines expressions: the language of `condition:`, `${{ }}` and `$[ ]`.
//!
//! [`parse`] never panics (nesting depth and length are bounded) and [`eval`] never panics; both
//! return [`ExprError`] for anything they do not understand. String comparisons are
//! case-insensitive, as in Azure.

use crate::plan::RunResult;
use std::fmt;

/// Maximum nesting of function calls and indexers.
const MAX_DEPTH: usize = 64;
/// Maximum length of an expression, in bytes.
const MAX_LEN: usize = 16 * 1024;

/// The named values an expression may start with.
pub const NAMED_VALUES: &[&str] = &[
    "variables",
    "parameters",
    "dependencies",
    "stageDependencies",
    "pipeline",
    "resources",
];

/// Parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    /// `variables['a'].b` → root `variables`, path `["a", "b"]`. The root is one of
    /// [`NAMED_VALUES`] as written in [`NAMED_VALUES`].
    Path(String, Vec<String>),
    /// Function call; the name is stored lower-cased.
    Call(String, Vec<Expr>),
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

impl Value {
    /// Azure's truthiness: null, false, 0, NaN and '' are false.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0 && !n.is_nan(),
            Value::Str(s) => !s.is_empty(),
        }
    }

    /// The string form used when an expression result is put into text.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Value::Num(n) => fmt_num(*n),
            Value::Str(s) => s.clone(),
        }
    }

    fn to_num(&self) -> f64 {
        match self {
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Num(n) => *n,
            Value::Str(s) => {
                let t = s.trim();
                if t.is_empty() {
                    0.0
                } else {
                    t.parse().unwrap_or(f64::NAN)
                }
            }
        }
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// An expression that could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset in the expression text (0 when not known).
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

impl std::error::Error for ExprError {}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        offset,
        message: message.into(),
    })
}

/// What an expression can see when it is evaluated.
pub trait Context {
    /// Value of `root.path...`; `root` is one of [`NAMED_VALUES`]. Unknown → `Value::Null`.
    fn lookup(&self, root: &str, path: &[String]) -> Value;
    /// Whether the run has been canceled.
    fn canceled(&self) -> bool {
        false
    }
    /// Results that the status functions (`succeeded()`, `failed()`) look at.
    /// `names == None`: all of them (a job's or stage's dependencies, or for a step the job's
    /// steps so far). With names: those dependencies; `Err(name)` names one that is unknown.
    fn results(&self, names: Option<&[String]>) -> Result<Vec<RunResult>, String> {
        let _ = names;
        Ok(Vec::new())
    }
}

/// A context with no variables and no dependencies (literals and functions only).
pub struct EmptyContext;
impl Context for EmptyContext {
    fn lookup(&self, _root: &str, _path: &[String]) -> Value {
        Value::Null
    }
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                out.push((i, Tok::LParen));
                i += 1
            }
            b')' => {
                out.push((i, Tok::RParen));
                i += 1
            }
            b'[' => {
                out.push((i, Tok::LBracket));
                i += 1
            }
            b']' => {
                out.push((i, Tok::RBracket));
                i += 1
            }
            b',' => {
                out.push((i, Tok::Comma));
                i += 1
            }
            b'\'' => {
                let start = i;
                i += 1;
                let mut v = String::new();
                loop {
                    match s[i..].find('\'') {
                        None => return err(start, "unterminated string literal"),
                        Some(k) => {
                            v.push_str(&s[i..i + k]);
                            i += k + 1;
                            if b.get(i) == Some(&b'\'') {
                                v.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                out.push((start, Tok::Str(v)));
            }
            b'0'..=b'9' | b'-' | b'+' => {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                let t = &s[start..i];
                let n = if let Some(h) = t.strip_prefix("0x") {
                    i64::from_str_radix(h, 16).ok().map(|v| v as f64)
                } else {
                    t.parse::<f64>().ok().filter(|n| n.is_finite())
                };
                match n {
                    Some(n) => out.push((start, Tok::Num(n))),
                    None => return err(start, format!("invalid number `{t}`")),
                }
            }
            b'.' => {
                out.push((i, Tok::Dot));
                i += 1
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-')
                {
                    i += 1;
                }
                out.push((start, Tok::Ident(s[start..i].to_string())));
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return err(i, format!("unexpected character `{ch}`"));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct P {
    toks: Vec<(usize, Tok)>,
    i: usize,
    end: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.1)
    }
    fn off(&self) -> usize {
        self.toks.get(self.i).map(|t| t.0).unwrap_or(self.end)
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ExprError> {
        if self.peek() == Some(&t) {
            self.i += 1;
            Ok(())
        } else {
            err(self.off(), format!("expected {what}"))
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if depth > MAX_DEPTH {
            return err(self.off(), "expression is nested too deeply");
        }
        let off = self.off();
        let tok = match self.toks.get(self.i) {
            Some((_, t)) => t.clone(),
            None => return err(off, "expected a value"),
        };
        self.i += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Ident(id) => {
                if self.peek() == Some(&Tok::LParen) {
                    self.i += 1;
                    let name = id.to_ascii_lowercase();
                    let mut args = Vec::new();
                    if self.peek() == Some(&Tok::RParen) {
                        self.i += 1;
                    } else {
                        loop {
                            args.push(self.expr(depth + 1)?);
                            match self.peek() {
                                Some(Tok::Comma) => self.i += 1,
                                Some(Tok::RParen) => {
                                    self.i += 1;
                                    break;
                                }
                                _ => return err(self.off(), "expected `,` or `)`"),
                            }
                        }
                    }
                    check_arity(off, &name, args.len())?;
                    return Ok(Expr::Call(name, args));
                }
                match id.to_ascii_lowercase().as_str() {
                    "true" => return Ok(Expr::Bool(true)),
                    "false" => return Ok(Expr::Bool(false)),
                    "null" => return Ok(Expr::Null),
                    _ => {}
                }
                let Some(root) = NAMED_VALUES.iter().find(|n| n.eq_ignore_ascii_case(&id)) else {
                    return err(off, format!("unrecognized value: `{id}`"));
                };
                let mut path = Vec::new();
                loop {
                    match self.peek() {
                        Some(Tok::Dot) => {
                            self.i += 1;
                            match self.toks.get(self.i) {
                                Some((_, Tok::Ident(p))) => {
                                    path.push(p.clone());
                                    self.i += 1;
                                }
                                _ => return err(self.off(), "expected a property name after `.`"),
                            }
                        }
                        Some(Tok::LBracket) => {
                            self.i += 1;
                            match self.toks.get(self.i) {
                                Some((_, Tok::Str(p))) => {
                                    path.push(p.clone());
                                    self.i += 1;
                                }
                                Some((_, Tok::Num(n))) => {
                                    path.push(fmt_num(*n));
                                    self.i += 1;
                                }
                                _ => {
                                    return err(self.off(), "expected a string index like ['name']")
                                }
                            }
                            self.expect(Tok::RBracket, "`]`")?;
                        }
                        _ => break,
                    }
                    if path.len() > MAX_DEPTH {
                        return err(self.off(), "property path is too long");
                    }
                }
                Ok(Expr::Path(root.to_string(), path))
            }
            _ => err(off, "expected a value"),
        }
    }
}

fn check_arity(off: usize, name: &str, n: usize) -> Result<(), ExprError> {
    let (min, max) = match name {
        "succeeded" | "failed" | "succeededorfailed" => (0, usize::MAX),
        "always" | "canceled" => (0, 0),
        "not" | "lower" | "upper" | "length" => (1, 1),
        "eq" | "ne" | "gt" | "ge" | "lt" | "le" | "contains" | "startswith" | "endswith" => (2, 2),
        "and" | "or" => (2, usize::MAX),
        "xor" => (2, 2),
        "in" | "notin" => (1, usize::MAX),
        "coalesce" => (1, usize::MAX),
        "format" => (1, usize::MAX),
        "replace" => (3, 3),
        _ => return err(off, format!("unrecognized function: `{name}`")),
    };
    if n < min || n > max {
        let want = if min == max {
            format!("{min}")
        } else if max == usize::MAX {
            format!("at least {min}")
        } else {
            format!("{min} to {max}")
        };
        return err(
            off,
            format!("function `{name}` takes {want} argument(s), got {n}"),
        );
    }
    Ok(())
}

/// Parse an expression such as `and(succeeded(), eq(variables['Build.SourceBranch'], 'refs/heads/main'))`.
pub fn parse(s: &str) -> Result<Expr, ExprError> {
    if s.len() > MAX_LEN {
        return err(0, "expression is too long");
    }
    let toks = lex(s)?;
    let mut p = P {
        toks,
        i: 0,
        end: s.len(),
    };
    let e = p.expr(0)?;
    if p.i != p.toks.len() {
        return err(p.off(), "unexpected text after the expression");
    }
    Ok(e)
}

// ---------------------------------------------------------------- evaluation

/// Azure's comparison: the right operand is converted to the left operand's type.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    match a {
        Value::Null => match b {
            Value::Null => Some(Ordering::Equal),
            _ => None,
        },
        Value::Bool(x) => {
            let y = match b {
                Value::Bool(y) => *y,
                other => other.truthy(),
            };
            Some(x.cmp(&y))
        }
        Value::Num(x) => x.partial_cmp(&b.to_num()),
        Value::Str(x) => {
            let y = b.to_text();
            Some(x.to_lowercase().cmp(&y.to_lowercase()))
        }
    }
}

fn equals(a: &Value, b: &Value) -> bool {
    compare(a, b) == Some(std::cmp::Ordering::Equal)
}

/// Most bytes of one string an expression may produce (`replace`, `format`, a variable).
pub const MAX_STRING_BYTES: usize = 1024 * 1024;
/// Most bytes of strings one evaluation may produce in all (literals, values and results), so
/// that nested `replace`/`format` calls cannot multiply their way to gigabytes.
pub const MAX_EVAL_BYTES: usize = 8 * 1024 * 1024;

/// Bytes an evaluation may still produce.
type Budget = std::cell::Cell<usize>;

/// Evaluate an expression (within [`MAX_STRING_BYTES`] and [`MAX_EVAL_BYTES`]).
pub fn eval(e: &Expr, ctx: &dyn Context) -> Result<Value, ExprError> {
    eval_in(e, ctx, &Budget::new(MAX_EVAL_BYTES))
}

fn eval_in(e: &Expr, ctx: &dyn Context, budget: &Budget) -> Result<Value, ExprError> {
    spend(
        budget,
        match e {
            Expr::Null => Value::Null,
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Num(n) => Value::Num(*n),
            Expr::Str(s) => Value::Str(s.clone()),
            Expr::Path(root, path) => ctx.lookup(root, path),
            Expr::Call(name, args) => call(name, args, ctx, budget)?,
        },
    )
}

/// Charges a string value to the budget.
fn spend(budget: &Budget, v: Value) -> Result<Value, ExprError> {
    if let Value::Str(s) = &v {
        check_len(s.len())?;
        match budget.get().checked_sub(s.len()) {
            Some(left) => budget.set(left),
            None => {
                return err(
                    0,
                    format!(
                        "the expression produces more than {} of text; that is the limit",
                        crate::yaml::human_bytes(MAX_EVAL_BYTES)
                    ),
                )
            }
        }
    }
    Ok(v)
}

fn check_len(n: usize) -> Result<(), ExprError> {
    if n > MAX_STRING_BYTES {
        return err(
            0,
            format!(
                "a string in the expression would be {} long; the limit is {}",
                crate::yaml::human_bytes(n),
                crate::yaml::human_bytes(MAX_STRING_BYTES)
            ),
        );
    }
    Ok(())
}

/// `replace(s, from, to)`, its length checked before anything is allocated.
fn replace(s: &str, from: &str, to: &str) -> Result<String, ExprError> {
    let count = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let len = (s.len() - count * from.len()).saturating_add(count.saturating_mul(to.len()));
    check_len(len)?;
    Ok(s.replace(from, to))
}

fn status_names(
    args: &[Expr],
    ctx: &dyn Context,
    budget: &Budget,
) -> Result<Vec<RunResult>, ExprError> {
    if args.is_empty() {
        return ctx.results(None).map_err(|n| ExprError {
            offset: 0,
            message: format!("unknown dependency `{n}`"),
        });
    }
    let mut names = Vec::new();
    for a in args {
        names.push(eval_in(a, ctx, budget)?.to_text());
    }
    ctx.results(Some(&names)).map_err(|n| ExprError {
        offset: 0,
        message: format!("`{n}` is not a dependency"),
    })
}

fn call(name: &str, args: &[Expr], ctx: &dyn Context, budget: &Budget) -> Result<Value, ExprError> {
    let eval = |e: &Expr, ctx: &dyn Context| eval_in(e, ctx, budget);
    let arg = |i: usize| eval(&args[i], ctx);
    let text = |i: usize| -> Result<String, ExprError> { Ok(eval(&args[i], ctx)?.to_text()) };
    Ok(Value::Bool(match name {
        "always" => true,
        "canceled" => ctx.canceled(),
        "succeeded" => {
            let r = status_names(args, ctx, budget)?;
            !ctx.canceled()
                && r.iter()
                    .all(|r| matches!(r, RunResult::Succeeded | RunResult::SucceededWithIssues))
        }
        "failed" => {
            let r = status_names(args, ctx, budget)?;
            !ctx.canceled() && r.contains(&RunResult::Failed)
        }
        "succeededorfailed" => {
            let r = status_names(args, ctx, budget)?;
            !ctx.canceled()
                && r.iter().all(|r| {
                    matches!(
                        r,
                        RunResult::Succeeded | RunResult::SucceededWithIssues | RunResult::Failed
                    )
                })
        }
        "not" => !arg(0)?.truthy(),
        "and" => {
            for a in args {
                if !eval(a, ctx)?.truthy() {
                    return Ok(Value::Bool(false));
                }
            }
            true
        }
        "or" => {
            for a in args {
                if eval(a, ctx)?.truthy() {
                    return Ok(Value::Bool(true));
                }
            }
            false
        }
        "xor" => arg(0)?.truthy() != arg(1)?.truthy(),
        "eq" => equals(&arg(0)?, &arg(1)?),
        "ne" => !equals(&arg(0)?, &arg(1)?),
        "gt" | "ge" | "lt" | "le" => {
            let (a, b) = (arg(0)?, arg(1)?);
            match compare(&a, &b) {
                None => false,
                Some(o) => match name {
                    "gt" => o.is_gt(),
                    "ge" => o.is_ge(),
                    "lt" => o.is_lt(),
                    _ => o.is_le(),
                },
            }
        }
        "contains" => text(0)?.to_lowercase().contains(&text(1)?.to_lowercase()),
        "startswith" => text(0)?
            .to_lowercase()
            .starts_with(&text(1)?.to_lowercase()),
        "endswith" => text(0)?.to_lowercase().ends_with(&text(1)?.to_lowercase()),
        "in" | "notin" => {
            let needle = arg(0)?;
            let mut found = false;
            for a in &args[1..] {
                if equals(&needle, &eval(a, ctx)?) {
                    found = true;
                    break;
                }
            }
            found == (name == "in")
        }
        "lower" => return Ok(Value::Str(text(0)?.to_lowercase())),
        "upper" => return Ok(Value::Str(text(0)?.to_uppercase())),
        "length" => return Ok(Value::Num(text(0)?.chars().count() as f64)),
        "replace" => return Ok(Value::Str(replace(&text(0)?, &text(1)?, &text(2)?)?)),
        "coalesce" => {
            for a in args {
                let v = eval(a, ctx)?;
                if !matches!(&v, Value::Null) && v != Value::Str(String::new()) {
                    return Ok(v);
                }
            }
            return Ok(Value::Null);
        }
        "format" => {
            let f = text(0)?;
            let mut vals = Vec::new();
            for i in 1..args.len() {
                vals.push(text(i)?);
            }
            return format_str(&f, &vals).map(Value::Str);
        }
        other => return err(0, format!("unrecognized function: `{other}`")),
    }))
}

fn format_str(f: &str, vals: &[String]) -> Result<String, ExprError> {
    let mut out = String::new();
    let mut chars = f.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|x| x.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|x| x.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut idx = String::new();
                loop {
                    match chars.next() {
                        Some((_, '}')) => break,
                        Some((_, d)) if d.is_ascii_digit() && idx.len() < 4 => idx.push(d),
                        _ => return err(i, "invalid format placeholder"),
                    }
                }
                match idx.parse::<usize>().ok().and_then(|k| vals.get(k)) {
                    Some(v) => {
                        check_len(out.len() + v.len())?;
                        out.push_str(v)
                    }
                    None => return err(i, "format placeholder index out of range"),
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Parse and evaluate a condition; the result's truthiness decides whether to run.
pub fn eval_condition(condition: &str, ctx: &dyn Context) -> Result<bool, ExprError> {
    Ok(eval(&parse(condition)?, ctx)?.truthy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Ctx {
        vars: BTreeMap<String, String>,
        deps: BTreeMap<String, RunResult>,
        canceled: bool,
    }
    impl Context for Ctx {
        fn lookup(&self, root: &str, path: &[String]) -> Value {
            match (root, path) {
                ("variables", [name]) => self
                    .vars
                    .get(&name.to_lowercase())
                    .map(|v| Value::Str(v.clone()))
                    .unwrap_or(Value::Null),
                ("dependencies", [name, r]) if r.eq_ignore_ascii_case("result") => self
                    .deps
                    .get(name)
                    .map(|v| Value::Str(v.as_str().into()))
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            }
        }
        fn canceled(&self) -> bool {
            self.canceled
        }
        fn results(&self, names: Option<&[String]>) -> Result<Vec<RunResult>, String> {
            match names {
                None => Ok(self.deps.values().copied().collect()),
                Some(ns) => ns
                    .iter()
                    .map(|n| self.deps.get(n).copied().ok_or(n.clone()))
                    .collect(),
            }
        }
    }

    fn ctx(deps: &[(&str, RunResult)], canceled: bool) -> Ctx {
        let mut vars = BTreeMap::new();
        vars.insert("build.sourcebranch".into(), "refs/heads/main".into());
        vars.insert("x".into(), "Hello".into());
        vars.insert("n".into(), "10".into());
        vars.insert("flag".into(), "true".into());
        Ctx {
            vars,
            deps: deps.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            canceled,
        }
    }

    #[test]
    fn table() {
        use RunResult::*;
        let ok = ctx(&[("A", Succeeded), ("B", SucceededWithIssues)], false);
        let bad = ctx(&[("A", Succeeded), ("B", Failed)], false);
        let skipped = ctx(&[("A", Skipped)], false);
        let canc = ctx(&[("A", Succeeded)], true);
        let cases: &[(&str, &Ctx, bool)] = &[
            ("succeeded()", &ok, true),
            ("succeeded()", &bad, false),
            ("succeeded()", &skipped, false),
            ("succeeded()", &canc, false),
            ("succeeded('A')", &bad, true),
            ("failed()", &bad, true),
            ("failed()", &ok, false),
            ("failed('A')", &bad, false),
            ("failed()", &skipped, false),
            ("succeededOrFailed()", &bad, true),
            ("succeededOrFailed()", &canc, false),
            ("always()", &canc, true),
            ("canceled()", &canc, true),
            ("canceled()", &ok, false),
            (
                "eq(variables['Build.SourceBranch'], 'refs/heads/main')",
                &ok,
                true,
            ),
            (
                "eq(variables['build.sourcebranch'], 'REFS/HEADS/MAIN')",
                &ok,
                true,
            ),
            ("eq(variables.x, 'hello')", &ok, true),
            ("ne(variables.x, 'hello')", &ok, false),
            ("and(succeeded(), eq(variables['x'], 'Hello'))", &ok, true),
            ("and(succeeded(), eq(variables['x'], 'Hello'))", &bad, false),
            ("or(failed(), eq(1, 1))", &ok, true),
            ("not(eq(variables.missing, ''))", &ok, true),
            ("eq(variables.missing, '')", &ok, false),
            ("contains(variables.x, 'ELL')", &ok, true),
            (
                "startsWith(variables['Build.SourceBranch'], 'refs/heads/')",
                &ok,
                true,
            ),
            (
                "endsWith(variables['Build.SourceBranch'], '/Main')",
                &ok,
                true,
            ),
            ("in(variables.x, 'a', 'hello', 'b')", &ok, true),
            ("notIn(variables.x, 'a', 'b')", &ok, true),
            ("in('x')", &ok, false),
            ("eq(dependencies.B.result, 'Failed')", &bad, true),
            ("eq(dependencies.B.result, 'succeeded')", &bad, false),
            (
                "in(dependencies.B.result, 'Succeeded', 'SucceededWithIssues')",
                &ok,
                true,
            ),
            ("eq(variables.n, 10)", &ok, true),
            ("eq(10, variables.n)", &ok, true),
            // The right side is converted to the left side's type: '10' vs '9' as strings.
            ("gt(variables.n, 9)", &ok, false),
            ("gt(11, variables.n)", &ok, true),
            ("lt(variables.n, '9')", &ok, true),
            ("eq(variables.flag, true)", &ok, true),
            ("eq(true, 'yes')", &ok, true),
            ("eq('it''s', 'IT''S')", &ok, true),
            ("eq(1.5, '1.5')", &ok, true),
            ("true", &ok, true),
            ("False", &ok, false),
            ("'false'", &ok, true),
            ("0", &ok, false),
            ("''", &ok, false),
            ("eq(lower('ABC'), 'abc')", &ok, true),
            ("eq(format('{0}-{1}', 'a', 2), 'a-2')", &ok, true),
            ("eq(coalesce(variables.missing, '', 'z'), 'z')", &ok, true),
            ("eq(length('abc'), 3)", &ok, true),
            ("xor(true, false)", &ok, true),
            ("eq(replace('a-b', '-', '_'), 'a_b')", &ok, true),
            ("eq(0x10, 16)", &ok, true),
        ];
        for (src, c, want) in cases {
            let got = eval_condition(src, *c).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(got, *want, "{src}");
        }
    }

    #[test]
    fn errors() {
        let c = ctx(&[], false);
        let cases: &[(&str, &str)] = &[
            ("", "expected a value"),
            ("eq(1)", "takes 2 argument"),
            ("foo()", "unrecognized function: `foo`"),
            ("bogus.x", "unrecognized value: `bogus`"),
            ("eq(1, 2", "expected `,` or `)`"),
            ("'abc", "unterminated string"),
            ("eq(1,2) x", "unexpected text"),
            ("variables[x]", "expected a string index"),
            ("always(1)", "takes 0 argument"),
            ("a#", "unexpected character"),
            ("1.2.3", "invalid number"),
        ];
        for (src, want) in cases {
            let e = eval_condition(src, &c).unwrap_err();
            assert!(e.message.contains(want), "{src}: {e}");
        }
        let e = eval_condition("succeeded('Nope')", &c).unwrap_err();
        assert!(e.message.contains("Nope"), "{e}");
        let deep = format!("{}true{}", "not(".repeat(200), ")".repeat(200));
        assert!(parse(&deep)
            .unwrap_err()
            .message
            .contains("nested too deeply"));
    }

    /// Property-style: random strings, and random mixes of expression tokens, never panic.
    #[test]
    fn never_panics_on_random_input() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "eq(",
            "and(",
            "not(",
            "in(",
            "succeeded(",
            "format(",
            ")",
            ",",
            "'",
            "'a'",
            "''",
            "[",
            "]",
            ".",
            "variables",
            "dependencies",
            "x",
            "1",
            "-",
            "0x",
            "{0}",
            "1e400",
            "é",
            " ",
            "true",
            "null",
            "$",
            "\"",
            "\u{0}",
            "'{'",
            "'{99}'",
            "coalesce(",
        ];
        let c = ctx(&[("A", RunResult::Succeeded)], false);
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let mut s = String::new();
            for _ in 0..n {
                if next() % 4 == 0 {
                    let ch = char::from_u32((next() % 0x250) as u32).unwrap_or('x');
                    s.push(ch);
                } else {
                    s.push_str(pieces[(next() % pieces.len() as u64) as usize]);
                }
            }
            let _ = eval_condition(&s, &c);
        }
    }

    fn eval_str(src: &str) -> Result<Value, ExprError> {
        eval(&parse(src).unwrap(), &EmptyContext)
    }

    #[test]
    fn nested_replace_cannot_multiply_without_bound() {
        // 40 doublings of 16 bytes would be 16 TiB; the 17th crosses 1 MiB.
        let mut e = String::from("'aaaaaaaaaaaaaaaa'");
        for _ in 0..40 {
            e = format!("replace({e}, 'a', 'aa')");
        }
        let err = eval_str(&e).unwrap_err();
        assert_eq!(
            err.message,
            "a string in the expression would be 2 MiB long; the limit is 1 MiB"
        );
        // Exactly at the limit is allowed: 16 * 2^16 bytes.
        let mut e = String::from("'aaaaaaaaaaaaaaaa'");
        for _ in 0..16 {
            e = format!("replace({e}, 'a', 'aa')");
        }
        assert_eq!(
            eval_str(&e).unwrap(),
            Value::Str("a".repeat(MAX_STRING_BYTES))
        );
        // An empty pattern inserts between every character.
        assert_eq!(
            eval_str("replace('ab', '', '-')").unwrap(),
            Value::Str("-a-b-".into())
        );
    }

    #[test]
    fn format_output_is_capped() {
        // 2000 copies of 2000 copies: 4 MB from a 12 KB expression.
        let placeholders = "{0}".repeat(2000);
        let e = format!("format('{placeholders}', format('{placeholders}', 'x'))");
        let err = eval_str(&e).unwrap_err();
        assert!(
            err.message
                .starts_with("a string in the expression would be"),
            "{err}"
        );
    }

    #[test]
    fn one_evaluation_produces_at_most_the_budget() {
        // Each R is 16 * 256 * 256 bytes = 1 MiB (allowed); seven fit in 8 MiB, eight do not.
        let r = format!(
            "replace(replace('{}', 'a', '{}'), 'b', '{}')",
            "a".repeat(16),
            "b".repeat(256),
            "c".repeat(256)
        );
        let ors = |n: usize| {
            let args: Vec<String> = (0..n).map(|_| format!("eq({r}, '')")).collect();
            eval_str(&format!("or({})", args.join(", ")))
        };
        assert_eq!(ors(7).unwrap(), Value::Bool(false));
        let err = ors(8).unwrap_err();
        assert_eq!(
            err.message,
            "the expression produces more than 8 MiB of text; that is the limit"
        );
    }
}
