//! The dashboard's inputs: a Cookie header, a view's query string, one-time and CSRF secrets
//! and event data never panic, and a session is only ever opened by a minted secret.
#![no_main]
use api::ui::{session, sse, views};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(4, '\n');
    let (cookie, query, once, csrf) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let sid = session::cookie(cookie, "scaleset_session_7150");
    let _ = views::View::parse(&api::parse_query(query));
    let mut st = session::Sessions::default();
    st.add_once("minted", 0);
    if st.sign_in(once, "sid", "tok", 1).is_ok() {
        assert_eq!(once, "minted");
    }
    let _ = st.check_mutation(sid, Some(csrf), 2);
    let ev = sse::event(query, Some(1), csrf);
    assert!(ev.ends_with("\n\n"));
});
