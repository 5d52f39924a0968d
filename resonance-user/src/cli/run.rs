//! `resonance run`: the agent, until SIGTERM.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};

use crate::{
    agent::{Agent, ConfigSource},
    config::{Config, DEFAULT_CONFIG_PATH},
};

/// Arguments of `resonance run`; flags override the config file.
#[derive(clap::Args)]
pub struct Args {
    /// Config file (a missing default file means built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State folder (history database).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Control socket path.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Prometheus listen address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// How often history is written (e.g. `5s`).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub flush_interval: Option<std::time::Duration>,
    /// Channel broker socket path.
    #[arg(long)]
    pub broker_socket: Option<PathBuf>,
    /// How often flows are read and scored (e.g. `1s`).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub tick: Option<std::time::Duration>,
}

/// Loads the config, applies the flags and runs the agent.
pub fn run(args: Args) -> Result<()> {
    let source = ConfigSource {
        explicit: args.config.is_some(),
        path: args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)),
    };
    let mut config = Config::load(&source.path, source.explicit)?;
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(socket) = args.control_socket {
        config.control_socket = socket;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics_listen = listen;
    }
    if let Some(interval) = args.flush_interval {
        config.flush_interval = interval;
    }
    if let Some(socket) = args.broker_socket {
        config.broker.socket = socket;
    }
    if let Some(tick) = args.tick {
        config.tick = tick;
    }
    let drop_capabilities = config.drop_capabilities;
    let agent = Agent::new(config, source)?;
    // The agent's loop runs on this thread; the broker, the control socket
    // and /metrics are spawned onto two workers, so a slow tick (a store
    // flush, a large join) never delays handing a channel out.
    // Capabilities are per thread: every runtime thread drops what the
    // agent no longer needs as it starts (none of them binds a socket or
    // attaches a probe); this one does once its sockets listen.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("resonance-worker")
        .on_thread_start(move || {
            if drop_capabilities {
                crate::agent::drop_thread_capabilities();
            }
        })
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent.run())
}
