//! Template deployments: az-style `--parameters` against a template, and what the deployment
//! and its operations answer (state, per-resource progress and errors, public IPs) never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let template = serde_json::json!({"parameters": {"n": {"type": "int"}, "s": {"type": "string"}, "o": {"type": "object"}}});
    let args: Vec<String> = s.split('\n').map(str::to_string).collect();
    let _ = azure::deploy::parameters(&template, &args, &|p| Ok(p.to_string()));
    let Ok(v) = serde_json::from_str::<serde_json::Value>(s) else {
        return;
    };
    let ops = v.get("value").and_then(|x| x.as_array()).cloned().unwrap_or_default();
    let mut seen = Default::default();
    let _ = azure::deploy::progress(&mut seen, &azure::deploy::resource_states(&ops));
    let _ = azure::deploy::failures(&ops);
    let _ = azure::deploy::State::of(&v);
    let _ = azure::deploy::deployment_error(&v);
    let _ = azure::deploy::public_ips(&v);
});
