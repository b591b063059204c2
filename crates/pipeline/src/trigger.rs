//! Does a push (or a completed run of another pipeline) trigger a pipeline?

use crate::model::{Filter, PipelineResource, Trigger};

/// `*` matches any run of characters (including `/`), `?` one character. Case-sensitive.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// `main` → `refs/heads/main`; `refs/...` unchanged.
pub fn full_ref(name: &str) -> String {
    if name.starts_with("refs/") {
        name.to_string()
    } else {
        format!("refs/heads/{name}")
    }
}

/// Branch or tag pattern against a full ref (patterns without `refs/` mean branches).
fn ref_matches(pattern: &str, full: &str) -> bool {
    wildcard_match(&full_ref(pattern.trim()), full)
}

/// Include/exclude over refs: empty include means everything.
pub fn ref_filter_matches(f: &Filter, git_ref: &str) -> bool {
    let full = full_ref(git_ref);
    let included = f.include.is_empty() || f.include.iter().any(|p| ref_matches(p, &full));
    included && !f.exclude.iter().any(|p| ref_matches(p, &full))
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let pat = pattern.trim().trim_start_matches('/');
    let path = path.trim_start_matches('/');
    if pat.is_empty() || pat == "*" {
        return true;
    }
    if pat.contains(['*', '?']) {
        return wildcard_match(pat, path);
    }
    let pat = pat.trim_end_matches('/');
    path == pat || path.starts_with(&format!("{pat}/"))
}

/// Include/exclude over changed paths: the filter passes if any changed path is included and
/// not excluded. A pattern without wildcards matches that file or everything under that folder.
pub fn path_filter_matches(f: &Filter, changed: &[String]) -> bool {
    changed.iter().any(|p| {
        let inc = f.include.is_empty() || f.include.iter().any(|i| path_matches(i, p));
        inc && !f.exclude.iter().any(|e| path_matches(e, p))
    })
}

/// Whether a push of `git_ref` (branch name, `refs/heads/x` or `refs/tags/x`) with
/// `changed_paths` fires the CI trigger. `changed_paths == None` (unknown, e.g. a new branch)
/// ignores path filters.
pub fn push_triggers(t: &Trigger, git_ref: &str, changed_paths: Option<&[String]>) -> bool {
    if !t.enabled {
        return false;
    }
    let full = full_ref(git_ref);
    let ref_ok = if full.starts_with("refs/tags/") {
        // Tags trigger only when a tag filter (or a `refs/tags/` branch pattern) includes them.
        let tag = full.trim_start_matches("refs/tags/");
        let by_tags = !t.tags.include.is_empty()
            && t.tags
                .include
                .iter()
                .any(|p| wildcard_match(p.trim_start_matches("refs/tags/"), tag))
            && !t
                .tags
                .exclude
                .iter()
                .any(|p| wildcard_match(p.trim_start_matches("refs/tags/"), tag));
        let by_branches = t
            .branches
            .include
            .iter()
            .any(|p| p.starts_with("refs/tags/"))
            && ref_filter_matches(&t.branches, &full);
        by_tags || by_branches
    } else {
        ref_filter_matches(&t.branches, &full)
    };
    if !ref_ok {
        return false;
    }
    match changed_paths {
        Some(paths) if !t.paths.is_empty() => path_filter_matches(&t.paths, paths),
        _ => true,
    }
}

/// Whether a completed run of pipeline `source_pipeline` on `source_ref` fires a pipeline
/// resource trigger. `completed_stages` are the source run's successful stages, `tags` its tags.
pub fn resource_triggers(
    r: &PipelineResource,
    source_pipeline: &str,
    source_ref: &str,
    completed_stages: &[String],
    tags: &[String],
) -> bool {
    let t = &r.trigger;
    t.enabled
        && r.source.eq_ignore_ascii_case(source_pipeline)
        && ref_filter_matches(&t.branches, source_ref)
        && t.stages
            .iter()
            .all(|s| completed_stages.iter().any(|c| c.eq_ignore_ascii_case(s)))
        && t.tags.iter().all(|s| tags.iter().any(|c| c == s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResourceTrigger;

    fn f(include: &[&str], exclude: &[&str]) -> Filter {
        Filter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("main", "main", true),
            ("main", "mainx", false),
            ("releases/*", "releases/1.0", true),
            ("releases/*", "releases/a/b", true),
            ("releases/*", "releases", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-hotfix", "x-hotfix", true),
            ("**", "anything/at/all", true),
            ("Main", "main", false),
        ] {
            assert_eq!(wildcard_match(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn push_trigger_table() {
        let default = Trigger::default();
        let none = Trigger {
            enabled: false,
            ..Trigger::default()
        };
        let main_only = Trigger {
            branches: f(&["main"], &[]),
            ..Trigger::default()
        };
        let rel = Trigger {
            branches: f(&["main", "releases/*"], &["releases/old*"]),
            ..Trigger::default()
        };
        let excl_only = Trigger {
            branches: f(&[], &["wip/*"]),
            ..Trigger::default()
        };
        let full_refs = Trigger {
            branches: f(&["refs/heads/main", "refs/tags/v*"], &[]),
            ..Trigger::default()
        };
        let paths = Trigger {
            branches: f(&["main"], &[]),
            paths: f(
                &["examples/my_app", "docs/*.md"],
                &["examples/my_app/tests"],
            ),
            ..Trigger::default()
        };
        let paths_excl = Trigger {
            paths: f(&[], &["docs"]),
            ..Trigger::default()
        };
        let tags = Trigger {
            tags: f(&["v*"], &["v0*"]),
            ..Trigger::default()
        };
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let app = p(&["examples/my_app/src/main.rs"]);
        let tests = p(&["examples/my_app/tests/a.rs"]);
        let doc = p(&["docs/readme.md"]);
        let other = p(&["README.md"]);
        let cases: Vec<(&Trigger, &str, Option<&[String]>, bool)> = vec![
            (&default, "main", None, true),
            (&default, "refs/heads/feature/x", Some(&other), true),
            (&default, "refs/tags/v1", None, false),
            (&none, "main", None, false),
            (&main_only, "main", None, true),
            (&main_only, "refs/heads/main", None, true),
            (&main_only, "dev", None, false),
            (&main_only, "refs/heads/mainline", None, false),
            (&rel, "releases/2.0", None, true),
            (&rel, "releases/old-1", None, false),
            (&excl_only, "feature", None, true),
            (&excl_only, "wip/x", None, false),
            (&full_refs, "main", None, true),
            (&full_refs, "refs/tags/v1.2", None, true),
            (&full_refs, "refs/tags/x", None, false),
            (&paths, "main", Some(&app), true),
            (&paths, "main", Some(&tests), false),
            (&paths, "main", Some(&doc), true),
            (&paths, "main", Some(&other), false),
            (&paths, "main", None, true),
            (&paths, "dev", Some(&app), false),
            (&paths_excl, "main", Some(&doc), false),
            (&paths_excl, "main", Some(&other), true),
            (&tags, "refs/tags/v1", None, true),
            (&tags, "refs/tags/v0.9", None, false),
            (&tags, "main", None, true),
        ];
        for (i, (t, r, paths, want)) in cases.into_iter().enumerate() {
            assert_eq!(push_triggers(t, r, paths), want, "case {i}: {r} {paths:?}");
        }
        let both = p(&["README.md", "examples/my_app/src/x.rs"]);
        assert!(push_triggers(&paths, "main", Some(&both)));
        assert!(!push_triggers(&paths, "main", Some(&[])));
    }

    #[test]
    fn resource_trigger_table() {
        let mut r = PipelineResource {
            alias: "ci".into(),
            source: "my_app-ci".into(),
            project: None,
            branch: None,
            version: None,
            trigger: ResourceTrigger {
                enabled: true,
                branches: f(&["main"], &[]),
                stages: vec![],
                tags: vec![],
            },
            pos: Default::default(),
        };
        assert!(resource_triggers(
            &r,
            "my_app-ci",
            "refs/heads/main",
            &[],
            &[]
        ));
        assert!(resource_triggers(&r, "MY_APP-CI", "main", &[], &[]));
        assert!(!resource_triggers(&r, "other", "main", &[], &[]));
        assert!(!resource_triggers(&r, "my_app-ci", "dev", &[], &[]));
        r.trigger.stages = vec!["Build".into()];
        assert!(!resource_triggers(&r, "my_app-ci", "main", &[], &[]));
        assert!(resource_triggers(
            &r,
            "my_app-ci",
            "main",
            &["build".into()],
            &[]
        ));
        r.trigger.enabled = false;
        assert!(!resource_triggers(
            &r,
            "my_app-ci",
            "main",
            &["build".into()],
            &[]
        ));
    }
}
