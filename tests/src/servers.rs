//! Real servers for tests and benchmarks: a throwaway PostgreSQL cluster
//! and a redis-server, both on Unix sockets only, installed from Debian's
//! packages by `cargo xtask test`.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Reaped, wait_for};

/// Unix "port" naming PostgreSQL's socket file in its folder.
pub const PG_PORT: &str = "5432";

/// Runs a command to completion; panics with its output if it fails.
pub fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: could not start: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The newest PostgreSQL server installation's `bin` folder (Debian keeps
/// one per major version under /usr/lib/postgresql).
pub fn postgres_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server under {}: install the Debian packages postgresql, \
             redis-server and redis-tools (cargo xtask test does)",
            root.display()
        ),
    }
}

/// uid and gid of a system user.
fn user_ids(name: &str) -> (u32, u32) {
    let c_name = CString::new(name).expect("a user name without NUL");
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer
    // into static storage (or null), read at once and not kept.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "no user {name}: the postgresql package creates it"
    );
    // SAFETY: not null, so it points at a valid passwd entry.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// A throwaway PostgreSQL cluster listening only on a Unix socket in `dir`,
/// initialised for pgbench.
pub fn start_postgres(dir: &Path) -> Reaped {
    let bin = postgres_bin_dir();
    let (uid, gid) = user_ids("postgres");
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).expect("creating the cluster folder");
    std::os::unix::fs::chown(&pg_dir, Some(uid), Some(gid)).expect("handing it to postgres");
    let data = pg_dir.join("data");
    run(
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .current_dir(&pg_dir)
            .uid(uid)
            .gid(gid),
        "initdb",
    );
    let server = Command::new(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&pg_dir)
        .args(["-p", PG_PORT, "-c", "listen_addresses=", "-c", "fsync=off"])
        .current_dir(&pg_dir)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting postgres");
    let server = Reaped(server);
    let socket = pg_dir.join(format!(".s.PGSQL.{PG_PORT}"));
    assert!(
        wait_for(Duration::from_secs(30), || socket.exists().then_some(())).is_some(),
        "postgres did not open {} within 30 s",
        socket.display()
    );
    run(
        pgbench(&bin, &pg_dir).args(["-i", "-s", "1", "-q"]),
        "pgbench -i",
    );
    server
}

/// `pgbench` against the cluster in `pg_dir`, as the trusted postgres user.
pub fn pgbench(bin: &Path, pg_dir: &Path) -> Command {
    let mut command = Command::new(bin.join("pgbench"));
    command
        .arg("-h")
        .arg(pg_dir)
        .args(["-p", PG_PORT, "-U", "postgres"])
        .env("PGDATABASE", "postgres");
    command
}

/// redis-server on a Unix socket only, nothing saved; pinned to `cpu`
/// (through taskset) if given.
pub fn start_redis(socket: &Path, cpu: Option<&str>) -> Reaped {
    let mut command = match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpu, "redis-server"]);
            command
        }
        None => Command::new("redis-server"),
    };
    let server = command
        .args(["--port", "0", "--unixsocket"])
        .arg(socket)
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "starting redis-server (Debian package redis-server; cargo xtask test installs it)",
        );
    let server = Reaped(server);
    assert!(
        wait_for(Duration::from_secs(30), || socket.exists().then_some(())).is_some(),
        "redis-server did not open {} within 30 s",
        socket.display()
    );
    server
}
