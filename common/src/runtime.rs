//! The Tokio runtime both services (and their benchmarks) run on.
//!
//! Tokio's scheduler runs a task woken by the task that just ran before anything else
//! queued on that worker (the LIFO slot). For a gRPC server that is the wrong order: each
//! finished call wakes its HTTP/2 connection's task, which then writes that one response
//! (a `writev`) before the next finished call runs. With the slot off, the calls a batch
//! answered finish first and the connection writes their responses together, in fewer
//! `writev` calls (docs/performance.md).
//! Turning the slot off is an unstable Tokio API: the workspace builds with
//! `--cfg tokio_unstable` (`.cargo/config.toml`). A build without it (`RUSTFLAGS` set in
//! the environment replaces that file's flags) keeps the slot and says so at startup.

use std::io;

/// Whether this build turns the LIFO slot off (built with `--cfg tokio_unstable`).
#[must_use]
pub fn lifo_slot_disabled() -> bool {
    cfg!(tokio_unstable)
}

/// A multi-threaded runtime with every driver enabled and, when the build allows it, the
/// LIFO slot off.
///
/// # Errors
/// When the runtime cannot be created (threads or the I/O driver).
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Logs, once the subscriber is set up, when this build keeps the LIFO slot.
pub fn warn_if_lifo_slot_on() {
    if !lifo_slot_disabled() {
        tracing::warn!(
            "built without --cfg tokio_unstable: the scheduler's LIFO slot stays on and \
             responses are written one call at a time (see .cargo/config.toml)"
        );
    }
}

#[cfg(test)]
mod tests {
    /// The flag lives in `.cargo/config.toml`; a checkout or a build environment that
    /// loses it would silently give up the batching of responses.
    #[test]
    fn the_workspace_builds_with_the_lifo_slot_off() {
        assert!(
            super::lifo_slot_disabled(),
            "built without --cfg tokio_unstable"
        );
    }
}
