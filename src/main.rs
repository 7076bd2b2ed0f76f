use clap::Parser;

use scimsync::cli::{Cli, dispatch};
use scimsync::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config_dir.as_deref())?;
    scimsync::telemetry::init(&settings.log);
    dispatch(cli.command, settings).await
}
