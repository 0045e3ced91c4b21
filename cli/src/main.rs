//! The `weir` command. Thin: parses arguments, installs tracing, runs the subcommand.

mod broker;
mod config;
mod deployments;
mod executor;
mod golden;
mod local;
mod mqtt;
mod observe;
mod remote;
mod run;
mod serve;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// weir: run tenants' WebAssembly operators over streams of messages.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one operator of a module over input messages and print what comes out.
    Run(run::RunArgs),
    /// Run golden tests (`*.test.yaml`, Azure's layout) in process; exit 1 on any failure.
    Test(golden::TestArgs),
    /// Run the platform: the REST API with its control store, on embedded defaults.
    Serve(serve::ServeArgs),
    /// Run an executor process that joins a control plane (`weir serve`) over HTTP.
    Executor(executor::ExecutorArgs),
    /// Check a configuration file of `weir serve` and `weir executor`, or print a complete one.
    Config(config::ConfigArgs),
    /// List, cordon, uncordon and drain the platform's executors (admin).
    Executors(remote::ExecutorsArgs),
    /// Check a server and keep its address and your token for the other commands.
    Login(remote::LoginArgs),
    /// Manage tenants (admin).
    Tenant(remote::TenantArgs),
    /// Mint, list and revoke tokens.
    Token(remote::TokenArgs),
    /// Upload, import (OCI) and list operator modules.
    Module(remote::ArtifactArgs),
    /// Upload, import (OCI) and list graph definitions.
    Graph(remote::ArtifactArgs),
    /// Create, list and delete device credentials for the embedded MQTT broker.
    Device(remote::DeviceArgs),
    /// Publish to and subscribe on an MQTT broker (the embedded one by default), for a quick
    /// check.
    Mqtt(mqtt::MqttArgs),
    /// Deploy a graph (weir's JSON document, or an Azure DataflowGraph).
    Deploy(remote::DeployArgs),
    /// Show deployments, or one with its counters and history.
    Status(remote::StatusArgs),
    /// A deployment's revisions, and rollback to one of them.
    Deployments(remote::DeploymentsArgs),
    /// Send messages to an http-sourced deployment.
    Ingest(remote::IngestArgs),
    /// Print the tenant's module log lines.
    Logs(remote::LogsArgs),
    /// Read and write the tenant's state store.
    State(remote::StateArgs),
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM (what systemd and Kubernetes send to stop
/// a service): `weir serve` and `weir executor` then stop gracefully.
pub(crate) async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signals) => {
                signals.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C alone stops.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// For people.
    Text,
    /// One JSON document, for tools.
    Json,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Every key of `serve` and `executor` has its environment variable; `--config FILE`
    // fills in what neither the command line nor the environment gave (src/config.rs).
    // A bad environment variable is not clap's first error but one of all the problems
    // listed at once: then the command line alone is parsed, to learn the command and the file.
    let base = Cli::command();
    let command = config::with_environment(base.clone());
    let mut matches = match command.clone().try_get_matches() {
        Ok(matches) => matches,
        Err(error)
            if matches!(
                error.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            error.exit()
        }
        Err(_) => base.clone().get_matches(),
    };
    if let Some((section, sub)) = matches.subcommand()
        && let Some(merged) = config::merged_arguments(&base, section, sub)
    {
        match merged {
            Ok(arguments) => matches = command.get_matches_from(arguments),
            Err(problems) => {
                let path = sub.get_one::<std::path::PathBuf>("config");
                config::report(path.map(std::path::PathBuf::as_path), &problems);
                return std::process::ExitCode::from(config::INVALID);
            }
        }
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    if let Command::Config(args) = cli.command {
        return config::run(args, &base);
    }
    // Settings that cannot work together are configuration problems too: exit code 2, as
    // `weir config check` says of them.
    let problems = match &cli.command {
        Command::Serve(args) => serve::start_problems(args),
        Command::Executor(args) => executor::start_problems(args),
        _ => Vec::new(),
    };
    if !problems.is_empty() {
        config::report(None, &problems);
        return std::process::ExitCode::from(config::INVALID);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Test(args) => golden::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Executor(args) => executor::run(args).await,
            // Answered before the runtime starts.
            Command::Config(_) => Ok(std::process::ExitCode::SUCCESS),
            Command::Login(args) => remote::login(args).await,
            Command::Tenant(args) => remote::tenant(args).await,
            Command::Executors(args) => remote::executors(args).await,
            Command::Token(args) => remote::token(args).await,
            Command::Module(args) => remote::module(args).await,
            Command::Graph(args) => remote::graph(args).await,
            Command::Device(args) => remote::device(args).await,
            Command::Mqtt(args) => mqtt::mqtt(args).await,
            Command::Deploy(args) => remote::deploy(args).await,
            Command::Status(args) => remote::status(args).await,
            Command::Deployments(args) => remote::deployments(args).await,
            Command::Ingest(args) => remote::ingest(args).await,
            Command::Logs(args) => remote::logs(args).await,
            Command::State(args) => remote::state(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
