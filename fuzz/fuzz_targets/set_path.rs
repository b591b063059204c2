//! az's `--set path=value` on an arbitrary document.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (arg, doc) = s
        .split_once('\n')
        .unwrap_or((s, "{\"properties\":{\"a\":[1,{\"b\":2}]}}"));
    let mut doc: serde_json::Value = serde_json::from_str(doc).unwrap_or(serde_json::json!({}));
    if let Ok((p, v)) = model::setpath::parse_assignment(arg) {
        let _ = model::setpath::set(&mut doc, &p, v);
    }
});
