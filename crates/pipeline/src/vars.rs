//! Variables, `$(macro)` expansion, predefined variables, secret masking and `##vso` logging
//! commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// The name as first written (Azure variable names are case-insensitive).
    pub name: String,
    pub value: String,
    /// Secret values are masked in logs and not exported to the environment automatically.
    pub secret: bool,
    /// Read-only variables cannot be overwritten by `task.setvariable`.
    pub readonly: bool,
}

/// A case-insensitive, ordered set of variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    map: BTreeMap<String, Var>,
}

impl Variables {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set (or replace) a plain variable.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.insert(Var {
            name: name.to_string(),
            value: value.into(),
            secret: false,
            readonly: false,
        });
    }

    /// Set (or replace) a secret variable.
    pub fn set_secret(&mut self, name: &str, value: impl Into<String>) {
        self.insert(Var {
            name: name.to_string(),
            value: value.into(),
            secret: true,
            readonly: false,
        });
    }

    /// Insert a variable, replacing one of the same name (case-insensitively).
    pub fn insert(&mut self, var: Var) {
        self.map.insert(var.name.to_lowercase(), var);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(&name.to_lowercase()).map(|v| v.value.as_str())
    }

    pub fn get_var(&self, name: &str) -> Option<&Var> {
        self.map.get(&name.to_lowercase())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Var> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Copy every variable of `other` over this set.
    pub fn extend(&mut self, other: &Variables) {
        for v in other.iter() {
            self.insert(v.clone());
        }
    }

    /// Values of secret variables (for a [`Masker`]).
    pub fn secrets(&self) -> Vec<String> {
        self.iter()
            .filter(|v| v.secret)
            .map(|v| v.value.clone())
            .collect()
    }

    /// Environment for a step: every non-secret variable as `NAME_WITH_UNDERSCORES=value`
    /// (see [`env_name`]). Secrets must be mapped explicitly through a step's `env:`.
    pub fn to_env(&self) -> Vec<(String, String)> {
        self.iter()
            .filter(|v| !v.secret)
            .map(|v| (env_name(&v.name), v.value.clone()))
            .collect()
    }

    /// Resolves `$(other)` references inside variable values, as Azure does when a job
    /// starts (`two: $(one)-suffix`). References to unknown variables stay as written; a cycle
    /// (`a: $(b)`, `b: $(a)`) stops after a bounded depth and leaves the rest literal.
    ///
    /// Each pass expands every value once from the previous pass's values (pass `d` is what
    /// a recursion `d` levels deep would give), so the work is linear in the output, which is
    /// capped: no value may grow past [`MAX_VALUE_BYTES`] and all of them together past
    /// [`MAX_TOTAL_BYTES`]. A "billion laughs" of references fails on the first pass that
    /// crosses a cap, naming the variable; nothing is changed then.
    pub fn resolve_nested(&mut self) -> Result<(), ExpandError> {
        const DEPTH: usize = 8;
        let keys: Vec<String> = self
            .map
            .iter()
            .filter(|(_, v)| v.value.contains("$("))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let unresolved = self.map.values().map(|v| v.value.len()).sum::<usize>();
        let mut cur: BTreeMap<&str, String> = keys
            .iter()
            .map(|k| (k.as_str(), self.map[k].value.clone()))
            .collect();
        for _ in 0..DEPTH {
            let mut total = unresolved;
            let mut next = Vec::with_capacity(keys.len());
            for k in &keys {
                let raw = &self.map[k];
                let lookup = |n: &str| {
                    let n = n.to_lowercase();
                    match cur.get(n.as_str()) {
                        Some(v) => Some(v.as_str()),
                        None => self.map.get(&n).map(|v| v.value.as_str()),
                    }
                };
                let limit = MAX_VALUE_BYTES.max(raw.value.len());
                let v = expand_bounded(&raw.value, lookup, limit)
                    .ok_or_else(|| ExpandError::value(&raw.name, limit))?;
                total = (total + v.len()).saturating_sub(raw.value.len());
                if total > MAX_TOTAL_BYTES {
                    return Err(ExpandError::total(&raw.name));
                }
                next.push(v);
            }
            let changed = keys.iter().zip(&next).any(|(k, v)| cur[k.as_str()] != *v);
            for (k, v) in keys.iter().zip(next) {
                cur.insert(k.as_str(), v);
            }
            if !changed {
                break;
            }
        }
        let resolved: Vec<(String, String)> =
            cur.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, value) in resolved {
            if let Some(v) = self.map.get_mut(&k) {
                v.value = value;
            }
        }
        Ok(())
    }

    /// Expand `$(name)` macros in `text` (see [`expand_macros`]). Past [`MAX_VALUE_BYTES`] of
    /// output (or the text's own length, if longer) the remaining references stay literal;
    /// use [`Variables::try_expand`] where that can be reported.
    pub fn expand(&self, text: &str) -> String {
        expand_macros(text, |n| self.get(n).map(str::to_string))
    }

    /// [`Variables::expand`], failing instead of leaving references literal when the output
    /// would be longer than [`MAX_VALUE_BYTES`] (or the text's own length, if longer).
    pub fn try_expand(&self, text: &str) -> Result<String, ExpandError> {
        let limit = MAX_VALUE_BYTES.max(text.len());
        expand_bounded(text, |n| self.get(n), limit).ok_or(ExpandError {
            name: None,
            limit,
            total: false,
        })
    }
}

/// Most bytes one value (a variable or an expanded text) may reach by expanding `$(...)`
/// references. Larger ones cannot be passed to a process anyway (Linux caps one environment
/// string at 128 KiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most bytes all of a job's variables together may reach by [`Variables::resolve_nested`].
pub const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;

/// Expanding `$(...)` references would have produced more than a cap allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// The variable whose value grew too large (none for a text).
    pub name: Option<String>,
    pub limit: usize,
    /// True when the cap crossed is [`MAX_TOTAL_BYTES`] (all variables together).
    pub total: bool,
}

impl ExpandError {
    fn value(name: &str, limit: usize) -> Self {
        ExpandError {
            name: Some(name.to_string()),
            limit,
            total: false,
        }
    }

    fn total(name: &str) -> Self {
        ExpandError {
            name: Some(name.to_string()),
            limit: MAX_TOTAL_BYTES,
            total: true,
        }
    }
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limit = crate::yaml::human_bytes(self.limit);
        match (&self.name, self.total) {
            (Some(n), false) => write!(
                f,
                "variable `{n}`: expanding its `$(...)` references makes it longer than {limit}, the limit for one value (do variables refer to each other many times over?)"
            ),
            (Some(n), true) => write!(
                f,
                "variables: expanding `$(...)` references makes the variables longer than {limit} together, the limit (reached at variable `{n}`)"
            ),
            (None, _) => write!(
                f,
                "expanding `$(...)` references makes the text longer than {limit}, the limit"
            ),
        }
    }
}

impl std::error::Error for ExpandError {}

/// The environment-variable name of a variable: upper-cased, `.` and spaces → `_`.
/// `Build.BuildId` → `BUILD_BUILDID`.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | ' ' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Replace `$(name)` by `lookup(name)`. Unknown names are left as written (Azure's behaviour),
/// values are not expanded again, and `$(` without a valid name and `)` stays literal. Once
/// the output would pass [`MAX_VALUE_BYTES`] (or the text's own length, if longer), the
/// remaining references are left as written.
pub fn expand_macros(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let limit = MAX_VALUE_BYTES.max(text.len());
    let mut out = String::with_capacity(text.len());
    if let Err(stopped) = expand_into(text, &mut out, lookup, limit) {
        out.push_str(&text[stopped..]);
    }
    out
}

/// Like [`expand_macros`] with borrowed values; `None` when the output would pass `limit`.
fn expand_bounded<'v>(
    text: &str,
    lookup: impl Fn(&str) -> Option<&'v str>,
    limit: usize,
) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(limit));
    expand_into(text, &mut out, lookup, limit).ok()?;
    Some(out)
}

/// Appends `text` with its references replaced to `out`. Stops before `out` would pass
/// `limit`, returning the offset in `text` where it stopped (nothing past the limit is ever
/// allocated).
fn expand_into<V: AsRef<str>>(
    text: &str,
    out: &mut String,
    lookup: impl Fn(&str) -> Option<V>,
    limit: usize,
) -> Result<(), usize> {
    let mut at = 0;
    while let Some(i) = text[at..].find("$(").map(|i| at + i) {
        if out.len() + (i - at) > limit {
            return Err(at);
        }
        out.push_str(&text[at..i]);
        let after = &text[i + 2..];
        let name = after.find(')').map(|e| &after[..e]);
        match name {
            Some(n) if is_macro_name(n) => {
                let end = i + 2 + n.len() + 1;
                match lookup(n) {
                    Some(v) => {
                        if out.len() + v.as_ref().len() > limit {
                            return Err(i);
                        }
                        out.push_str(v.as_ref());
                    }
                    None => out.push_str(&text[i..end]),
                }
                at = end;
            }
            _ => {
                out.push_str("$(");
                at = i + 2;
            }
        }
    }
    if out.len() + (text.len() - at) > limit {
        return Err(at);
    }
    out.push_str(&text[at..]);
    Ok(())
}

fn is_macro_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '[' | ']' | '\''))
}

/// Facts about a run that the predefined variables are made from.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Build.BuildId (also the run id).
    pub build_id: u64,
    /// Build.BuildNumber; defaults to the build id when empty.
    pub build_number: String,
    /// Root of this run's workspace (Pipeline.Workspace, Agent.BuildDirectory).
    pub workspace: PathBuf,
    /// Commit (Build.SourceVersion).
    pub source_version: String,
    /// Full ref, e.g. `refs/heads/main` (a bare branch name gets `refs/heads/`).
    pub source_branch: String,
    /// Build.Repository.Name.
    pub repository_name: String,
    /// Build.DefinitionName.
    pub pipeline_name: String,
    /// Build.Reason: Manual, IndividualCI, BatchedCI, ResourceTrigger...
    pub reason: String,
    /// Release.ReleaseId, set for runs triggered by a pipeline resource (release pipelines).
    pub release_id: Option<u64>,
    /// Resources.TriggeringAlias, for resource-triggered runs.
    pub triggering_alias: Option<String>,
    /// Build.RequestedFor.
    pub requested_for: String,
}

/// Workspace layout, like the Azure agent's `_work/N/{s,a,b,TestResults}`.
pub fn sources_dir(ws: &Path) -> PathBuf {
    ws.join("s")
}
/// `Build.ArtifactStagingDirectory`.
pub fn staging_dir(ws: &Path) -> PathBuf {
    ws.join("a")
}
/// `Build.BinariesDirectory`.
pub fn binaries_dir(ws: &Path) -> PathBuf {
    ws.join("b")
}
/// `Agent.TempDirectory` (step scripts are written here).
pub fn temp_dir(ws: &Path) -> PathBuf {
    ws.join("_temp")
}

/// The predefined variables of a run (job-specific ones are set by [`job_variables`]).
pub fn predefined_variables(info: &RunInfo) -> Variables {
    let mut v = Variables::new();
    let ws = &info.workspace;
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let branch = if info.source_branch.starts_with("refs/") || info.source_branch.is_empty() {
        info.source_branch.clone()
    } else {
        format!("refs/heads/{}", info.source_branch)
    };
    let branch_name = branch.rsplit('/').next().unwrap_or("").to_string();
    let number = if info.build_number.is_empty() {
        info.build_id.to_string()
    } else {
        info.build_number.clone()
    };
    let id = info.build_id.to_string();
    for (k, val) in [
        ("Build.BuildId", id.clone()),
        ("Build.BuildNumber", number),
        ("Build.DefinitionName", info.pipeline_name.clone()),
        ("Build.Reason", info.reason.clone()),
        ("Build.RequestedFor", info.requested_for.clone()),
        ("Build.SourceVersion", info.source_version.clone()),
        ("Build.SourceBranch", branch.clone()),
        ("Build.SourceBranchName", branch_name),
        ("Build.Repository.Name", info.repository_name.clone()),
        ("Build.Repository.LocalPath", s(sources_dir(ws))),
        ("Build.SourcesDirectory", s(sources_dir(ws))),
        ("Build.ArtifactStagingDirectory", s(staging_dir(ws))),
        ("Build.StagingDirectory", s(staging_dir(ws))),
        ("Build.BinariesDirectory", s(binaries_dir(ws))),
        ("Common.TestResultsDirectory", s(ws.join("TestResults"))),
        ("System.DefaultWorkingDirectory", s(sources_dir(ws))),
        ("System.ArtifactsDirectory", s(staging_dir(ws))),
        ("System.DefinitionName", info.pipeline_name.clone()),
        ("System.PullRequest.IsFork", "False".to_string()),
        ("System.CollectionId", "local".to_string()),
        ("System.TeamProject", "scaleset".to_string()),
        ("Pipeline.Workspace", s(ws.clone())),
        ("Agent.BuildDirectory", s(ws.clone())),
        ("Agent.TempDirectory", s(temp_dir(ws))),
        ("Agent.OS", "Linux".to_string()),
        ("Agent.Name", "scaleset".to_string()),
        ("Agent.JobStatus", "Succeeded".to_string()),
        ("TF_BUILD", "True".to_string()),
    ] {
        v.set(k, val);
    }
    if let Some(r) = info.release_id {
        v.set("Release.ReleaseId", r.to_string());
        v.set("Release.ReleaseName", format!("Release-{r}"));
    }
    if let Some(a) = &info.triggering_alias {
        v.set("Resources.TriggeringAlias", a.clone());
    }
    v
}

/// Job-scoped predefined variables: System.JobId, System.JobName, System.StageName...
pub fn job_variables(stage: &str, job: &str, attempt: u32) -> Variables {
    let mut v = Variables::new();
    v.set("System.StageName", stage);
    v.set("System.JobName", job);
    v.set("System.JobDisplayName", job);
    v.set("System.JobId", format!("{stage}.{job}"));
    v.set("System.JobAttempt", attempt.to_string());
    v.set("Agent.JobName", format!("{stage} {job}"));
    v
}

/// Replaces secret values by `***` in log text.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut m = Masker::default();
        for s in secrets {
            m.add(s);
        }
        m
    }

    /// Add a secret; empty values are ignored. Longer secrets are replaced first.
    pub fn add(&mut self, secret: impl Into<String>) {
        let s = secret.into();
        let s = s.trim_end_matches(['\r', '\n']).to_string();
        if s.is_empty() || self.secrets.contains(&s) {
            return;
        }
        self.secrets.push(s);
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// A `##vso[area.action key=value;...]data` logging command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingCommand {
    /// e.g. `task`
    pub area: String,
    /// e.g. `setvariable`
    pub action: String,
    /// Properties in order, keys as written, values unescaped.
    pub properties: Vec<(String, String)>,
    /// The text after `]`, unescaped.
    pub data: String,
}

impl LoggingCommand {
    /// A property by case-insensitive name.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.property(name)
            .map(|v| v.trim().eq_ignore_ascii_case("true"))
            .unwrap_or(false)
    }

    /// `task.setvariable` as a [`SetVariable`], if this is one with a variable name.
    pub fn as_set_variable(&self) -> Option<SetVariable> {
        if !self.area.eq_ignore_ascii_case("task")
            || !self.action.eq_ignore_ascii_case("setvariable")
        {
            return None;
        }
        let name = self.property("variable")?.trim().to_string();
        if name.is_empty() {
            return None;
        }
        Some(SetVariable {
            name,
            value: self.data.clone(),
            is_output: self.flag("isOutput"),
            is_secret: self.flag("issecret"),
            is_readonly: self.flag("isreadonly"),
        })
    }
}

/// A `##vso[task.setvariable variable=x;isOutput=true;issecret=true]value` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetVariable {
    pub name: String,
    pub value: String,
    pub is_output: bool,
    pub is_secret: bool,
    pub is_readonly: bool,
}

fn unescape(s: &str) -> String {
    s.replace("%3B", ";")
        .replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%5D", "]")
        .replace("%25", "%")
}

/// Parse a log line as a logging command. Leading whitespace is allowed before `##vso[`.
pub fn parse_logging_command(line: &str) -> Option<LoggingCommand> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line.trim_start().strip_prefix("##vso[")?;
    let close = rest.find(']')?;
    let head = &rest[..close];
    let data = unescape(&rest[close + 1..]);
    let (cmd, props) = match head.find(' ') {
        Some(i) => (&head[..i], &head[i + 1..]),
        None => (head, ""),
    };
    let (area, action) = cmd.split_once('.')?;
    if area.is_empty() || action.is_empty() {
        return None;
    }
    let properties = props
        .split(';')
        .filter(|p| !p.trim().is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), unescape(v)))
        })
        .collect();
    Some(LoggingCommand {
        area: area.to_string(),
        action: action.to_string(),
        properties,
        data,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nested_references_in_values_resolve() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("one", "x"), ("two", "$(one)-y")], "two", "x-y"),
            (&[("a", "$(b)/$(c)"), ("b", "$(c)"), ("c", "z")], "a", "z/z"),
            (&[("a", "$(missing)-1")], "a", "$(missing)-1"),
            (
                &[("Build.Dir", "/w"), ("out", "$(build.dir)/o")],
                "out",
                "/w/o",
            ),
        ];
        for (defs, name, want) in cases {
            let mut v = Variables::new();
            for (k, val) in *defs {
                v.set(k, *val);
            }
            v.resolve_nested().unwrap();
            assert_eq!(v.get(name), Some(*want), "{defs:?}");
        }
        // A cycle terminates and keeps a literal reference.
        let mut v = Variables::new();
        v.set("a", "$(b)");
        v.set("b", "$(a)");
        v.resolve_nested().unwrap();
        assert!(v.get("a").unwrap().contains("$("));
    }

    /// `v0: xxxxxxxxxx`, `vI: $(vI-1)` repeated `fan` times, for I up to `levels`.
    fn laughs(levels: usize, fan: usize) -> Variables {
        let mut v = Variables::new();
        v.set("v0", "xxxxxxxxxx");
        for i in 1..=levels {
            v.set(&format!("v{i}"), format!("$(v{})", i - 1).repeat(fan));
        }
        v
    }

    #[test]
    fn a_billion_laughs_fails_naming_the_variable() {
        // 10 references per level, 30 levels: 10^8 copies at the resolution depth of 8, more
        // than 1 GB per variable before the cap.
        let mut v = laughs(30, 10);
        let before = v.clone();
        // Pass 5 makes v6 and up 6 MB long; v10 is the first of them in name order.
        let e = v.resolve_nested().unwrap_err();
        assert_eq!(
            e,
            ExpandError {
                name: Some("v10".into()),
                limit: MAX_VALUE_BYTES,
                total: false
            }
        );
        assert_eq!(
            e.to_string(),
            "variable `v10`: expanding its `$(...)` references makes it longer than 1 MiB, the limit for one value (do variables refer to each other many times over?)"
        );
        assert_eq!(v, before, "nothing is changed on failure");
    }

    #[test]
    fn doubling_stops_at_the_resolution_depth() {
        // Two references per level: at depth 8, v30 is 2^8 copies of v22's text.
        let mut v = laughs(30, 2);
        v.resolve_nested().unwrap();
        assert_eq!(v.get("v30").unwrap().len(), 256 * "$(v21)$(v21)".len());
        assert_eq!(v.get("v8").unwrap(), "x".repeat(10 * 256));
    }

    #[test]
    fn all_variables_together_are_capped() {
        let mut v = Variables::new();
        v.set("big", "x".repeat(MAX_VALUE_BYTES));
        for i in 0..20 {
            v.set(&format!("copy{i:02}"), "$(big)");
        }
        let e = v.resolve_nested().unwrap_err();
        // The big value and 14 copies (plus the others' short texts) pass 16 MiB at the 15th.
        assert_eq!(e.name.as_deref(), Some("copy14"));
        assert!(e.total);
        assert_eq!(
            e.to_string(),
            "variables: expanding `$(...)` references makes the variables longer than 16 MiB together, the limit (reached at variable `copy14`)"
        );
    }

    #[test]
    fn expanding_a_text_is_capped() {
        let mut v = Variables::new();
        v.set("a", "0123456789");
        let text = "$(a)".repeat(200_000);
        let e = v.try_expand(&text).unwrap_err();
        assert_eq!(e.limit, MAX_VALUE_BYTES);
        assert_eq!(
            e.to_string(),
            "expanding `$(...)` references makes the text longer than 1 MiB, the limit"
        );
        // The infallible form stops substituting at the cap and keeps the rest literal.
        let out = v.expand(&text);
        let done = MAX_VALUE_BYTES / 10;
        assert_eq!(out.len(), done * 10 + (200_000 - done) * 4);
        assert!(out.starts_with("0123456789") && out.ends_with("$(a)"));
        // A long text without growth is fine.
        let plain = "y".repeat(3 * MAX_VALUE_BYTES);
        assert_eq!(v.try_expand(&plain).unwrap(), plain);
        assert_eq!(v.try_expand("$(a)-$(b)").unwrap(), "0123456789-$(b)");
    }

    use super::*;

    #[test]
    fn macros() {
        let mut v = Variables::new();
        v.set("Build.BuildId", "42");
        v.set("a", "$(b)");
        v.set("b", "B");
        let cases = [
            ("id=$(Build.BuildId)", "id=42"),
            ("id=$(build.buildid)!", "id=42!"),
            ("$(a)", "$(b)"),
            ("$(nope) $(b)", "$(nope) B"),
            ("$(", "$("),
            ("$()", "$()"),
            ("$(has space) $(b)", "$(has space) B"),
            ("$$(b)", "$B"),
            ("$(b)$(b)", "BB"),
            ("price $5 ($(b))", "price $5 (B)"),
            ("${{ x }}", "${{ x }}"),
            ("é$(b)é", "éBé"),
        ];
        for (input, want) in cases {
            assert_eq!(v.expand(input), want, "{input}");
        }
    }

    #[test]
    fn env_names_and_secrets() {
        assert_eq!(env_name("Build.BuildId"), "BUILD_BUILDID");
        assert_eq!(
            env_name("System.DefaultWorkingDirectory"),
            "SYSTEM_DEFAULTWORKINGDIRECTORY"
        );
        assert_eq!(env_name("my var.x"), "MY_VAR_X");
        let mut v = Variables::new();
        v.set("Plain", "1");
        v.set_secret("Token", "hunter2");
        assert_eq!(v.to_env(), vec![("PLAIN".to_string(), "1".to_string())]);
        assert_eq!(v.secrets(), vec!["hunter2".to_string()]);
        v.set("plain", "2");
        assert_eq!(v.get("PLAIN"), Some("2"));
        assert_eq!(v.get_var("PLAIN").unwrap().name, "plain");
    }

    #[test]
    fn masker() {
        let mut m = Masker::new(["abc".to_string(), String::new()]);
        m.add("abcdef");
        m.add("pw\n");
        assert_eq!(m.mask("x abcdef abc pw pwd"), "x *** *** *** ***d");
        assert_eq!(m.mask("nothing"), "nothing");
        assert!(Masker::default().is_empty());
    }

    #[test]
    fn predefined() {
        let info = RunInfo {
            build_id: 7,
            workspace: "/w/7".into(),
            source_branch: "main".into(),
            source_version: "abc123".into(),
            repository_name: "my_app".into(),
            release_id: Some(3),
            ..Default::default()
        };
        let v = predefined_variables(&info);
        for (k, want) in [
            ("Build.BuildId", "7"),
            ("Build.BuildNumber", "7"),
            ("Build.SourceBranch", "refs/heads/main"),
            ("Build.SourceBranchName", "main"),
            ("Build.SourcesDirectory", "/w/7/s"),
            ("System.DefaultWorkingDirectory", "/w/7/s"),
            ("Build.ArtifactStagingDirectory", "/w/7/a"),
            ("Agent.TempDirectory", "/w/7/_temp"),
            ("Pipeline.Workspace", "/w/7"),
            ("Build.Repository.Name", "my_app"),
            ("Build.SourceVersion", "abc123"),
            ("Release.ReleaseId", "3"),
        ] {
            assert_eq!(v.get(k), Some(want), "{k}");
        }
        let j = job_variables("Build", "Compile", 1);
        assert_eq!(j.get("System.JobId"), Some("Build.Compile"));
    }

    #[test]
    fn logging_commands() {
        let c = parse_logging_command(
            "##vso[task.setvariable variable=imageUrl;isOutput=true;issecret=true]my%3Bvalue",
        )
        .unwrap();
        assert_eq!(c.area, "task");
        assert_eq!(c.action, "setvariable");
        assert_eq!(
            c.as_set_variable(),
            Some(SetVariable {
                name: "imageUrl".into(),
                value: "my;value".into(),
                is_output: true,
                is_secret: true,
                is_readonly: false,
            })
        );
        let c = parse_logging_command("  ##vso[task.setvariable variable=x]v\r\n").unwrap();
        let s = c.as_set_variable().unwrap();
        assert_eq!(
            (s.name.as_str(), s.value.as_str(), s.is_output),
            ("x", "v", false)
        );
        let c = parse_logging_command("##vso[task.logissue type=error]boom").unwrap();
        assert_eq!(c.property("TYPE"), Some("error"));
        assert!(c.as_set_variable().is_none());
        for bad in [
            "hello",
            "##vso[",
            "##vso[task]x",
            "##vso[.x]",
            "##vso[task.setvariable]x",
            "echo ##vso[task.setvariable variable=x]y",
        ] {
            let parsed = parse_logging_command(bad);
            assert!(
                parsed.as_ref().and_then(|c| c.as_set_variable()).is_none(),
                "{bad}: {parsed:?}"
            );
        }
    }
}
