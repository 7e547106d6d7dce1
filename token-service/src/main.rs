use clap::Parser;
use token_service::{
    config::{Command, Config},
    startup::{self, Application},
    telemetry,
};

/// jemalloc: measured faster than glibc's malloc on the send path and leaner per idle
/// stream than mimalloc (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    chat_common::runtime::build()?.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    let _telemetry = telemetry::init(config.telemetry.log_format);
    chat_common::runtime::warn_if_lifo_slot_on();
    match config.command {
        Some(Command::Migrate) => startup::migrate_database(&config).await?,
        Some(Command::Healthcheck) => {
            // Readiness: `""` is liveness only and stays SERVING in a database outage.
            let service = startup::TOKEN_SERVICE;
            chat_common::healthcheck::check(config.listen, service, config.request_timeout).await?;
        }
        None => Application::build(config).await?.run().await?,
    }
    Ok(())
}
