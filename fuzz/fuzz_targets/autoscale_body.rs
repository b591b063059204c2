//! Autoscale setting bodies: validation never panics, what parses renders back to the same
//! setting, and a decision on it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use model::autoscale;
use plan::autoscale::{decide, series_needed, History, LastScale, Metrics, Point};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Some(s) = v.as_str() {
        let _ = model::timezone::parse_datetime(s);
        let _ = model::timezone::TimeZone::parse(s).map(|z| z.to_utc(z.offset_at(0)));
    }
    let Ok(s) = autoscale::parse(&v) else {
        return;
    };
    let back = autoscale::render(&s, &autoscale::resource_id("s", "rg", "n"), "n");
    assert_eq!(autoscale::parse(&back).as_ref(), Ok(&s), "{back}");
    let _ = autoscale::apply_patch(&s, &v);
    // Evaluate at a few instants with a series per needed key, its value from the input size.
    let n = data.len() as u64;
    for now in [0, 1_704_888_000, 1_704_888_000 + n * 3_613] {
        let metrics: Metrics = series_needed(&s, now)
            .into_iter()
            .map(|k| {
                (
                    k,
                    (1..=5)
                        .map(|i| Point {
                            at: now.saturating_sub(i * 60),
                            value: (n % 97) as f64,
                        })
                        .collect(),
                )
            })
            .collect();
        let history = History {
            last_scale: Some(LastScale {
                at: now.saturating_sub(n),
                cooldown_secs: 300,
            }),
        };
        for capacity in [0, 1, (n % 1001) as u32, u32::MAX] {
            let d = decide(&s, &metrics, now, capacity, &history);
            let _ = d.to_string();
        }
    }
});
