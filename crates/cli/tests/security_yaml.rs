//! Adversarial pipeline files pushed to a hosted repository of the real daemon: a 10 MB file,
//! 500,000 and 250,000 keys, 100,000 levels of nesting, exponential variable references and a
//! pipeline file that is a symbolic link to the daemon's token. Each push is accepted with a
//! clear note, each run fails with a clear message in its record and log, the token never
//! appears anywhere, and the daemon answers right after every attempt. No machines boot.
mod common;

use common::{daemon_harness, git, wait_run};
use serde_json::Value;

/// One attack: what the file is, and what the push note and the run must say.
struct Attempt {
    name: &'static str,
    /// The file's content, or `None` for a symbolic link to the daemon's token.
    yaml: Option<String>,
    /// Text of the push's note and of the run's failure (with `COMMIT` for the short commit).
    error: String,
    /// Whether the failure is the run's (compile time) or its one job's (run time).
    in_job: bool,
}

fn too_large(n: usize) -> String {
    format!(
        "azure-pipelines.yml at commit COMMIT is {} ({n} bytes); the limit is 2 MiB",
        pipeline::yaml::human_bytes(n)
    )
}

fn attempts() -> Vec<Attempt> {
    let mut v = Vec::new();
    let mut big = String::from("steps:\n");
    let mut i = 0;
    while big.len() < 10 * 1024 * 1024 {
        big.push_str(&format!("- script: echo {i}\n"));
        i += 1;
    }
    v.push(Attempt {
        name: "10 MB",
        error: too_large(big.len()),
        yaml: Some(big),
        in_job: false,
    });
    let mut keys = String::from("variables:\n");
    for i in 0..500_000 {
        keys.push_str(&format!("  k{i}: v\n"));
    }
    keys.push_str("steps:\n- script: echo\n");
    v.push(Attempt {
        name: "500,000 keys",
        error: too_large(keys.len()),
        yaml: Some(keys),
        in_job: false,
    });
    // 250,000 short keys fit in 2 MiB; the node cap stops them.
    let flow: Vec<String> = (0..250_000).map(|i| format!("k{i:x}")).collect();
    let flow = format!(
        "variables: {{{}}}\nsteps:\n- script: echo\n",
        flow.join(",")
    );
    // Node 200,001 is the (empty) value of key 99,998, at the comma after it.
    let key = format!(",k{:x},", 99_998);
    let col = flow.find(&key).unwrap() + key.len();
    v.push(Attempt {
        name: "250,000 keys",
        yaml: Some(flow),
        error: format!("azure-pipelines.yml:1:{col}: the pipeline has more than 200000 YAML nodes (keys, values and list items together); that is the limit"),
        in_job: false,
    });
    v.push(Attempt {
        name: "100,000 nested lists",
        yaml: Some(format!("steps:\n{}x\n", "- ".repeat(100_000))),
        error: "azure-pipelines.yml:2:199: mappings and lists are nested more than 100 levels deep; that is the limit".into(),
        in_job: false,
    });
    v.push(Attempt {
        name: "100,000 `[`",
        yaml: Some(format!("steps: {}\n", "[".repeat(100_000))),
        error: "azure-pipelines.yml:1:263: mappings and lists are nested more than 100 levels deep; that is the limit".into(),
        in_job: false,
    });
    let laughs = |indent: &str| {
        let mut s = format!("{indent}v0: xxxxxxxxxx\n");
        for i in 1..=30 {
            let refs = format!("$(v{})", i - 1).repeat(10);
            s.push_str(&format!("{indent}v{i}: '{refs}'\n"));
        }
        s
    };
    let macro_msg = "variable `v10`: expanding its `$(...)` references makes it longer than 1 MiB, the limit for one value (do variables refer to each other many times over?)";
    v.push(Attempt {
        name: "$(var) laughs in pipeline variables",
        yaml: Some(format!(
            "variables:\n{}steps:\n- script: echo $(v30)\n",
            laughs("  ")
        )),
        error: format!("azure-pipelines.yml:12:3: {macro_msg}"),
        in_job: false,
    });
    v.push(Attempt {
        name: "$(var) laughs in job variables",
        yaml: Some(format!(
            "jobs:\n- job: bomb\n  variables:\n{}  steps:\n  - script: echo $(v30)\n",
            laughs("    ")
        )),
        error: format!("job bomb: {macro_msg}"),
        in_job: true,
    });
    let mut doubling = String::from("variables:\n  v0: xxxxxxxxxxxxxxxx\n");
    for i in 1..=34 {
        let p = i - 1;
        doubling.push_str(&format!(
            "  v{i}: ${{{{ variables.v{p} }}}}${{{{ variables.v{p} }}}}\n"
        ));
    }
    doubling.push_str("steps:\n- script: echo\n");
    v.push(Attempt {
        name: "${{ }} doubling",
        yaml: Some(doubling),
        error: "azure-pipelines.yml:19:8: `${{ variables.v16 }}` makes this value longer than 1 MiB, the limit for one value".into(),
        in_job: false,
    });
    v.push(Attempt {
        name: "symlink to the token",
        yaml: None,
        error: "azure-pipelines.yml at commit COMMIT is a symbolic link (mode 120000); a pipeline file must be a regular file".into(),
        in_job: false,
    });
    v
}

fn queued_run(push_output: &str) -> Option<u64> {
    let rest = &push_output[push_output.find("queued run ")? + "queued run ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn adversarial_pipeline_files_fail_clearly_and_the_daemon_keeps_answering() {
    if !testkit::require(testkit::missing_root()) {
        return;
    }
    let mut h = daemon_harness("scaleset-security-yaml", "10.213.230.0/24", "syl");
    let home = h.home.clone();
    h.start_serve();
    let token_path = home.join("token");
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.len() >= 16, "token: {token:?}");
    h.ok(&["repo", "create", "adv"]);
    let work = home.join("work-adv");
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q"]).0);
    let url = format!("http://x:{token}@{}/scaleset/git/adv.git", h.api);
    let file = work.join("azure-pipelines.yml");

    let mut ids = Vec::new();
    for a in attempts() {
        let _ = std::fs::remove_file(&file);
        match &a.yaml {
            Some(y) => std::fs::write(&file, y).unwrap(),
            None => std::os::unix::fs::symlink(&token_path, &file).unwrap(),
        }
        assert!(git(&work, &["add", "-A"]).0);
        let (ok, out) = git(&work, &["commit", "-qm", a.name]);
        assert!(ok, "{out}");
        let commit = git(&work, &["rev-parse", "HEAD"]).1.trim().to_string();
        let error = a.error.replace("COMMIT", &commit[..12]);
        let (ok, out) = git(&work, &["push", &url, "main"]);
        assert!(ok, "{}: push refused: {out}", a.name);
        if !a.in_job {
            let note = format!("remote: scaleset: pipeline `adv`: {error} (the run will fail)");
            assert!(
                out.contains(&note),
                "{}: push output lacks\n{note}\n{out}",
                a.name
            );
        }
        let id = queued_run(&out).unwrap_or_else(|| panic!("{}: no run queued: {out}", a.name));
        // The daemon answers while and after it handles the file.
        h.ok(&["group", "list"]);
        let run = wait_run(&h, id);
        assert_eq!(run["state"], "failed", "{}: {run}", a.name);
        let log = h.ok(&["run", "logs", &id.to_string()]);
        if a.in_job {
            let job = &run["stages"][0]["jobs"][0];
            assert_eq!(job["message"], error.as_str(), "{}: {run}", a.name);
            assert_eq!(job["steps"][0]["result"], "Skipped", "{}: {run}", a.name);
        } else {
            // A file that cannot be read is named once in the run's message.
            let msg = match error.strip_prefix("azure-pipelines.yml at commit ") {
                Some(rest) => format!("azure-pipelines.yml: the pipeline file at commit {rest}"),
                None => error.clone(),
            };
            assert_eq!(run["message"], msg.as_str(), "{}: {run}", a.name);
            assert_eq!(run["stages"], Value::Array(vec![]), "{}: {run}", a.name);
            assert!(
                log.contains(&format!("##[error]{msg}")),
                "{}: {log}",
                a.name
            );
        }
        assert!(!log.contains(&token), "{}: the token is in the log", a.name);
        assert!(
            !run.to_string().contains(&token),
            "{}: the token is in the record",
            a.name
        );
        h.ok(&["group", "list"]);
        ids.push(id);
    }
    assert_eq!(ids.len(), 9);

    // Nowhere else either: the daemon's log, the push records, every run's log file.
    let mut files = vec![home.join("serve.log")];
    for dir in [home.join("pipelines"), home.join("pipelines/runs")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_file() {
                files.push(e.path());
            }
        }
    }
    assert!(files.len() > 2, "{files:?}");
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains(&token), "the token is in {}", f.display());
    }
    let list = h.json(&["run", "list", "--pipeline", "adv"]);
    assert_eq!(list.as_array().map(Vec::len), Some(9), "{list}");
}
