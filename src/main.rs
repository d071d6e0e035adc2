//! The `portcullis` command: parse arguments, load config, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "IoT edge gateway: MQTT and TCP over WebSocket, through any TLS-terminating proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    #[cfg(feature = "gateway")]
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; exits non-zero with the key (and line) at fault.
    #[cfg(feature = "gateway")]
    CheckConfig { file: PathBuf },
    /// Bans of a running gateway, through its admin API: list, add, rm.
    #[cfg(feature = "gateway")]
    Banned {
        #[command(flatten)]
        api: portcullis::admin::cli::ApiArgs,
        #[command(subcommand)]
        action: portcullis::admin::cli::BannedCommand,
    },
    /// Live connections of a running gateway, through its admin API: list, kick.
    #[cfg(feature = "gateway")]
    Clients {
        #[command(flatten)]
        api: portcullis::admin::cli::ApiArgs,
        #[command(subcommand)]
        action: portcullis::admin::cli::ClientsCommand,
    },
    /// GET a plain-HTTP URL (e.g. http://127.0.0.1:8080/healthz); exit 0 iff it answers 200.
    /// For container health checks, where the image has no curl.
    Healthcheck {
        url: String,
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// The device agent: local TCP ports carried over WebSocket to the gateway.
    #[cfg(feature = "agent")]
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// Connect once through the whole path (proxy, TLS, pin, upgrade, route), report each
        /// step, and exit non-zero if one failed.
        #[arg(long)]
        check: bool,
    },
    /// Walk the path from here to a gateway and say which hop breaks what: DNS, proxy, TCP,
    /// TLS, the upgrade, message sizes, frame types, ping/pong, idle cuts, the client IP.
    #[cfg(feature = "agent")]
    Probe(portcullis::agent::probe::ProbeArgs),
    /// A self-contained demo: embedded broker, the gateway, simulated devices.
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this many seconds (Ctrl-C stops it earlier).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

/// EX_USAGE / EX_CONFIG from sysexits: scripts can tell a bad config from a crash.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "gateway")]
        Command::CheckConfig { file } => match portcullis::Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} route(s))",
                    file.display(),
                    c.listeners.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        #[cfg(feature = "gateway")]
        Command::Serve { config } => {
            let config = match portcullis::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            portcullis::telemetry::init("info");
            exit(runtime().block_on(portcullis::run(config, terminate())))
        }
        #[cfg(feature = "gateway")]
        Command::Banned { api, action } => {
            printed(current_thread().block_on(portcullis::admin::cli::banned(&api, action)))
        }
        #[cfg(feature = "gateway")]
        Command::Clients { api, action } => {
            printed(current_thread().block_on(portcullis::admin::cli::clients(&api, action)))
        }
        Command::Healthcheck { url, timeout_secs } => {
            let timeout = std::time::Duration::from_secs(timeout_secs);
            match current_thread().block_on(portcullis::healthcheck::get(&url, timeout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("healthcheck {url}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "agent")]
        Command::Probe(args) => {
            portcullis::telemetry::init("error");
            let report = runtime().block_on(portcullis::agent::probe::run(&args));
            ExitCode::from(report)
        }
        #[cfg(feature = "agent")]
        Command::Agent { config, check } => {
            let config = match portcullis::agent::AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if check {
                // The report is the output; the log only says what goes wrong beyond it.
                portcullis::telemetry::init("warn");
                let report = runtime().block_on(portcullis::agent::check(&config));
                print!("{report}");
                return if report.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            portcullis::telemetry::init("info");
            exit(runtime().block_on(portcullis::agent::run(config, terminate())))
        }
        #[cfg(feature = "demo")]
        Command::Demo { seconds } => {
            // rumqttd, the demo's embedded broker, logs routine events (our health checks) as errors;
            // the agent warns that the demo's ws:// is clear text, which the banner already says.
            portcullis::telemetry::init("warn,rumqttd=off,portcullis::agent=error");
            exit(runtime().block_on(portcullis::demo::run(
                std::time::Duration::from_secs(seconds),
                terminate(),
            )))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    build(tokio::runtime::Builder::new_multi_thread())
}

/// For one-shot commands (a health check): no worker threads to start.
fn current_thread() -> tokio::runtime::Runtime {
    build(tokio::runtime::Builder::new_current_thread())
}

fn build(mut builder: tokio::runtime::Builder) -> tokio::runtime::Runtime {
    match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

#[allow(dead_code)] // unused in a build without the gateway and the agent
fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A one-shot command's answer on stdout, or its error on stderr and exit 1.
#[allow(dead_code)]
fn printed(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or Ctrl-C.
#[allow(dead_code)]
async fn terminate() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
