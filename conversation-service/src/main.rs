use clap::Parser;
use conversation_service::{config::Config, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = telemetry::init(config.telemetry.log_format);
    Application::build(config).await?.run_until_stopped().await
}
