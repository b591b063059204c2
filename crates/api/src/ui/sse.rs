//! Server-sent events, pure: the `text/event-stream` framing of one event, and the request
//! rate between two readings of a counter (what the live views show per instance).

/// Longest `data` one event carries; longer data is cut (on a character boundary).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One event: `event:` (a name without line breaks), optional `id:`, then each line of `data`
/// as a `data:` line (CR, LF and CRLF all end a line, as the parser splits them), then a blank
/// line.
pub fn event(name: &str, id: Option<u64>, data: &str) -> String {
    let data = truncate(data, MAX_EVENT_BYTES);
    let mut out = String::with_capacity(data.len() + 32);
    let name: String = name.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    out.push_str("event: ");
    out.push_str(&name);
    out.push('\n');
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A comment line: keeps idle connections open through proxies, ignored by `EventSource`.
pub fn comment(text: &str) -> String {
    let text: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    format!(": {text}\n\n")
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Requests per second between two readings `(at_ms, requests)` of one backend's counter;
/// `None` without an earlier reading, when time did not move or the counter was reset.
pub fn rate(prev: Option<(u64, u64)>, cur: (u64, u64)) -> Option<f64> {
    let (t0, n0) = prev?;
    let (t1, n1) = cur;
    if t1 <= t0 || n1 < n0 {
        return None;
    }
    Some((n1 - n0) as f64 * 1000.0 / (t1 - t0) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_frame_every_line_of_their_data() {
        let cases = [
            ("view", None, "{}", "event: view\ndata: {}\n\n"),
            ("line", Some(7), "a", "event: line\nid: 7\ndata: a\n\n"),
            ("line", None, "a\nb", "event: line\ndata: a\ndata: b\n\n"),
            (
                "line",
                None,
                "a\r\nb\rc",
                "event: line\ndata: a\ndata: b\ndata: c\n\n",
            ),
            ("line", None, "", "event: line\ndata: \n\n"),
            ("li\nne", None, "x", "event: line\ndata: x\n\n"),
            // A line that looks like a field stays data.
            (
                "line",
                None,
                "\nevent: evil",
                "event: line\ndata: \ndata: event: evil\n\n",
            ),
        ];
        for (name, id, data, want) in cases {
            assert_eq!(event(name, id, data), want, "{name:?} {data:?}");
        }
    }

    #[test]
    fn long_data_is_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_EVENT_BYTES); // two bytes each
        let e = event("x", None, &s);
        let data = e.strip_prefix("event: x\ndata: ").unwrap().trim_end();
        assert_eq!(data.len(), MAX_EVENT_BYTES);
        assert!(data.chars().all(|c| c == 'é'));
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(comment("keep-alive"), ": keep-alive\n\n");
        assert_eq!(comment("a\nb"), ": ab\n\n");
    }

    #[test]
    fn rates_need_two_readings_forward_in_time() {
        assert_eq!(rate(None, (1000, 5)), None);
        assert_eq!(rate(Some((1000, 5)), (2000, 15)), Some(10.0));
        assert_eq!(rate(Some((1000, 5)), (1500, 5)), Some(0.0));
        assert_eq!(rate(Some((1000, 5)), (1000, 9)), None);
        assert_eq!(rate(Some((1000, 50)), (2000, 3)), None);
    }
}
