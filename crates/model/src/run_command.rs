//! Azure's `RunCommandInput` (the body of `POST .../virtualMachines/{id}/runCommand`):
//! `{commandId, script: [string], parameters: [{name, value}]}`, parsed and bounded. The script
//! lines are joined with newlines as Azure's Linux agent does; parameters named `arg1`, `arg2`, …
//! (what az sends for `--parameters` without `=`) are positional, the others are exported as
//! environment variables.
use crate::ModelError;
use serde_json::Value;

/// Longest script accepted (all lines with their newlines).
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;
/// Most script lines.
pub const MAX_SCRIPT_LINES: usize = 10_000;
/// Most parameters.
pub const MAX_PARAMETERS: usize = 64;
/// Longest parameter value.
pub const MAX_PARAMETER_VALUE: usize = 4096;

/// The command ids a Linux instance knows (Azure: `az vm run-command list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandId {
    RunShellScript,
    Ifconfig,
}

impl CommandId {
    /// Case-insensitive, as ARM compares ids; `None`: Azure's "entity was not found".
    pub fn from_id(id: &str) -> Option<CommandId> {
        if id.eq_ignore_ascii_case("RunShellScript") {
            Some(CommandId::RunShellScript)
        } else if id.eq_ignore_ascii_case("ifconfig") {
            Some(CommandId::Ifconfig)
        } else {
            None
        }
    }
}

/// Azure's error for a command id the location does not have.
pub const UNKNOWN_COMMAND_MESSAGE: &str = "The entity was not found in this Azure location.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommandInput {
    /// As sent; see [`CommandId::from_id`].
    pub command_id: String,
    /// The script's lines joined by `\n`.
    pub script: String,
    /// `arg1`, `arg2`, … in order of their number.
    pub positional: Vec<String>,
    /// Other parameters, exported to the script's environment.
    pub env: Vec<(String, String)>,
}

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::new("InvalidRequestContent", msg)
}

fn env_name_ok(n: &str) -> bool {
    let mut b = n.bytes();
    n.len() <= 64
        && b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `argN` (N ≥ 1) → N.
fn positional_index(n: &str) -> Option<usize> {
    let d = n.strip_prefix("arg")?;
    if d.is_empty() || d.len() > 3 || d.starts_with('0') {
        return None;
    }
    d.parse().ok()
}

fn script(v: &Value) -> Result<String, ModelError> {
    let lines = match v.get("script") {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("'script' must be an array of strings.")),
    };
    if lines.len() > MAX_SCRIPT_LINES {
        return Err(invalid(format!(
            "'script' has more than {MAX_SCRIPT_LINES} lines."
        )));
    }
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let l = l
            .as_str()
            .ok_or_else(|| invalid(format!("'script[{i}]' must be a string.")))?;
        if i > 0 {
            out.push('\n');
        }
        out.push_str(l);
        if out.len() > MAX_SCRIPT_BYTES {
            return Err(invalid(format!(
                "The script is longer than {MAX_SCRIPT_BYTES} bytes."
            )));
        }
    }
    if out.contains('\0') {
        return Err(invalid("The script contains a NUL character."));
    }
    Ok(out)
}

type Params = (Vec<String>, Vec<(String, String)>);

fn parameters(v: &Value) -> Result<Params, ModelError> {
    let list = match v.get("parameters") {
        None | Some(Value::Null) => return Ok((Vec::new(), Vec::new())),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("'parameters' must be an array.")),
    };
    if list.len() > MAX_PARAMETERS {
        return Err(invalid(format!(
            "At most {MAX_PARAMETERS} parameters are allowed."
        )));
    }
    let mut positional: Vec<(usize, String)> = Vec::new();
    let mut env = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let field = |k: &str| -> Result<&str, ModelError> {
            p.get(k).and_then(Value::as_str).ok_or_else(|| {
                invalid(format!(
                    "'parameters[{i}].{k}' is required and must be a string."
                ))
            })
        };
        let (name, value) = (field("name")?, field("value")?);
        if value.len() > MAX_PARAMETER_VALUE || value.contains('\0') {
            return Err(invalid(format!(
                "'parameters[{i}].value' must be at most {MAX_PARAMETER_VALUE} bytes without NUL."
            )));
        }
        match positional_index(name) {
            Some(n) => positional.push((n, value.to_string())),
            None if env_name_ok(name) => env.push((name.to_string(), value.to_string())),
            None => {
                return Err(invalid(format!(
                    "'parameters[{i}].name' {name:?} is not an environment variable name."
                )))
            }
        }
    }
    positional.sort_by_key(|(n, _)| *n);
    Ok((positional.into_iter().map(|(_, v)| v).collect(), env))
}

/// Parses a `RunCommandInput` body.
pub fn parse(v: &Value) -> Result<RunCommandInput, ModelError> {
    if !v.is_object() {
        return Err(invalid("The request content must be a JSON object."));
    }
    if let Some(k) = v
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .find(|k| !["commandId", "script", "parameters"].contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "Could not find member '{k}' on object of type 'RunCommandInput'."
        )));
    }
    let command_id = match v.get("commandId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => s.clone(),
        _ => {
            return Err(ModelError::invalid(
                "Required parameter 'commandId' is missing (null).",
            ))
        }
    };
    let script = script(v)?;
    let (positional, env) = parameters(v)?;
    Ok(RunCommandInput {
        command_id,
        script,
        positional,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_table() {
        let ok = parse(&json!({
            "commandId": "RunShellScript",
            "script": ["echo $1 $2", "echo $greeting"],
            "parameters": [
                {"name": "arg2", "value": "b"},
                {"name": "greeting", "value": "hi"},
                {"name": "arg1", "value": "a"}
            ]
        }))
        .unwrap();
        assert_eq!(ok.script, "echo $1 $2\necho $greeting");
        assert_eq!(ok.positional, ["a", "b"]);
        assert_eq!(ok.env, [("greeting".to_string(), "hi".to_string())]);
        assert_eq!(
            CommandId::from_id(&ok.command_id),
            Some(CommandId::RunShellScript)
        );
        assert_eq!(CommandId::from_id("RunPowerShellScript"), None);
        assert_eq!(CommandId::from_id("IFCONFIG"), Some(CommandId::Ifconfig));

        let bad = [
            json!([]),
            json!({}),
            json!({"commandId": ""}),
            json!({"commandId": 3}),
            json!({"commandId": "RunShellScript", "script": "echo"}),
            json!({"commandId": "RunShellScript", "script": [1]}),
            json!({"commandId": "RunShellScript", "script": ["a\u{0}b"]}),
            json!({"commandId": "RunShellScript", "extra": 1}),
            json!({"commandId": "RunShellScript", "parameters": [{"name": "a b", "value": "x"}]}),
            json!({"commandId": "RunShellScript", "parameters": [{"name": "PATHX"}]}),
            json!({"commandId": "RunShellScript", "parameters": {"name": "x"}}),
            json!({"commandId": "RunShellScript", "script": ["x".repeat(MAX_SCRIPT_BYTES + 1)]}),
        ];
        for b in bad {
            assert!(parse(&b).is_err(), "{b}");
        }
        let many: Vec<Value> = (0..=MAX_PARAMETERS)
            .map(|i| json!({"name": format!("p{i}"), "value": ""}))
            .collect();
        assert!(parse(&json!({"commandId": "RunShellScript", "parameters": many})).is_err());
    }
}
