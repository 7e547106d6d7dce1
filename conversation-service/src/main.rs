use clap::Parser;
use conversation_service::{config::Config, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log_format);
    Application::build(config).await?.run_until_stopped().await
}
