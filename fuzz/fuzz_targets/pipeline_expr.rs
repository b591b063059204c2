//! Conditions and expressions: parse, then evaluate against variables that are 64 KiB long,
//! so nested `replace`/`format` calls reach the string caps; results stay within them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipeline::expr::{self, Context, Value, MAX_STRING_BYTES};

struct Big(String);

impl Context for Big {
    fn lookup(&self, _root: &str, _path: &[String]) -> Value {
        Value::Str(self.0.clone())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(e) = expr::parse(s) else {
        return;
    };
    let ctx = Big("ab".repeat(32 * 1024));
    if let Ok(Value::Str(out)) = expr::eval(&e, &ctx) {
        assert!(out.len() <= MAX_STRING_BYTES, "{} bytes", out.len());
    }
    let _ = expr::eval_condition(s, &ctx);
});
