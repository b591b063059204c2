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

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date (year, month, day) of a day number (inverse of [`days_from_civil`]).
    pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    /// `YYYY-MM-DDThh:mm:ssZ` for unix seconds.
    pub fn rfc3339(secs: i64) -> String {
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// `YYYY-MM-DDThh:mm:ss.mmmZ` for unix milliseconds.
    pub fn rfc3339_ms(ms: u64) -> String {
        let secs = rfc3339((ms / 1000) as i64);
        format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms % 1000)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rfc3339_known_values() {
            assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
            assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
            assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
            assert_eq!(rfc3339_ms(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
            for days in [-800_000, -1, 0, 1, 11_016, 19_844, 2_932_896] {
                let (y, m, d) = civil_from_days(days);
                assert_eq!(days_from_civil(y, m, d), days);
            }
        }
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
