//! Webhook payloads and authentication: never panic, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(8));
    let event = std::str::from_utf8(head).ok();
    let _ = pipeline::webhook::parse(event, body);
    let _ = pipeline::webhook::parse(None, body);
    let sig = std::str::from_utf8(body).ok();
    let _ = pipeline::webhook::authenticate("0123456789abcdef", head, sig, sig);
});
