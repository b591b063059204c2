//! What crosses into and out of an instance: RunCommandInput bodies (bounded, never a panic,
//! a script within its limits), and the instance's own output the daemon reads (failed units:
//! only valid unit names come back), journal queries from the API.
#![no_main]
use libfuzzer_sys::fuzz_target;
use runtime::inspect::{self, JournalQuery};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for u in inspect::parse_failed_units(&text) {
        assert!(inspect::valid_unit_name(&u), "{u:?}");
    }
    let q = JournalQuery {
        unit: Some(text.chars().take(300).collect()),
        since: Some(text.chars().rev().take(80).collect()),
        lines: data.len() as u32,
        follow: data.first().is_some_and(|b| b & 1 == 1),
    };
    if q.validate().is_ok() {
        // What the query contributes is always inside an option (`--unit=…`), never a word of
        // its own; the fixed words are the output format and the line count.
        let fixed = |a: &str| a == "short-iso" || a.parse::<u32>().is_ok();
        assert!(q.argv().iter().skip(1).all(|a| a.starts_with('-') || fixed(a)));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(input) = model::run_command::parse(&v) {
        assert!(input.script.len() <= model::run_command::MAX_SCRIPT_BYTES);
        assert!(input.positional.len() + input.env.len() <= model::run_command::MAX_PARAMETERS);
    }
});
