//! Azure Pipelines YAML → [`Pipeline`], with `file:line:column` errors.

use crate::error::{Pos, YamlError};
use crate::expr::{self, Context, Value};
use crate::model::*;
use crate::vars::{Var, Variables};
use crate::yaml::{self, Node, NodeKind};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};

type R<T> = Result<T, YamlError>;

/// Parse and compile a pipeline file with the parameters' default values.
pub fn parse_pipeline(file: &str, text: &str) -> R<Pipeline> {
    compile(file, text, &BTreeMap::new())
}

/// Parse and compile a pipeline file. `parameters` overrides parameter defaults (by name,
/// case-insensitively); `${{ parameters.x }}` and `${{ variables.x }}` are replaced.
pub fn compile(file: &str, text: &str, parameters: &BTreeMap<String, String>) -> R<Pipeline> {
    let root = yaml::parse(file, text)?;
    let mut c = Compiler {
        file,
        params: BTreeMap::new(),
        vars: Variables::new(),
        scope: Variables::new(),
        template_budget: Cell::new(MAX_TEMPLATE_BYTES),
    };
    c.pipeline(&root, parameters)
}

struct Compiler<'a> {
    file: &'a str,
    /// Lower-cased name → value.
    params: BTreeMap<String, String>,
    /// Pipeline variables known at compile time.
    vars: Variables,
    /// The variables block being compiled (a stage's or job's shadow the pipeline's).
    scope: Variables,
    /// Bytes `${{ }}` expressions may still produce in this file.
    template_budget: Cell<usize>,
}

/// Most bytes all `${{ }}` expressions of one file may produce together: variables that
/// repeat each other (`b: ${{ variables.a }}${{ variables.a }}`, and so on) would otherwise
/// double their size at every line.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024 * 1024;

impl Context for Compiler<'_> {
    fn lookup(&self, root: &str, path: &[String]) -> Value {
        match (root, path) {
            ("parameters", [name]) => self
                .params
                .get(&name.to_lowercase())
                .map(|v| Value::Str(v.clone()))
                .unwrap_or(Value::Null),
            ("variables", [name]) => self
                .scope
                .get(name)
                .or_else(|| self.vars.get(name))
                .map(|v| Value::Str(v.to_string()))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

const STEP_COMMON: &[&str] = &[
    "displayName",
    "name",
    "env",
    "condition",
    "continueOnError",
    "enabled",
    "timeoutInMinutes",
    "retryCountOnTaskFailure",
    "target",
];

/// The keys a pipeline file may have at the top.
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "trigger",
    "pr",
    "variables",
    "parameters",
    "resources",
    "pool",
    "stages",
    "jobs",
    "steps",
    "appendCommitMessageToRunName",
    "extends",
    "schedules",
    "lockBehavior",
];

/// A step's kind-specific keys, read before the kind itself is built.
#[derive(Default)]
struct StepFields {
    fail_on_stderr: bool,
    inputs: Vec<(String, String)>,
    clean: bool,
    path: Option<String>,
    artifact: Option<String>,
    patterns: Option<String>,
}

fn is_identifier(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl<'a> Compiler<'a> {
    fn err<T>(&self, pos: Pos, msg: impl Into<String>) -> R<T> {
        Err(YamlError::new(self.file, pos, msg))
    }

    /// The entries of a mapping, checking that every key is allowed.
    fn map<'n>(&self, n: &'n Node, allowed: &[&str], what: &str) -> R<Vec<(&'n str, &'n Node)>> {
        let NodeKind::Map(entries) = &n.kind else {
            return self.err(
                n.pos,
                format!("{what} must be a mapping, found {}", n.type_name()),
            );
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let key = k.as_str().unwrap_or("");
            if key.contains("${{") {
                return self.err(
                    k.pos,
                    "template directives (`${{ if }}`, `${{ each }}`, `${{ insert }}`) are not supported",
                );
            }
            if !allowed.contains(&key) {
                let hint = allowed
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(key))
                    .map(|a| format!(" (did you mean `{a}`? keys are case-sensitive)"))
                    .unwrap_or_else(|| format!("; allowed keys: {}", allowed.join(", ")));
                return self.err(k.pos, format!("unknown key `{key}` in {what}{hint}"));
            }
            out.push((key, v));
        }
        Ok(out)
    }

    fn seq<'n>(&self, n: &'n Node, what: &str) -> R<&'n [Node]> {
        match &n.kind {
            NodeKind::Seq(items) => Ok(items),
            NodeKind::Null => Ok(&[]),
            _ => self.err(
                n.pos,
                format!("`{what}` must be a list, found {}", n.type_name()),
            ),
        }
    }

    /// Expand `${{ expr }}` in a string.
    fn template(&self, pos: Pos, s: &str) -> R<String> {
        if !s.contains("${{") {
            return Ok(s.to_string());
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 3..];
            let Some(end) = after.find("}}") else {
                return self.err(pos, "`${{` without a closing `}}`");
            };
            let src = after[..end].trim();
            if let Ok(e) = expr::parse(src) {
                if let Some(name) = self.undeclared_parameter(&e) {
                    return self.err(pos, format!("in template expression `${{{{ {src} }}}}`: parameter `{name}` is not declared"));
                }
            }
            let v = expr::parse(src)
                .and_then(|e| expr::eval(&e, self))
                .or_else(|e| {
                    self.err(
                        pos,
                        format!("in template expression `${{{{ {src} }}}}`: {e}"),
                    )
                })?;
            let v = v.to_text();
            self.spend_template(pos, v.len())?;
            if out.len() + v.len() > crate::vars::MAX_VALUE_BYTES.max(s.len()) {
                return self.err(
                    pos,
                    format!(
                        "`${{{{ {src} }}}}` makes this value longer than {}, the limit for one value",
                        crate::yaml::human_bytes(crate::vars::MAX_VALUE_BYTES.max(s.len()))
                    ),
                );
            }
            out.push_str(&v);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn spend_template(&self, pos: Pos, n: usize) -> R<()> {
        match self.template_budget.get().checked_sub(n) {
            Some(left) => {
                self.template_budget.set(left);
                Ok(())
            }
            None => self.err(
                pos,
                format!(
                    "`${{{{ }}}}` expressions in this file produce more than {} together; that is the limit",
                    crate::yaml::human_bytes(MAX_TEMPLATE_BYTES)
                ),
            ),
        }
    }

    fn undeclared_parameter(&self, e: &expr::Expr) -> Option<String> {
        match e {
            expr::Expr::Path(root, path) if root == "parameters" => match path.first() {
                Some(n) if self.params.contains_key(&n.to_lowercase()) => None,
                Some(n) => Some(n.clone()),
                None => Some(String::new()),
            },
            expr::Expr::Call(_, args) => args.iter().find_map(|a| self.undeclared_parameter(a)),
            _ => None,
        }
    }

    fn string(&self, n: &Node, key: &str) -> R<String> {
        match &n.kind {
            NodeKind::Scalar { value, .. } => self.template(n.pos, value),
            NodeKind::Null => Ok(String::new()),
            _ => self.err(
                n.pos,
                format!("`{key}` must be a string, found {}", n.type_name()),
            ),
        }
    }

    fn opt_string(&self, n: &Node, key: &str) -> R<Option<String>> {
        Ok(Some(self.string(n, key)?).filter(|s| !s.is_empty()))
    }

    fn boolean(&self, n: &Node, key: &str) -> R<bool> {
        let s = self.string(n, key)?;
        match s.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => self.err(n.pos, format!("`{key}` must be true or false, found `{s}`")),
        }
    }

    fn number(&self, n: &Node, key: &str) -> R<u32> {
        let s = self.string(n, key)?;
        s.trim().parse::<u32>().or_else(|_| {
            self.err(
                n.pos,
                format!("`{key}` must be a non-negative whole number, found `{s}`"),
            )
        })
    }

    fn condition(&self, n: &Node) -> R<Option<String>> {
        let c = self.string(n, "condition")?;
        if c.trim().is_empty() {
            return Ok(None);
        }
        if let Err(e) = expr::parse(&c) {
            return self.err(n.pos, format!("invalid condition `{c}`: {e}"));
        }
        Ok(Some(c))
    }

    fn string_list(&self, n: &Node, key: &str) -> R<Vec<String>> {
        match &n.kind {
            NodeKind::Scalar { .. } => Ok(vec![self.string(n, key)?]),
            _ => self
                .seq(n, key)?
                .iter()
                .map(|i| self.string(i, key))
                .collect(),
        }
    }

    fn filter(&self, n: &Node, key: &str) -> R<Filter> {
        if let NodeKind::Seq(_) = n.kind {
            return Ok(Filter {
                include: self.string_list(n, key)?,
                exclude: vec![],
            });
        }
        let mut f = Filter::default();
        for (k, v) in self.map(n, &["include", "exclude"], &format!("`{key}`"))? {
            let list = self.string_list(v, k)?;
            match k {
                "include" => f.include = list,
                _ => f.exclude = list,
            }
        }
        Ok(f)
    }

    fn pipeline(&mut self, root: &Node, given: &BTreeMap<String, String>) -> R<Pipeline> {
        if root.kind == NodeKind::Null {
            return self.err(
                root.pos,
                "the pipeline file is empty; it needs `steps`, `jobs` or `stages`",
            );
        }
        let entries = self.map(root, PIPELINE_KEYS, "the pipeline")?;
        let get = |k: &str| entries.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        for unsupported in ["extends", "schedules"] {
            if get(unsupported).is_some() {
                return self.err(
                    key_pos(root, unsupported),
                    format!("`{unsupported}` is not supported"),
                );
            }
        }
        // Parameters first, then variables: both feed ${{ }} expressions.
        let parameters = self.pipeline_parameters(root, get("parameters"), given)?;
        let variables = self.pipeline_variables(get("variables"))?;
        let name = get("name").map(|n| self.string(n, "name")).transpose()?;
        let trigger = match get("trigger") {
            Some(n) => self.trigger(n)?,
            None => Trigger::default(),
        };
        let resources = match get("resources") {
            Some(n) => self.resources(n)?,
            None => Resources::default(),
        };
        let pool = get("pool").map(|n| self.pool(n)).transpose()?.flatten();
        let mut stages = self.pipeline_stages(root, &entries)?;
        resolve_previous(&mut stages);
        let stage_list: Vec<(String, Vec<String>, Pos)> = stages
            .iter()
            .map(|s| (s.name.clone(), s.depends_on.clone(), s.pos))
            .collect();
        self.check_graph("stage", &stage_list)?;
        Ok(Pipeline {
            name,
            trigger,
            variables,
            parameters,
            resources,
            pool,
            stages,
        })
    }

    /// The declared parameters with the given values; without a declaration none may be given.
    fn pipeline_parameters(
        &mut self,
        root: &Node,
        n: Option<&Node>,
        given: &BTreeMap<String, String>,
    ) -> R<Vec<Parameter>> {
        match n {
            Some(n) => self.parameters(n, given),
            None => {
                if let Some(k) = given.keys().next() {
                    return self.err(
                        root.pos,
                        format!("parameter `{k}` is not declared by this pipeline"),
                    );
                }
                Ok(vec![])
            }
        }
    }

    /// The pipeline's variables, which later `${{ variables.x }}` expressions see.
    fn pipeline_variables(&mut self, n: Option<&Node>) -> R<Variables> {
        match n {
            Some(n) => {
                let v = self.variables(n)?;
                self.check_expansion(n, &v)?;
                self.vars = v.clone();
                Ok(v)
            }
            None => Ok(Variables::new()),
        }
    }

    /// The stages from exactly one of `stages`, `jobs` (one stage) or `steps` (one job).
    fn pipeline_stages(&mut self, root: &Node, entries: &[(&str, &Node)]) -> R<Vec<Stage>> {
        let forms: Vec<(&str, &Node)> = entries
            .iter()
            .filter(|(k, _)| matches!(*k, "stages" | "jobs" | "steps"))
            .copied()
            .collect();
        match forms.as_slice() {
            [] => self.err(
                root.pos,
                "the pipeline needs one of `stages`, `jobs` or `steps`",
            ),
            [(a, _), (b, _), ..] => self.err(
                key_pos(root, b),
                format!("use only one of `stages`, `jobs` and `steps` (found `{a}` and `{b}`)"),
            ),
            [("stages", n)] => {
                let mut stages = Vec::new();
                for s in self.seq(n, "stages")? {
                    stages.push(self.stage(s)?);
                }
                if stages.is_empty() {
                    return self.err(n.pos, "`stages` is empty");
                }
                Ok(stages)
            }
            [("jobs", n)] => Ok(vec![default_stage(self.jobs(n)?, n.pos)]),
            [(_, n)] => Ok(vec![default_stage(
                vec![default_job(self.steps(n)?, n.pos)],
                n.pos,
            )]),
        }
    }

    fn parameters(&mut self, n: &Node, given: &BTreeMap<String, String>) -> R<Vec<Parameter>> {
        let mut out: Vec<Parameter> = Vec::new();
        let mut decl: Vec<(Pos, Parameter)> = Vec::new();
        if let NodeKind::Map(entries) = &n.kind {
            // Old mapping form `parameters: { name: default }`.
            for (k, v) in entries {
                let name = k.as_str().unwrap_or("").to_string();
                let default = Some(self.string(v, &name)?);
                decl.push((
                    k.pos,
                    Parameter {
                        name,
                        display_name: None,
                        ty: ParamType::String,
                        default,
                        values: vec![],
                        value: String::new(),
                    },
                ));
            }
        } else {
            for p in self.seq(n, "parameters")? {
                let mut name = None;
                let mut param = Parameter {
                    name: String::new(),
                    display_name: None,
                    ty: ParamType::String,
                    default: None,
                    values: vec![],
                    value: String::new(),
                };
                for (k, v) in self.map(
                    p,
                    &["name", "displayName", "type", "default", "values"],
                    "a parameter",
                )? {
                    match k {
                        "name" => name = Some(self.string(v, k)?),
                        "displayName" => param.display_name = self.opt_string(v, k)?,
                        "type" => {
                            let t = self.string(v, k)?;
                            param.ty = match t.as_str() {
                                "string" => ParamType::String,
                                "number" => ParamType::Number,
                                "boolean" => ParamType::Boolean,
                                _ => return self.err(v.pos, format!("parameter type `{t}` is not supported (supported: string, number, boolean)")),
                            }
                        }
                        "default" => param.default = Some(self.string(v, k)?),
                        _ => param.values = self.string_list(v, k)?,
                    }
                }
                match name {
                    Some(nm) if is_identifier(&nm) => param.name = nm,
                    Some(nm) => return self.err(p.pos, format!("parameter name `{nm}` must start with a letter or `_` and contain only letters, digits and `_`")),
                    None => return self.err(p.pos, "a parameter needs a `name`"),
                }
                decl.push((p.pos, param));
            }
        }
        let declared: HashSet<String> = decl.iter().map(|(_, p)| p.name.to_lowercase()).collect();
        for k in given.keys() {
            if !declared.contains(&k.to_lowercase()) {
                return self.err(
                    n.pos,
                    format!("parameter `{k}` is not declared by this pipeline"),
                );
            }
        }
        let given: HashMap<String, &String> =
            given.iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
        let mut names = HashSet::new();
        for (pos, mut p) in decl {
            if !names.insert(p.name.to_lowercase()) {
                return self.err(pos, format!("parameter `{}` is declared twice", p.name));
            }
            let value = given
                .get(&p.name.to_lowercase())
                .map(|v| v.to_string())
                .or_else(|| p.default.clone());
            let Some(value) = value else {
                return self.err(
                    pos,
                    format!(
                        "parameter `{}` has no default and no value was given",
                        p.name
                    ),
                );
            };
            let ok = match p.ty {
                ParamType::String => true,
                ParamType::Number => value.trim().parse::<f64>().is_ok(),
                ParamType::Boolean => {
                    matches!(value.to_ascii_lowercase().as_str(), "true" | "false")
                }
            };
            if !ok {
                return self.err(
                    pos,
                    format!("parameter `{}` must be a {:?}, got `{value}`", p.name, p.ty)
                        .to_lowercase(),
                );
            }
            if !p.values.is_empty() && !p.values.iter().any(|v| v == &value) {
                return self.err(
                    pos,
                    format!(
                        "parameter `{}` must be one of {}, got `{value}`",
                        p.name,
                        p.values.join(", ")
                    ),
                );
            }
            self.params.insert(p.name.to_lowercase(), value.clone());
            p.value = value;
            out.push(p);
        }
        Ok(out)
    }

    /// A variables block. While it is compiled, `${{ variables.x }}` sees its earlier entries
    /// over the pipeline's (through `self.scope`, so nothing is copied per block).
    fn variables(&mut self, n: &Node) -> R<Variables> {
        self.scope = Variables::new();
        let r = self.variables_into_scope(n);
        let vars = std::mem::take(&mut self.scope);
        r.map(|()| vars)
    }

    fn variables_into_scope(&mut self, n: &Node) -> R<()> {
        match &n.kind {
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    let name = k.as_str().unwrap_or("").to_string();
                    self.check_var_name(k.pos, &name)?;
                    let value = self.string(v, &name)?;
                    self.scope.set(&name, value);
                }
            }
            _ => {
                for item in self.seq(n, "variables")? {
                    if let NodeKind::Map(e) = &item.kind {
                        if let Some((k, _)) = e.iter().find(|(k, _)| k.as_str() == Some("group")) {
                            return self.err(k.pos, "variable groups (`group`) are not supported: there is no library on this machine; define the variables in the pipeline, or pass secrets as run variables");
                        }
                        if let Some((k, _)) = e.iter().find(|(k, _)| k.as_str() == Some("template"))
                        {
                            return self
                                .err(k.pos, "variable templates (`template`) are not supported");
                        }
                    }
                    let mut name = None;
                    let mut value = String::new();
                    let mut readonly = false;
                    for (k, v) in self.map(item, &["name", "value", "readonly"], "a variable")? {
                        match k {
                            "name" => name = Some((v.pos, self.string(v, k)?)),
                            "value" => value = self.string(v, k)?,
                            _ => readonly = self.boolean(v, k)?,
                        }
                    }
                    let Some((pos, name)) = name else {
                        return self.err(
                            item.pos,
                            "a variable needs `name` (or `group`, which is not supported)",
                        );
                    };
                    self.check_var_name(pos, &name)?;
                    self.scope.insert(Var {
                        name,
                        value,
                        secret: false,
                        readonly,
                    });
                }
            }
        }
        Ok(())
    }

    /// Fails at compile time, at the variable's key, when the pipeline's own variables expand
    /// (`a: $(b)$(b)`, ...) past the caps of [`Variables::resolve_nested`].
    fn check_expansion(&self, n: &Node, vars: &Variables) -> R<()> {
        let mut v = vars.clone();
        let Err(e) = v.resolve_nested() else {
            return Ok(());
        };
        let pos = e
            .name
            .as_deref()
            .and_then(|name| var_pos(n, name))
            .unwrap_or(n.pos);
        self.err(pos, e.to_string())
    }

    fn check_var_name(&self, pos: Pos, name: &str) -> R<()> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return self.err(
                pos,
                format!(
                    "variable name `{name}` may contain only letters, digits, `.`, `_` and `-`"
                ),
            );
        }
        Ok(())
    }

    fn trigger(&self, n: &Node) -> R<Trigger> {
        let mut t = Trigger::default();
        match &n.kind {
            NodeKind::Null => {}
            NodeKind::Scalar { value, .. } if value == "none" => t.enabled = false,
            NodeKind::Scalar { value, .. } => {
                return self.err(
                    n.pos,
                    format!(
                    "`trigger` must be `none`, a list of branches or a mapping, found `{value}`"
                ),
                )
            }
            NodeKind::Seq(_) => t.branches.include = self.string_list(n, "trigger")?,
            NodeKind::Map(_) => {
                for (k, v) in self.map(n, &["batch", "branches", "paths", "tags"], "`trigger`")? {
                    match k {
                        "batch" => t.batch = self.boolean(v, k)?,
                        "branches" => t.branches = self.filter(v, k)?,
                        "paths" => t.paths = self.filter(v, k)?,
                        _ => t.tags = self.filter(v, k)?,
                    }
                }
            }
        }
        Ok(t)
    }

    fn resources(&self, n: &Node) -> R<Resources> {
        let mut r = Resources::default();
        let mut aliases = HashSet::new();
        for (k, v) in self.map(
            n,
            &[
                "pipelines",
                "repositories",
                "containers",
                "builds",
                "packages",
                "webhooks",
            ],
            "`resources`",
        )? {
            if k != "pipelines" {
                return self.err(
                    key_pos(n, k),
                    format!("`resources.{k}` is not supported (only `resources.pipelines`)"),
                );
            }
            for p in self.seq(v, k)? {
                let mut res = PipelineResource {
                    alias: String::new(),
                    source: String::new(),
                    project: None,
                    branch: None,
                    version: None,
                    trigger: ResourceTrigger::default(),
                    pos: p.pos,
                };
                for (k, v) in self.map(
                    p,
                    &[
                        "pipeline", "source", "project", "branch", "version", "tags", "trigger",
                    ],
                    "a pipeline resource",
                )? {
                    match k {
                        "pipeline" => res.alias = self.string(v, k)?,
                        "source" => res.source = self.string(v, k)?,
                        "project" => res.project = self.opt_string(v, k)?,
                        "branch" => res.branch = self.opt_string(v, k)?,
                        "version" => res.version = self.opt_string(v, k)?,
                        "tags" => {
                            self.string_list(v, k)?;
                        }
                        _ => res.trigger = self.resource_trigger(v)?,
                    }
                }
                if !is_identifier(&res.alias) {
                    return self.err(p.pos, format!("a pipeline resource needs `pipeline: <alias>` (letters, digits and `_`), found `{}`", res.alias));
                }
                if res.source.is_empty() {
                    return self.err(
                        p.pos,
                        format!(
                            "pipeline resource `{}` needs `source: <pipeline name>`",
                            res.alias
                        ),
                    );
                }
                if !aliases.insert(res.alias.to_lowercase()) {
                    return self.err(
                        p.pos,
                        format!("pipeline resource `{}` is declared twice", res.alias),
                    );
                }
                r.pipelines.push(res);
            }
        }
        Ok(r)
    }

    fn resource_trigger(&self, n: &Node) -> R<ResourceTrigger> {
        let mut t = ResourceTrigger::default();
        match &n.kind {
            NodeKind::Null => {}
            NodeKind::Scalar { value, .. } => match value.to_ascii_lowercase().as_str() {
                "true" => t.enabled = true,
                "none" | "false" => {}
                _ => {
                    return self.err(
                        n.pos,
                        format!(
                        "a resource `trigger` must be `true`, `none` or a mapping, found `{value}`"
                    ),
                    )
                }
            },
            NodeKind::Seq(_) => {
                return self.err(
                    n.pos,
                    "a resource `trigger` must be `true`, `none` or a mapping",
                )
            }
            NodeKind::Map(_) => {
                t.enabled = true;
                for (k, v) in self.map(
                    n,
                    &["enabled", "branches", "stages", "tags"],
                    "a resource `trigger`",
                )? {
                    match k {
                        "enabled" => t.enabled = self.boolean(v, k)?,
                        "branches" => t.branches = self.filter(v, k)?,
                        "stages" => t.stages = self.string_list(v, k)?,
                        _ => t.tags = self.string_list(v, k)?,
                    }
                }
            }
        }
        Ok(t)
    }

    fn pool(&self, n: &Node) -> R<Option<String>> {
        match &n.kind {
            NodeKind::Map(_) => {
                let mut out = None;
                for (k, v) in self.map(n, &["name", "vmImage", "demands"], "`pool`")? {
                    if k != "demands" {
                        out = self.opt_string(v, k)?;
                    }
                }
                Ok(out)
            }
            _ => self.opt_string(n, "pool"),
        }
    }

    fn depends_on(&self, n: &Node) -> R<Vec<String>> {
        self.string_list(n, "dependsOn")
    }

    fn stage(&mut self, n: &Node) -> R<Stage> {
        if let NodeKind::Map(e) = &n.kind {
            if let Some((k, _)) = e.iter().find(|(k, _)| k.as_str() == Some("template")) {
                return self.err(k.pos, "stage templates (`template`) are not supported");
            }
        }
        let entries = self.map(
            n,
            &[
                "stage",
                "displayName",
                "dependsOn",
                "condition",
                "variables",
                "jobs",
                "pool",
                "lockBehavior",
                "isSkippable",
                "templateContext",
            ],
            "a stage",
        )?;
        let mut s = Stage {
            name: String::new(),
            display_name: None,
            depends_on: vec![],
            condition: None,
            variables: Variables::new(),
            jobs: vec![],
            pos: n.pos,
        };
        let mut jobs = None;
        let mut deps = None;
        for (k, v) in entries {
            match k {
                "stage" => s.name = self.ident(v, "stage")?,
                "displayName" => s.display_name = self.opt_string(v, k)?,
                "dependsOn" => deps = Some(self.depends_on(v)?),
                "condition" => s.condition = self.condition(v)?,
                "variables" => s.variables = self.variables(v)?,
                "jobs" => jobs = Some(v),
                "pool" | "lockBehavior" | "isSkippable" | "templateContext" => {}
                _ => unreachable!(),
            }
        }
        if s.name.is_empty() {
            return self.err(n.pos, "a stage needs `stage: <name>`");
        }
        let Some(jobs) = jobs else {
            return self.err(n.pos, format!("stage `{}` has no `jobs`", s.name));
        };
        s.jobs = self.jobs(jobs)?;
        s.depends_on = deps.unwrap_or_else(|| vec![PREVIOUS.to_string()]);
        Ok(s)
    }

    fn ident(&self, n: &Node, what: &str) -> R<String> {
        let s = self.string(n, what)?;
        if !is_identifier(&s) {
            return self.err(n.pos, format!("{what} name `{s}` must start with a letter or `_` and contain only letters, digits and `_`"));
        }
        Ok(s)
    }

    fn jobs(&mut self, n: &Node) -> R<Vec<Job>> {
        let mut jobs = Vec::new();
        for j in self.seq(n, "jobs")? {
            jobs.push(self.job(j)?);
        }
        if jobs.is_empty() {
            return self.err(n.pos, "`jobs` is empty");
        }
        // Jobs run in parallel by default: an omitted dependsOn means no dependency.
        for j in &mut jobs {
            j.depends_on.retain(|d| d != PREVIOUS);
        }
        let list: Vec<_> = jobs
            .iter()
            .map(|j| (j.name.clone(), j.depends_on.clone(), j.pos))
            .collect();
        self.check_graph("job", &list)?;
        Ok(jobs)
    }

    fn job(&mut self, n: &Node) -> R<Job> {
        if let NodeKind::Map(e) = &n.kind {
            for (k, _) in e {
                match k.as_str() {
                    Some("deployment") => return self.err(k.pos, "deployment jobs are not supported; use `job:` with steps (and `download:` for pipeline artifacts)"),
                    Some("template") => return self.err(k.pos, "job templates (`template`) are not supported"),
                    Some(x @ ("strategy" | "container" | "services" | "uses")) => return self.err(k.pos, format!("`{x}` is not supported in a job")),
                    _ => {}
                }
            }
        }
        let entries = self.map(
            n,
            &[
                "job",
                "displayName",
                "dependsOn",
                "condition",
                "continueOnError",
                "timeoutInMinutes",
                "cancelTimeoutInMinutes",
                "variables",
                "steps",
                "pool",
                "workspace",
                "templateContext",
            ],
            "a job",
        )?;
        let mut j = Job {
            name: String::new(),
            display_name: None,
            depends_on: vec![],
            condition: None,
            continue_on_error: false,
            timeout_in_minutes: 60,
            cancel_timeout_in_minutes: None,
            variables: Variables::new(),
            pool: None,
            workspace_clean: None,
            steps: vec![],
            pos: n.pos,
        };
        let mut steps = None;
        let mut deps = None;
        for (k, v) in entries {
            match k {
                "job" => j.name = self.ident(v, "job")?,
                "displayName" => j.display_name = self.opt_string(v, k)?,
                "dependsOn" => deps = Some(self.depends_on(v)?),
                "condition" => j.condition = self.condition(v)?,
                "continueOnError" => j.continue_on_error = self.boolean(v, k)?,
                "timeoutInMinutes" => j.timeout_in_minutes = self.number(v, k)?,
                "cancelTimeoutInMinutes" => j.cancel_timeout_in_minutes = Some(self.number(v, k)?),
                "variables" => j.variables = self.variables(v)?,
                "steps" => steps = Some(v),
                "pool" => j.pool = self.pool(v)?,
                "workspace" => {
                    for (k, v) in self.map(v, &["clean"], "`workspace`")? {
                        let c = self.string(v, k)?;
                        if !matches!(c.as_str(), "outputs" | "resources" | "all") {
                            return self.err(v.pos, format!("`workspace.clean` must be outputs, resources or all, found `{c}`"));
                        }
                        j.workspace_clean = Some(c);
                    }
                }
                _ => {}
            }
        }
        if j.name.is_empty() {
            return self.err(n.pos, "a job needs `job: <name>`");
        }
        let Some(steps) = steps else {
            return self.err(n.pos, format!("job `{}` has no `steps`", j.name));
        };
        j.steps = self.steps(steps)?;
        j.depends_on = deps.unwrap_or_else(|| vec![PREVIOUS.to_string()]);
        Ok(j)
    }

    fn steps(&self, n: &Node) -> R<Vec<Step>> {
        let mut steps: Vec<Step> = Vec::new();
        let mut names = HashSet::new();
        for s in self.seq(n, "steps")? {
            let step = self.step(s)?;
            if let Some(name) = &step.name {
                if !names.insert(name.to_lowercase()) {
                    return self.err(
                        s.pos,
                        format!("step name `{name}` is used twice in this job"),
                    );
                }
            }
            steps.push(step);
        }
        if steps.is_empty() {
            return self.err(n.pos, "`steps` is empty");
        }
        Ok(steps)
    }

    fn step(&self, n: &Node) -> R<Step> {
        let (kind_key, kind_node, extra) = self.step_form(n)?;
        let mut allowed: Vec<&str> = vec![kind_key];
        allowed.extend_from_slice(STEP_COMMON);
        allowed.extend_from_slice(extra);
        let mut step = Step {
            kind: StepKind::Script {
                script: String::new(),
                fail_on_stderr: false,
            },
            display_name: None,
            name: None,
            env: vec![],
            working_directory: None,
            continue_on_error: false,
            timeout_in_minutes: 0,
            retry_count_on_task_failure: 0,
            condition: None,
            enabled: true,
            pos: n.pos,
        };
        let mut fields = StepFields::default();
        for (k, v) in self.map(n, &allowed, &format!("a `{kind_key}` step"))? {
            self.step_entry(&mut step, &mut fields, k, v)?;
        }
        step.kind = self.step_kind(kind_key, kind_node, fields)?;
        self.check_step_kind(&step.kind, kind_node)?;
        Ok(step)
    }

    /// A step's kind key and node, and the keys that kind allows besides the common ones.
    fn step_form<'n>(&self, n: &'n Node) -> R<(&'n str, &'n Node, &'static [&'static str])> {
        let NodeKind::Map(entries) = &n.kind else {
            return self.err(
                n.pos,
                format!("a step must be a mapping, found {}", n.type_name()),
            );
        };
        if let Some((k, _)) = entries
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.contains("${{")))
        {
            return self.err(k.pos, "template directives (`${{ if }}`, `${{ each }}`, `${{ insert }}`) are not supported");
        }
        let kinds = [
            "script",
            "bash",
            "task",
            "checkout",
            "download",
            "pwsh",
            "powershell",
            "template",
            "publish",
            "downloadBuild",
            "getPackage",
            "reviewApp",
        ];
        let Some((kind_key, kind_node)) = entries
            .iter()
            .filter_map(|(k, v)| k.as_str().filter(|k| kinds.contains(k)).map(|k| (k, v)))
            .next()
        else {
            return self.err(
                n.pos,
                "a step needs one of `script`, `bash`, `task`, `checkout` or `download`",
            );
        };
        let extra: &[&str] = match kind_key {
            "script" | "bash" => &["failOnStderr", "workingDirectory"],
            "task" => &["inputs"],
            "checkout" => &["clean", "fetchDepth", "fetchTags", "lfs", "path", "submodules", "persistCredentials"],
            "download" => &["artifact", "patterns"],
            other => return self.err(n.pos, format!("`{other}` steps are not supported (supported: script, bash, task, checkout, download)")),
        };
        Ok((kind_key, kind_node, extra))
    }

    /// One key of a step: a common one into `step`, a kind's own into `fields`.
    fn step_entry(&self, step: &mut Step, fields: &mut StepFields, k: &str, v: &Node) -> R<()> {
        match k {
            "displayName" => step.display_name = self.opt_string(v, k)?,
            "name" => step.name = Some(self.ident(v, "step")?),
            "env" => {
                for (ek, ev) in self.env_entries(v)? {
                    step.env.push((ek.to_string(), self.string(ev, ek)?));
                }
            }
            "condition" => step.condition = self.condition(v)?,
            "continueOnError" => step.continue_on_error = self.boolean(v, k)?,
            "enabled" => step.enabled = self.boolean(v, k)?,
            "timeoutInMinutes" => step.timeout_in_minutes = self.number(v, k)?,
            "retryCountOnTaskFailure" => step.retry_count_on_task_failure = self.number(v, k)?,
            "target" => {}
            "failOnStderr" => fields.fail_on_stderr = self.boolean(v, k)?,
            "workingDirectory" => step.working_directory = self.opt_string(v, k)?,
            "inputs" => {
                for (ik, iv) in self.env_entries(v)? {
                    fields.inputs.push((ik.to_string(), self.string(iv, ik)?));
                }
            }
            "clean" => fields.clean = self.boolean(v, k)?,
            "path" => fields.path = self.opt_string(v, k)?,
            "fetchDepth" | "fetchTags" | "lfs" | "submodules" | "persistCredentials" => {
                self.string(v, k)?;
            }
            "artifact" => fields.artifact = self.opt_string(v, k)?,
            "patterns" => fields.patterns = self.opt_string(v, k)?,
            _ => {}
        }
        Ok(())
    }

    fn step_kind(&self, kind_key: &str, kind_node: &Node, f: StepFields) -> R<StepKind> {
        Ok(match kind_key {
            "script" => StepKind::Script {
                script: self.string(kind_node, kind_key)?,
                fail_on_stderr: f.fail_on_stderr,
            },
            "bash" => StepKind::Bash {
                script: self.string(kind_node, kind_key)?,
                fail_on_stderr: f.fail_on_stderr,
            },
            "task" => self.task_kind(kind_node, f.inputs)?,
            "checkout" => StepKind::Checkout {
                repository: self.string(kind_node, kind_key)?,
                clean: f.clean,
                path: f.path,
            },
            _ => StepKind::Download {
                source: self.string(kind_node, kind_key)?,
                artifact: f.artifact,
                patterns: f.patterns,
            },
        })
    }

    /// `task: Name@Major`.
    fn task_kind(&self, kind_node: &Node, inputs: Vec<(String, String)>) -> R<StepKind> {
        let t = self.string(kind_node, "task")?;
        let (name, version) = match t.split_once('@') {
            Some((nm, ver)) => (nm.trim().to_string(), ver.trim()),
            None => {
                return self.err(
                    kind_node.pos,
                    format!("task `{t}` needs a major version, like `{t}@1`"),
                )
            }
        };
        let Ok(version) = version.parse::<u32>() else {
            return self.err(
                kind_node.pos,
                format!(
                    "task version in `{t}` must be a whole major version number, like `{name}@1`"
                ),
            );
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return self.err(kind_node.pos, format!("`{t}` is not a valid task name"));
        }
        Ok(StepKind::Task {
            name,
            version,
            inputs,
        })
    }

    fn check_step_kind(&self, kind: &StepKind, kind_node: &Node) -> R<()> {
        if let StepKind::Checkout { repository, .. } = kind {
            if repository != "self" && repository != "none" {
                return self.err(
                    kind_node.pos,
                    format!("`checkout: {repository}` is not supported (only `self` and `none`)"),
                );
            }
        }
        if let StepKind::Download { source, .. } = kind {
            if source.is_empty() {
                return self.err(
                    kind_node.pos,
                    "`download` needs `current`, `none` or a pipeline resource alias",
                );
            }
        }
        Ok(())
    }

    /// A mapping with arbitrary keys (env, inputs).
    fn env_entries<'n>(&self, n: &'n Node) -> R<Vec<(&'n str, &'n Node)>> {
        match &n.kind {
            NodeKind::Null => Ok(vec![]),
            NodeKind::Map(entries) => Ok(entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or(""), v))
                .collect()),
            _ => self.err(
                n.pos,
                format!(
                    "expected a mapping of names to values, found {}",
                    n.type_name()
                ),
            ),
        }
    }

    /// Resolve the `PREVIOUS` placeholder is done by the caller; here: names exist, no self or
    /// duplicate names, no cycles. Linear in the number of items and dependencies.
    fn check_graph(&self, what: &str, items: &[(String, Vec<String>, Pos)]) -> R<()> {
        let mut index = HashMap::with_capacity(items.len());
        for (i, (name, _, pos)) in items.iter().enumerate() {
            if index.insert(name.to_lowercase(), i).is_some() {
                return self.err(*pos, format!("{what} name `{name}` is used twice"));
            }
        }
        let names = |idx: &mut dyn Iterator<Item = usize>| {
            let all: Vec<&str> = idx.map(|i| items[i].0.as_str()).collect();
            match all.len() {
                n if n > 20 => format!("{}, ... ({n} in all)", all[..20].join(", ")),
                _ => all.join(", "),
            }
        };
        // Kahn's algorithm over explicit dependencies.
        let mut waiting = vec![0usize; items.len()];
        let mut dependents = vec![Vec::new(); items.len()];
        for (i, (name, deps, pos)) in items.iter().enumerate() {
            for d in deps.iter().filter(|d| *d != PREVIOUS) {
                if d.eq_ignore_ascii_case(name) {
                    return self.err(*pos, format!("{what} `{name}` depends on itself"));
                }
                let Some(&j) = index.get(&d.to_lowercase()) else {
                    return self.err(
                        *pos,
                        format!(
                            "`dependsOn` refers to {what} `{d}` which does not exist (known: {})",
                            names(&mut (0..items.len()))
                        ),
                    );
                };
                waiting[i] += 1;
                dependents[j].push(i);
            }
        }
        let mut ready: Vec<usize> = (0..items.len()).filter(|&i| waiting[i] == 0).collect();
        let mut done = vec![false; items.len()];
        while let Some(i) = ready.pop() {
            done[i] = true;
            for &k in &dependents[i] {
                waiting[k] -= 1;
                if waiting[k] == 0 {
                    ready.push(k);
                }
            }
        }
        if let Some(i) = (0..items.len()).find(|&i| !done[i]) {
            return self.err(
                items[i].2,
                format!(
                    "{what}s depend on each other in a cycle: {}",
                    names(&mut (0..items.len()).filter(|&i| !done[i]))
                ),
            );
        }
        Ok(())
    }
}

/// Where variable `name` is defined in a variables block (mapping or `- name:` list).
fn var_pos(n: &Node, name: &str) -> Option<Pos> {
    let is = |k: &Node| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(name));
    match &n.kind {
        NodeKind::Map(e) => e.iter().find(|(k, _)| is(k)).map(|(k, _)| k.pos),
        NodeKind::Seq(items) => items.iter().find_map(|item| match &item.kind {
            NodeKind::Map(e) => e
                .iter()
                .find(|(k, v)| k.as_str() == Some("name") && is(v))
                .map(|(_, v)| v.pos),
            _ => None,
        }),
        _ => None,
    }
}

/// Position of `key` in mapping `n` (or of `n`).
/// The stage a pipeline without `stages` has.
fn default_stage(jobs: Vec<Job>, pos: Pos) -> Stage {
    Stage {
        name: DEFAULT_NAME.into(),
        display_name: None,
        depends_on: vec![],
        condition: None,
        variables: Variables::new(),
        jobs,
        pos,
    }
}

/// The job a pipeline of only `steps` has.
fn default_job(steps: Vec<Step>, pos: Pos) -> Job {
    Job {
        name: DEFAULT_NAME.into(),
        display_name: None,
        depends_on: vec![],
        condition: None,
        continue_on_error: false,
        timeout_in_minutes: 60,
        cancel_timeout_in_minutes: None,
        variables: Variables::new(),
        pool: None,
        workspace_clean: None,
        steps,
        pos,
    }
}

fn key_pos(n: &Node, key: &str) -> Pos {
    match &n.kind {
        NodeKind::Map(e) => e
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k.pos)
            .unwrap_or(n.pos),
        _ => n.pos,
    }
}

/// Placeholder for "the previous stage" while parsing, resolved by [`resolve_previous`].
const PREVIOUS: &str = "\u{0}previous";

/// Replace the implicit "previous stage" dependency by the actual previous stage's name.
fn resolve_previous(stages: &mut [Stage]) {
    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    for (i, s) in stages.iter_mut().enumerate() {
        if s.depends_on.iter().any(|d| d == PREVIOUS) {
            s.depends_on = if i == 0 {
                vec![]
            } else {
                vec![names[i - 1].clone()]
            };
        }
    }
}
