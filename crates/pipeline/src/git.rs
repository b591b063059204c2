//! Hosted bare git repositories and git's smart HTTP protocol.
//!
//! # For the daemon
//!
//! - [`RepoStore::new`]`(root)` holds bare repositories as `root/<name>.git`;
//!   [`RepoStore::create`] / [`list`](RepoStore::list) / [`get`](RepoStore::get) /
//!   [`delete`](RepoStore::delete). Names are checked by [`validate_repo_name`]. Every created
//!   repository has `http.receivepack true`, so pushes over HTTP are accepted (authenticate
//!   before calling [`http_backend`]).
//! - Serving `/git/<name>.git/...` (any URL prefix): strip the prefix so that the path starts
//!   with `/<name>.git/`, then call [`http_backend`] with a [`CgiRequest`] (the request body fully
//!   read, `Content-Encoding` and `Git-Protocol` headers passed through) and send back the
//!   [`CgiResponse`]. [`parse_path_info`] tells which repository a path names and whether it is
//!   a push (`git-receive-pack`), for authorization.
//! - Push detection: take [`RepoStore::refs`] before and after a `git-receive-pack` POST and
//!   compare them with [`diff_refs`] → [`RefUpdate`]s (serialize pushes to one repository, e.g.
//!   with a per-repo mutex, so snapshots do not interleave). For each update,
//!   [`changed_paths`] (a new branch lists every file) and [`read_file_at`] (the pipeline YAML at
//!   the pushed commit) feed [`crate::trigger::push_triggers`] /
//!   [`crate::runner::pipelines_for_push`].
//! - [`checkout`] exports a commit's files into a directory (the run's `s/`).
//!
//! Everything here except [`http_backend`] is blocking (short `git` invocations); call it from
//! `spawn_blocking` in async code if that matters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The all-zero object id git uses for "no commit" (a created or deleted ref).
pub const ZERO_OID: &str = "0000000000000000000000000000000000000000";

/// An error from a git operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    #[error("invalid repository name `{0}`: {1}")]
    InvalidName(String, String),
    #[error("repository `{0}` already exists")]
    Exists(String),
    #[error("repository `{0}` does not exist")]
    NotFound(String),
    #[error("{0}")]
    Git(String),
    /// A file that exists at a commit but must not be read (see [`read_file_at`]).
    #[error("{path} at commit {commit} {why}")]
    Unusable {
        path: String,
        commit: String,
        why: String,
    },
}

impl From<std::io::Error> for GitError {
    fn from(e: std::io::Error) -> Self {
        GitError::Git(e.to_string())
    }
}

/// A hosted repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoInfo {
    pub name: String,
    pub path: PathBuf,
    /// Branches, `refs/heads/x` → commit.
    pub branches: BTreeMap<String, String>,
    /// The branch HEAD points to (e.g. `refs/heads/main`), even before it exists.
    pub head: Option<String>,
    /// For a mirror of an external repository: its URL (pushes are refused; a webhook call
    /// fetches it).
    pub mirror: Option<String>,
}

/// One ref changed by a push. `old`/`new` are [`ZERO_OID`] for a created/deleted ref.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefUpdate {
    /// Full ref name, e.g. `refs/heads/main`.
    pub name: String,
    pub old: String,
    pub new: String,
}

impl RefUpdate {
    pub fn is_delete(&self) -> bool {
        self.new == ZERO_OID
    }
    pub fn is_create(&self) -> bool {
        self.old == ZERO_OID
    }
}

/// Repository names: 1–100 characters of `A-Za-z0-9._-`, starting with a letter or digit, not
/// ending in `.git` or `.lock`, no `..`.
pub fn validate_repo_name(name: &str) -> Result<(), GitError> {
    let bad = |why: &str| Err(GitError::InvalidName(name.to_string(), why.to_string()));
    if name.is_empty() || name.len() > 100 {
        return bad("must be 1 to 100 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return bad("must start with a letter or digit");
    }
    if name.contains("..") {
        return bad("must not contain `..`");
    }
    if name.ends_with(".git") || name.ends_with(".lock") {
        return bad("must not end with `.git` or `.lock`");
    }
    Ok(())
}

fn git_cmd(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--git-dir").arg(repo);
    // Never read the daemon user's or the system's config (hooks, credential helpers...).
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    c
}

fn run_git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
    let out = git_cmd(repo).args(args).output()?;
    if !out.status.success() {
        return Err(GitError::Git(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Bare repositories under one directory.
#[derive(Debug, Clone)]
pub struct RepoStore {
    root: PathBuf,
}

impl RepoStore {
    pub fn new(root: impl Into<PathBuf>) -> RepoStore {
        RepoStore { root: root.into() }
    }

    /// The directory to pass to [`http_backend`] as `GIT_PROJECT_ROOT`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/<name>.git` (whether it exists or not; the name is not checked).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    /// Create an empty bare repository whose HEAD is `refs/heads/main`, accepting pushes over
    /// HTTP.
    pub fn create(&self, name: &str) -> Result<RepoInfo, GitError> {
        validate_repo_name(name)?;
        std::fs::create_dir_all(&self.root)?;
        let path = self.path(name);
        if path.exists() {
            return Err(GitError::Exists(name.to_string()));
        }
        let tmp = self
            .root
            .join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("git")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["init", "--bare", "--quiet", "--initial-branch=main"])
            .arg(&tmp)
            .output()?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(GitError::Git(format!(
                "git init failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        for (k, v) in [
            ("http.receivepack", "true"),
            ("http.uploadpack", "true"),
            ("receive.denyNonFastForwards", "false"),
            ("core.sharedRepository", "false"),
        ] {
            run_git(&tmp, &["config", k, v])?;
        }
        // Hooks from templates are not wanted: nothing runs on the server side but git itself.
        let _ = std::fs::remove_dir_all(tmp.join("hooks"));
        std::fs::create_dir_all(tmp.join("hooks"))?;
        std::fs::write(tmp.join("git-daemon-export-ok"), b"")?;
        if std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(GitError::Exists(name.to_string()));
        }
        self.info(name)
    }

    fn info(&self, name: &str) -> Result<RepoInfo, GitError> {
        let path = self.path(name);
        let refs = refs(&path)?;
        let head = run_git(&path, &["symbolic-ref", "-q", "HEAD"])
            .ok()
            .map(|o| String::from_utf8_lossy(&o).trim().to_string())
            .filter(|s| !s.is_empty());
        let mirror = run_git(&path, &["config", "--get", "scaleset.mirror"])
            .ok()
            .map(|o| String::from_utf8_lossy(&o).trim().to_string())
            .filter(|s| !s.is_empty());
        Ok(RepoInfo {
            name: name.to_string(),
            mirror,
            path,
            branches: refs
                .into_iter()
                .filter(|(k, _)| k.starts_with("refs/heads/"))
                .collect(),
            head,
        })
    }

    /// A read-only mirror of the external repository at `url`, fetched once now (without
    /// triggering anything) and again at every authenticated webhook call (`secret`, stored
    /// mode 0600 beside the repository). The repository is removed again if the first fetch
    /// fails.
    pub fn create_mirror(&self, name: &str, url: &str, secret: &str) -> Result<RepoInfo, GitError> {
        if url.is_empty() || url.starts_with('-') || url.chars().any(char::is_control) {
            return Err(GitError::Git(format!("`{url}` is not a repository URL")));
        }
        if secret.len() < 16 {
            return Err(GitError::Git(
                "the webhook secret must be at least 16 characters".into(),
            ));
        }
        self.create(name)?;
        let path = self.path(name);
        let setup = || -> Result<(), GitError> {
            run_git(&path, &["config", "http.receivepack", "false"])?;
            run_git(&path, &["config", "scaleset.mirror", url])?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path.join("scaleset-webhook-secret"))?;
            std::io::Write::write_all(&mut f, secret.as_bytes())?;
            self.fetch_mirror(name)
        };
        if let Err(e) = setup() {
            let _ = std::fs::remove_dir_all(&path);
            return Err(e);
        }
        self.info(name)
    }

    /// The webhook secret of a mirror.
    pub fn webhook_secret(&self, name: &str) -> Option<String> {
        validate_repo_name(name).ok()?;
        std::fs::read_to_string(self.path(name).join("scaleset-webhook-secret")).ok()
    }

    /// Fetches a mirror's branches from its URL (branches deleted there are deleted here).
    pub fn fetch_mirror(&self, name: &str) -> Result<(), GitError> {
        let info = self
            .get(name)?
            .ok_or_else(|| GitError::NotFound(name.into()))?;
        let url = info
            .mirror
            .ok_or_else(|| GitError::Git(format!("{name} is not a mirror")))?;
        run_git(
            &info.path,
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                &url,
                "+refs/heads/*:refs/heads/*",
            ],
        )?;
        Ok(())
    }

    /// A repository, `Ok(None)` if there is none of that name.
    pub fn get(&self, name: &str) -> Result<Option<RepoInfo>, GitError> {
        if validate_repo_name(name).is_err() || !self.path(name).is_dir() {
            return Ok(None);
        }
        self.info(name).map(Some)
    }

    /// Every repository, by name.
    pub fn list(&self) -> Result<Vec<RepoInfo>, GitError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = f.strip_suffix(".git") {
                if validate_repo_name(name).is_ok() && e.path().is_dir() {
                    out.push(self.info(name)?);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn delete(&self, name: &str) -> Result<(), GitError> {
        validate_repo_name(name)?;
        let path = self.path(name);
        if !path.is_dir() {
            return Err(GitError::NotFound(name.to_string()));
        }
        std::fs::remove_dir_all(path)?;
        Ok(())
    }

    /// [`refs`] of a repository by name.
    pub fn refs(&self, name: &str) -> Result<BTreeMap<String, String>, GitError> {
        validate_repo_name(name)?;
        let path = self.path(name);
        if !path.is_dir() {
            return Err(GitError::NotFound(name.to_string()));
        }
        refs(&path)
    }
}

/// Every ref of a repository (`git for-each-ref`): full name → object id.
pub fn refs(repo: &Path) -> Result<BTreeMap<String, String>, GitError> {
    let out = run_git(repo, &["for-each-ref", "--format=%(objectname) %(refname)"])?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(oid, name)| (name.to_string(), oid.to_string()))
        .collect())
}

/// What changed between two [`refs`] snapshots, by ref name.
pub fn diff_refs(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<RefUpdate> {
    let mut out = Vec::new();
    for (name, new) in after {
        match before.get(name) {
            Some(old) if old == new => {}
            old => out.push(RefUpdate {
                name: name.clone(),
                old: old.cloned().unwrap_or_else(|| ZERO_OID.to_string()),
                new: new.clone(),
            }),
        }
    }
    for (name, old) in before {
        if !after.contains_key(name) {
            out.push(RefUpdate {
                name: name.clone(),
                old: old.clone(),
                new: ZERO_OID.to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn is_zero(oid: &str) -> bool {
    oid.is_empty() || oid.bytes().all(|b| b == b'0')
}

/// Files changed from `old` to `new` (`git diff --name-only`). `old` = zeros (a new branch)
/// lists every file of `new`; `new` = zeros (a deleted branch) gives nothing.
pub fn changed_paths(repo: &Path, old: &str, new: &str) -> Result<Vec<String>, GitError> {
    if is_zero(new) {
        return Ok(vec![]);
    }
    let out = if is_zero(old) {
        run_git(repo, &["ls-tree", "-r", "--name-only", "-z", new])?
    } else {
        run_git(
            repo,
            &["diff", "--name-only", "--no-renames", "-z", old, new],
        )?
    };
    Ok(out
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// A commit id for a revision (`main`, `refs/heads/main`, a sha), `Ok(None)` if it does not
/// name a commit.
pub fn resolve(repo: &Path, rev: &str) -> Result<Option<String>, GitError> {
    if rev.starts_with('-') {
        return Ok(None);
    }
    let out = git_cmd(repo)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Largest file [`read_file_at`] reads: the pipeline file cap, [`crate::yaml::MAX_FILE_BYTES`].
pub const MAX_READ_BYTES: usize = crate::yaml::MAX_FILE_BYTES;

/// The content of `path` at `commit`, read from git's objects (never from a work tree),
/// `Ok(None)` if there is no such entry. The tree entry must be a regular file (mode 100644 or
/// 100755) of at most [`MAX_READ_BYTES`], both checked before the blob is read; a symbolic
/// link, a submodule, a directory or a larger file is a [`GitError::Unusable`].
pub fn read_file_at(repo: &Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
    let path = path.trim_start_matches("./").trim_start_matches('/');
    if commit.starts_with('-') || path.is_empty() {
        return Ok(None);
    }
    let Some(entry) = tree_entry(repo, commit, path)? else {
        return Ok(None);
    };
    let unusable = |why: String| GitError::Unusable {
        path: path.to_string(),
        commit: commit[..commit.len().min(12)].to_string(),
        why,
    };
    let what = match entry.mode.as_str() {
        "100644" | "100755" => None,
        "120000" => Some("a symbolic link"),
        "160000" => Some("a submodule"),
        "040000" => Some("a directory"),
        _ => Some("not a regular file"),
    };
    if let Some(what) = what {
        return Err(unusable(format!(
            "is {what} (mode {}); a pipeline file must be a regular file",
            entry.mode
        )));
    }
    let too_large = |size: usize| {
        unusable(format!(
            "is {} ({size} bytes); the limit is {}",
            crate::yaml::human_bytes(size),
            crate::yaml::human_bytes(MAX_READ_BYTES)
        ))
    };
    if entry.size > MAX_READ_BYTES {
        return Err(too_large(entry.size));
    }
    let data = run_git(repo, &["cat-file", "blob", &entry.oid])?;
    if data.len() > MAX_READ_BYTES {
        return Err(too_large(data.len()));
    }
    Ok(Some(data))
}

/// One entry of a tree, as `git ls-tree -l` lists it.
struct TreeEntry {
    mode: String,
    oid: String,
    size: usize,
}

/// The entry named exactly `path` in `commit`'s tree (`None` for a bad commit or no entry).
fn tree_entry(repo: &Path, commit: &str, path: &str) -> Result<Option<TreeEntry>, GitError> {
    let out = git_cmd(repo)
        .env("GIT_LITERAL_PATHSPECS", "1")
        .args(["ls-tree", "-z", "-l", "--full-tree", commit, "--", path])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    // `<mode> <type> <oid> <size>\t<path>`, NUL-terminated; size is `-` for trees/submodules.
    for rec in out.stdout.split(|b| *b == 0) {
        let rec = String::from_utf8_lossy(rec);
        let Some((meta, name)) = rec.split_once('\t') else {
            continue;
        };
        if name != path {
            continue;
        }
        let f: Vec<&str> = meta.split_whitespace().collect();
        if let [mode, _kind, oid, size] = f[..] {
            return Ok(Some(TreeEntry {
                mode: mode.to_string(),
                oid: oid.to_string(),
                size: size.parse().unwrap_or(0),
            }));
        }
    }
    Ok(None)
}

/// Checks `commit` out into `dest` the way a self-hosted agent reuses its sources directory:
/// tracked files are made exactly those of `commit` (files deleted since the last checkout are
/// removed, modified ones reset), untracked files such as build outputs are kept. `index` is
/// the workspace's own index file, kept between checkouts (a missing one checks out afresh).
///
/// `dest` and `index` belong to a job, so git runs as the job would, inside `jail` (the runner
/// user): whatever a previous job planted there (symlinks included) can only lead git where the
/// runner user may write anyway. The repository is the daemon's and private; with `mount`,
/// git reads it through a read-only bind mount at that (empty) directory.
pub fn checkout_jailed(
    repo: &Path,
    commit: &str,
    dest: &Path,
    index: &Path,
    jail: &crate::sandbox::Jail,
    mount: Option<&Path>,
) -> Result<(), GitError> {
    if commit.starts_with('-') || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GitError::Git(format!("bad commit `{commit}`")));
    }
    let mut jail = jail.clone();
    let git_dir = match mount {
        Some(m) => {
            jail.bind_ro.push((repo.to_path_buf(), m.to_path_buf()));
            m
        }
        None => repo,
    };
    let prepared = jail.prepare()?;
    let mut c = git_cmd(git_dir);
    c.arg("--work-tree")
        .arg(dest)
        .env("GIT_INDEX_FILE", index)
        // The repository is root's; the runner user reads it without owning it.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .args(["read-tree", "--reset", "-u", commit]);
    // SAFETY: PreparedJail::enter makes only async-signal-safe system calls.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || prepared.enter());
    }
    let out = c.output()?;
    if !out.status.success() {
        return Err(GitError::Git(format!(
            "git read-tree {commit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `git http-backend` for `req` with only the CGI environment (never the daemon's), stdin,
/// stdout and stderr piped; `content_length` is the body's declared length (`None`: chunked,
/// read to the end). [`http_backend`] and the daemon's streaming front end both start it here.
pub fn backend_command(
    root: &Path,
    req: &CgiRequest<'_>,
    content_length: Option<u64>,
) -> tokio::process::Command {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", path)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", req.method)
        .env("PATH_INFO", req.path_info)
        .env("QUERY_STRING", req.query)
        .env("CONTENT_TYPE", req.content_type.unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let optional = [
        ("CONTENT_LENGTH", content_length.map(|n| n.to_string())),
        ("REMOTE_USER", req.remote_user.map(str::to_string)),
        ("REMOTE_ADDR", req.remote_addr.map(str::to_string)),
        (
            "HTTP_CONTENT_ENCODING",
            req.content_encoding.map(str::to_string),
        ),
        ("HTTP_GIT_PROTOCOL", req.git_protocol.map(str::to_string)),
        ("GIT_PROTOCOL", req.git_protocol.map(str::to_string)),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}

/// A smart-HTTP request for [`http_backend`].
#[derive(Debug, Clone, Default)]
pub struct CgiRequest<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// `/<name>.git/info/refs`, `/<name>.git/git-upload-pack`, `/<name>.git/git-receive-pack`.
    pub path_info: &'a str,
    /// The query string without `?` (e.g. `service=git-receive-pack`).
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    /// The request's `Content-Encoding` (git sends `gzip` for large fetch negotiations).
    pub content_encoding: Option<&'a str>,
    /// The request's `Git-Protocol` header (protocol v2).
    pub git_protocol: Option<&'a str>,
    /// The whole request body (already de-chunked).
    pub body: &'a [u8],
    /// The authenticated user; `git-receive-pack` is refused by git without one.
    pub remote_user: Option<&'a str>,
    pub remote_addr: Option<&'a str>,
}

/// What `git http-backend` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiResponse {
    /// From the CGI `Status:` header (200 when absent).
    pub status: u16,
    /// Other headers, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Which repository a smart-HTTP path names, and whether it is a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPath {
    /// Repository name without `.git`.
    pub repo: String,
    /// `git-receive-pack` (the advertisement or the push itself).
    pub is_push: bool,
    /// The POST that actually updates refs.
    pub is_push_post: bool,
}

/// Parse `/<name>.git/<rest>` (or `/<name>/<rest>`) plus the query string. `None` for a path that
/// names no valid repository.
pub fn parse_path_info(method: &str, path_info: &str, query: &str) -> Option<GitPath> {
    let p = path_info.trim_start_matches('/');
    let (first, rest) = p.split_once('/')?;
    let name = first.strip_suffix(".git").unwrap_or(first);
    validate_repo_name(name).ok()?;
    let receive = rest == "git-receive-pack"
        || (rest == "info/refs" && query.split('&').any(|kv| kv == "service=git-receive-pack"));
    Some(GitPath {
        repo: name.to_string(),
        is_push: receive,
        is_push_post: receive && method.eq_ignore_ascii_case("POST") && rest == "git-receive-pack",
    })
}

/// Run `git http-backend` as a CGI process for one request, with `GIT_PROJECT_ROOT=root`. The
/// process gets only the CGI variables (not the daemon's environment).
pub async fn http_backend(root: &Path, req: &CgiRequest<'_>) -> std::io::Result<CgiResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if req.path_info.split('/').any(|s| s == "..") {
        return Ok(CgiResponse {
            status: 400,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"bad path\n".to_vec(),
        });
    }
    let mut cmd = backend_command(root, req, Some(req.body.len() as u64));
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let body = req.body;
    let write = async {
        if let Some(mut w) = stdin.take() {
            // A backend that stops reading early (an error) closes the pipe; that is fine.
            let _ = w.write_all(body).await;
            let _ = w.shutdown().await;
        }
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let read = async {
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    };
    tokio::join!(write, read);
    let status = child.wait().await?;
    if out.is_empty() && !status.success() {
        return Ok(CgiResponse {
            status: 500,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!(
                "git http-backend failed: {}\n",
                String::from_utf8_lossy(&err).trim()
            )
            .into_bytes(),
        });
    }
    Ok(parse_cgi_response(&out))
}

/// Split a CGI response into status, headers and body.
pub fn parse_cgi_response(out: &[u8]) -> CgiResponse {
    let (head, body) = match find(out, b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => match find(out, b"\n\n") {
            Some(i) => (&out[..i], &out[i + 2..]),
            None => (out, &[][..]),
        },
    };
    let mut status = 200;
    let mut headers = Vec::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("Status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push((k.to_string(), v.to_string()));
        }
    }
    CgiResponse {
        status,
        headers,
        body: body.to_vec(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Commit the files of `dir` onto `branch` of a bare repository without a work tree of its own
/// (a temporary index); used to seed a hosted repository. Returns the new commit.
pub fn commit_dir(
    repo: &Path,
    dir: &Path,
    branch: &str,
    message: &str,
) -> Result<String, GitError> {
    let index = std::env::temp_dir().join(format!(
        "scaleset-index-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let git = |args: &[&str]| -> Result<Vec<u8>, GitError> {
        let out = git_cmd(repo)
            .arg("--work-tree")
            .arg(dir)
            .current_dir(dir)
            .env("GIT_INDEX_FILE", &index)
            .env("GIT_AUTHOR_NAME", "scaleset")
            .env("GIT_AUTHOR_EMAIL", "scaleset@localhost")
            .env("GIT_COMMITTER_NAME", "scaleset")
            .env("GIT_COMMITTER_EMAIL", "scaleset@localhost")
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(GitError::Git(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    };
    let full = crate::trigger::full_ref(branch);
    let result = (|| {
        git(&["add", "-A", "."])?;
        let tree = String::from_utf8_lossy(&git(&["write-tree"])?)
            .trim()
            .to_string();
        let parent = resolve(repo, &full)?;
        let mut args = vec!["commit-tree", tree.as_str(), "-m", message];
        if let Some(p) = &parent {
            args.push("-p");
            args.push(p);
        }
        let commit = String::from_utf8_lossy(&git(&args)?).trim().to_string();
        let mut upd = vec!["update-ref", full.as_str(), commit.as_str()];
        if let Some(p) = &parent {
            upd.push(p);
        }
        git(&upd)?;
        Ok(commit)
    })();
    let _ = std::fs::remove_file(&index);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn read_file_at_reads_only_regular_files_within_the_cap() {
        let dir = std::env::temp_dir().join(format!("scaleset-readat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        sh(&dir, &["init", "-q"]);
        std::fs::write(dir.join("ok.yml"), "steps: []\n").unwrap();
        std::fs::write(dir.join("sub/x.yml"), "a: 1\n").unwrap();
        std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").unwrap();
        sh(&dir, &["update-index", "--add", "--chmod=+x", "run.sh"]);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link.yml")).unwrap();
        std::fs::write(dir.join("big.yml"), vec![b'#'; MAX_READ_BYTES + 1]).unwrap();
        std::fs::write(dir.join("max.yml"), vec![b'#'; MAX_READ_BYTES]).unwrap();
        sh(&dir, &["add", "."]);
        let blob = sh(&dir, &["hash-object", "-w", "ok.yml"]);
        let gitlink = format!("160000,{blob},mod.yml");
        sh(&dir, &["update-index", "--add", "--cacheinfo", &gitlink]);
        sh(&dir, &["commit", "-qm", "x"]);
        let commit = sh(&dir, &["rev-parse", "HEAD"]);
        let repo = dir.join(".git");
        let read = |p: &str| read_file_at(&repo, &commit, p);
        assert_eq!(read("ok.yml").unwrap().unwrap(), b"steps: []\n");
        assert_eq!(read("/sub/x.yml").unwrap().unwrap(), b"a: 1\n");
        assert_eq!(read("./run.sh").unwrap().unwrap(), b"#!/bin/sh\n");
        assert_eq!(read("max.yml").unwrap().unwrap().len(), MAX_READ_BYTES);
        assert_eq!(read("nope.yml").unwrap(), None);
        assert_eq!(
            read("*.yml").unwrap(),
            None,
            "paths are literal, not patterns"
        );
        assert_eq!(read("sub/x.yml/").unwrap(), None);
        assert_eq!(read_file_at(&repo, "--all", "ok.yml").unwrap(), None);
        let short = &commit[..12];
        let unusable = |p: &str| read(p).unwrap_err().to_string();
        assert_eq!(
            unusable("link.yml"),
            format!("link.yml at commit {short} is a symbolic link (mode 120000); a pipeline file must be a regular file")
        );
        assert_eq!(
            unusable("mod.yml"),
            format!("mod.yml at commit {short} is a submodule (mode 160000); a pipeline file must be a regular file")
        );
        assert_eq!(
            unusable("sub"),
            format!("sub at commit {short} is a directory (mode 040000); a pipeline file must be a regular file")
        );
        assert_eq!(
            unusable("big.yml"),
            format!("big.yml at commit {short} is 2 MiB (2097153 bytes); the limit is 2 MiB")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
