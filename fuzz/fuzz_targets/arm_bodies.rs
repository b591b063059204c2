//! ARM bodies for scale sets and load balancers: validation never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = model::vmss::parse(&v, "vm");
    let _ = model::lb::parse(&v);
    if let Some(s) = v.as_str() {
        let _ = model::ids::ResourceId::parse(s);
        let _ = model::vmss::parse_iso8601_duration(s);
    }
});
