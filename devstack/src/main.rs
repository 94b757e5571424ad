//! `cargo dev <command>`: see `devstack::` for what each command runs.

use clap::{Parser, Subcommand};

/// creditgate's local stack, tests and bench.
#[derive(Parser)]
#[command(name = "cargo dev", bin_name = "cargo dev")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local stack on 127.0.0.1:54321 (API) and :54322 (PostgreSQL).
    Up {
        /// Start over: a new database and a new signing key.
        #[arg(long)]
        fresh: bool,
    },
    /// Run every test the project has (installs what is missing), or only
    /// the named groups.
    Test {
        /// Test groups (db, rust, stack, js, wasm, function, e2e, page,
        /// http, up); a group's prefix names it. None: every group.
        #[arg(value_parser = devstack::testrun::parse_group)]
        groups: Vec<String>,
    },
    /// Run the PostgREST-compatible gateway alone (PGRST_* variables).
    Gateway,
    /// Install what is missing, build nothing.
    Setup,
    /// Measure creditgate against the seed (pgbench, HTTP); writes
    /// target/devstack/bench.json.
    Bench(devstack::bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let (name, outcome) = match cli.command {
        Command::Up { fresh } => ("up", devstack::stack::main(fresh)),
        Command::Test { groups } => ("test", devstack::testrun::main(&groups)),
        Command::Gateway => ("gateway", devstack::gateway::main()),
        Command::Setup => ("setup", devstack::setup::main()),
        Command::Bench(args) => ("bench", devstack::bench::main(args)),
    };
    if let Err(error) = outcome {
        eprintln!("cargo dev {name}: {error:#}");
        std::process::exit(1);
    }
}
