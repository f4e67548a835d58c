//! The daemon's Prometheus endpoint seen from outside: an HTTP GET, and a reader of the text
//! exposition format (0.0.4) written from the format's description, independent of the
//! encoder the daemon uses, that rejects what a Prometheus server would reject.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// What a scrape returned.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Scrape {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` over HTTP/1.1 (`Connection: close`), with an optional `Accept`.
/// Call inside the namespace the listener is in. Bounded: 5 s to connect and for each read.
pub fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<Scrape> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Scrape {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed and checked exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Parses `text` and checks it: every line well formed, every sample in a family declared
    /// by a `# TYPE` before it, families not interleaved, no series twice, counters not
    /// negative, histograms' buckets cumulative and agreeing with `_count`.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut exposition = Exposition::default();
        let mut current: Option<String> = None;
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut series: BTreeSet<String> = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut words = rest.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        check_name(name).map_err(at)?;
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at(format!("unknown type {kind}")));
                        }
                        if let Some(previous) = current.replace(name.to_owned()) {
                            closed.insert(previous);
                        }
                        if closed.contains(name) {
                            return Err(at(format!("{name} declared again")));
                        }
                        let family = exposition.families.entry(name.to_owned()).or_default();
                        if !family.kind.is_empty() || !family.samples.is_empty() {
                            return Err(at(format!("TYPE of {name} after its samples or twice")));
                        }
                        family.kind = kind.to_owned();
                    }
                    (Some("HELP"), Some(name), help) => {
                        check_name(name).map_err(at)?;
                        let family = exposition.families.entry(name.to_owned()).or_default();
                        if family.help.replace(help.unwrap_or("").to_owned()).is_some() {
                            return Err(at(format!("second HELP for {name}")));
                        }
                    }
                    _ => {} // any other comment
                }
                continue;
            }
            let sample = parse_sample(line).map_err(at)?;
            let family_name = current
                .as_deref()
                .filter(|f| belongs(&sample.name, f, &exposition.families[*f].kind))
                .ok_or_else(|| at(format!("{} has no TYPE before it", sample.name)))?
                .to_owned();
            let key = format!("{}{:?}", sample.name, sample.labels);
            if !series.insert(key) {
                return Err(at("the same series twice".into()));
            }
            let family = exposition.families.get_mut(&family_name).expect("declared");
            if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
                return Err(at("a counter below zero".into()));
            }
            family.samples.push(sample);
        }
        for (name, family) in &exposition.families {
            if family.kind.is_empty() {
                return Err(format!("{name} has HELP but no TYPE"));
            }
            if family.kind == "histogram" {
                check_histogram(name, family)?;
            }
        }
        Ok(exposition)
    }

    /// The value of the sample `name` whose labels include every one of `labels`, if exactly
    /// one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            });
        let first = matching.next()?;
        matching.next().is_none().then_some(first.value)
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }
}

/// Whether a sample named `sample` belongs to family `family` of type `kind`.
fn belongs(sample: &str, family: &str, kind: &str) -> bool {
    match sample.strip_prefix(family) {
        Some("") => kind != "histogram",
        Some("_bucket") => kind == "histogram",
        Some("_sum" | "_count") => kind == "histogram" || kind == "summary",
        _ => false,
    }
}

fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    // Per label set (without `le`): the buckets in order, and the count.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le");
        let key = format!("{labels:?}");
        if sample.name.ends_with("_bucket") {
            let le = le.ok_or_else(|| format!("{name}: a bucket without le"))?;
            let bound = parse_value(&le).map_err(|e| format!("{name}: le {e}"))?;
            buckets.entry(key).or_default().push((bound, sample.value));
        } else if sample.name.ends_with("_count") {
            counts.insert(key, sample.value);
        }
    }
    for (key, list) in &buckets {
        for pair in list.windows(2) {
            if !(pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1) {
                return Err(format!(
                    "{name}{key}: buckets out of order or not cumulative"
                ));
            }
        }
        let last = list.last().expect("not empty");
        if last.0 != f64::INFINITY {
            return Err(format!("{name}{key}: no +Inf bucket"));
        }
        if counts.get(key) != Some(&last.1) {
            return Err(format!("{name}{key}: _count differs from the +Inf bucket"));
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("`{name}` is not a metric name"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
            let key = key.trim();
            let valid_key = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key {
                return Err(format!("`{key}` is not a label name"));
            }
            let (value, after) = label_value(after)?;
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            rest = after;
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("`{timestamp}` is not a timestamp"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A quoted label value up to its closing quote (the opening one already read), unescaped.
fn label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("bad escape {other:?}")),
            },
            '\n' => return Err("a newline in a label value".into()),
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("`{text}` is not a value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP x_total Things.
# TYPE x_total counter
x_total{reason=\"a\\\"b\"} 3
x_total{reason=\"c\"} 0
# TYPE d_seconds histogram
d_seconds_bucket{le=\"0.1\"} 1
d_seconds_bucket{le=\"+Inf\"} 2
d_seconds_sum 0.3
d_seconds_count 2
# TYPE up gauge
up 1
";

    #[test]
    fn a_good_exposition_reads_back() {
        let e = Exposition::parse(GOOD).unwrap();
        assert_eq!(e.value("x_total", &[("reason", "a\"b")]), Some(3.0));
        assert_eq!(e.value("x_total", &[]), None, "two match");
        assert_eq!(e.value("d_seconds_count", &[]), Some(2.0));
        assert_eq!(
            e.family("x_total").unwrap().help.as_deref(),
            Some("Things.")
        );
        assert_eq!(e.value("up", &[]), Some(1.0));
    }

    #[test]
    fn broken_expositions_are_rejected() {
        for (bad, why) in [
            ("y 1\n", "no TYPE"),
            ("# TYPE y gauge\ny 1\ny 2\n", "twice"),
            ("# TYPE y gauge\ny{a=\"1} 1\n", "unterminated"),
            ("# TYPE y gauge\ny{1a=\"1\"} 1\n", "label name"),
            ("# TYPE y gauge\ny one\n", "not a value"),
            ("# TYPE y counter\ny -1\n", "below zero"),
            ("# TYPE y gauge\n# TYPE z gauge\ny 1\n", "no TYPE"),
            (
                "# TYPE y gauge\ny 1\n# TYPE z gauge\n# TYPE y gauge\n",
                "declared again",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
                "_count",
            ),
            ("# TYPE h histogram\nh 1\n", "no TYPE"),
        ] {
            let error = Exposition::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }
}
