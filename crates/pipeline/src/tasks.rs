//! The standard tasks: [`StdTasks`], a [`TaskRunner`] with pluggable back ends.
//!
//! # For the daemon
//!
//! Build one [`StdTasks`] per run (it is a few `Arc`s and paths) and hand it to
//! [`crate::runner::Runner`]:
//!
//! ```ignore
//! let tasks = StdTasks {
//!     artifacts: ArtifactStore::new(data.join("artifacts")),
//!     baker: Some(Arc::new(MyBaker { .. })),        // impl Baker: the image crate's bake
//!     scale_sets: Some(Arc::new(MyScaleSets { .. })), // impl ScaleSets: the control plane
//!     az_shim_dir: Some(dir_containing_an_az_executable),
//!     az_env: vec![EnvVar::plain("SCALESET_ENDPOINT", url), EnvVar::secret("SCALESET_TOKEN", t)],
//! };
//! ```
//!
//! | Task | Inputs (case-insensitive; aliases after `/`) | Back end |
//! |---|---|---|
//! | `PublishBuildArtifacts@1` | `PathtoPublish` (default `$(Build.ArtifactStagingDirectory)`), `ArtifactName` (default `drop`) | [`ArtifactStore::publish`] |
//! | `PublishPipelineArtifact@1` | `targetPath`/`path` (default `$(Pipeline.Workspace)`), `artifact`/`artifactName` (default `drop`) | [`ArtifactStore::publish`] |
//! | `DownloadPipelineArtifact@2` (and `download:`) | `buildType`/`source` `current`\|`specific`, `pipeline`/`definition` (resource alias), `runId`/`buildId`/`pipelineId`, `artifact`/`artifactName`, `path`/`targetPath`/`downloadPath`, `patterns`/`itemPattern` | [`ArtifactStore::download`] |
//! | `PackerBuild@1` | `templateType: builtin`, `baseImageSource` `default`\|`customVhd` (`customImageUrl`), `baseImage`, `packagePath`, `deployScriptPath`, `deployScriptArguments`, `managedImageName`, `azureResourceGroup`, `imageUri`, `imageId` | [`Baker`] |
//! | `AzureCLI@2` | `scriptType` `bash`\|`shell`, `scriptLocation` `inlineScript`\|`scriptPath`, `inlineScript`, `scriptPath`, `arguments`/`scriptArguments`, `workingDirectory`, `failOnStandardError` | `bash` with `az_shim_dir` first on `PATH` and `az_env` |
//! | `AzureVmssDeployment@1` | `action: Update image`, `vmssName`, `imageUrl`, `resourceGroupName` (optional) | [`ScaleSets`] |
//!
//! The current run is `$(Release.ReleaseId)` when set (release runs), else `$(Build.BuildId)`;
//! its pipeline is `$(Build.DefinitionName)`. A pipeline resource alias `x` is resolved through
//! the variables `resources.pipeline.x.runID` and `resources.pipeline.x.pipelineName`, which
//! [`crate::runner::Runner`] sets.
//!
//! The job environment is the executor's (`ExecConfig::base_env` plus variables); the daemon's
//! own environment never reaches a task's processes. `az_env` values marked secret are masked
//! in logs.

use crate::artifacts::ArtifactStore;
use crate::exec::{
    run_script, BoxFuture, ScriptSpec, Stream, TaskInvocation, TaskOutcome, TaskRunner,
};
use crate::plan::RunResult;
use crate::vars::{SetVariable, Variables};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to bake: a base image plus a package directory and a script run inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeRequest {
    /// The managed image name (`managedImageName`).
    pub name: String,
    /// Our base image (e.g. `debian:bookworm`), already mapped from Azure names.
    pub base: String,
    /// The package to copy into the image (`packagePath`, absolute).
    pub package_dir: PathBuf,
    /// The deploy script, relative to `package_dir` (`deployScriptPath`).
    pub script: String,
    /// `deployScriptArguments`, split like a shell would (quotes honoured, no expansion).
    pub args: Vec<String>,
    /// `azureResourceGroup`, if given.
    pub resource_group: Option<String>,
    /// Who may share a download cache with this bake: the run's repository.
    pub cache_scope: Option<String>,
}

/// A baked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakedImage {
    pub name: String,
    /// ARM id: `/subscriptions/.../resourceGroups/.../providers/Microsoft.Compute/images/{name}`.
    pub id: String,
    /// Commands of the setup script that failed although the bake succeeded.
    pub warnings: Vec<String>,
}

/// Builds images (the daemon wraps the image crate). Called from a blocking thread; `log`
/// lines go to the step's log (masked).
pub trait Baker: Send + Sync {
    fn bake(&self, req: BakeRequest, log: &mut dyn FnMut(&str)) -> Result<BakedImage, String>;
}

/// Points a scale set at an image (the daemon wraps its control plane).
pub trait ScaleSets: Send + Sync {
    /// `image_id` is what the pipeline gave: a managed image ARM id or a bare image name.
    /// `resource_group` is `None` when the pipeline did not name one (find the scale set by
    /// name). Called from a blocking thread.
    fn update_image(
        &self,
        resource_group: Option<&str>,
        vmss: &str,
        image_id: &str,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), String>;
}

/// An environment variable for `az` (e.g. the endpoint and a narrowly scoped token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    /// Masked in logs.
    pub secret: bool,
}

impl EnvVar {
    pub fn plain(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            secret: false,
        }
    }
    pub fn secret(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            secret: true,
        }
    }
}

/// The standard task set.
#[derive(Clone)]
pub struct StdTasks {
    pub artifacts: ArtifactStore,
    /// `None`: PackerBuild@1 fails with "no image baker is configured".
    pub baker: Option<Arc<dyn Baker>>,
    /// `None`: AzureVmssDeployment@1 fails with "no scale-set back end is configured".
    pub scale_sets: Option<Arc<dyn ScaleSets>>,
    /// A directory holding an `az` executable; put first on `PATH` for AzureCLI@2.
    pub az_shim_dir: Option<PathBuf>,
    /// Extra environment for AzureCLI@2 scripts only.
    pub az_env: Vec<EnvVar>,
}

/// The tasks [`StdTasks`] supports.
pub const SUPPORTED_TASKS: &[&str] = &[
    "AzureCLI@2",
    "AzureVmssDeployment@1",
    "DownloadPipelineArtifact@2",
    "PackerBuild@1",
    "PublishBuildArtifacts@1",
    "PublishPipelineArtifact@1",
];

impl StdTasks {
    /// Artifacts only; no baker, scale sets or `az`.
    pub fn new(artifacts: ArtifactStore) -> StdTasks {
        StdTasks {
            artifacts,
            baker: None,
            scale_sets: None,
            az_shim_dir: None,
            az_env: vec![],
        }
    }
}

impl TaskRunner for StdTasks {
    fn supported(&self) -> Vec<String> {
        SUPPORTED_TASKS.iter().map(|s| s.to_string()).collect()
    }

    fn run<'a>(&'a self, inv: TaskInvocation<'a>) -> BoxFuture<'a, TaskOutcome> {
        Box::pin(async move {
            let key = format!("{}@{}", inv.name, inv.version).to_ascii_lowercase();
            match key.as_str() {
                "publishbuildartifacts@1" => self.publish(&inv, true).await,
                "publishpipelineartifact@1" => self.publish(&inv, false).await,
                "downloadpipelineartifact@2" => self.download(&inv).await,
                "packerbuild@1" => self.packer(&inv).await,
                "azurecli@2" => self.azure_cli(&inv).await,
                "azurevmssdeployment@1" => self.vmss(&inv).await,
                _ => TaskOutcome::failed(crate::exec::unknown_task_message(
                    self,
                    &inv.name,
                    inv.version,
                )),
            }
        })
    }
}

/// The id of the run a task belongs to (see the module docs).
pub fn current_run_id(vars: &Variables) -> Option<u64> {
    vars.get("Release.ReleaseId")
        .or_else(|| vars.get("Build.BuildId"))
        .and_then(|v| v.trim().parse().ok())
}

fn input<'a>(inv: &'a TaskInvocation<'_>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| inv.input(n))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn flag(inv: &TaskInvocation<'_>, name: &str) -> bool {
    inv.input(name)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A path input (absolute, or relative to the step's working directory) as a path relative to
/// the run's workspace; anything outside it (an absolute path elsewhere, `..` above it) fails
/// the step. Symlinks are checked when the path is opened (beneath the workspace).
fn job_path(inv: &TaskInvocation<'_>, input: &str, p: &str) -> Result<PathBuf, String> {
    crate::sandbox::relative_to(&inv.config.workspace, &inv.working_directory, p)
        .map_err(|e| format!("{}: {input}: {e}", inv.name))
}

/// The absolute form of a path from [`job_path`] (for messages and for processes the job runs).
fn in_workspace(inv: &TaskInvocation<'_>, rel: &Path) -> PathBuf {
    inv.config.workspace.join(rel)
}

fn set_var(name: &str, value: &str) -> SetVariable {
    SetVariable {
        name: name.to_string(),
        value: value.to_string(),
        is_output: false,
        is_secret: false,
        is_readonly: false,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("task thread failed: {e}"))
}

/// Split arguments like a POSIX shell would (single/double quotes, backslash), without any
/// expansion.
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                has = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                has = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            cur.push(chars.next().unwrap_or('\\'))
                        }
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                has = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                has = true;
                cur.push(c);
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// Map a PackerBuild@1 base image to ours. Returns the image and a note for the log when it
/// was mapped. `Err` for images we cannot stand in for (Windows).
pub fn map_base_image(base: &str) -> Result<(String, Option<String>), String> {
    const OURS: &str = "debian:bookworm";
    let b = base.trim();
    if b.is_empty() {
        return Ok((
            OURS.into(),
            Some(format!("no baseImage given; using {OURS}")),
        ));
    }
    let lower = b.to_ascii_lowercase();
    if lower.starts_with("debian:") {
        return Ok((b.to_string(), None));
    }
    if lower.contains("windows") {
        return Err(format!(
            "base image `{b}` is a Windows image; only Linux images can be baked here"
        ));
    }
    Ok((
        OURS.into(),
        Some(format!(
            "base image `{b}` is mapped to `{OURS}` (Azure Marketplace images are not available locally)"
        )),
    ))
}

impl StdTasks {
    /// See [`ArtifactStore::stage`].
    async fn stage_package(&self, inv: &TaskInvocation<'_>, rel: &Path) -> Result<PathBuf, String> {
        let store = self.artifacts.clone();
        let (ws, rel, id) = (
            inv.config.workspace.clone(),
            rel.to_path_buf(),
            inv.config.jail.identity,
        );
        blocking(move || store.stage(&ws, &rel, id))
            .await?
            .map_err(|e| e.to_string())
    }

    async fn publish(&self, inv: &TaskInvocation<'_>, build: bool) -> TaskOutcome {
        let (path, name) = if build {
            (
                input(inv, &["PathtoPublish"])
                    .map(str::to_string)
                    .or_else(|| {
                        inv.variables
                            .get("Build.ArtifactStagingDirectory")
                            .map(str::to_string)
                    }),
                input(inv, &["ArtifactName"]).unwrap_or("drop").to_string(),
            )
        } else {
            (
                input(inv, &["targetPath", "path"])
                    .map(str::to_string)
                    .or_else(|| inv.variables.get("Pipeline.Workspace").map(str::to_string)),
                input(inv, &["artifact", "artifactName"])
                    .unwrap_or("drop")
                    .to_string(),
            )
        };
        let Some(path) = path else {
            return TaskOutcome::failed("no path to publish");
        };
        let Some(run_id) = current_run_id(inv.variables) else {
            return TaskOutcome::failed("Build.BuildId is not set; cannot publish outside a run");
        };
        let pipeline = inv
            .variables
            .get("Build.DefinitionName")
            .unwrap_or("")
            .to_string();
        let rel = match job_path(inv, "path to publish", &path) {
            Ok(r) => r,
            Err(e) => return TaskOutcome::failed(e),
        };
        inv.log.line(
            Stream::Stdout,
            &format!(
                "Publishing {} as artifact `{name}` of run {run_id}",
                in_workspace(inv, &rel).display()
            ),
        );
        let store = self.artifacts.clone();
        let n2 = name.clone();
        let (ws, id) = (inv.config.workspace.clone(), inv.config.jail.identity);
        match blocking(move || store.publish(run_id, &pipeline, &n2, &ws, &rel, id)).await {
            Ok(Ok(a)) => {
                inv.log.line(
                    Stream::Stdout,
                    &format!(
                        "Published `{}`: {} files, {} bytes, {}",
                        a.name, a.files, a.bytes, a.digest
                    ),
                );
                TaskOutcome::succeeded()
            }
            Ok(Err(e)) => TaskOutcome::failed(format!("publishing `{name}` failed: {e}")),
            Err(e) => TaskOutcome::failed(e),
        }
    }

    async fn download(&self, inv: &TaskInvocation<'_>) -> TaskOutcome {
        let vars = inv.variables;
        let source = input(inv, &["buildType", "source"]).unwrap_or("current");
        let (pipeline, run_id) = if source.eq_ignore_ascii_case("current") {
            match current_run_id(vars) {
                Some(id) => (None, id),
                None => return TaskOutcome::failed("Build.BuildId is not set"),
            }
        } else {
            let alias = input(inv, &["pipeline", "definition"]);
            let by_alias = alias.and_then(|a| {
                let id = vars
                    .get(&format!("resources.pipeline.{a}.runID"))?
                    .parse::<u64>()
                    .ok()?;
                let name = vars
                    .get(&format!("resources.pipeline.{a}.pipelineName"))
                    .map(str::to_string);
                Some((name, id))
            });
            let by_id = input(inv, &["runId", "buildId", "pipelineId"])
                .and_then(|r| r.parse::<u64>().ok())
                .map(|id| (alias.map(str::to_string), id));
            match by_id.or(by_alias) {
                Some(x) => x,
                None => {
                    return TaskOutcome::failed(format!(
                        "no run of pipeline resource `{}` is available (declare it under resources.pipelines, or give runId)",
                        alias.unwrap_or("")
                    ))
                }
            }
        };
        let dest = input(inv, &["path", "targetPath", "downloadPath"])
            .map(str::to_string)
            .or_else(|| vars.get("Pipeline.Workspace").map(str::to_string))
            .unwrap_or_else(|| inv.working_directory.to_string_lossy().into_owned());
        let dest = match job_path(inv, "download path", &dest) {
            Ok(r) => r,
            Err(e) => return TaskOutcome::failed(e),
        };
        let patterns = input(inv, &["patterns", "itemPattern"])
            .unwrap_or("**")
            .to_string();
        let artifact = input(inv, &["artifact", "artifactName"]).map(str::to_string);
        let store = self.artifacts.clone();
        let names = match &artifact {
            Some(a) => vec![(a.clone(), dest.clone())],
            None => match store.list(run_id) {
                Ok(l) if l.is_empty() => {
                    return TaskOutcome::failed(format!("run {run_id} published no artifacts"))
                }
                Ok(l) => l
                    .into_iter()
                    .map(|a| (a.name.clone(), dest.join(&a.name)))
                    .collect(),
                Err(e) => return TaskOutcome::failed(e.to_string()),
            },
        };
        let (ws, id) = (inv.config.workspace.clone(), inv.config.jail.identity);
        for (name, to) in names {
            let store = store.clone();
            let (p, pat, n2, to2, ws) = (
                pipeline.clone(),
                patterns.clone(),
                name.clone(),
                to.clone(),
                ws.clone(),
            );
            let r = blocking(move || {
                store.download(p.as_deref(), run_id, &n2, &ws, &to2, Some(&pat), id)
            })
            .await;
            match r {
                Ok(Ok(n)) => inv.log.line(
                    Stream::Stdout,
                    &format!(
                        "Downloaded {n} files of artifact `{name}` (run {run_id}) to {}",
                        in_workspace(inv, &to).display()
                    ),
                ),
                Ok(Err(e)) => return TaskOutcome::failed(format!("download failed: {e}")),
                Err(e) => return TaskOutcome::failed(e),
            }
        }
        TaskOutcome::succeeded()
    }

    async fn packer(&self, inv: &TaskInvocation<'_>) -> TaskOutcome {
        let template = input(inv, &["templateType"]).unwrap_or("builtin");
        if !template.eq_ignore_ascii_case("builtin") {
            return TaskOutcome::failed(format!(
                "PackerBuild@1: templateType `{template}` is not supported; use `builtin`"
            ));
        }
        if inv
            .input("isManagedImage")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
        {
            return TaskOutcome::failed(
                "PackerBuild@1: only managed images are supported (isManagedImage: true)",
            );
        }
        let Some(baker) = self.baker.clone() else {
            return TaskOutcome::failed("PackerBuild@1: no image baker is configured");
        };
        let source = input(inv, &["baseImageSource"]).unwrap_or("default");
        let (base, note) = if source.eq_ignore_ascii_case("customVhd")
            || source.eq_ignore_ascii_case("customImage")
        {
            match input(inv, &["customImageUrl", "customImageResourceId"]) {
                Some(u) => (u.to_string(), None),
                None => return TaskOutcome::failed("PackerBuild@1: customImageUrl is required"),
            }
        } else {
            match map_base_image(input(inv, &["baseImage"]).unwrap_or("")) {
                Ok(x) => x,
                Err(e) => return TaskOutcome::failed(format!("PackerBuild@1: {e}")),
            }
        };
        if let Some(n) = note {
            inv.log.line(Stream::Stdout, &n);
        }
        let Some(name) = input(inv, &["managedImageName"]) else {
            return TaskOutcome::failed("PackerBuild@1: managedImageName is required");
        };
        let Some(package) = input(inv, &["packagePath"]) else {
            return TaskOutcome::failed("PackerBuild@1: packagePath is required");
        };
        let package_rel = match job_path(inv, "packagePath", package) {
            Ok(r) => r,
            Err(e) => return TaskOutcome::failed(e),
        };
        let Some(script) = input(inv, &["deployScriptPath"]) else {
            return TaskOutcome::failed("PackerBuild@1: deployScriptPath is required");
        };
        let script = script.trim_start_matches("./").to_string();
        if Path::new(&script).is_absolute() || script.split('/').any(|s| s == "..") {
            return TaskOutcome::failed(format!(
                "PackerBuild@1: deployScriptPath `{script}` must be relative to packagePath"
            ));
        }
        // The bake reads a copy the daemon owns, made as the runner user beneath the
        // workspace: the job can neither point it elsewhere nor change it mid-bake.
        let stage = match self.stage_package(inv, &package_rel).await {
            Ok(s) => s,
            Err(e) => return TaskOutcome::failed(format!("PackerBuild@1: packagePath: {e}")),
        };
        let package_dir = stage.join(package_rel.file_name().unwrap_or("package".as_ref()));
        if !package_dir.join(&script).is_file() {
            let _ = std::fs::remove_dir_all(&stage);
            return TaskOutcome::failed(format!(
                "PackerBuild@1: deploy script `{script}` is not in the package {}",
                in_workspace(inv, &package_rel).display()
            ));
        }
        let req = BakeRequest {
            name: name.to_string(),
            base,
            package_dir,
            script,
            args: split_args(input(inv, &["deployScriptArguments"]).unwrap_or("")),
            resource_group: input(inv, &["azureResourceGroup"]).map(str::to_string),
            // A repository is one tenant: its bakes share downloads, other repositories' don't.
            cache_scope: inv
                .variables
                .get("Build.Repository.Name")
                .filter(|r| !r.is_empty())
                .map(|r| format!("repo:{r}")),
        };
        inv.log.line(
            Stream::Stdout,
            &format!(
                "Baking image `{}` from {} with {} {}",
                req.name,
                req.base,
                req.script,
                req.args.join(" ")
            ),
        );
        let log = inv.log.clone();
        let r = blocking(move || {
            let mut f = |l: &str| log.line(Stream::Stdout, l);
            baker.bake(req, &mut f)
        })
        .await;
        let _ = std::fs::remove_dir_all(&stage);
        let img = match r {
            Ok(Ok(img)) => img,
            Ok(Err(e)) => return TaskOutcome::failed(format!("PackerBuild@1: bake failed: {e}")),
            Err(e) => return TaskOutcome::failed(e),
        };
        inv.log.line(
            Stream::Stdout,
            &format!("Image `{}` is ready: {}", img.name, img.id),
        );
        let mut out = TaskOutcome::succeeded();
        if log_bake_warnings(inv, &img.warnings) {
            // Azure's "succeeded with issues": the release goes on, the run shows why.
            out.result = RunResult::SucceededWithIssues;
        }
        if let Some(v) = input(inv, &["imageUri"]) {
            out.set_variables.push(set_var(v, &img.name));
        }
        if let Some(v) = input(inv, &["imageId"]) {
            out.set_variables.push(set_var(v, &img.id));
        }
        out
    }

    async fn azure_cli(&self, inv: &TaskInvocation<'_>) -> TaskOutcome {
        let ty = input(inv, &["scriptType"]).unwrap_or("bash");
        if !(ty.eq_ignore_ascii_case("bash") || ty.eq_ignore_ascii_case("shell")) {
            return TaskOutcome::failed(format!(
                "AzureCLI@2: scriptType `{ty}` is not supported on Linux; use `bash`"
            ));
        }
        let inline = input(inv, &["inlineScript"]);
        let location = input(inv, &["scriptLocation"]).unwrap_or(if inline.is_some() {
            "inlineScript"
        } else {
            "scriptPath"
        });
        let args = input(inv, &["arguments", "scriptArguments"]).unwrap_or("");
        let script = if location.eq_ignore_ascii_case("inlineScript") {
            let Some(body) = inline else {
                return TaskOutcome::failed("AzureCLI@2: inlineScript is required");
            };
            if args.is_empty() {
                body.to_string()
            } else {
                format!("set -- {args}\n{body}")
            }
        } else if location.eq_ignore_ascii_case("scriptPath") {
            let Some(p) = input(inv, &["scriptPath"]) else {
                return TaskOutcome::failed("AzureCLI@2: scriptPath is required");
            };
            let p = match job_path(inv, "scriptPath", p) {
                Ok(r) => in_workspace(inv, &r),
                Err(e) => return TaskOutcome::failed(e),
            };
            if !crate::sandbox::is_kind_as(inv.config.jail.identity, &p, false) {
                return TaskOutcome::failed(format!(
                    "AzureCLI@2: script {} does not exist",
                    p.display()
                ));
            }
            let quoted = format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"));
            format!("exec bash --noprofile --norc {quoted} {args}")
        } else {
            return TaskOutcome::failed(format!(
                "AzureCLI@2: scriptLocation `{location}` is not supported; use inlineScript or scriptPath"
            ));
        };
        let mut env: Vec<(String, String)> = inv.env.clone();
        if let Some(dir) = &self.az_shim_dir {
            let old = env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
            env.retain(|(k, _)| k != "PATH");
            env.push(("PATH".into(), format!("{}:{old}", dir.display())));
        }
        for e in &self.az_env {
            if e.secret {
                inv.log.add_secret(&e.value);
            }
            env.retain(|(k, _)| k != &e.name);
            env.push((e.name.clone(), e.value.clone()));
        }
        let cwd = match input(inv, &["workingDirectory", "cwd"]) {
            Some(d) => match job_path(inv, "workingDirectory", d) {
                Ok(r) => in_workspace(inv, &r),
                Err(e) => return TaskOutcome::failed(e),
            },
            None => inv.working_directory.clone(),
        };
        if !crate::sandbox::is_kind_as(inv.config.jail.identity, &cwd, true) {
            return TaskOutcome::failed(format!(
                "AzureCLI@2: working directory {} does not exist",
                cwd.display()
            ));
        }
        let spec = ScriptSpec {
            script: &script,
            working_directory: &cwd,
            env: &env,
            timeout: None,
        };
        let o = match run_script(spec, inv.config, &inv.log).await {
            Ok(o) => o,
            Err(e) => return TaskOutcome::failed(format!("AzureCLI@2: could not start bash: {e}")),
        };
        let mut out = TaskOutcome::succeeded();
        out.exit_code = o.exit_code;
        out.set_variables = o.set_variables;
        if o.canceled {
            out.result = RunResult::Canceled;
            out.message = Some("the step was canceled".into());
        } else if o.exit_code != Some(0) {
            out.result = RunResult::Failed;
            out.message = Some(format!(
                "AzureCLI@2: script exited with code {}",
                o.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none (killed by a signal)".into())
            ));
        } else if flag(inv, "failOnStandardError") && o.wrote_stderr {
            out.result = RunResult::Failed;
            out.message =
                Some("AzureCLI@2: the script wrote to stderr (failOnStandardError)".into());
        }
        out
    }

    async fn vmss(&self, inv: &TaskInvocation<'_>) -> TaskOutcome {
        let action = input(inv, &["action"]).unwrap_or("Update image");
        if !action.eq_ignore_ascii_case("Update image") {
            return TaskOutcome::failed(format!(
                "AzureVmssDeployment@1: action `{action}` is not supported; use `Update image`"
            ));
        }
        let Some(sets) = self.scale_sets.clone() else {
            return TaskOutcome::failed(
                "AzureVmssDeployment@1: no scale-set back end is configured",
            );
        };
        let Some(vmss) = input(inv, &["vmssName"]).map(str::to_string) else {
            return TaskOutcome::failed("AzureVmssDeployment@1: vmssName is required");
        };
        let Some(image) = input(inv, &["imageUrl"]).map(str::to_string) else {
            return TaskOutcome::failed("AzureVmssDeployment@1: imageUrl is required");
        };
        let rg = input(inv, &["resourceGroupName", "resourceGroup"]).map(str::to_string);
        inv.log.line(
            Stream::Stdout,
            &format!("Updating scale set `{vmss}` to image {image}"),
        );
        let log = inv.log.clone();
        let r = blocking(move || {
            let mut f = |l: &str| log.line(Stream::Stdout, l);
            sets.update_image(rg.as_deref(), &vmss, &image, &mut f)
        })
        .await;
        match r {
            Ok(Ok(())) => TaskOutcome::succeeded(),
            Ok(Err(e)) => TaskOutcome::failed(format!("AzureVmssDeployment@1: {e}")),
            Err(e) => TaskOutcome::failed(e),
        }
    }
}

/// The bake's failed script commands as warnings in the step's log; whether there were any.
fn log_bake_warnings(inv: &TaskInvocation<'_>, warnings: &[String]) -> bool {
    for w in warnings {
        for (i, l) in w.lines().enumerate() {
            let tag = if i == 0 { "##[warning]" } else { "" };
            inv.log.line(Stream::System, &format!("{tag}{l}"));
        }
    }
    !warnings.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_images() {
        assert_eq!(
            split_args(r#"a 'b c' "d \"e\"" f\ g  "#),
            vec!["a", "b c", "d \"e\"", "f g"]
        );
        assert!(split_args("  ").is_empty());
        assert_eq!(split_args("''"), vec![""]);
        let (img, note) = map_base_image("Canonical:UbuntuServer:16.04-LTS:linux").unwrap();
        assert_eq!(img, "debian:bookworm");
        assert!(note
            .unwrap()
            .contains("Canonical:UbuntuServer:16.04-LTS:linux"));
        assert_eq!(
            map_base_image("UbuntuServer 18.04").unwrap().0,
            "debian:bookworm"
        );
        assert_eq!(
            map_base_image("debian:bookworm").unwrap(),
            ("debian:bookworm".into(), None)
        );
        assert!(
            map_base_image("MicrosoftWindowsServer:WindowsServer:2012-R2-Datacenter:windows")
                .is_err()
        );
    }
}
