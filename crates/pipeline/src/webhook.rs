//! Push webhooks from external repositories (GitHub and Azure Repos): authentication and the
//! push payloads, as plain functions over bytes.
//!
//! - GitHub signs the body: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; the
//!   event name is in `X-GitHub-Event` (`push`, or `ping` when the hook is created).
//! - Azure Repos service hooks do not sign; they authenticate with HTTP Basic (any user name,
//!   the secret as the password) or with a custom header. We accept Basic with the secret as the
//!   password, or the same `X-Hub-Signature-256` header (a proxy can add it).
//!
//! Either way the payload only says which refs moved: the daemon then fetches the repository
//! itself, so a forged or stale payload cannot inject commits.

use sha2::{Digest, Sha256};

/// What a webhook call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// GitHub's `ping` (sent when the hook is created).
    Ping,
    /// Refs that moved (full names such as `refs/heads/main`, old and new object ids).
    Push(Vec<PushedRef>),
    /// Another event we do not act on (its name).
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRef {
    pub name: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("the webhook is not authenticated: send X-Hub-Signature-256 (HMAC-SHA256 of the body with the repository's webhook secret) or HTTP Basic with the secret as the password")]
    Unauthenticated,
    #[error("the payload is not a GitHub or Azure Repos push event: {0}")]
    BadPayload(String),
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a call: `signature` is the `X-Hub-Signature-256` header, `basic_password` the
/// password of an HTTP Basic `Authorization` header, if any.
pub fn authenticate(
    secret: &str,
    body: &[u8],
    signature: Option<&str>,
    basic_password: Option<&str>,
) -> Result<(), HookError> {
    if secret.is_empty() {
        return Err(HookError::Unauthenticated);
    }
    if let Some(sig) = signature {
        let want = hex::encode(hmac_sha256(secret.as_bytes(), body));
        let got = sig.trim().strip_prefix("sha256=").unwrap_or("");
        if ct_eq(got.to_ascii_lowercase().as_bytes(), want.as_bytes()) {
            return Ok(());
        }
        return Err(HookError::Unauthenticated);
    }
    match basic_password {
        Some(p) if ct_eq(p.as_bytes(), secret.as_bytes()) => Ok(()),
        _ => Err(HookError::Unauthenticated),
    }
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn pushed(
    name: Option<&str>,
    old: Option<&str>,
    new: Option<&str>,
) -> Result<PushedRef, HookError> {
    let bad = |m: &str| HookError::BadPayload(m.to_string());
    let name = name.ok_or_else(|| bad("a ref update has no ref name"))?;
    if !name.starts_with("refs/") || name.contains("..") || name.chars().any(char::is_control) {
        return Err(bad(&format!("`{name}` is not a full ref name")));
    }
    let (old, new) = (old.unwrap_or(""), new.unwrap_or(""));
    if !is_object_id(old) || !is_object_id(new) {
        return Err(bad(&format!(
            "ref `{name}` has no valid old and new object ids"
        )));
    }
    Ok(PushedRef {
        name: name.to_string(),
        old: old.to_ascii_lowercase(),
        new: new.to_ascii_lowercase(),
    })
}

/// Parses a webhook body. `github_event` is the `X-GitHub-Event` header (absent for Azure
/// Repos, whose body names its `eventType`).
pub fn parse(github_event: Option<&str>, body: &[u8]) -> Result<HookEvent, HookError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| HookError::BadPayload(format!("not JSON ({e})")))?;
    let s = |p: &str| v.pointer(p).and_then(serde_json::Value::as_str);
    if let Some(ev) = github_event {
        return match ev {
            "ping" => Ok(HookEvent::Ping),
            "push" => Ok(HookEvent::Push(vec![pushed(
                s("/ref"),
                s("/before"),
                s("/after"),
            )?])),
            other => Ok(HookEvent::Ignored(other.to_string())),
        };
    }
    match s("/eventType") {
        Some("git.push") => {
            let updates = v
                .pointer("/resource/refUpdates")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| {
                    HookError::BadPayload("git.push without resource.refUpdates".into())
                })?;
            let refs = updates
                .iter()
                .map(|u| {
                    let g = |k: &str| u.get(k).and_then(serde_json::Value::as_str);
                    pushed(g("name"), g("oldObjectId"), g("newObjectId"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(HookEvent::Push(refs))
        }
        Some(other) => Ok(HookEvent::Ignored(other.to_string())),
        None => Err(HookError::BadPayload(
            "no X-GitHub-Event header and no eventType in the body".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 1 and 2.
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block size.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn authentication() {
        let body = br#"{"zen":"x"}"#;
        let sig = format!("sha256={}", hex::encode(hmac_sha256(b"s3cret", body)));
        let cases: &[(&str, Option<&str>, Option<&str>, bool)] = &[
            ("s3cret", Some(&sig), None, true),
            (
                "s3cret",
                Some(&sig.to_uppercase().replace("SHA256=", "sha256=")),
                None,
                true,
            ),
            ("other", Some(&sig), None, false),
            ("s3cret", Some("sha256=00"), None, false),
            (
                "s3cret",
                Some(sig.trim_start_matches("sha256=")),
                None,
                false,
            ),
            // A wrong signature is not rescued by a right password.
            ("s3cret", Some("sha256=00"), Some("s3cret"), false),
            ("s3cret", None, Some("s3cret"), true),
            ("s3cret", None, Some("s3cre"), false),
            ("s3cret", None, None, false),
            ("", None, Some(""), false),
        ];
        for (secret, sig, pw, ok) in cases {
            assert_eq!(
                authenticate(secret, body, *sig, *pw).is_ok(),
                *ok,
                "{secret} {sig:?} {pw:?}"
            );
        }
    }

    #[test]
    fn payloads() {
        let a = "a".repeat(40);
        let b = "B".repeat(40);
        let gh = format!(
            r#"{{"ref":"refs/heads/main","before":"{a}","after":"{b}","repository":{{"clone_url":"x"}}}}"#
        );
        assert_eq!(
            parse(Some("push"), gh.as_bytes()),
            Ok(HookEvent::Push(vec![PushedRef {
                name: "refs/heads/main".into(),
                old: a.clone(),
                new: "b".repeat(40),
            }]))
        );
        assert_eq!(parse(Some("ping"), b"{}"), Ok(HookEvent::Ping));
        assert_eq!(
            parse(Some("issues"), b"{}"),
            Ok(HookEvent::Ignored("issues".into()))
        );
        let az = format!(
            r#"{{"eventType":"git.push","resource":{{"refUpdates":[{{"name":"refs/heads/main","oldObjectId":"{a}","newObjectId":"{a}"}}]}}}}"#
        );
        assert!(matches!(parse(None, az.as_bytes()), Ok(HookEvent::Push(r)) if r.len() == 1));
        let bad: &[(Option<&str>, &str)] = &[
            (Some("push"), "not json"),
            (Some("push"), r#"{"ref":"main","before":"x","after":"y"}"#),
            (Some("push"), r#"{"ref":"refs/heads/../x"}"#),
            (None, "{}"),
            (None, r#"{"eventType":"git.push"}"#),
            (
                None,
                r#"{"eventType":"git.push","resource":{"refUpdates":[{"name":"refs/heads/x"}]}}"#,
            ),
        ];
        for (ev, body) in bad {
            assert!(
                matches!(parse(*ev, body.as_bytes()), Err(HookError::BadPayload(_))),
                "{body}"
            );
        }
        assert_eq!(
            parse(None, br#"{"eventType":"git.pullrequest.created"}"#),
            Ok(HookEvent::Ignored("git.pullrequest.created".into()))
        );
    }
}
