//! Looking inside instances, over `Machines::exec`: the failed units a rolling upgrade watches
//! for, a script run as Azure's RunShellScript does, the journal and the console log. The
//! commands run on blocking threads; their output is bounded by the runtime.
use super::*;
use plan::rolling::FailedUnit;
use runtime::inspect::{self as ri, Exec, ExecOutput, JournalQuery};

/// How long one look for failed units (or one unit's journal) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// An instance is looked at for failed units at most this often (engine clock, ms).
pub const UNIT_CHECK_INTERVAL_MS: u64 = 1000;
/// Journal lines reported with a failed unit (after folding repeats of 5 times as many).
pub const FAILED_UNIT_JOURNAL_LINES: u32 = 10;
/// At most this many failed units per instance get their journal read.
const JOURNALS_PER_INSTANCE: usize = 3;
/// Longest journal line kept in an error (the rest is cut).
const MAX_LINE: usize = 512;

async fn exec(st: &Core, machine: &str, req: Exec<'static>) -> Result<ExecOutput, String> {
    let (machines, name) = (st.machines.clone(), machine.to_string());
    tokio::task::spawn_blocking(move || machines.exec(&name, req))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn cut(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// The units systemd reports `failed` in a running machine whose boot has finished, each with
/// the last lines of its journal (or, when that is empty, what systemd recorded of its end).
/// `None` when the machine cannot say yet (booting, no systemd, a timeout).
pub async fn failed_units(st: &Core, machine: &str) -> Option<Vec<FailedUnit>> {
    let state = exec(
        st,
        machine,
        Exec::new(ri::system_state_argv(), CHECK_TIMEOUT, 4096),
    )
    .await;
    if !state.is_ok_and(|o| ri::boot_finished(&String::from_utf8_lossy(&o.stdout))) {
        return None;
    }
    let req = Exec::new(ri::failed_units_argv(), CHECK_TIMEOUT, 64 * 1024);
    let units = match exec(st, machine, req).await {
        Ok(out) if out.success() => ri::parse_failed_units(&String::from_utf8_lossy(&out.stdout)),
        Ok(_) | Err(_) => return None,
    };
    let mut out = Vec::new();
    for (i, unit) in units.into_iter().enumerate() {
        let journal = if i < JOURNALS_PER_INSTANCE {
            unit_journal(st, machine, &unit).await
        } else {
            Vec::new()
        };
        out.push(FailedUnit { unit, journal });
    }
    Some(out)
}

/// The last journal lines of `unit`, ending with systemd's record of how it ended.
async fn unit_journal(st: &Core, machine: &str, unit: &str) -> Vec<String> {
    let q = JournalQuery {
        unit: Some(unit.to_string()),
        since: None,
        lines: FAILED_UNIT_JOURNAL_LINES * 5,
        follow: false,
    };
    let mut lines: Vec<String> =
        match exec(st, machine, Exec::new(q.argv(), CHECK_TIMEOUT, 64 * 1024)).await {
            Ok(o) => ri::journal_tail(
                &String::from_utf8_lossy(&o.stdout),
                FAILED_UNIT_JOURNAL_LINES as usize,
            )
            .iter()
            .map(|l| cut(l))
            .collect(),
            Err(_) => Vec::new(),
        };
    // An early-boot unit may have logged nothing the journal kept ("-- No entries --").
    let req = Exec::new(ri::unit_result_argv(unit), CHECK_TIMEOUT, 4096);
    if let Ok(o) = exec(st, machine, req).await {
        let result = ri::unit_result_line(&String::from_utf8_lossy(&o.stdout));
        if !result.is_empty() {
            lines.push(format!("systemd: {result}"));
        }
    }
    lines
}

/// What was last seen of one machine's failed units.
#[derive(Clone)]
pub(crate) struct UnitCheck {
    /// Engine clock (ms) of the look.
    at: u64,
    /// Since when (ms) failed units have been seen after the boot finished.
    failing_since: Option<u64>,
    units: Vec<FailedUnit>,
}

/// Fills `failed_units` and `failed_for_ms` of the instances a rollout waits for: on the
/// target model, running, not healthy and not being acted on. Each machine is looked at once
/// per [`UNIT_CHECK_INTERVAL_MS`]; in between the last answer stands. A machine that is
/// healthy again (or not waited for) forgets what was seen.
pub(crate) async fn observe_failed_units(
    st: &Core,
    eng: &Engine,
    recs: &[InstanceRecord],
    insts: &mut [plan::rolling::RollInstance],
    target: u64,
) {
    let now = eng.clock.now_ms();
    let mut due = Vec::new();
    for i in insts.iter_mut() {
        let waiting = i.model_version == target && i.running && !i.healthy && !i.upgrading;
        let Some(rec) = recs.iter().find(|r| r.instance_id == i.id) else {
            continue;
        };
        let mut checks = eng.unit_checks.lock().unwrap_or_else(|e| e.into_inner());
        if !waiting {
            checks.remove(&rec.machine);
            continue;
        }
        match checks.get(&rec.machine) {
            Some(c) if now.saturating_sub(c.at) < UNIT_CHECK_INTERVAL_MS => apply(i, c, now),
            prev => due.push((
                i.id,
                rec.machine.clone(),
                prev.and_then(|c| c.failing_since),
            )),
        }
    }
    for (id, machine, since) in due {
        let units = failed_units(st, &machine).await.unwrap_or_default();
        if !units.is_empty() {
            warn!(instance = id, machine = %machine, units = ?units.iter().map(|u| &u.unit).collect::<Vec<_>>(), "rolling upgrade: failed units");
        }
        let failing_since = if units.is_empty() {
            None
        } else {
            since.or(Some(now))
        };
        let check = UnitCheck {
            at: now,
            failing_since,
            units,
        };
        if let Some(i) = insts.iter_mut().find(|i| i.id == id) {
            apply(i, &check, now);
        }
        eng.unit_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(machine, check);
    }
}

fn apply(i: &mut plan::rolling::RollInstance, c: &UnitCheck, now: u64) {
    i.failed_units = c.units.clone();
    i.failed_for_ms = c.failing_since.map_or(0, |t| now.saturating_sub(t));
}

/// Azure's RunShellScript: the script run by `/bin/sh -c` as root inside the instance, its
/// positional parameters as `$1…`, its named ones in the environment; the last
/// [`ri::RUN_COMMAND_OUTPUT_BYTES`] of each stream kept.
pub async fn run_shell_script(
    st: &Core,
    machine: &str,
    script: &str,
    positional: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ExecOutput, String> {
    let mut argv = vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into()];
    argv.extend(positional.iter().cloned());
    let mut req = Exec::new(argv, timeout, ri::RUN_COMMAND_OUTPUT_BYTES);
    req.env = env.to_vec();
    exec(st, machine, req).await
}

/// Most bytes of journal text one read returns (without `follow`).
pub const MAX_JOURNAL_BYTES: usize = 4 << 20;
/// How long a journal read (without `follow`) may take.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(30);
/// A followed journal ends after this long at the latest.
pub const FOLLOW_MAX: Duration = Duration::from_secs(6 * 3600);

/// Reads the instance's journal (blocking: call on a blocking thread). With `follow`, output
/// goes to `sink` as it arrives until the sink returns `false` (the reader went away) or
/// [`FOLLOW_MAX`]; without it, the last lines are returned.
pub fn journal_blocking(
    machines: &dyn runtime::Machines,
    machine: &str,
    q: &JournalQuery,
    sink: Option<runtime::inspect::Sink<'_>>,
    cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Result<ExecOutput, String> {
    q.validate()?;
    let timeout = if q.follow {
        FOLLOW_MAX
    } else {
        JOURNAL_TIMEOUT
    };
    let req = Exec {
        argv: q.argv(),
        env: Vec::new(),
        timeout,
        keep_bytes: MAX_JOURNAL_BYTES,
        stdout_sink: sink,
        cancel,
    };
    machines.exec(machine, req).map_err(|e| e.to_string())
}
