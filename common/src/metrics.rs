//! Prometheus metrics: one recorder per process (`metrics` + `metrics-exporter-prometheus`)
//! and the `GET /metrics` endpoint on `METRICS_ADDR`. Without that address no recorder
//! is installed and every `metrics::counter!` is a no-op.
//!
//! What a scrape shows passes `promtool check metrics`: every metric has `# HELP` (the
//! per-RPC ones are described here, each service describes its own with [`counter`] and
//! friends), every histogram is a histogram (never a summary, which cannot be summed
//! across replicas), and the standard `process_*` metrics are appended.

use std::{net::SocketAddr, sync::OnceLock};

use axum::{Router, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Probes;

/// Buckets of every `*_seconds` histogram: 0.5 ms to 30 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of every `*_size` histogram (counts of items), and of any other histogram:
/// without buckets the exporter would render a summary.
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Describes a counter (its `# HELP` line) and makes it appear at 0 before its first
/// event, so an alert on its rate sees a series from the start. `labels`: each label set
/// that should exist from the start (none: the unlabelled series).
pub fn counter(name: &'static str, help: &'static str, labels: &[&[(&'static str, &'static str)]]) {
    metrics::describe_counter!(name, help);
    if labels.is_empty() {
        metrics::counter!(name).increment(0);
    }
    for set in labels {
        let labels: Vec<metrics::Label> = set
            .iter()
            .map(|&(key, value)| metrics::Label::from_static_parts(key, value))
            .collect();
        metrics::counter!(name, labels).increment(0);
    }
}

/// Describes a gauge (its `# HELP` line).
pub fn gauge(name: &'static str, help: &'static str) {
    metrics::describe_gauge!(name, help);
}

/// Describes a histogram (its `# HELP` line).
pub fn histogram(name: &'static str, help: &'static str) {
    metrics::describe_histogram!(name, help);
}

/// The metrics [`crate::rpc`] records, with the help texts of go-grpc-prometheus.
fn describe_rpc() {
    for (name, help) in [
        (
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
        ),
        (
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        ),
        (
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
        ),
        (
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
        ),
        (
            "grpc_client_started_total",
            "Total number of RPCs started on the client.",
        ),
        (
            "grpc_client_handled_total",
            "Total number of RPCs completed by the client, regardless of success or failure.",
        ),
        (
            "grpc_client_msg_received_total",
            "Total number of RPC stream messages received by the client.",
        ),
        (
            "grpc_client_msg_sent_total",
            "Total number of gRPC stream messages sent by the client.",
        ),
    ] {
        metrics::describe_counter!(name, help);
    }
    histogram(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level \
         handled by the server.",
    );
    histogram(
        "grpc_client_handling_seconds",
        "Histogram of response latency (seconds) of the gRPC until it is finished by the \
         application.",
    );
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use.
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(SIZES).and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            });
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => {
                    describe_rpc();
                    Some(handle)
                }
                Err(error) => {
                    tracing::error!(%error, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics endpoint, bound before serving (port 0 picks one).
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr` and installs the recorder.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        handle();
        Ok(Self { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the socket cannot say.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until `stop`. `sample` runs before each scrape, to set the
    /// gauges that are read rather than counted (pool sizes, queue lengths). Also serves
    /// the probes as plain HTTP: `GET /livez` (200 while the process serves) and
    /// `GET /readyz` (200 when ready, else 503).
    pub async fn serve<F>(self, sample: F, probes: Probes, stop: CancellationToken)
    where
        F: Fn() + Clone + Send + Sync + 'static,
    {
        let render = move || {
            let sample = sample.clone();
            async move {
                sample();
                handle().map_or_else(String::new, |handle| {
                    handle.run_upkeep();
                    let mut text = handle.render();
                    text.push_str(&process::render());
                    text
                })
            }
        };
        let readyz = move || {
            let ready = probes.is_ready();
            async move {
                if ready {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
        };
        let app = Router::new()
            .route("/metrics", get(render))
            .route("/livez", get(|| async { "alive\n" }))
            .route("/readyz", get(readyz));
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics endpoint failed");
        }
    }
}

/// The standard `process_*` metrics of Prometheus's client libraries, read from `/proc`
/// at each scrape (Linux; elsewhere none). Rendered as text here because `metrics`
/// counters are integers and CPU seconds are not.
mod process {
    use std::{fmt::Write as _, path::Path};

    /// `/proc/<pid>/stat` reports CPU time in clock ticks of USER_HZ, which Linux fixes
    /// at 100 for user space on every architecture.
    const TICKS_PER_SECOND: f64 = 100.0;

    #[derive(Debug, Default, PartialEq)]
    pub(super) struct Process {
        pub cpu_seconds: Option<f64>,
        pub resident_bytes: Option<f64>,
        pub virtual_bytes: Option<f64>,
        pub open_fds: Option<f64>,
        pub max_fds: Option<f64>,
        pub start_time_seconds: Option<f64>,
        pub threads: Option<f64>,
    }

    /// Reads the process under `proc` (`/proc/self`), with the boot time from `stat`
    /// (`/proc/stat`). Whatever cannot be read is left out.
    pub(super) fn read(proc: &Path, stat: &Path) -> Process {
        let mut process = Process::default();
        if let Ok(text) = std::fs::read_to_string(proc.join("stat"))
            // The command name, in parentheses, may itself hold spaces and parentheses.
            && let Some((_, rest)) = text.rsplit_once(") ")
        {
            let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            // `rest` starts at field 3 (state) of proc(5).
            if let (Some(user), Some(system)) = (field(11), field(12)) {
                process.cpu_seconds = Some((user + system) / TICKS_PER_SECOND);
            }
            process.threads = field(17);
            process.virtual_bytes = field(20);
            let boot = std::fs::read_to_string(stat).ok().and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(boot), Some(start)) = (boot, field(19)) {
                process.start_time_seconds = Some(boot + start / TICKS_PER_SECOND);
            }
        }
        // VmRSS is in kB whatever the page size, unlike the page count in `stat`.
        if let Ok(text) = std::fs::read_to_string(proc.join("status")) {
            process.resident_bytes = text
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kb| kb * 1024.0);
        }
        if let Ok(entries) = std::fs::read_dir(proc.join("fd")) {
            #[allow(clippy::cast_precision_loss)]
            let open = entries.count() as f64;
            process.open_fds = Some(open);
        }
        if let Ok(text) = std::fs::read_to_string(proc.join("limits")) {
            process.max_fds = text
                .lines()
                .find_map(|line| line.strip_prefix("Max open files"))
                .and_then(|v| v.split_ascii_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok());
        }
        process
    }

    /// The process's metrics in the Prometheus text format.
    pub(super) fn render() -> String {
        text(&read(Path::new("/proc/self"), Path::new("/proc/stat")))
    }

    pub(super) fn text(process: &Process) -> String {
        let mut text = String::new();
        for (name, kind, help, value) in [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                process.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                process.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                process.virtual_bytes,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                process.max_fds,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                process.start_time_seconds,
            ),
            (
                "process_threads",
                "gauge",
                "Number of OS threads in the process.",
                process.threads,
            ),
        ] {
            if let Some(value) = value {
                let _ = write!(
                    text,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
                );
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        time::{SystemTime, UNIX_EPOCH},
    };

    use super::*;

    #[test]
    fn the_process_is_read_from_proc() {
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        let process = process::read(Path::new("/proc/self"), Path::new("/proc/stat"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = process.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        assert!(process.resident_bytes.unwrap() > 1_000_000.0, "{process:?}");
        assert!(process.virtual_bytes.unwrap() >= process.resident_bytes.unwrap());
        assert!(process.open_fds.unwrap() >= 3.0, "{process:?}");
        assert!(process.max_fds.unwrap() >= process.open_fds.unwrap());
        assert!(process.threads.unwrap() >= 1.0);
        assert!(process.cpu_seconds.unwrap() >= 0.0);
    }

    #[test]
    fn a_command_name_with_parentheses_does_not_shift_the_fields() {
        let dir = std::env::temp_dir().join(format!("chat-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Fields 1..=24 of proc(5): utime 250 and stime 150 ticks, 7 threads, started
        // 1000 ticks after boot, 4096 bytes of virtual memory.
        std::fs::write(
            dir.join("stat"),
            "42 (a) b (c)) S 1 1 1 0 -1 0 0 0 0 0 250 150 0 0 20 0 7 0 1000 4096 3\n",
        )
        .unwrap();
        std::fs::write(dir.join("boot"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
        let process = process::read(&dir, &dir.join("boot"));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(process.cpu_seconds, Some(4.0));
        assert_eq!(process.threads, Some(7.0));
        assert_eq!(process.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(process.virtual_bytes, Some(4096.0));
        assert_eq!(process.open_fds, None);
        let text = process::text(&process);
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 4\n"
            ),
            "{text}"
        );
        assert!(!text.contains("process_open_fds"), "{text}");
    }
}
