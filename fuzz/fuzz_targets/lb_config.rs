//! The load balancer's config as its admin socket receives it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = lb::LbConfig::from_json(data) {
        let _ = cfg.validate();
    }
});
