//! Small helpers the control plane's users share: clocks, names, ids, error chains.

/// A few hex digits of a stable hash (FNV-1a), for short unique names.
pub fn short_hash(s: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")[..n].to_string()
}

pub use sys::clock::{now_ms, unix_now};
pub use sys::ct_eq;

pub fn now_rfc3339() -> String {
    image::rfc3339(unix_now())
}

/// A random UUID (v4 layout) for vmId / uniqueId.
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:x}{:02x}-{:x}{:x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6] & 0xf, b[7], 8 | (b[8] & 3), b[8] >> 4, b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Formats an error with its sources, "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
