//! Run plan and run state.

/// Azure's result names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum RunResult {
    Succeeded,
    SucceededWithIssues,
    Failed,
    Canceled,
    Skipped,
}

impl RunResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunResult::Succeeded => "Succeeded",
            RunResult::SucceededWithIssues => "SucceededWithIssues",
            RunResult::Failed => "Failed",
            RunResult::Canceled => "Canceled",
            RunResult::Skipped => "Skipped",
        }
    }
}

use crate::expr::{self, Context, Value};
use crate::model::Pipeline;
use crate::vars::Variables;
use std::collections::BTreeMap;
use std::fmt;

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RunResult {
    /// Parse Azure's name (case-insensitive).
    pub fn parse(s: &str) -> Option<RunResult> {
        [
            RunResult::Succeeded,
            RunResult::SucceededWithIssues,
            RunResult::Failed,
            RunResult::Canceled,
            RunResult::Skipped,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }

    /// Combine results of parts into the result of the whole: Failed > Canceled >
    /// SucceededWithIssues > Succeeded; only Skipped parts (or none) → Skipped.
    pub fn aggregate(results: impl IntoIterator<Item = RunResult>) -> RunResult {
        let mut out = RunResult::Skipped;
        for r in results {
            let rank = |r: RunResult| match r {
                RunResult::Skipped => 0,
                RunResult::Succeeded => 1,
                RunResult::SucceededWithIssues => 2,
                RunResult::Canceled => 3,
                RunResult::Failed => 4,
            };
            if rank(r) > rank(out) {
                out = r;
            }
        }
        out
    }
}

/// Where a stage, job or step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Completed(RunResult),
}

impl Status {
    pub fn result(&self) -> Option<RunResult> {
        match self {
            Status::Completed(r) => Some(*r),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Queued => "Queued",
            Status::Running => "Running",
            Status::Completed(r) => r.as_str(),
        }
    }
}

/// A job, by stage and job name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobRef {
    pub stage: String,
    pub job: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub name: String,
    pub depends_on: Vec<String>,
    pub condition: Option<String>,
    pub continue_on_error: bool,
    pub status: Status,
    /// Output variables, keyed `stepName.varName`.
    pub outputs: BTreeMap<String, String>,
    /// Why it failed or was skipped, when the engine decided it (e.g. a condition error).
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageState {
    pub name: String,
    pub depends_on: Vec<String>,
    pub condition: Option<String>,
    pub status: Status,
    pub jobs: Vec<JobState>,
    pub message: Option<String>,
}

/// What [`RunState::advance`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advance {
    /// Jobs to start now (they are marked Running).
    pub start: Vec<JobRef>,
    /// Jobs not run because their (or their stage's) condition was false.
    pub skipped: Vec<JobRef>,
    /// Stages whose condition was false.
    pub skipped_stages: Vec<String>,
    /// Conditions that could not be evaluated: (stage, job or None, message); they fail.
    pub errors: Vec<(String, Option<String>, String)>,
}

/// The state of a run: every stage and job, in dependency order.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub stages: Vec<StageState>,
    pub canceled: bool,
}

/// Order items (name, dependencies) so that each comes after its dependencies; file order
/// among independent items. `Err` names the items in a cycle or a missing dependency.
pub fn dependency_order(items: &[(String, Vec<String>)]) -> Result<Vec<usize>, String> {
    let idx = |d: &str| items.iter().position(|(n, _)| n.eq_ignore_ascii_case(d));
    for (n, deps) in items {
        if let Some(d) = deps.iter().find(|d| idx(d).is_none()) {
            return Err(format!("`{n}` depends on `{d}` which does not exist"));
        }
    }
    let mut done = vec![false; items.len()];
    let mut out = Vec::new();
    while let Some(i) = (0..items.len())
        .find(|&i| !done[i] && items[i].1.iter().all(|d| idx(d).is_some_and(|j| done[j])))
    {
        done[i] = true;
        out.push(i);
    }
    if out.len() < items.len() {
        let cycle: Vec<&str> = (0..items.len())
            .filter(|&i| !done[i])
            .map(|i| items[i].0.as_str())
            .collect();
        return Err(format!("dependency cycle among: {}", cycle.join(", ")));
    }
    Ok(out)
}

/// Stages (and within each, jobs) in an order that respects `dependsOn`.
pub fn execution_order(p: &Pipeline) -> Result<Vec<(String, Vec<String>)>, String> {
    let stages: Vec<_> = p
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.depends_on.clone()))
        .collect();
    let mut out = Vec::new();
    for si in dependency_order(&stages)? {
        let s = &p.stages[si];
        let jobs: Vec<_> = s
            .jobs
            .iter()
            .map(|j| (j.name.clone(), j.depends_on.clone()))
            .collect();
        let order = dependency_order(&jobs).map_err(|e| format!("stage `{}`: {e}", s.name))?;
        out.push((
            s.name.clone(),
            order.into_iter().map(|j| s.jobs[j].name.clone()).collect(),
        ));
    }
    Ok(out)
}

struct CondCtx<'a> {
    vars: &'a Variables,
    canceled: bool,
    /// name → (result, outputs) of the dependencies.
    deps: Vec<(&'a str, RunResult, BTreeMap<String, String>)>,
    /// All stages (for stageDependencies).
    stages: &'a [StageState],
}

impl Context for CondCtx<'_> {
    fn lookup(&self, root: &str, path: &[String]) -> Value {
        let lc = |s: &String| s.to_ascii_lowercase();
        match root {
            "variables" => match path {
                [name] => self
                    .vars
                    .get(name)
                    .map(|v| Value::Str(v.to_string()))
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            },
            "dependencies" => {
                let Some((name, rest)) = path.split_first() else {
                    return Value::Null;
                };
                let Some((_, result, outputs)) = self
                    .deps
                    .iter()
                    .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
                else {
                    return Value::Null;
                };
                match rest {
                    [r] if lc(r) == "result" => Value::Str(result.as_str().into()),
                    [o, key] if lc(o) == "outputs" => outputs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| Value::Str(v.clone()))
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                }
            }
            "stageDependencies" => {
                let [stage, job, rest @ ..] = path else {
                    return Value::Null;
                };
                let Some(s) = self
                    .stages
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(stage))
                else {
                    return Value::Null;
                };
                let Some(j) = s.jobs.iter().find(|j| j.name.eq_ignore_ascii_case(job)) else {
                    return Value::Null;
                };
                match rest {
                    [r] if lc(r) == "result" => j
                        .status
                        .result()
                        .map(|r| Value::Str(r.as_str().into()))
                        .unwrap_or(Value::Null),
                    [o, key] if lc(o) == "outputs" => j
                        .outputs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| Value::Str(v.clone()))
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                }
            }
            _ => Value::Null,
        }
    }
    fn canceled(&self) -> bool {
        self.canceled
    }
    fn results(&self, names: Option<&[String]>) -> Result<Vec<RunResult>, String> {
        match names {
            None => Ok(self.deps.iter().map(|d| d.1).collect()),
            Some(ns) => ns
                .iter()
                .map(|n| {
                    self.deps
                        .iter()
                        .find(|d| d.0.eq_ignore_ascii_case(n))
                        .map(|d| d.1)
                        .ok_or_else(|| n.clone())
                })
                .collect(),
        }
    }
}

const DEFAULT_CONDITION: &str = "succeeded()";

impl RunState {
    /// Everything queued.
    pub fn new(p: &Pipeline) -> RunState {
        RunState {
            canceled: false,
            stages: p
                .stages
                .iter()
                .map(|s| StageState {
                    name: s.name.clone(),
                    depends_on: s.depends_on.clone(),
                    condition: s.condition.clone(),
                    status: Status::Queued,
                    message: None,
                    jobs: s
                        .jobs
                        .iter()
                        .map(|j| JobState {
                            name: j.name.clone(),
                            depends_on: j.depends_on.clone(),
                            condition: j.condition.clone(),
                            continue_on_error: j.continue_on_error,
                            status: Status::Queued,
                            outputs: BTreeMap::new(),
                            message: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn stage(&self, name: &str) -> Option<&StageState> {
        self.stages
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    pub fn job(&self, r: &JobRef) -> Option<&JobState> {
        self.stage(&r.stage)?
            .jobs
            .iter()
            .find(|j| j.name.eq_ignore_ascii_case(&r.job))
    }

    fn job_mut(&mut self, r: &JobRef) -> Option<&mut JobState> {
        self.stages
            .iter_mut()
            .find(|s| s.name.eq_ignore_ascii_case(&r.stage))?
            .jobs
            .iter_mut()
            .find(|j| j.name.eq_ignore_ascii_case(&r.job))
    }

    /// Cancel the run: queued work whose condition is false (all but `always()`/`canceled()`)
    /// becomes Canceled at the next [`advance`](Self::advance); running jobs must be stopped by
    /// the executor and reported with [`complete_job`](Self::complete_job).
    pub fn cancel(&mut self) {
        self.canceled = true;
    }

    /// Record a finished job. With the job's `continueOnError`, Failed becomes
    /// SucceededWithIssues. `outputs` are its output variables (`step.var` → value).
    pub fn complete_job(
        &mut self,
        r: &JobRef,
        result: RunResult,
        outputs: BTreeMap<String, String>,
    ) {
        if let Some(j) = self.job_mut(r) {
            let result = if result == RunResult::Failed && j.continue_on_error {
                RunResult::SucceededWithIssues
            } else {
                result
            };
            j.status = Status::Completed(result);
            j.outputs = outputs;
        }
    }

    /// Decide what can happen next, given the results so far: start jobs whose dependencies
    /// are done and whose condition holds, skip those whose condition is false, and complete
    /// stages whose jobs are all done. `variables` are the run's variables (stage and job
    /// variables of the pipeline are added for their own conditions). Call again after every
    /// [`complete_job`](Self::complete_job).
    pub fn advance(&mut self, p: &Pipeline, variables: &Variables) -> Advance {
        let mut adv = Advance::default();
        let stage_order = execution_order(p).unwrap_or_default();
        loop {
            let mut changed = false;
            for (sname, _) in &stage_order {
                let Some(si) = self.stages.iter().position(|s| &s.name == sname) else {
                    continue;
                };
                let Some(stage_def) = p.stage(sname) else {
                    continue;
                };
                let mut vars = variables.clone();
                vars.extend(&stage_def.variables);
                if self.stages[si].status == Status::Queued {
                    if !self.gate_stage(p, si, &vars, &mut adv) {
                        continue;
                    }
                    changed = true;
                }
                if self.stages[si].status != Status::Running {
                    continue;
                }
                changed |= self.start_jobs(si, stage_def, &vars, &mut adv);
                let st = &mut self.stages[si];
                if st.jobs.iter().all(|j| j.status.result().is_some()) {
                    let r = RunResult::aggregate(st.jobs.iter().filter_map(|j| j.status.result()));
                    st.status = Status::Completed(r);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        adv
    }

    /// A queued stage whose dependencies are done: evaluates its condition and starts it,
    /// skips it (and its jobs) or fails it. False while a dependency is still going.
    fn gate_stage(&mut self, p: &Pipeline, si: usize, vars: &Variables, adv: &mut Advance) -> bool {
        let deps: Option<Vec<_>> = self.stages[si]
            .depends_on
            .iter()
            .map(|d| {
                let s = self.stage(d)?;
                let r = s.status.result()?;
                let mut outs = BTreeMap::new();
                for j in &s.jobs {
                    for (k, v) in &j.outputs {
                        outs.insert(format!("{}.{k}", j.name), v.clone());
                    }
                }
                Some((p.stage(d).map(|x| x.name.as_str()).unwrap_or(""), r, outs))
            })
            .collect();
        let Some(deps) = deps else {
            return false;
        };
        let cond = self.stages[si]
            .condition
            .clone()
            .unwrap_or_else(|| DEFAULT_CONDITION.into());
        let ctx = CondCtx {
            vars,
            canceled: self.canceled,
            deps,
            stages: &self.stages,
        };
        let outcome = expr::eval_condition(&cond, &ctx);
        let st = &mut self.stages[si];
        match outcome {
            Ok(true) => st.status = Status::Running,
            Ok(false) => {
                let r = if self.canceled {
                    RunResult::Canceled
                } else {
                    RunResult::Skipped
                };
                st.status = Status::Completed(r);
                st.message = Some(format!("condition `{cond}` was false"));
                adv.skipped_stages.push(st.name.clone());
                for j in &mut st.jobs {
                    j.status = Status::Completed(r);
                    adv.skipped.push(JobRef {
                        stage: st.name.clone(),
                        job: j.name.clone(),
                    });
                }
            }
            Err(e) => {
                let msg = format!("stage condition `{cond}` could not be evaluated: {e}");
                st.status = Status::Completed(RunResult::Failed);
                st.message = Some(msg.clone());
                for j in &mut st.jobs {
                    j.status = Status::Completed(RunResult::Skipped);
                }
                adv.errors.push((st.name.clone(), None, msg));
            }
        }
        true
    }

    /// Starts, skips or fails the queued jobs of running stage `si` whose dependencies are
    /// done, in dependency order. True if any job changed.
    fn start_jobs(
        &mut self,
        si: usize,
        stage_def: &crate::model::Stage,
        vars: &Variables,
        adv: &mut Advance,
    ) -> bool {
        let mut changed = false;
        let job_order = dependency_order(
            &self.stages[si]
                .jobs
                .iter()
                .map(|j| (j.name.clone(), j.depends_on.clone()))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        for ji in job_order {
            let st = &self.stages[si];
            let job = &st.jobs[ji];
            if job.status != Status::Queued {
                continue;
            }
            let deps: Option<Vec<_>> = job
                .depends_on
                .iter()
                .map(|d| {
                    let j = st.jobs.iter().find(|j| j.name.eq_ignore_ascii_case(d))?;
                    Some((j.name.as_str(), j.status.result()?, j.outputs.clone()))
                })
                .collect();
            let Some(deps) = deps else { continue };
            let mut jvars = vars.clone();
            if let Some(jd) = stage_def.job(&job.name) {
                jvars.extend(&jd.variables);
            }
            let cond = job
                .condition
                .clone()
                .unwrap_or_else(|| DEFAULT_CONDITION.into());
            let ctx = CondCtx {
                vars: &jvars,
                canceled: self.canceled,
                deps,
                stages: &self.stages,
            };
            let outcome = expr::eval_condition(&cond, &ctx);
            let r = JobRef {
                stage: st.name.clone(),
                job: job.name.clone(),
            };
            let canceled = self.canceled;
            let j = &mut self.stages[si].jobs[ji];
            changed = true;
            match outcome {
                Ok(true) => {
                    j.status = Status::Running;
                    adv.start.push(r);
                }
                Ok(false) => {
                    j.status = Status::Completed(if canceled {
                        RunResult::Canceled
                    } else {
                        RunResult::Skipped
                    });
                    j.message = Some(format!("condition `{cond}` was false"));
                    adv.skipped.push(r);
                }
                Err(e) => {
                    let msg = format!("job condition `{cond}` could not be evaluated: {e}");
                    j.status = Status::Completed(RunResult::Failed);
                    j.message = Some(msg.clone());
                    adv.errors.push((r.stage, Some(r.job), msg));
                }
            }
        }
        changed
    }

    /// Jobs currently running.
    pub fn running(&self) -> Vec<JobRef> {
        self.stages
            .iter()
            .flat_map(|s| {
                s.jobs
                    .iter()
                    .filter(|j| j.status == Status::Running)
                    .map(|j| JobRef {
                        stage: s.name.clone(),
                        job: j.name.clone(),
                    })
            })
            .collect()
    }

    /// The run's result once every stage is complete; `None` while work remains.
    pub fn result(&self) -> Option<RunResult> {
        let rs: Option<Vec<RunResult>> = self.stages.iter().map(|s| s.status.result()).collect();
        let r = RunResult::aggregate(rs?);
        Some(if self.canceled && r != RunResult::Failed {
            RunResult::Canceled
        } else if r == RunResult::Skipped {
            RunResult::Succeeded
        } else {
            r
        })
    }
}
