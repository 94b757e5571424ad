//! Plumbing the stack, the test suites and the bench share: child
//! processes, ports, a stack served on a thread of its own, pgTAP files,
//! PostgreSQL connections and SQL quoting.

use crate::pg::Cluster;
use crate::stack::Stack;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

// -----------------------------------------------------------------------------
// Child processes and ports
// -----------------------------------------------------------------------------

/// Makes the child `command` starts receive SIGTERM if this process dies
/// first (`PR_SET_PDEATHSIG`; tied to the thread that spawns it).
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
}

/// A command for `program` whose child goes when this process goes.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    die_with_parent(&mut command);
    command
}

/// Sends our own `child` SIGTERM and waits for it.
pub fn terminate(child: &mut Child) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Waits until something listens on 127.0.0.1:`port`, for at most `timeout`,
/// failing early if `child` exits first; `log` (the child's output) goes
/// into the error.
pub fn wait_for_port(port: u16, mut child: Option<&mut Child>, log: Option<&Path>, timeout: Duration) -> Result<()> {
    let log_text = || log.map(|log| std::fs::read_to_string(log).unwrap_or_default()).unwrap_or_default();
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(child) = child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("it exited ({status}) before listening on 127.0.0.1:{port}: {}", log_text());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listened on 127.0.0.1:{port} within {timeout:?}: {}", log_text())
}

/// The first of `bases` (tried in steps of `step`) at which every
/// `base + offset` can be bound on 127.0.0.1 now. Fixed ports in Linux's
/// ephemeral range (32768-60999, where Supabase's 5432x ports are) can be
/// taken for a minute by a client connection's TIME_WAIT: a server started
/// there fails with "Address already in use". So each run picks free ones.
pub fn free_ports(first_base: u16, step: u16, offsets: &[u16]) -> Result<u16> {
    for attempt in 0..40u16 {
        let base = first_base + attempt * step;
        let free = offsets.iter().all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("no free ports from {first_base} in steps of {step}")
}

// -----------------------------------------------------------------------------
// A stack serving on a thread of its own
// -----------------------------------------------------------------------------

/// Builds the wasm package, once more after a pause if it fails: another
/// build at the same moment (they share pkg/) can make the first one fail.
pub fn build_package_retrying() -> Result<()> {
    if crate::stack::build_package().is_err() {
        std::thread::sleep(Duration::from_secs(5));
        crate::stack::build_package()?;
    }
    Ok(())
}

/// A started [`Stack`] serving its API on a thread of its own until
/// dropped; then its processes stop (when this held the last reference).
pub struct ServedStack {
    stack: Arc<Stack>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl ServedStack {
    /// Serves `stack` and waits (at most `timeout`) until its API port
    /// answers; `label` names it if it stops with an error.
    pub fn serve(stack: Stack, label: &'static str, timeout: Duration) -> Result<ServedStack> {
        let api_port = stack.options().api_port;
        let stack = Arc::new(stack);
        let serving = stack.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
            let result = runtime.block_on(serving.serve_until(async {
                let _ = stopped.await;
            }));
            if let Err(error) = result {
                eprintln!("{label} stopped: {error:#}");
            }
        });
        let served = ServedStack { stack, stop: Some(stop), server: Some(server) };
        wait_for_port(api_port, None, None, timeout)?;
        Ok(served)
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Stops serving the API (the stack's processes keep running until drop).
    pub fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

impl Drop for ServedStack {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

// -----------------------------------------------------------------------------
// PostgreSQL: pgTAP, connections, quoting
// -----------------------------------------------------------------------------

/// The `NN-*.sql` pgTAP files in `dir`, sorted; an error if there are none.
pub fn pgtap_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
            name.ends_with(".sql") && name.starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no pgTAP files in {}", dir.display());
    }
    Ok(files)
}

/// Runs pgTAP `files` with pg_prove against `database` of `cluster`.
pub fn pg_prove(cluster: &Cluster, database: &str, files: &[PathBuf]) -> Result<ExitStatus> {
    Ok(Command::new("pg_prove")
        .env("PGPASSWORD", crate::pg::PASSWORD)
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &cluster.port().to_string(), "-d", database])
        .args(files)
        .status()?)
}

/// A connection to `url`, its connection task spawned on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    error.as_db_error().map(|db| db.code().code().to_string())
}

/// A double-quoted SQL identifier (`"a""b"`), cut at NUL.
pub fn quote_ident(s: &str) -> String {
    let s = s.split('\0').next().unwrap_or_default();
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A single-quoted SQL string literal (`'it''s'`).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
