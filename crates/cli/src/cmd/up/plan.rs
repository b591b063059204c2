//! What `scaleset up` must do, decided from what it observed (pure, table-tested): each
//! resource `up` owns is observed, compared with what `up` wants, and the missing or drifted
//! ones become steps. Every step is idempotent, so `up` converges from any state: whatever was
//! deleted or left half-created is made again, and what is already right is left alone.

/// A resource that `up` wants in one shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Missing,
    /// There, but not as `up` wants it (e.g. the load balancer's frontend moved).
    Differs,
    Matches,
}

/// The image a scale set's model points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelImage {
    /// The plain base OS `up` creates scale sets on: never released yet.
    Base,
    /// An image built by the pipelines of `repo` (None: not a pipeline's build).
    Built { repo: Option<String> },
    /// The model names an image the store no longer has.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetSeen {
    pub image: ModelImage,
    pub capacity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSeen {
    /// Its `main` branch exists (a new or recreated repository has none).
    pub has_main: bool,
    /// The pipelines its default branch defines.
    pub pipelines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub group: bool,
    pub lb: Presence,
    pub base_image: bool,
    pub vmss: Option<ScaleSetSeen>,
    pub repo: Option<RepoSeen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub repo: String,
    /// The pipelines the folder defines (`pipelines_of`).
    pub pipelines: Vec<String>,
    pub capacity: u32,
}

/// Why the app must be built and released even if the push moves nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseWhy {
    /// The scale set is new (empty, on the base OS).
    NewScaleSet,
    /// An earlier `up` stopped before the first release.
    OnBase,
    /// The scale set serves another folder's app.
    OtherRepo(String),
    /// The model's image was deleted.
    ImageMissing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    PutGroup,
    PutLb,
    BakeBase,
    CreateScaleSet,
    CreateRepo,
    /// Push the folder through up's clone. `restore`: push it even if the folder is unchanged
    /// since the last `up` (the repository is new, empty, or lost the folder's pipelines), so
    /// the clone's memory of its last push never hides a repository that no longer has it.
    Push {
        restore: bool,
    },
    /// Build and release through the pipelines (the push's run if it queued one, else a
    /// manual run of the CI pipeline).
    Release(Option<ReleaseWhy>),
    Scale(u32),
    WaitHealthy,
}

/// The steps, in order, that bring `seen` to `want`.
pub fn plan(want: &Desired, seen: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    if !seen.group {
        steps.push(Step::PutGroup);
    }
    if seen.lb != Presence::Matches {
        steps.push(Step::PutLb);
    }
    if seen.vmss.is_none() {
        if !seen.base_image {
            steps.push(Step::BakeBase);
        }
        steps.push(Step::CreateScaleSet);
    }
    if seen.repo.is_none() {
        steps.push(Step::CreateRepo);
    }
    steps.push(Step::Push {
        restore: needs_restore(want, seen.repo.as_ref()),
    });
    steps.push(Step::Release(release_why(want, seen.vmss.as_ref())));
    let capacity = seen.vmss.as_ref().map_or(0, |v| v.capacity);
    if capacity != want.capacity {
        steps.push(Step::Scale(want.capacity));
    }
    steps.push(Step::WaitHealthy);
    steps
}

fn needs_restore(want: &Desired, repo: Option<&RepoSeen>) -> bool {
    match repo {
        None => true,
        Some(r) => !r.has_main || want.pipelines.iter().any(|p| !r.pipelines.contains(p)),
    }
}

fn release_why(want: &Desired, vmss: Option<&ScaleSetSeen>) -> Option<ReleaseWhy> {
    let Some(v) = vmss else {
        return Some(ReleaseWhy::NewScaleSet);
    };
    match &v.image {
        ModelImage::Base => Some(ReleaseWhy::OnBase),
        ModelImage::Missing => Some(ReleaseWhy::ImageMissing),
        ModelImage::Built { repo: Some(r) } if *r != want.repo => {
            Some(ReleaseWhy::OtherRepo(r.clone()))
        }
        ModelImage::Built { repo: None } => Some(ReleaseWhy::OtherRepo("?".into())),
        ModelImage::Built { .. } => None,
    }
}

/// How the release step gets its CI run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiRun {
    /// The push queued one: follow it (a pushed change always deploys).
    FollowPush,
    /// Nothing was pushed but a release is needed: queue a manual run.
    Manual,
    None,
}

pub fn ci_run(pushed: bool, why: Option<&ReleaseWhy>) -> CiRun {
    match (pushed, why) {
        (true, _) => CiRun::FollowPush,
        (false, Some(_)) => CiRun::Manual,
        (false, None) => CiRun::None,
    }
}

/// The pipelines a folder defines, by the CI service's naming rule (`ci` crate docs):
/// `azure-pipelines.yml` is `<repo>`; another top-level `*.yml` whose name contains `pipeline`
/// is `<repo>-<stem>`; so is each `*.yml` directly under `pipelines/` (`nested`).
pub fn pipelines_of(repo: &str, top: &[&str], nested: &[&str]) -> Vec<String> {
    let stem = |f: &str| {
        f.strip_suffix(".yml")
            .or_else(|| f.strip_suffix(".yaml"))
            .map(str::to_string)
    };
    let mut v: Vec<String> = Vec::new();
    for f in top {
        match stem(f) {
            Some(s) if s == "azure-pipelines" => v.push(repo.to_string()),
            Some(s) if s.contains("pipeline") => v.push(format!("{repo}-{s}")),
            _ => {}
        }
    }
    v.extend(
        nested
            .iter()
            .filter_map(|f| stem(f))
            .map(|s| format!("{repo}-{s}")),
    );
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModelImage::*;
    use Step::*;

    fn want() -> Desired {
        Desired {
            repo: "my_app".into(),
            pipelines: vec!["my_app".into(), "my_app-release-pipeline".into()],
            capacity: 3,
        }
    }

    fn repo_ok() -> Option<RepoSeen> {
        Some(RepoSeen {
            has_main: true,
            pipelines: want().pipelines,
        })
    }

    /// Everything `up` made, as it left it.
    fn serving() -> Observed {
        Observed {
            group: true,
            lb: Presence::Matches,
            base_image: true,
            vmss: Some(ScaleSetSeen {
                image: Built {
                    repo: Some("my_app".into()),
                },
                capacity: 3,
            }),
            repo: repo_ok(),
        }
    }

    #[test]
    fn plans_from_each_state() {
        let fresh = Observed {
            group: false,
            lb: Presence::Missing,
            base_image: false,
            vmss: None,
            repo: None,
        };
        let with = |f: &dyn Fn(&mut Observed)| {
            let mut o = serving();
            f(&mut o);
            o
        };
        let push = Push { restore: false };
        let restore = Push { restore: true };
        let cases: Vec<(&str, Observed, Vec<Step>)> = vec![
            (
                "already serving",
                serving(),
                vec![push.clone(), Release(None), WaitHealthy],
            ),
            (
                "a fresh machine",
                fresh,
                vec![
                    PutGroup,
                    PutLb,
                    BakeBase,
                    CreateScaleSet,
                    CreateRepo,
                    restore.clone(),
                    Release(Some(ReleaseWhy::NewScaleSet)),
                    Scale(3),
                    WaitHealthy,
                ],
            ),
            (
                "repo deleted: recreated and the folder pushed again",
                with(&|o| o.repo = None),
                vec![CreateRepo, restore.clone(), Release(None), WaitHealthy],
            ),
            (
                "repo emptied (recreated by hand)",
                with(&|o| {
                    o.repo = Some(RepoSeen {
                        has_main: false,
                        pipelines: vec![],
                    })
                }),
                vec![restore.clone(), Release(None), WaitHealthy],
            ),
            (
                "release pipeline removed from the repo",
                with(&|o| {
                    o.repo = Some(RepoSeen {
                        has_main: true,
                        pipelines: vec!["my_app".into()],
                    })
                }),
                vec![restore.clone(), Release(None), WaitHealthy],
            ),
            (
                "scale set deleted (base image kept)",
                with(&|o| o.vmss = None),
                vec![
                    CreateScaleSet,
                    push.clone(),
                    Release(Some(ReleaseWhy::NewScaleSet)),
                    Scale(3),
                    WaitHealthy,
                ],
            ),
            (
                "scale set and base image deleted",
                with(&|o| {
                    o.vmss = None;
                    o.base_image = false
                }),
                vec![
                    BakeBase,
                    CreateScaleSet,
                    push.clone(),
                    Release(Some(ReleaseWhy::NewScaleSet)),
                    Scale(3),
                    WaitHealthy,
                ],
            ),
            (
                "base image deleted while the scale set runs the app: not needed",
                with(&|o| o.base_image = false),
                vec![push.clone(), Release(None), WaitHealthy],
            ),
            (
                "load balancer deleted",
                with(&|o| o.lb = Presence::Missing),
                vec![PutLb, push.clone(), Release(None), WaitHealthy],
            ),
            (
                "load balancer on another frontend",
                with(&|o| o.lb = Presence::Differs),
                vec![PutLb, push.clone(), Release(None), WaitHealthy],
            ),
            (
                "group deleted (with everything in it)",
                with(&|o| {
                    o.group = false;
                    o.lb = Presence::Missing;
                    o.vmss = None
                }),
                vec![
                    PutGroup,
                    PutLb,
                    CreateScaleSet,
                    push.clone(),
                    Release(Some(ReleaseWhy::NewScaleSet)),
                    Scale(3),
                    WaitHealthy,
                ],
            ),
            (
                "stopped half-way before the first release",
                with(&|o| {
                    o.vmss = Some(ScaleSetSeen {
                        image: Base,
                        capacity: 0,
                    })
                }),
                vec![
                    push.clone(),
                    Release(Some(ReleaseWhy::OnBase)),
                    Scale(3),
                    WaitHealthy,
                ],
            ),
            (
                "model image deleted",
                with(&|o| o.vmss.as_mut().unwrap().image = Missing),
                vec![
                    push.clone(),
                    Release(Some(ReleaseWhy::ImageMissing)),
                    WaitHealthy,
                ],
            ),
            (
                "serving the other example",
                with(&|o| {
                    o.vmss.as_mut().unwrap().image = Built {
                        repo: Some("flask_uwsgi".into()),
                    }
                }),
                vec![
                    push.clone(),
                    Release(Some(ReleaseWhy::OtherRepo("flask_uwsgi".into()))),
                    WaitHealthy,
                ],
            ),
            (
                "scaled by hand",
                with(&|o| o.vmss.as_mut().unwrap().capacity = 1),
                vec![push.clone(), Release(None), Scale(3), WaitHealthy],
            ),
        ];
        for (what, seen, steps) in cases {
            assert_eq!(plan(&want(), &seen), steps, "{what}");
        }
    }

    #[test]
    fn ci_run_table() {
        let why = ReleaseWhy::OnBase;
        assert_eq!(ci_run(true, None), CiRun::FollowPush);
        assert_eq!(ci_run(true, Some(&why)), CiRun::FollowPush);
        assert_eq!(ci_run(false, Some(&why)), CiRun::Manual);
        assert_eq!(ci_run(false, None), CiRun::None);
    }

    #[test]
    fn pipelines_by_the_naming_rule() {
        assert_eq!(
            pipelines_of(
                "my_app",
                &[
                    "azure-pipelines.yml",
                    "release-pipeline.yml",
                    "config.yml",
                    "README.md"
                ],
                &["nightly.yaml", "notes.txt"]
            ),
            vec!["my_app", "my_app-nightly", "my_app-release-pipeline"]
        );
        assert!(pipelines_of("a", &[], &[]).is_empty());
    }
}
