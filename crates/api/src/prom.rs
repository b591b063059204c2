//! Prometheus' text exposition format 0.0.4, pure: families of samples in, text out.
//!
//! Each family's `# HELP` and `# TYPE` come once, before its samples, which stay contiguous
//! (families given twice under one name are merged, first appearance first). Label values
//! escape `\`, `"` and newlines; help texts `\` and newlines. A histogram's buckets are
//! cumulative, end with `le="+Inf"` (equal to `_count`) and are followed by `_sum` and
//! `_count`.
use std::fmt::Write;

/// The `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label names are static (and valid); values are escaped when rendered.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub fn push(&mut self, labels: Labels, value: f64) {
        self.samples.push(Sample {
            labels,
            value: Value::Number(value),
        });
    }

    pub fn push_histogram(&mut self, labels: Labels, h: Hist) {
        self.samples.push(Sample {
            labels,
            value: Value::Histogram(h),
        });
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Histogram(Hist),
}

/// A histogram: observations per bucket (not cumulative; `bounds.len() + 1` entries, the last
/// above every bound) and their sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Hist {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Hist {
    /// The histogram of `values` over `bounds` (ascending upper bounds, `le`).
    pub fn of(bounds: &[f64], values: impl IntoIterator<Item = f64>) -> Hist {
        let mut h = Hist {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        };
        for v in values {
            h.counts[bounds.partition_point(|&b| b < v)] += 1;
            h.sum += v;
        }
        h
    }
}

/// The whole exposition.
pub fn render(families: &[Family]) -> String {
    let mut order: Vec<&'static str> = Vec::new();
    for f in families {
        if !order.contains(&f.name) {
            order.push(f.name);
        }
    }
    let mut out = String::new();
    for name in order {
        let mut same = families.iter().filter(|f| f.name == name);
        let Some(first) = same.next() else { continue };
        let _ = writeln!(out, "# HELP {name} {}", escape_help(first.help));
        let _ = writeln!(out, "# TYPE {name} {}", first.kind.name());
        for f in std::iter::once(first).chain(same) {
            for s in &f.samples {
                sample(&mut out, name, s);
            }
        }
    }
    out
}

fn sample(out: &mut String, name: &str, s: &Sample) {
    match &s.value {
        Value::Number(v) => line(out, name, "", &s.labels, None, *v),
        Value::Histogram(h) => {
            let mut cumulative = 0u64;
            for (i, n) in h.counts.iter().enumerate() {
                cumulative += n;
                let le = h
                    .bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| num(*b));
                line(
                    out,
                    name,
                    "_bucket",
                    &s.labels,
                    Some(&le),
                    cumulative as f64,
                );
            }
            line(out, name, "_sum", &s.labels, None, h.sum);
            line(out, name, "_count", &s.labels, None, cumulative as f64);
        }
    }
}

fn line(out: &mut String, name: &str, suffix: &str, labels: &Labels, le: Option<&str>, v: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let all = labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(le.map(|le| ("le", le)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&num(v));
    out.push('\n');
}

/// Go's spelling of special values; integers without a fraction.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_type_once_per_family_samples_contiguous() {
        let mut a = Family::new("x_total", Kind::Counter, "Things.");
        a.push(vec![("k", "1".into())], 1.0);
        let b = Family::new("y", Kind::Gauge, "Other.");
        let mut a2 = Family::new("x_total", Kind::Counter, "Things.");
        a2.push(vec![("k", "2".into())], 2.0);
        let text = render(&[a, b, a2]);
        assert_eq!(
            text,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{k=\"1\"} 1\nx_total{k=\"2\"} 2\n\
             # HELP y Other.\n# TYPE y gauge\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help() {
        let mut f = Family::new("e", Kind::Gauge, "A \\ back\nslash.");
        f.push(vec![("a", "q\"b\\s\nn".into()), ("z", String::new())], 0.5);
        f.push(vec![], f64::NAN);
        f.push(vec![], f64::INFINITY);
        f.push(vec![], -3.0);
        assert_eq!(
            render(&[f]),
            "# HELP e A \\\\ back\\nslash.\n# TYPE e gauge\n\
             e{a=\"q\\\"b\\\\s\\nn\",z=\"\"} 0.5\ne NaN\ne +Inf\ne -3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Hist::of(&[0.1, 1.0, 2.5], [0.05, 0.1, 0.7, 3.0, 9.0]);
        assert_eq!(h.counts, vec![2, 1, 0, 2]);
        let mut f = Family::new("d_seconds", Kind::Histogram, "Durations.");
        f.push_histogram(vec![("r", "a".into())], h);
        assert_eq!(
            render(&[f]),
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{r=\"a\",le=\"0.1\"} 2\n\
             d_seconds_bucket{r=\"a\",le=\"1\"} 3\n\
             d_seconds_bucket{r=\"a\",le=\"2.5\"} 3\n\
             d_seconds_bucket{r=\"a\",le=\"+Inf\"} 5\n\
             d_seconds_sum{r=\"a\"} 12.85\n\
             d_seconds_count{r=\"a\"} 5\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(num(137.0), "137");
        assert_eq!(num(0.001), "0.001");
        assert_eq!(num(1e20), "100000000000000000000");
        assert_eq!(num(-0.25), "-0.25");
    }
}
