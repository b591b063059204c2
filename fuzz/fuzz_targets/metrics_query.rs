//! Azure Monitor's metrics query: any parameters must give a bounded query or a clean error, and
//! any query a bounded answer (or `BadRequest`) over a store with a few instances.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plan::metrics::{Sample, Store};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // One parameter per line, in `Params` order; an empty line is an absent parameter.
    let mut f = s.split('\n').map(|l| (!l.is_empty()).then_some(l));
    let mut next = || f.next().flatten();
    let p = model::metrics::Params {
        metricnames: next(),
        timespan: next(),
        interval: next(),
        aggregation: next(),
        filter: next(),
        top: next(),
        orderby: next(),
        result_type: next(),
        metricnamespace: next(),
        auto_adjust_timegrain: next(),
        rollupby: next(),
    };
    let now = 1_767_225_600;
    let Ok(q) = model::metrics::parse_query(&p, now) else {
        return;
    };
    let mut st = Store::default();
    for i in 0..3u64 {
        for k in 0..4u64 {
            let at_ms = (now - 3600 + k * 15) * 1000;
            let n = Some(k * 1000 + i);
            let sample = Sample { at_ms, cpu_ns: n, vcpus: 2, memory_used: n, memory_limit: Some(1 << 30), net_in: n, net_out: n };
            st.record("s", &format!("web_{i}"), Some(sample));
        }
    }
    if let Ok(r) = st.query("s", &q) {
        let points: usize = r.iter().flat_map(|m| &m.series).map(|s| s.points.len()).sum();
        assert!(points as u64 <= plan::metrics::MAX_POINTS);
    }
});
