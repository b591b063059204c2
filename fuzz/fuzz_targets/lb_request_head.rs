//! The L7 frontend's inline request-head parser, on bytes as a client sends them: no panic,
//! and whatever it leaves to hyper keeps the bytes it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    let mut parser = lb::codec::Parser::default();
    loop {
        let before = buf.clone();
        match parser.parse(&mut buf) {
            Ok(Some(head)) => {
                assert!(buf.len() < before.len(), "a head consumes bytes");
                assert!(!head.headers.contains_key("content-length"));
                assert!(!head.headers.contains_key("transfer-encoding"));
            }
            Ok(None) => {
                assert_eq!(buf, before);
                break;
            }
            Err(_) => {
                assert_eq!(buf, before, "bytes kept for hyper");
                break;
            }
        }
    }
});
