//! Looking inside an instance over HTTP: Azure's `runCommand` (RunCommandInput →
//! RunCommandResult, synchronous like `az vmss run-command invoke` shows it) and
//! `retrieveBootDiagnosticsData`, and scaleset's own text routes: `serialConsoleLog` (the
//! console log's tail) and `journal` (journalctl inside the instance; `follow=true` streams
//! until the client goes away). The work is the engine's (`engine::inspect`).
use crate::error::ApiError;
use crate::handlers::Reply;
use crate::route::{Res, Route, VMSS};
use crate::state::{AppState, InstanceRecord};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engine::inspect as ei;
use runtime::{ExecOutput, ExecStatus};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Console log bytes `serialConsoleLog` returns by default, and at most.
pub const CONSOLE_TAIL_DEFAULT: usize = 64 * 1024;
/// Journal lines returned by default.
pub const JOURNAL_LINES_DEFAULT: u32 = 100;

fn instance(st: &AppState, res: &Res, id: &str) -> Result<InstanceRecord, ApiError> {
    st.vmss_doc(res)?
        .ok_or_else(|| ApiError::from(control::not_found(VMSS, res)))?;
    let n: Option<u32> = id.parse().ok();
    st.instances(&res.key(VMSS))?
        .into_iter()
        .find(|r| Some(r.instance_id) == n)
        .ok_or_else(|| {
            ApiError::not_found(
                "NotFound",
                format!(
                    "The Resource 'Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/{id}' under resource group '{}' was not found.",
                    res.name, res.rg
                ),
            )
        })
}

fn not_running(e: String) -> ApiError {
    if e.contains("is not running")
        || e.contains("does not exist")
        || e.contains("no container init")
    {
        ApiError::conflict(
            "OperationNotAllowed",
            "The operation requires the VM to be running (or set to run).",
        )
    } else {
        ApiError::internal(e)
    }
}

/// Azure's Linux message: `Enable succeeded: \n[stdout]\n…\n[stderr]\n…`.
pub fn run_command_message(out: &ExecOutput, timeout_secs: u64) -> (bool, String) {
    let text = |b: &[u8], dropped: u64| {
        let s = String::from_utf8_lossy(b).into_owned();
        if dropped > 0 {
            format!("[{dropped} bytes before the last {} omitted]\n{s}", b.len())
        } else {
            s
        }
    };
    let streams = format!(
        "\n[stdout]\n{}\n[stderr]\n{}",
        text(&out.stdout, out.stdout_dropped),
        text(&out.stderr, out.stderr_dropped)
    );
    let failure = match out.status {
        ExecStatus::Exited(0) => None,
        ExecStatus::Exited(n) => Some(format!("command terminated with exit status={n}")),
        ExecStatus::Signaled(s) => Some(format!("command terminated by signal {s}")),
        ExecStatus::TimedOut | ExecStatus::Abandoned => Some(format!(
            "command timed out after {timeout_secs} seconds and was killed"
        )),
    };
    match failure {
        None => (true, format!("Enable succeeded: {streams}")),
        Some(f) => (
            false,
            format!("Enable failed: failed to execute command: {f}{streams}"),
        ),
    }
}

/// `POST …/virtualMachines/{id}/runCommand`.
pub async fn run_command(st: &AppState, res: &Res, id: &str, body: &[u8]) -> Reply {
    let rec = instance(st, res, id)?;
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: {e}."),
        )
    })?;
    let input = model::run_command::parse(&v)?;
    let script = match model::run_command::CommandId::from_id(&input.command_id) {
        Some(model::run_command::CommandId::RunShellScript) => input.script.clone(),
        Some(model::run_command::CommandId::Ifconfig) => {
            "ifconfig -a 2>/dev/null || ip address show".to_string()
        }
        None => {
            return Err(ApiError::not_found(
                "NotFound",
                model::run_command::UNKNOWN_COMMAND_MESSAGE,
            ))
        }
    };
    let timeout = st.cfg.limits.run_command_timeout;
    let out = ei::run_shell_script(
        &st.core,
        &rec.machine,
        &script,
        &input.positional,
        &input.env,
        timeout,
    )
    .await
    .map_err(not_running)?;
    let (ok, message) = run_command_message(&out, timeout.as_secs());
    let (state, level) = if ok {
        ("succeeded", "Info")
    } else {
        ("failed", "Error")
    };
    Ok((
        StatusCode::OK,
        json!({"value": [{
            "code": format!("ProvisioningState/{state}"),
            "level": level,
            "displayStatus": format!("Provisioning {state}"),
            "message": message,
            "time": control::now_rfc3339(),
        }]}),
    ))
}

fn text(body: impl Into<Body>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn console_tail(
    st: &AppState,
    rec: &InstanceRecord,
    q: &HashMap<String, String>,
) -> Result<Vec<u8>, ApiError> {
    let max = match q.get("bytes") {
        Some(b) => b
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=runtime::MAX_CONSOLE_TAIL).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "InvalidParameter",
                    format!("bytes must be 1..={}", runtime::MAX_CONSOLE_TAIL),
                )
            })?,
        None => CONSOLE_TAIL_DEFAULT,
    };
    st.machines
        .console_tail(&rec.machine, max)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn journal_query(q: &HashMap<String, String>) -> Result<runtime::inspect::JournalQuery, ApiError> {
    let bad = |m: String| ApiError::bad_request("InvalidParameter", m);
    let lines = match q.get("lines") {
        Some(l) => l
            .parse()
            .map_err(|_| bad(format!("lines {l:?} is not a number")))?,
        None => JOURNAL_LINES_DEFAULT,
    };
    let query = runtime::inspect::JournalQuery {
        unit: q.get("unit").filter(|u| !u.is_empty()).cloned(),
        since: q.get("since").filter(|s| !s.is_empty()).cloned(),
        lines,
        follow: q.get("follow").is_some_and(|v| v == "true" || v == "1"),
    };
    query.validate().map_err(bad)?;
    Ok(query)
}

/// The journal: the last lines, or (follow) a stream that ends when the client goes away.
async fn journal(
    st: &Arc<AppState>,
    rec: InstanceRecord,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let query = journal_query(q)?;
    let machines = st.machines.clone();
    if !query.follow {
        let out = tokio::task::spawn_blocking(move || {
            ei::journal_blocking(machines.as_ref(), &rec.machine, &query, None, None)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(not_running)?;
        return Ok(text(out.stdout));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let cancel = Arc::new(AtomicBool::new(false));
    let (c2, tx2) = (cancel.clone(), tx.clone());
    // A follower that leaves while the journal is quiet still ends the command.
    tokio::spawn(async move {
        tx2.closed().await;
        c2.store(true, Ordering::Relaxed);
    });
    // The first read tells a stopped instance (409) from a stream.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::task::spawn_blocking(move || {
        let mut first = Some(first_tx);
        let mut sink = |b: &[u8]| {
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            tx.blocking_send(Bytes::copy_from_slice(b)).is_ok()
        };
        let r = ei::journal_blocking(
            machines.as_ref(),
            &rec.machine,
            &query,
            Some(&mut sink),
            Some(cancel),
        );
        if let (Some(f), Err(e)) = (first.take(), &r) {
            let _ = f.send(Err(e.clone()));
        }
    });
    // Quiet journals answer after a moment; a stopped instance answers 409 at once.
    let first = tokio::time::timeout(std::time::Duration::from_secs(2), first_rx).await;
    if let Ok(Ok(Err(e))) = first {
        return Err(not_running(e));
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok(text(Body::from_stream(stream)))
}

/// The text routes (`serialConsoleLog`, `journal`) and `retrieveBootDiagnosticsData` (whose
/// URI points at the first; `base` is where the client reached us). `None`: not one of them.
pub async fn special(
    st: &Arc<AppState>,
    route: &Route,
    q: &HashMap<String, String>,
    base: &str,
) -> Option<Result<Response, ApiError>> {
    Some(match route {
        Route::SerialConsoleLog(res, id) => {
            instance(st, res, id).and_then(|rec| console_tail(st, &rec, q).map(text))
        }
        Route::Journal(res, id) => match instance(st, res, id) {
            Ok(rec) => journal(st, rec, q).await,
            Err(e) => Err(e),
        },
        Route::BootDiagnosticsData(res, id) => instance(st, res, id).map(|_| {
            // No screenshots of a container; the serial log is our text route (it needs the
            // bearer token: there is no SAS here).
            let uri = format!(
                "{base}{}/virtualMachines/{id}/serialConsoleLog?api-version={}",
                res.id(VMSS),
                crate::route::COMPUTE_OPERATIONS_API_VERSION
            );
            axum::Json(json!({"serialConsoleLogBlobUri": uri})).into_response()
        }),
        _ => return None,
    })
}
