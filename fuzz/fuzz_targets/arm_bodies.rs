//! ARM bodies for scale sets, load balancers and their child resources (a probe or rule put into
//! a parent, then the parent validated as `put_lb` does): validation never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = model::vmss::parse(&v, "vm");
    let _ = model::lb::parse(&v);
    let parent = serde_json::json!({"properties": {"probes": [{"name": "p", "properties": {"protocol": "Tcp", "port": 80}}]}});
    for child in model::lb_child::LbChild::ALL {
        if let Ok((lb, _)) = model::lb_child::put(&parent, child, "p", &v) {
            let _ = model::lb::parse(&lb);
        }
        let _ = model::lb_child::remove(&parent, child, "p");
    }
    if let Some(s) = v.as_str() {
        let _ = model::ids::ResourceId::parse(s);
        let _ = model::vmss::parse_iso8601_duration(s);
        let _ = model::names::resource_group(s);
    }
});
