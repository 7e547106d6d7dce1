//! Helpers for the services' tests: scrape a metrics endpoint over plain HTTP and read
//! one sample out of the Prometheus text format.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` from `addr`; the body.
///
/// # Errors
/// When the endpoint cannot be reached or does not answer 200.
pub async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    match get(addr, "/metrics").await? {
        (200, body) => Ok(body),
        (status, _) => Err(std::io::Error::other(format!("answered {status}"))),
    }
}

/// `GET path` from `addr`: the status code and the body.
///
/// # Errors
/// When the endpoint cannot be reached or the answer is not HTTP.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {head}")))?;
    Ok((status, body.to_owned()))
}

/// The sum of the samples named `name` whose labels include every `(key, value)` of
/// `labels` (0 when there is none).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels.iter().all(|(key, want)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{key}=\"{want}\""))
            });
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// What `promtool check metrics` would object to in a scrape, and what breaks
/// aggregation across replicas: a metric family without `# HELP` or `# TYPE`, a summary,
/// a counter whose name does not end in `_total`. Empty when the scrape is clean.
pub fn lint(text: &str) -> Vec<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut helped = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ')
                && !help.trim().is_empty()
            {
                helped.insert(name.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name.to_owned(), kind.trim().to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = line.split(['{', ' ']).next().unwrap_or_default();
            families.insert(series.to_owned());
        }
    }
    // A histogram's series are `<name>_bucket`, `_sum` and `_count`.
    let family = |series: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| series.strip_suffix(suffix))
            .find(|name| {
                types
                    .get(*name)
                    .is_some_and(|t| t == "histogram" || t == "summary")
            })
            .unwrap_or(series)
            .to_owned()
    };
    let families: BTreeSet<String> = families.iter().map(|s| family(s)).collect();
    let mut problems = Vec::new();
    for name in &families {
        if !helped.contains(name) {
            problems.push(format!("{name}: no # HELP"));
        }
        match types.get(name).map(String::as_str) {
            None => problems.push(format!("{name}: no # TYPE")),
            Some("summary") => problems.push(format!("{name}: a summary, not a histogram")),
            Some("counter") if !name.ends_with("_total") => {
                problems.push(format!("{name}: a counter without the _total suffix"));
            }
            Some(_) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\",b=\"3\"} 4\ny 5\n";
        assert!((sample(text, "x", &[("a", "1")]) - 7.0).abs() < f64::EPSILON);
        assert!((sample(text, "x", &[("b", "3")]) - 4.0).abs() < f64::EPSILON);
        assert!((sample(text, "y", &[]) - 5.0).abs() < f64::EPSILON);
        assert!(sample(text, "x", &[("a", "2")]).abs() < f64::EPSILON);
    }

    #[test]
    fn lint_finds_what_promtool_would() {
        let clean = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                     # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 2\nh_count 1\n";
        assert_eq!(lint(clean), Vec::<String>::new());
        let bad = "# TYPE a_total counter\na_total 3\n# HELP s S.\n# TYPE s summary\n\
                   s{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n# HELP c C.\n# TYPE c counter\nc 1\n\
                   u 1\n";
        assert_eq!(
            lint(bad),
            [
                "a_total: no # HELP",
                "c: a counter without the _total suffix",
                "s: a summary, not a histogram",
                "u: no # HELP",
                "u: no # TYPE",
            ]
        );
    }
}
