//! The `weir` command. Thin: parses arguments, installs tracing, runs the subcommand.

mod broker;
mod deployments;
mod executor;
mod golden;
mod local;
mod mqtt;
mod observe;
mod remote;
mod run;
mod serve;

use clap::{Parser, Subcommand};

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
    let cli = Cli::parse();
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
