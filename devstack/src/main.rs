//! `cargo dev <command>`: see `devstack::` for what each command runs.

const USAGE: &str = "usage: cargo dev <command>

commands:
  up [--fresh]   run the local stack on 127.0.0.1:54321 (API) and :54322 (PostgreSQL)
  test           run every test the project has (installs what is missing)
  gateway        run the PostgREST-compatible gateway alone (PGRST_* variables)
  setup          install what is missing, build nothing
  bench          measure creditgate against the seed (pgbench, HTTP); writes target/devstack/bench.json
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("");
    let rest = &args[args.len().min(1)..];
    let outcome = match command {
        "up" => devstack::stack::main(rest),
        "test" => devstack::testrun::main(rest),
        "gateway" => devstack::gateway::main(rest),
        "setup" => devstack::setup::main(rest),
        "bench" => devstack::bench::main(rest),
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = outcome {
        eprintln!("cargo dev {command}: {error:#}");
        std::process::exit(1);
    }
}
