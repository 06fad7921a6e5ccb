//! A strict reader of the OpenMetrics text format, written independently of the encoder, so
//! tests can parse an exposition back, check that it is well formed, and read exact values.
//!
//! Checks: every line is a `# HELP`, `# TYPE` or `# UNIT` comment or a sample; the exposition
//! ends with `# EOF` and nothing follows; metric and label names are valid; label values are
//! quoted with only `\\`, `\"` and `\n` escapes; values are numbers; a family is declared once
//! and before its samples, and each sample's name fits its family's type (`_total`/`_created`
//! for a counter, `_bucket`/`_sum`/`_count`/`_created` for a histogram); no series appears
//! twice; a counter is never negative; a histogram's buckets have increasing `le` bounds, are
//! cumulative, end with `+Inf`, and the `+Inf` bucket equals `_count`.

use std::collections::{BTreeMap, BTreeSet};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<MetricFamily>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

const KINDS: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "info",
    "stateset",
    "unknown",
];

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// Splits `name{labels} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("sample {line:?} has no value"))?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("{name:?} is not a valid metric name"));
    }
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut end = None;
        loop {
            // A label name, or the closing brace.
            let start = match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                Some((i, _)) => *i,
                None => break,
            };
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or("a label has no '='")?;
            let lname = &r[start..eq];
            if !valid_label_name(lname) {
                return Err(format!("{lname:?} is not a valid label name"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {lname}: the value is not quoted"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("label {lname}: bad escape \\{other:?}")),
                    },
                    '\n' => return Err(format!("label {lname}: raw newline")),
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("label {lname}: unterminated value"));
            }
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("label {lname} appears twice"));
            }
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("labels must be separated by ','".into()),
            }
        }
        let end = end.ok_or("labels are not closed with '}'")?;
        rest = &r[end + 1..];
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("{name}: exactly one space must separate the value"))?;
    let mut parts = rest.split(' ');
    let v = parts.next().unwrap_or_default();
    let value = parse_value(v).ok_or_else(|| format!("{name}: {v:?} is not a number"))?;
    if let Some(ts) = parts.next()
        && parse_value(ts).is_none()
    {
        return Err(format!("{name}: timestamp {ts:?} is not a number"));
    }
    if parts.next().is_some() {
        return Err(format!(
            "{name}: trailing fields (exemplars are not expected here)"
        ));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => {
            &["_bucket", "_sum", "_count", "_created", "_gcount", "_gsum"]
        }
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses and checks an exposition (see the module docs).
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    let mut declared = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut eof = false;
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.last() != Some(&"") {
        return Err(ParseError {
            line: lines.len(),
            msg: "the exposition must end with a newline".into(),
        });
    }
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        let n = i + 1;
        let err = |msg: String| ParseError { line: n, msg };
        if eof {
            return Err(err("text after # EOF".into()));
        }
        if *line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            let (what, name, rest) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next(),
            );
            if !valid_metric_name(name) {
                return Err(err(format!("{name:?} is not a valid metric family name")));
            }
            let same = out.families.last().is_some_and(|f| f.name == name);
            if !same {
                if !declared.insert(name.to_string()) {
                    return Err(err(format!("family {name} is declared twice")));
                }
                out.families.push(MetricFamily {
                    name: name.to_string(),
                    kind: "unknown".into(),
                    help: None,
                    unit: None,
                    samples: Vec::new(),
                });
            }
            let fam = out.families.last_mut().expect("pushed above");
            if !fam.samples.is_empty() {
                return Err(err(format!("{what} of {name} after its samples")));
            }
            match what {
                "TYPE" => {
                    let kind = rest.unwrap_or_default();
                    if !KINDS.contains(&kind) {
                        return Err(err(format!("{kind:?} is not a metric type")));
                    }
                    fam.kind = kind.to_string();
                }
                "HELP" => fam.help = Some(rest.unwrap_or_default().to_string()),
                "UNIT" => {
                    let unit = rest.unwrap_or_default();
                    if !name.ends_with(&format!("_{unit}")) {
                        return Err(err(format!("{name}: unit {unit} is not its suffix")));
                    }
                    fam.unit = Some(unit.to_string());
                }
                other => return Err(err(format!("unknown comment # {other}"))),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err(format!(
                "{line:?} is neither a sample nor a known comment"
            )));
        }
        let s = parse_sample(line).map_err(err)?;
        let fam = out
            .families
            .last_mut()
            .ok_or_else(|| err(format!("sample {} before any # TYPE", s.name)))?;
        let fits = suffixes(&fam.kind)
            .iter()
            .any(|suf| s.name == format!("{}{suf}", fam.name));
        if !fits {
            return Err(err(format!(
                "sample {} does not belong to {} family {}",
                s.name, fam.kind, fam.name
            )));
        }
        if fam.kind == "counter"
            && s.name.ends_with("_total")
            && (s.value < 0.0 || s.value.is_nan())
        {
            return Err(err(format!("counter {} is negative", s.name)));
        }
        let key = format!("{}{:?}", s.name, s.labels);
        if !series.insert(key) {
            return Err(err(format!(
                "series {} {:?} appears twice",
                s.name, s.labels
            )));
        }
        fam.samples.push(s);
    }
    if !eof {
        return Err(ParseError {
            line: lines.len(),
            msg: "the exposition does not end with # EOF".into(),
        });
    }
    for f in &out.families {
        if f.kind == "histogram" {
            check_histogram(f)?;
        }
    }
    Ok(out)
}

fn check_histogram(f: &MetricFamily) -> Result<(), ParseError> {
    let err = |msg: String| ParseError { line: 0, msg };
    let mut by_set: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<Labels, f64> = BTreeMap::new();
    for s in &f.samples {
        let mut rest = s.labels.clone();
        if s.name.ends_with("_bucket") {
            let le = rest
                .remove("le")
                .ok_or_else(|| err(format!("{}: a bucket without le", f.name)))?;
            let le = parse_value(&le).ok_or_else(|| err(format!("{}: le {le:?}", f.name)))?;
            by_set.entry(rest).or_default().push((le, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert(rest, s.value);
        }
    }
    for (labels, buckets) in &by_set {
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                return Err(err(format!(
                    "{} {labels:?}: buckets not increasing and cumulative",
                    f.name
                )));
            }
        }
        let last = buckets.last().expect("non-empty");
        if last.0 != f64::INFINITY {
            return Err(err(format!("{} {labels:?}: no +Inf bucket", f.name)));
        }
        if counts.get(labels) != Some(&last.1) {
            return Err(err(format!(
                "{} {labels:?}: _count {:?} is not the +Inf bucket {}",
                f.name,
                counts.get(labels),
                last.1
            )));
        }
    }
    Ok(())
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The sum over samples `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.iter().flat_map(|f| f.samples.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_ops Operations.\n# TYPE a_ops counter\na_ops_total{op=\"ADD\",x=\"q\\\"\\\\\\n\"} 3\n\
# TYPE b gauge\nb 1.5e3\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\n\
h_seconds_sum{n=\"a\"} 0.5\nh_seconds_count{n=\"a\"} 2\nh_seconds_bucket{n=\"a\",le=\"0.1\"} 1\n\
h_seconds_bucket{n=\"a\",le=\"+Inf\"} 2\n# EOF\n";

    #[test]
    fn reads_a_good_exposition() {
        let e = parse(GOOD).unwrap();
        assert_eq!(
            e.get("a_ops_total", &[("op", "ADD"), ("x", "q\"\\\n")]),
            Some(3.0)
        );
        assert_eq!(e.get("b", &[]), Some(1500.0));
        assert_eq!(e.sum("h_seconds_count", &[]), 2.0);
        assert_eq!(
            e.family("h_seconds").unwrap().unit.as_deref(),
            Some("seconds")
        );
    }

    #[test]
    fn refuses_bad_ones() {
        let bad = [
            ("no eof", GOOD.replace("# EOF\n", "")),
            ("after eof", format!("{GOOD}b 1\n")),
            ("bad name", GOOD.replace("b 1.5e3", "1b 1")),
            ("bad value", GOOD.replace("b 1.5e3", "b one")),
            ("two spaces", GOOD.replace("b 1.5e3", "b  1")),
            ("wrong suffix", GOOD.replace("a_ops_total", "a_ops")),
            ("negative counter", GOOD.replace("} 3", "} -3")),
            ("bad escape", GOOD.replace("\\\\\\n", "\\t")),
            ("unquoted", GOOD.replace("op=\"ADD\"", "op=ADD")),
            (
                "count mismatch",
                GOOD.replace("h_seconds_count{n=\"a\"} 2", "h_seconds_count{n=\"a\"} 3"),
            ),
            (
                "not cumulative",
                GOOD.replace("le=\"0.1\"} 1", "le=\"0.1\"} 5"),
            ),
            ("no inf", GOOD.replace("le=\"+Inf\"", "le=\"1\"")),
            (
                "twice",
                GOOD.replace("# TYPE b gauge\nb 1.5e3\n", "# TYPE b gauge\nb 1\nb 2\n"),
            ),
            ("redeclared", format!("# TYPE b gauge\nb 1\n{GOOD}")),
            ("no type", "x 1\n# EOF\n".to_string()),
            ("no newline", GOOD.trim_end().to_string()),
        ];
        for (what, text) in bad {
            assert!(parse(&text).is_err(), "{what}: accepted\n{text}");
        }
    }
}
