//! The API's request parser: any method and path must give a route or a clean error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (m, path) = s.split_once(' ').unwrap_or(("GET", s));
    let Ok(method) = api::route::Method::from_bytes(m.as_bytes()) else {
        return;
    };
    if let Ok(route) = api::route::parse(&method, path) {
        let _ = route.check_api_version(m);
    }
    let _ = api::route::parse_sub_list(&method, path);
    let _ = api::route::decode_segment(path);
});
