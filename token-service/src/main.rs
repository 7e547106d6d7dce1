use clap::Parser;
use token_service::{
    config::{Command, Config},
    startup::{self, Application},
    telemetry,
};

/// jemalloc, as in conversation-service: both services ship the allocator that was
/// measured there (docs/performance.md), and `redeem_bench` runs this one.
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
