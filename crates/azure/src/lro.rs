//! ARM long-running operations as a state machine: given a response, the next action. Pure; the
//! client does the requests and the waiting.
//!
//! ARM's rules: a 201/202 (or a 200 to a PUT/PATCH still provisioning) with `Azure-AsyncOperation`
//! is polled there until the operation's `status` is terminal (Succeeded, Failed, Canceled);
//! otherwise a `Location` is polled until it stops answering 202. After an Azure-AsyncOperation
//! succeeds, a PUT/PATCH reads the resource itself and a POST reads its `Location` (if any) for
//! the result.
use crate::error::{error_fields, AzureError};
use crate::transport::Headers;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollKind {
    AsyncOperation,
    Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poller {
    pub kind: PollKind,
    pub url: String,
    /// Where the result is read once an Azure-AsyncOperation succeeded.
    pub final_get: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Not long-running (or nothing to poll): the response is the result.
    Done,
    Poll(Poller),
}

/// Whether the first response of `method` on `url` starts a long-running operation.
pub fn start(method: &str, url: &str, status: u16, headers: &Headers) -> Start {
    let method = method.to_ascii_uppercase();
    if method == "GET" || !(200..300).contains(&status) {
        return Start::Done;
    }
    let location = headers.get("location").map(str::to_string);
    if let Some(op) = headers.get("azure-asyncoperation") {
        // A plain 200 with the header is what ARM sends for a PUT/PATCH still provisioning.
        if matches!(status, 200..=202) {
            let final_get = match method.as_str() {
                "PUT" | "PATCH" => Some(url.to_string()),
                "POST" => location,
                _ => None,
            };
            return Start::Poll(Poller {
                kind: PollKind::AsyncOperation,
                url: op.to_string(),
                final_get,
            });
        }
    }
    match (status, location) {
        (201 | 202, Some(loc)) => Start::Poll(Poller {
            kind: PollKind::Location,
            url: loc,
            final_get: None,
        }),
        _ => Start::Done,
    }
}

#[derive(Debug, PartialEq)]
pub enum Step {
    /// Poll `url` again after `delay`.
    Wait {
        url: String,
        delay: Duration,
    },
    /// Finished: read the result at this URL.
    Get(String),
    /// Finished: this poll response's body is the result (Location polling).
    Body,
    /// Finished without a result body (a DELETE or an action).
    Empty,
    Failed(AzureError),
}

/// The next step after a poll answered `status`/`headers`/`body`. `default_delay` applies when
/// the server sent no Retry-After (the client passes the parsed one through `retry_after`).
pub fn next(
    p: &Poller,
    status: u16,
    headers: &Headers,
    body: &[u8],
    retry_after: Option<Duration>,
    default_delay: Duration,
) -> Step {
    if status >= 400 {
        return Step::Failed(AzureError::from_response(status, body));
    }
    let wait = |url: &str| Step::Wait {
        url: url.to_string(),
        delay: retry_after.unwrap_or(default_delay),
    };
    match p.kind {
        PollKind::AsyncOperation => {
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return Step::Failed(AzureError::InvalidResponse {
                        url: p.url.clone(),
                        reason: format!("operation status is not JSON: {e}"),
                    })
                }
            };
            let state = v.get("status").and_then(Value::as_str).unwrap_or("");
            match state.to_ascii_lowercase().as_str() {
                "succeeded" => match &p.final_get {
                    Some(u) => Step::Get(u.clone()),
                    None => Step::Empty,
                },
                "failed" | "canceled" | "cancelled" => {
                    let (code, message) = v.get("error").map(error_fields).unwrap_or_default();
                    Step::Failed(AzureError::Operation {
                        status: state.to_string(),
                        code: code.unwrap_or_else(|| format!("Operation{state}")),
                        message: message.unwrap_or_else(|| format!("the operation ended {state}")),
                    })
                }
                "" => Step::Failed(AzureError::InvalidResponse {
                    url: p.url.clone(),
                    reason: "operation status has no \"status\"".into(),
                }),
                // InProgress, Accepted, Running, Updating, ...: not terminal.
                _ => wait(&p.url),
            }
        }
        PollKind::Location => match status {
            202 => wait(headers.get("location").unwrap_or(&p.url)),
            _ if body.iter().all(u8::is_ascii_whitespace) => Step::Empty,
            _ => Step::Body,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: &str = "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/locations/westus/operations/1?api-version=2024-11-01";
    const LOC: &str = "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/locations/westus/operationResults/1?api-version=2024-11-01";
    const RES: &str = "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web?api-version=2024-11-01";

    fn h(pairs: &[(&str, &str)]) -> Headers {
        Headers::from(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    fn poll(kind: PollKind, url: &str, final_get: Option<&str>) -> Start {
        Start::Poll(Poller {
            kind,
            url: url.into(),
            final_get: final_get.map(str::to_string),
        })
    }

    #[test]
    fn starts() {
        use PollKind::*;
        let both = h(&[("Azure-AsyncOperation", OP), ("Location", LOC)]);
        let async_only = h(&[("azure-asyncoperation", OP)]);
        let loc_only = h(&[("Location", LOC)]);
        let none = h(&[]);
        let cases: Vec<(&str, u16, &Headers, Start)> = vec![
            ("GET", 200, &both, Start::Done),
            ("PUT", 200, &none, Start::Done),
            ("PUT", 201, &async_only, poll(AsyncOperation, OP, Some(RES))),
            ("PUT", 200, &async_only, poll(AsyncOperation, OP, Some(RES))),
            ("PATCH", 200, &both, poll(AsyncOperation, OP, Some(RES))),
            ("POST", 202, &both, poll(AsyncOperation, OP, Some(LOC))),
            ("POST", 202, &async_only, poll(AsyncOperation, OP, None)),
            ("DELETE", 202, &both, poll(AsyncOperation, OP, None)),
            ("POST", 202, &loc_only, poll(Location, LOC, None)),
            ("DELETE", 202, &loc_only, poll(Location, LOC, None)),
            ("PUT", 201, &loc_only, poll(Location, LOC, None)),
            ("POST", 200, &loc_only, Start::Done),
            ("POST", 202, &none, Start::Done),
            ("DELETE", 204, &none, Start::Done),
            ("PUT", 409, &both, Start::Done),
        ];
        for (i, (m, s, hd, want)) in cases.into_iter().enumerate() {
            assert_eq!(start(m, RES, s, hd), want, "case {i}: {m} {s}");
        }
    }

    #[test]
    fn async_operation_steps() {
        let p = Poller {
            kind: PollKind::AsyncOperation,
            url: OP.into(),
            final_get: Some(RES.into()),
        };
        let d = Duration::from_secs(5);
        let none = h(&[]);
        let wait = |s: u64| Step::Wait {
            url: OP.into(),
            delay: Duration::from_secs(s),
        };
        let cases: Vec<(u16, &str, Option<u64>, Step)> = vec![
            (200, r#"{"status":"InProgress"}"#, None, wait(5)),
            (200, r#"{"status":"InProgress"}"#, Some(2), wait(2)),
            (200, r#"{"status":"Running"}"#, None, wait(5)),
            (
                200,
                r#"{"status":"Succeeded"}"#,
                None,
                Step::Get(RES.into()),
            ),
            (
                200,
                r#"{"status":"succeeded"}"#,
                None,
                Step::Get(RES.into()),
            ),
        ];
        for (i, (s, body, ra, want)) in cases.into_iter().enumerate() {
            let got = next(
                &p,
                s,
                &none,
                body.as_bytes(),
                ra.map(Duration::from_secs),
                d,
            );
            assert_eq!(got, want, "case {i}");
        }
        let no_final = Poller {
            final_get: None,
            ..p.clone()
        };
        assert_eq!(
            next(&no_final, 200, &none, br#"{"status":"Succeeded"}"#, None, d),
            Step::Empty
        );
        let errs: &[(u16, &str, &str)] = &[
            (
                200,
                r#"{"status":"Failed","error":{"code":"AllocationFailed","message":"no capacity"}}"#,
                "(AllocationFailed) no capacity",
            ),
            (
                200,
                r#"{"status":"Canceled"}"#,
                "(OperationCanceled) the operation ended Canceled",
            ),
            (
                404,
                r#"{"error":{"code":"NotFound","message":"gone"}}"#,
                "(NotFound) gone",
            ),
            (
                200,
                "{}",
                &format!("unexpected response from {OP}: operation status has no \"status\""),
            ),
            (
                200,
                "<html>",
                &format!("unexpected response from {OP}: operation status is not JSON: expected value at line 1 column 1"),
            ),
        ];
        for (s, body, want) in errs {
            match next(&p, *s, &none, body.as_bytes(), None, d) {
                Step::Failed(e) => assert_eq!(e.to_string(), *want),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn location_steps() {
        let p = Poller {
            kind: PollKind::Location,
            url: LOC.into(),
            final_get: None,
        };
        let d = Duration::from_secs(1);
        let moved = h(&[("Location", "https://management.azure.com/next")]);
        let none = h(&[]);
        assert_eq!(
            next(&p, 202, &none, b"", None, d),
            Step::Wait {
                url: LOC.into(),
                delay: d
            }
        );
        assert_eq!(
            next(&p, 202, &moved, b"", Some(Duration::from_secs(9)), d),
            Step::Wait {
                url: "https://management.azure.com/next".into(),
                delay: Duration::from_secs(9)
            }
        );
        assert_eq!(next(&p, 200, &none, br#"{"id":"x"}"#, None, d), Step::Body);
        assert_eq!(next(&p, 204, &none, b"", None, d), Step::Empty);
        assert_eq!(next(&p, 200, &none, b" \n", None, d), Step::Empty);
        match next(
            &p,
            500,
            &none,
            br#"{"error":{"code":"InternalError","message":"x"}}"#,
            None,
            d,
        ) {
            Step::Failed(e) => assert_eq!(e.status(), Some(500)),
            other => panic!("{other:?}"),
        }
    }
}
