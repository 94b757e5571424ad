//! An embedded, Supabase-compatible PostgreSQL cluster.
//!
//! The cluster lives in a folder under `target/devstack/`, listens on
//! 127.0.0.1 only, and runs as a child of this process (not daemonised by
//! `pg_ctl`): when the [`Cluster`] is dropped it is shut down, and if this
//! process dies without dropping it (SIGKILL), the kernel sends the
//! postmaster SIGINT (a fast shutdown) through `PR_SET_PDEATHSIG`. Either way
//! no stray server is left behind.
//!
//! PostgreSQL refuses to run as root; as root, the server and `initdb` run as
//! the `postgres` system user that Debian's package creates.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// pg_cron in background workers, with workers enough for its launcher,
/// concurrent job runs and parallel queries.
const CRON_SETTINGS: [&str; 2] = ["cron.use_background_workers=on", "max_worker_processes=32"];

/// The superuser's password (as `supabase start` uses).
pub const PASSWORD: &str = "postgres";
/// The PostgreSQL port `supabase start` uses.
pub const DEFAULT_PORT: u16 = 54322;
/// How long a start may take before it is called failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian puts the PostgreSQL 15 server binaries.
pub fn bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// The uid and gid the server runs as: ours, or `postgres`'s when we are root.
fn server_identity() -> Result<Option<(libc::uid_t, libc::gid_t)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("static name has no NUL");
    // SAFETY: getpwnam is given a valid C string; the result is read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("running as root, but there is no `postgres` system user to run PostgreSQL as");
    }
    // SAFETY: entry is non-null and points to a passwd record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// A command that runs as the server's user and dies with this process.
fn server_command(program: &Path) -> Result<Command> {
    let mut command = Command::new(program);
    let identity = server_identity()?;
    // SAFETY: the closure only calls async-signal-safe functions.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = identity {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After the uid change, which clears it: the server goes when we go.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
            Ok(())
        });
    }
    Ok(command)
}

fn chown_to_server(path: &Path) -> Result<()> {
    if let Some((uid, gid)) = server_identity()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A running cluster, shut down (fast) when dropped.
pub struct Cluster {
    data_dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Cluster {
    /// Starts the cluster in `dir` (creating it with `initdb` if needed) on
    /// `port`, and waits until it accepts connections. `fresh` deletes any
    /// existing data first.
    pub fn start(dir: &Path, port: u16, fresh: bool) -> Result<Cluster> {
        let data_dir = dir.join("data");
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        if !data_dir.join("PG_VERSION").exists() {
            init(dir, &data_dir)?;
        }
        stop_leftover(&data_dir);
        // Another server on the port would answer our readiness checks.
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            bail!("127.0.0.1:{port} is already in use (another cluster or test run?)");
        }
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        let mut command = server_command(&bin_dir().join("postgres"))?;
        command
            .arg("-D")
            .arg(&data_dir)
            .arg("-p")
            .arg(port.to_string())
            // pg_cron runs its jobs in background workers: its default, a
            // libpq connection to localhost, fails here (no Unix socket, and
            // TCP needs the password), so every run ended "connection
            // failed". Given on the command line, so that clusters created
            // before this setting get it too.
            .args(CRON_SETTINGS.iter().flat_map(|setting| ["-c", setting]))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().context("start postgres")?;
        let mut cluster = Cluster { data_dir, port, child: Some(child) };
        cluster.wait_ready(dir)?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                    bail!("postgres exited at start ({status}):\n{log}");
                }
            }
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|status| status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id of the postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A libpq URL for `user` (whose password is [`PASSWORD`]) and `database`.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgresql://{user}:{PASSWORD}@127.0.0.1:{}/{database}", self.port)
    }

    /// `psql` as the superuser on `database`, stopping at the first error.
    pub fn psql(&self, database: &str) -> Command {
        let mut command = Command::new(bin_dir().join("psql"));
        command
            .env("PGPASSWORD", PASSWORD)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", database]);
        command
    }

    /// Runs `sql` on `database` and returns what psql printed (unaligned, no headers).
    pub fn query(&self, database: &str, sql: &str) -> Result<String> {
        let output = self.psql(database).args(["-A", "-t", "-c", sql]).output()?;
        if !output.status.success() {
            bail!("psql -c {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Runs the SQL file at `path` on `database`, as one transaction.
    pub fn run_file(&self, database: &str, path: &Path) -> Result<()> {
        let output = self
            .psql(database)
            .arg("--single-transaction")
            .arg("-f")
            .arg(path)
            .output()?;
        if !output.status.success() {
            bail!("{}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// Creates `database` (dropping it first) and makes it Supabase-compatible.
    pub fn create_supabase_database(&self, database: &str) -> Result<()> {
        self.query("postgres", &format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"))?;
        self.query("postgres", &format!("CREATE DATABASE \"{database}\""))?;
        self.bootstrap(database)
    }

    /// Loads Supabase's roles, `auth` schema and default privileges into `database`.
    pub fn bootstrap(&self, database: &str) -> Result<()> {
        let init = crate::project_root().join("devstack/sql/supabase_init.sql");
        self.run_file(database, &init)?;
        // The init file sets the search path of the `postgres` database only.
        if database != "postgres" {
            self.query(
                database,
                &format!("ALTER DATABASE \"{database}\" SET search_path TO \"$user\", public, extensions"),
            )?;
        }
        Ok(())
    }

    /// Applies every migration in `supabase/migrations/`, in name order, each
    /// as one transaction (as `supabase db push` does).
    pub fn migrate(&self, database: &str) -> Result<Vec<PathBuf>> {
        let applied = migrations()?;
        for path in &applied {
            self.run_file(database, path)?;
        }
        Ok(applied)
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let _ = child.wait();
        }
    }

    /// Kills the server as a crash would (`pg_ctl -m immediate`), leaving
    /// recovery to the next start.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The migration files, in the order they apply.
pub fn migrations() -> Result<Vec<PathBuf>> {
    let dir = crate::project_root().join("supabase/migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    Ok(files)
}

fn init(dir: &Path, data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    chown_to_server(dir)?;
    let password_file = dir.join("pwfile");
    std::fs::write(&password_file, PASSWORD)?;
    chown_to_server(&password_file)?;
    let output = server_command(&bin_dir().join("initdb"))?
        .arg("-D")
        .arg(data_dir)
        .args(["-U", "postgres", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"])
        .arg(format!("--pwfile={}", password_file.display()))
        .output()
        .context("run initdb")?;
    std::fs::remove_file(&password_file)?;
    if !output.status.success() {
        bail!("initdb: {}", String::from_utf8_lossy(&output.stderr));
    }
    let preload = if Path::new("/usr/lib/postgresql/15/lib/pg_cron.so").exists() {
        "shared_preload_libraries = 'pg_cron'\ncron.database_name = 'postgres'\n"
    } else {
        ""
    };
    let settings = format!(
        "\n# creditgate devstack\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''\n\
         max_connections = 200\n\
         shared_buffers = '256MB'\n\
         log_min_messages = warning\n\
         {preload}"
    );
    let conf = data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str(&settings);
    std::fs::write(&conf, text)?;
    Ok(())
}

/// A server left running by an earlier process that died (its pid file still
/// names a live postmaster) is stopped before a new one starts.
fn stop_leftover(data_dir: &Path) {
    let Ok(pid_file) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = pid_file.lines().next().and_then(|line| line.trim().parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return;
    }
    // SAFETY: a fast shutdown request to the postmaster named by its pid file.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    // SAFETY: as above.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}
