//! The `chorus` command: runs the daemon and talks to it, and runs the
//! simulator. Only this crate (and the daemon's API layer) knows JSON.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chorus", version, about = "Keyed state kept in sync across many nodes.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a cluster with the real protocol code, in virtual time.
    Sim(cmd::sim::SimArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => cmd::sim::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
