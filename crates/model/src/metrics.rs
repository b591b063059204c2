//! Azure Monitor's host metrics of a scale set, as `Microsoft.Insights/metrics` names them, and
//! the query of `GET {scale set}/providers/Microsoft.Insights/metrics` (api-version 2023-10-01):
//! metric names, timespan, interval, aggregations, the `VMName` filter, `top`, `orderby`,
//! `resultType`. Pure; bounded (at most 20 names, a timespan of at most 30 days).
//!
//! Errors are `BadRequest`, the code Azure Monitor answers for an unknown metric ("Failed to find
//! metric configuration ...") and, as far as the published spec says (it lists no codes), for
//! the other malformed parameters too.
use crate::ModelError;

/// The metrics' namespace.
pub const NAMESPACE: &str = "Microsoft.Compute/virtualMachineScaleSets";
/// The scale set's one dimension: the instance's VM name, `{vmss}_{instanceId}`.
pub const DIMENSION: &str = "VMName";
/// Azure's limit on names per request.
pub const MAX_METRICS: usize = 20;
/// The longest timespan a query may cover.
pub const MAX_TIMESPAN_SECS: u64 = 30 * 86_400;
/// Series per metric when `top` is not given (Azure's default), and the most it may ask.
pub const DEFAULT_TOP: usize = 10;
pub const MAX_TOP: usize = 1000;
/// Time grains a query may use (Azure's for host metrics), in seconds.
pub const GRAINS: &[u64] = &[60, 300, 900, 1800, 3600, 21_600, 43_200, 86_400];

const ERR: &str = "BadRequest";

/// A host metric of `Microsoft.Compute/virtualMachineScaleSets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    PercentageCpu,
    AvailableMemoryBytes,
    NetworkInTotal,
    NetworkOutTotal,
}

/// How values of a grain are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregation {
    Average,
    Minimum,
    Maximum,
    Total,
    Count,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::PercentageCpu,
        Metric::AvailableMemoryBytes,
        Metric::NetworkInTotal,
        Metric::NetworkOutTotal,
    ];

    /// Position in [`Metric::ALL`] (series store one slot per metric).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::PercentageCpu => "Percentage CPU",
            Metric::AvailableMemoryBytes => "Available Memory Bytes",
            Metric::NetworkInTotal => "Network In Total",
            Metric::NetworkOutTotal => "Network Out Total",
        }
    }

    /// Azure's `MetricUnit`.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::PercentageCpu => "Percent",
            _ => "Bytes",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Metric::PercentageCpu => "The percentage of allocated compute units that are currently in use by the Virtual Machine(s).",
            Metric::AvailableMemoryBytes => "Amount of physical memory, in bytes, immediately available for allocation to a process or for other uses in the Virtual Machine.",
            Metric::NetworkInTotal => "The number of bytes received on all network interfaces by the Virtual Machine(s) (incoming traffic).",
            Metric::NetworkOutTotal => "The number of bytes out on all network interfaces by the Virtual Machine(s) (outgoing traffic).",
        }
    }

    /// The aggregation returned when none is asked for.
    pub fn primary(self) -> Aggregation {
        match self {
            Metric::PercentageCpu | Metric::AvailableMemoryBytes => Aggregation::Average,
            _ => Aggregation::Total,
        }
    }

    /// The metric named `name`, in any case.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl Aggregation {
    pub const ALL: [Aggregation; 5] = [
        Aggregation::Average,
        Aggregation::Minimum,
        Aggregation::Maximum,
        Aggregation::Total,
        Aggregation::Count,
    ];

    /// Azure's `AggregationType` spelling (`Average`).
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Average => "Average",
            Aggregation::Minimum => "Minimum",
            Aggregation::Maximum => "Maximum",
            Aggregation::Total => "Total",
            Aggregation::Count => "Count",
        }
    }

    /// The data point's member (`average`).
    pub fn field(self) -> &'static str {
        match self {
            Aggregation::Average => "average",
            Aggregation::Minimum => "minimum",
            Aggregation::Maximum => "maximum",
            Aggregation::Total => "total",
            Aggregation::Count => "count",
        }
    }

    /// In any case; `sum` is `total` (as `orderby=sum asc` in Azure's examples).
    pub fn parse(s: &str) -> Option<Aggregation> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("sum") {
            return Some(Aggregation::Total);
        }
        Aggregation::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }
}

/// A query's time grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// One point per grain of this many seconds (one of [`GRAINS`]).
    Grain(u64),
    /// One point for the whole timespan.
    Full,
}

/// Which instances get a series of their own (`$filter` on `VMName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// No filter: one series across all instances.
    None,
    /// `VMName eq '*'`: one series per instance.
    All,
    /// `VMName eq 'a' or VMName eq 'b'`: these instances (any case), one series each.
    Only(Vec<String>),
}

/// A parsed metrics query. Times are Unix seconds, `start` inclusive and `end` exclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub metrics: Vec<Metric>,
    pub start: u64,
    pub end: u64,
    pub interval: Interval,
    /// `None`: each metric's primary aggregation.
    pub aggregations: Option<Vec<Aggregation>>,
    pub split: Split,
    pub top: usize,
    /// `orderby`: the aggregation series are ranked by, descending when true.
    pub order: Option<(Aggregation, bool)>,
    /// `resultType=Metadata`: series without data points.
    pub metadata_only: bool,
}

impl Query {
    /// What each point of `metric` carries.
    pub fn aggregations_of(&self, metric: Metric) -> Vec<Aggregation> {
        self.aggregations
            .clone()
            .unwrap_or_else(|| vec![metric.primary()])
    }

    /// The grain's length in seconds (`FULL`: the timespan's).
    pub fn grain_secs(&self) -> u64 {
        match self.interval {
            Interval::Grain(g) => g,
            Interval::Full => self.end - self.start,
        }
    }

    /// The start of the first point: the timespan's start at the grain's boundary.
    pub fn first_point(&self) -> u64 {
        match self.interval {
            Interval::Grain(g) => self.start - self.start % g,
            Interval::Full => self.start,
        }
    }

    /// Points per series.
    pub fn points(&self) -> u64 {
        (self.end - self.first_point()).div_ceil(self.grain_secs())
    }
}

/// The request's parameters as sent (absent: `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<'a> {
    pub metricnames: Option<&'a str>,
    pub timespan: Option<&'a str>,
    pub interval: Option<&'a str>,
    pub aggregation: Option<&'a str>,
    pub filter: Option<&'a str>,
    pub top: Option<&'a str>,
    pub orderby: Option<&'a str>,
    pub result_type: Option<&'a str>,
    pub metricnamespace: Option<&'a str>,
    /// `AutoAdjustTimegrain=true`: an unsupported interval becomes the nearest supported one.
    pub auto_adjust_timegrain: Option<&'a str>,
    /// Not supported: refused when given.
    pub rollupby: Option<&'a str>,
}

fn bad(message: impl Into<String>) -> ModelError {
    ModelError::new(ERR, message)
}

/// Parses and bounds a query; `now` (Unix seconds) ends the default timespan (the last hour).
pub fn parse_query(p: &Params, now: u64) -> Result<Query, ModelError> {
    if let Some(ns) = p.metricnamespace {
        if !ns.eq_ignore_ascii_case(NAMESPACE) {
            return Err(bad(format!(
                "Metric namespace '{ns}' is not supported for this resource; the namespace is {NAMESPACE}."
            )));
        }
    }
    let (start, end) = match p.timespan {
        Some(t) => parse_timespan(t, now)?,
        None => (now.saturating_sub(3600), now),
    };
    if p.rollupby.is_some_and(|r| !r.trim().is_empty()) {
        return Err(bad("The rollupby parameter is not supported here."));
    }
    let adjust = match p.auto_adjust_timegrain.map(str::trim) {
        None => false,
        Some(b) if b.eq_ignore_ascii_case("true") => true,
        Some(b) if b.eq_ignore_ascii_case("false") => false,
        Some(b) => {
            return Err(bad(format!(
                "Invalid AutoAdjustTimegrain '{b}': true or false."
            )))
        }
    };
    let split = p
        .filter
        .map(parse_filter)
        .transpose()?
        .unwrap_or(Split::None);
    Ok(Query {
        metrics: parse_names(p.metricnames)?,
        start,
        end,
        interval: p
            .interval
            .map(|i| parse_interval(i, adjust))
            .transpose()?
            .unwrap_or(Interval::Grain(60)),
        aggregations: p.aggregation.map(parse_aggregations).transpose()?,
        top: p.top.map(parse_top).transpose()?.unwrap_or(DEFAULT_TOP),
        order: p.orderby.map(parse_orderby).transpose()?,
        metadata_only: parse_result_type(p.result_type)?,
        split,
    })
}

fn parse_names(names: Option<&str>) -> Result<Vec<Metric>, ModelError> {
    // Without names Azure answers with the resource's default metric.
    let Some(names) = names.filter(|n| !n.trim().is_empty()) else {
        return Ok(vec![Metric::PercentageCpu]);
    };
    let parts: Vec<&str> = names.split(',').collect();
    if parts.len() > MAX_METRICS {
        return Err(bad(format!(
            "Requested metrics count: {} bigger than allowed max: {MAX_METRICS}",
            parts.len()
        )));
    }
    let mut out = Vec::new();
    for n in parts {
        let m = Metric::from_name(n).ok_or_else(|| unknown_metric(n))?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

fn unknown_metric(name: &str) -> ModelError {
    let valid: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    bad(format!(
        "Failed to find metric configuration for provider: Microsoft.Compute, resource Type: virtualMachineScaleSets, metric: {}, Valid metrics: {}",
        name.trim(),
        valid.join(",")
    ))
}

fn parse_interval(s: &str, adjust: bool) -> Result<Interval, ModelError> {
    if s.trim().eq_ignore_ascii_case("FULL") {
        return Ok(Interval::Full);
    }
    let secs = crate::vmss::parse_iso8601_duration(s.trim());
    let nearest = |d: u64| GRAINS.iter().copied().min_by_key(|g| g.abs_diff(d));
    let grain = match secs {
        Some(d) if GRAINS.contains(&d) => Some(d),
        Some(d) if adjust => nearest(d),
        _ => None,
    };
    grain.map(Interval::Grain).ok_or_else(|| {
        let valid: Vec<String> = GRAINS.iter().map(|g| iso_duration(*g)).collect();
        bad(format!(
            "Invalid interval '{s}'. Supported intervals are {} and FULL (or AutoAdjustTimegrain=true).",
            valid.join(", ")
        ))
    })
}

fn parse_aggregations(s: &str) -> Result<Vec<Aggregation>, ModelError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let a = Aggregation::parse(part).ok_or_else(|| {
            bad(format!(
                "Invalid aggregation '{}'. Supported aggregations are average, minimum, maximum, total and count.",
                part.trim()
            ))
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

fn parse_top(s: &str) -> Result<usize, ModelError> {
    s.trim()
        .parse()
        .ok()
        .filter(|t| (1..=MAX_TOP).contains(t))
        .ok_or_else(|| bad(format!("Invalid top '{s}': a number from 1 to {MAX_TOP}.")))
}

fn parse_orderby(s: &str) -> Result<(Aggregation, bool), ModelError> {
    let mut words = s.split_whitespace();
    let agg = words.next().and_then(Aggregation::parse);
    let desc = match words.next().map(str::to_ascii_lowercase).as_deref() {
        None | Some("asc") => Some(false),
        Some("desc") => Some(true),
        _ => None,
    };
    match (agg, desc, words.next()) {
        (Some(a), Some(d), None) => Ok((a, d)),
        _ => Err(bad(format!(
            "Invalid orderby '{s}': an aggregation optionally followed by asc or desc, e.g. 'average desc'."
        ))),
    }
}

fn parse_result_type(s: Option<&str>) -> Result<bool, ModelError> {
    match s.map(str::trim) {
        None => Ok(false),
        Some(t) if t.eq_ignore_ascii_case("Data") => Ok(false),
        Some(t) if t.eq_ignore_ascii_case("Metadata") => Ok(true),
        Some(t) => Err(bad(format!("Invalid resultType '{t}': Data or Metadata."))),
    }
}

/// `VMName eq 'x'` clauses joined by `or`; `'*'` splits by every instance.
pub fn parse_filter(s: &str) -> Result<Split, ModelError> {
    let invalid = || {
        bad(format!(
            "Invalid $filter '{s}': the dimension of this resource is {DIMENSION}, e.g. \"{DIMENSION} eq '*'\" or \"{DIMENSION} eq 'a' or {DIMENSION} eq 'b'\"."
        ))
    };
    let mut names = Vec::new();
    for clause in split_or(s).ok_or_else(invalid)? {
        let (dim, rest) = clause
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(invalid)?;
        let (op, value) = rest
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(invalid)?;
        let value = value.trim();
        let quoted = value.len() >= 2
            && value.starts_with('\'')
            && value.ends_with('\'')
            && !value[1..value.len() - 1].contains('\'');
        if !dim.eq_ignore_ascii_case(DIMENSION) || !op.eq_ignore_ascii_case("eq") || !quoted {
            return Err(invalid());
        }
        names.push(value[1..value.len() - 1].to_string());
    }
    if names.iter().any(|n| n == "*") {
        return Ok(Split::All);
    }
    Ok(Split::Only(names))
}

/// The clauses between ` or ` outside quotes; `None` for an empty filter or too many clauses.
fn split_or(s: &str) -> Option<Vec<&str>> {
    let (mut out, mut from, mut quoted) = (Vec::new(), 0, false);
    let lower = s.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted && b[i..].starts_with(b" or ") {
            out.push(&s[from..i]);
            from = i + 4;
            i += 3;
        }
        i += 1;
    }
    out.push(&s[from..]);
    let ok = !quoted && out.len() <= MAX_TOP && out.iter().all(|c| !c.trim().is_empty());
    ok.then_some(out)
}

/// `start/end`, `start/duration`, `duration/end` or a duration ending now.
pub fn parse_timespan(s: &str, now: u64) -> Result<(u64, u64), ModelError> {
    let invalid = |why: &str| {
        bad(format!(
            "Invalid timespan '{s}': {why}. Expected 'startDateTime_ISO/endDateTime_ISO', e.g. 2024-01-01T00:00:00Z/2024-01-01T01:00:00Z."
        ))
    };
    let dur = |x: &str| crate::vmss::parse_iso8601_duration(x.trim());
    let time = |x: &str| parse_datetime(x.trim());
    let (start, end) = match s.split_once('/') {
        Some((a, b)) => match (time(a), time(b), dur(a), dur(b)) {
            (Some(a), Some(b), ..) => (a, b),
            (Some(a), None, _, Some(d)) => (a, a.saturating_add(d)),
            (None, Some(b), Some(d), _) => (b.saturating_sub(d), b),
            _ => return Err(invalid("not two ISO 8601 times (or a time and a duration)")),
        },
        None => match dur(s) {
            Some(d) => (now.saturating_sub(d), now),
            None => return Err(invalid("not an ISO 8601 interval")),
        },
    };
    if end <= start {
        return Err(invalid("the end is not after the start"));
    }
    if end - start > MAX_TIMESPAN_SECS {
        return Err(invalid("longer than 30 days"));
    }
    Ok((start, end))
}

/// An ISO 8601 / RFC 3339 date-time (`2024-01-01T00:00:00Z`, fractions, `+hh:mm` offsets, a
/// date alone as midnight UTC) as Unix seconds; before 1970 is refused.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, "00:00:00Z"),
    };
    let num = digits;
    let parts: Vec<&str> = date.split('-').collect();
    let [y, mo, da] = parts[..] else {
        return None;
    };
    if y.len() != 4 || mo.len() != 2 || da.len() != 2 {
        return None;
    }
    let (y, mo, da) = (num(y)?, num(mo)?, num(da)?);
    if !(1..=12).contains(&mo) || !(1..=days_in(y, mo)).contains(&da) {
        return None;
    }
    let (clock, offset) = split_offset(time)?;
    let mut c = clock.split(':');
    let (h, mi) = (num(c.next()?)?, num(c.next()?)?);
    let sec = match c.next().map(|x| x.split_once('.').unwrap_or((x, "0"))) {
        Some((x, frac)) => {
            digits(frac)?;
            num(x)?
        }
        None => 0,
    };
    if c.next().is_some() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let t = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(t).ok()
}

/// A number of at most 9 decimal digits, nothing else (no sign).
fn digits(x: &str) -> Option<i64> {
    let ok = !x.is_empty() && x.len() <= 9 && x.bytes().all(|c| c.is_ascii_digit());
    ok.then(|| x.parse().ok()).flatten()
}

/// Splits `hh:mm:ss[.f](Z|±hh:mm)` into the clock and the offset in seconds (none: UTC).
fn split_offset(t: &str) -> Option<(&str, i64)> {
    if let Some(c) = t.strip_suffix(['Z', 'z']) {
        return Some((c, 0));
    }
    match t.rfind(['+', '-']) {
        Some(i) => {
            let (h, m) = t[i + 1..].split_once(':').unwrap_or((&t[i + 1..], "00"));
            let two = |x: &str| (x.len() == 2).then(|| digits(x)).flatten();
            let (h, m) = (two(h)?, two(m)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if t.as_bytes()[i] == b'-' { -1 } else { 1 };
            Some((&t[..i], sign * (h * 3600 + m * 60)))
        }
        None => Some((t, 0)),
    }
}

fn days_in(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

use crate::timezone::days_from_civil;

/// Unix seconds as `2024-01-01T00:00:00Z`.
pub fn format_datetime(secs: u64) -> String {
    crate::timezone::format_utc(secs as i64)
}

/// Seconds as an ISO 8601 duration with days (`P1D`, `PT5M`, `P1DT12H`).
pub fn iso_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let mut out = String::from("P");
    if d > 0 {
        out += &format!("{d}D");
    }
    if h + m + s > 0 || d == 0 {
        out.push('T');
        for (n, u) in [(h, 'H'), (m, 'M'), (s, 'S')] {
            if n > 0 {
                out += &format!("{n}{u}");
            }
        }
        if h + m + s == 0 {
            out += "0S";
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

    #[test]
    fn datetimes() {
        let cases = [
            ("2024-01-01T00:00:00Z", Some(T0)),
            ("2024-01-01T00:00:00.000Z", Some(T0)),
            ("2024-01-01T00:00:00.1234567Z", Some(T0)),
            ("2024-01-01T00:00:00.x1Z", None),
            ("2024-01-01T01:00:00+01:00", Some(T0)),
            ("2023-12-31T23:30:00-00:30", Some(T0)),
            ("2024-01-01", Some(T0)),
            ("2024-02-29T00:00:00Z", Some(T0 + 59 * 86_400)),
            ("2023-02-29T00:00:00Z", None),
            ("2024-13-01T00:00:00Z", None),
            ("2024-01-01T24:00:00Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("yesterday", None),
            ("", None),
            ("2024-01-01T00:00:00+99:00", None),
            ("2024-01-01T00:00:00+999999999999999999", None),
            ("2024-01-01T00:00:00+-1:00", None),
            ("2024-01-01T999999999999:00:00Z", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_datetime(s), want, "{s}");
        }
        assert_eq!(format_datetime(T0 + 61), "2024-01-01T00:01:01Z");
        assert_eq!(iso_duration(86_400), "P1D");
        assert_eq!(iso_duration(300), "PT5M");
        assert_eq!(iso_duration(4 * 3600), "PT4H");
        assert_eq!(iso_duration(0), "PT0S");
    }

    #[test]
    fn timespans() {
        let now = T0 + 7200;
        let ok = [
            ("2024-01-01T00:00:00Z/2024-01-01T01:00:00Z", (T0, T0 + 3600)),
            ("2024-01-01T00:00:00Z/PT30M", (T0, T0 + 1800)),
            ("PT1H/2024-01-01T01:00:00Z", (T0, T0 + 3600)),
            ("PT1H", (now - 3600, now)),
            ("P30D", (now - 30 * 86_400, now)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_timespan(s, now).unwrap(), want, "{s}");
        }
        for s in [
            "2024-01-01T01:00:00Z/2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z/2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z/2024-03-01T00:00:00Z",
            "P31D",
            "a/b",
            "",
            "/",
        ] {
            let e = parse_timespan(s, now).unwrap_err();
            assert_eq!(e.code, "BadRequest", "{s}");
        }
    }

    #[test]
    fn filters() {
        let ok = [
            ("VMName eq '*'", Split::All),
            ("vmname EQ 'web_1'", Split::Only(vec!["web_1".into()])),
            (
                "VMName eq 'a' or VMName eq 'b or c'",
                Split::Only(vec!["a".into(), "b or c".into()]),
            ),
            ("VMName eq 'a' OR VMName eq '*'", Split::All),
        ];
        for (s, want) in ok {
            assert_eq!(parse_filter(s).unwrap(), want, "{s}");
        }
        for s in [
            "",
            "Tier eq '*'",
            "VMName ne 'a'",
            "VMName eq a",
            "VMName eq 'a' and VMName eq 'b'",
            "VMName eq 'a' or ",
            "VMName eq 'unterminated",
        ] {
            assert!(parse_filter(s).is_err(), "{s}");
        }
    }

    #[test]
    fn queries() {
        let now = T0 + 3600;
        let q = parse_query(&Params::default(), now).unwrap();
        assert_eq!(q.metrics, vec![Metric::PercentageCpu]);
        assert_eq!((q.start, q.end), (T0, now));
        assert_eq!(q.interval, Interval::Grain(60));
        assert_eq!(
            q.aggregations_of(Metric::NetworkInTotal),
            vec![Aggregation::Total]
        );
        assert_eq!(
            (q.split.clone(), q.top, q.order, q.metadata_only),
            (Split::None, 10, None, false)
        );
        assert_eq!(q.points(), 60);
        let p = Params {
            metricnames: Some("percentage cpu,Network In Total,Percentage CPU"),
            timespan: Some("2024-01-01T00:00:30Z/2024-01-01T00:10:00Z"),
            interval: Some("PT5M"),
            aggregation: Some("Average,count,SUM"),
            filter: Some("VMName eq '*'"),
            top: Some("3"),
            orderby: Some("average desc"),
            result_type: Some("metadata"),
            metricnamespace: Some("microsoft.compute/virtualmachinescalesets"),
            ..Default::default()
        };
        let q = parse_query(&p, now).unwrap();
        assert_eq!(
            q.metrics,
            vec![Metric::PercentageCpu, Metric::NetworkInTotal]
        );
        use Aggregation::*;
        assert_eq!(q.aggregations, Some(vec![Average, Count, Total]));
        assert_eq!((q.first_point(), q.points()), (T0, 2));
        assert_eq!(
            (q.split, q.top, q.order, q.metadata_only),
            (Split::All, 3, Some((Average, true)), true)
        );
        let adjusted = Params {
            interval: Some("PT2M"),
            auto_adjust_timegrain: Some("True"),
            ..Default::default()
        };
        assert_eq!(
            parse_query(&adjusted, now).unwrap().interval,
            Interval::Grain(60)
        );
        let full = Params {
            interval: Some("full"),
            timespan: Some("PT4H"),
            ..Default::default()
        };
        let q = parse_query(&full, now).unwrap();
        assert_eq!((q.grain_secs(), q.points()), (4 * 3600, 1));
        let many = "Percentage CPU,".repeat(21);
        let bad: Vec<Params> = vec![
            Params {
                metricnames: Some("CPU Credits Consumed"),
                ..Default::default()
            },
            Params {
                metricnames: Some(&many),
                ..Default::default()
            },
            Params {
                interval: Some("PT2M"),
                ..Default::default()
            },
            Params {
                interval: Some("1 minute"),
                ..Default::default()
            },
            Params {
                aggregation: Some("median"),
                ..Default::default()
            },
            Params {
                top: Some("0"),
                ..Default::default()
            },
            Params {
                top: Some("-1"),
                ..Default::default()
            },
            Params {
                orderby: Some("average sideways"),
                ..Default::default()
            },
            Params {
                result_type: Some("Everything"),
                ..Default::default()
            },
            Params {
                metricnamespace: Some("Microsoft.Storage/storageAccounts"),
                ..Default::default()
            },
            Params {
                filter: Some("LUN eq '0'"),
                ..Default::default()
            },
            Params {
                rollupby: Some("VMName"),
                ..Default::default()
            },
            Params {
                auto_adjust_timegrain: Some("yes"),
                ..Default::default()
            },
        ];
        for p in bad {
            let e = parse_query(&p, now).unwrap_err();
            assert_eq!(e.code, "BadRequest", "{p:?}");
        }
        let e = parse_query(
            &Params {
                metricnames: Some("Disk Read Bytes"),
                ..Default::default()
            },
            now,
        )
        .unwrap_err();
        assert!(e.message.starts_with("Failed to find metric configuration for provider: Microsoft.Compute, resource Type: virtualMachineScaleSets, metric: Disk Read Bytes, Valid metrics: Percentage CPU,"), "{}", e.message);
    }
}
