//! `$(var)` expansion: variables from `name=value` lines (a value's first byte repeats the
//! rest, so references multiply from short inputs), resolved and expanded within the caps.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipeline::vars::{Variables, MAX_TOTAL_BYTES, MAX_VALUE_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut vars = Variables::new();
    let mut raw_total = 0;
    for line in s.lines().take(64) {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let value = match value.split_at_checked(1) {
            Some((r, v)) if !v.is_empty() => v.repeat(usize::from(r.as_bytes()[0] % 32) + 1),
            _ => value.to_string(),
        };
        raw_total += value.len();
        vars.set(name, value);
    }
    let raw = vars.clone();
    match vars.resolve_nested() {
        Ok(()) => {
            let total: usize = vars.iter().map(|v| v.value.len()).sum();
            assert!(total <= MAX_TOTAL_BYTES.max(raw_total), "total {total}");
            for v in vars.iter() {
                let before = raw.get(&v.name).map_or(0, str::len);
                assert!(v.value.len() <= MAX_VALUE_BYTES.max(before), "{}", v.name);
            }
        }
        Err(e) => {
            assert!(e.name.is_some());
            assert_eq!(vars, raw, "a failed resolution changes nothing");
        }
    }
    let text: String = s.chars().rev().collect();
    let limit = MAX_VALUE_BYTES.max(text.len());
    match vars.try_expand(&text) {
        Ok(out) => assert!(out.len() <= limit),
        Err(e) => assert_eq!(e.limit, limit),
    }
    assert!(vars.expand(&text).len() <= limit + text.len());
});
