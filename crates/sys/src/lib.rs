//! OS helpers the other crates share, so each exists once: cgroups ([`cgroup`]), durable file
//! writes ([`durable`]), advisory locks ([`flock`]), `/proc` ([`proc`]), the mount table
//! ([`mounts`]), clocks ([`clock`]) and comparing secrets ([`ct_eq`]).
pub mod cgroup;
pub mod durable;
pub mod flock;
pub mod mounts;
pub mod proc;

pub mod clock {
    use std::time::{SystemTime, UNIX_EPOCH};

    /// Unix time in seconds (0 if the clock is before 1970).
    pub fn unix_now() -> u64 {
        now_ms() / 1000
    }

    /// Unix time in milliseconds.
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Compares secrets in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.len() ^ b.len()
        | a.iter()
            .zip(b)
            .fold(0, |acc, (x, y)| acc | (*x ^ *y) as usize);
    diff == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn ct_eq_compares_contents_and_lengths() {
        assert!(super::ct_eq(b"secret", b"secret"));
        assert!(!super::ct_eq(b"secret", b"secreT"));
        assert!(!super::ct_eq(b"secret", b"secret2"));
        assert!(!super::ct_eq(b"", b"x"));
        assert!(super::ct_eq(b"", b""));
    }
}
