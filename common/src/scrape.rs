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
}
