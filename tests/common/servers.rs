//! Real servers for the object-storage tests, started from the test process and bound to 127.0.0.1 only:
//!
//! * [`Nginx`]: Debian's nginx serving a directory with Range support, with an access log the tests read back
//!   ([`Nginx::log`]) to count requests and bytes;
//! * [`Garage`]: the S3-compatible Garage 2.x, one node (`replication_factor = 1`, sqlite metadata) with one bucket
//!   and one key allowed to read and write it.
//!
//! `shared()` gives one instance of each per test binary, started on first use and safe to use from parallel
//! tests (give each test its own object names). A test that stops or restarts a server starts a private one with
//! `start()`, which is shut down when dropped. Server processes get SIGKILL when the test process dies
//! (`PR_SET_PDEATHSIG`), and their directories live under `target/tmp/servers/`; directories left by a killed run
//! are removed by the next one.
//!
//! A missing binary is a panic that says how to install it (`.ci/run` installs both): these tests never skip.

use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, RetryConfig};

/// How long a server may take to accept connections. Generous: the machine is small and shared.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two readiness checks.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The S3 region Garage is configured with (any name works as long as clients sign with the same one).
const GARAGE_REGION: &str = "garage";
/// The bucket the shared Garage key may read and write.
const GARAGE_BUCKET: &str = "voxelscan-test";

// ---- processes --------------------------------------------------------------------------------------------------

/// A spawn request for the spawner thread: the command and where to send the child.
type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Start `cmd` as a long-lived server that dies with the test process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process, and libtest runs each
/// test on its own short-lived thread. So servers are forked by one spawner thread that lives as long as the
/// process: the signal then comes exactly when the test process ends (normally or killed).
fn spawn_server(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It calls only prctl and getppid, which are
    // async-signal-safe, and builds its errors without allocating, so it cannot deadlock on a lock held by
    // another thread of the parent at fork time.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal would ever come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner()
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the server-spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the server-spawner thread did not answer"))?
}

/// The process-long thread that forks the servers (see [`spawn_server`]).
fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<SpawnJob>();
        let started = thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                // Never ends: the sender lives in a static.
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            panic!("could not start the server-spawner thread: {e}");
        }
        jobs
    })
}

/// A server child process that can be killed and replaced.
struct Process {
    name: &'static str,
    child: Mutex<Option<Child>>,
}

impl Process {
    fn new(name: &'static str) -> Process {
        Process {
            name,
            child: Mutex::new(None),
        }
    }

    /// The child slot; a test that panicked while holding it leaves the slot usable.
    fn slot(&self) -> MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn(&self, cmd: Command) {
        let program = cmd.get_program().to_string_lossy().into_owned();
        match spawn_server(cmd) {
            Ok(child) => *self.slot() = Some(child),
            Err(e) => panic!("could not start {} ({program}): {e}", self.name),
        }
    }

    /// `Some(status)` when the child has exited (or was never started).
    fn exited(&self) -> Option<String> {
        match self.slot().as_mut().map(Child::try_wait) {
            None => Some("not started".into()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("cannot be waited for: {e}")),
        }
    }

    /// SIGKILL and reap, so that the port is closed when this returns.
    fn kill(&self) {
        if let Some(mut child) = self.slot().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- directories, ports, waiting -----------------------------------------------------------------------------------

/// A fresh directory `target/tmp/servers/<kind>-<pid>-<n>` for one server instance.
fn instance_dir(kind: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: Once = Once::new();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("servers");
    SWEEP.call_once(|| remove_dead_instances(&base));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{kind}-{}-{n}", std::process::id()));
    // A leftover of an earlier process with the same pid.
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("could not create {}: {e}", dir.display());
    }
    dir
}

/// Remove the directories of test processes that no longer exist (killed runs skip their cleanup).
fn remove_dead_instances(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<kind>-<pid>-<n>`, where the kind may itself contain `-`.
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A port nobody listens on right now. Another process could take it before the server binds it; the start-up
/// functions then try again with a new port.
fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free port on 127.0.0.1: {e}"),
    }
}

fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Call `check` every [`POLL_EVERY`] until it gives `Some`, for at most `timeout`.
fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_EVERY);
    }
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    const LINES: usize = 30;
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LINES);
            format!("--- {} ---\n{}", path.display(), lines[from..].join("\n"))
        }
        Err(e) => format!("--- {} unreadable: {e}", path.display()),
    }
}

fn log_file(path: &Path) -> fs::File {
    match fs::File::create(path) {
        Ok(file) => file,
        Err(e) => panic!("could not create {}: {e}", path.display()),
    }
}

/// Find a server binary: the environment variable `env_var`, then `PATH`, then `fallbacks`.
fn find_binary(name: &str, env_var: &str, fallbacks: &[PathBuf], install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return path;
        }
        panic!("{env_var}={} is not a file", path.display());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = on_path.into_iter().map(|dir| dir.join(name));
    match candidates
        .chain(fallbacks.iter().cloned())
        .find(|p| p.is_file())
    {
        Some(path) => path,
        None => panic!(
            "the object-storage tests need `{name}`, which is neither in {env_var}, on PATH nor in {fallbacks:?}. \
             Install it with `{install}` (`bash .ci/run` installs it), or set {env_var} to the binary."
        ),
    }
}

fn remove_instance_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}

/// Stop the shared servers and remove their directories when the test binary exits. libtest ends with
/// `process::exit`, which runs the C `atexit` handlers but no destructors of statics.
fn clean_shared_at_exit() {
    static REGISTER: Once = Once::new();
    extern "C" fn shut_down_shared() {
        if let Some(nginx) = SHARED_NGINX.get() {
            nginx.shut_down();
            // The shared nginx serves a directory of its own.
            remove_instance_dir(nginx.root());
        }
        if let Some(garage) = SHARED_GARAGE.get() {
            garage.shut_down();
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: `shut_down_shared` is a plain `extern "C" fn()` as atexit expects. It only touches statics,
        // which outlive it, and kills children and removes files without panicking (errors are ignored).
        let status = unsafe { libc::atexit(shut_down_shared) };
        if status != 0 {
            eprintln!(
                "servers: atexit failed; the shared servers' directories stay until the next run"
            );
        }
    });
}

static SHARED_NGINX: OnceLock<Nginx> = OnceLock::new();
static SHARED_GARAGE: OnceLock<Garage> = OnceLock::new();

// ---- latency ------------------------------------------------------------------------------------------------------

/// Forward 127.0.0.1:(returned port) to `target`, holding each chunk the client sends for `rtt`: every HTTP
/// request then waits one round trip before nginx sees it.
pub fn latency_proxy(target: u16, rtt: Duration) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind proxy");
            let port = listener.local_addr().expect("addr").port();
            tx.send(port).expect("send port");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        pipe(client, server, rtt).await;
                    }
                });
            }
        });
    });
    rx.recv().expect("proxy port")
}

async fn pipe(client: tokio::net::TcpStream, server: tokio::net::TcpStream, rtt: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tokio::time::sleep(rtt).await;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    tokio::join!(up, down);
}

// ---- async helper ------------------------------------------------------------------------------------------------

/// Run `fut` to completion on the harness's tokio runtime, from sync or async test code alike.
///
/// The future runs on a fresh plain thread, so calling this inside another runtime (a `#[tokio::test]`) does not
/// hit tokio's "runtime within a runtime" panic. One runtime for the whole binary keeps object_store's connection
/// pools valid across calls.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => panic!("could not build the servers' tokio runtime: {e}"),
        }
    });
    thread::scope(|scope| match scope.spawn(|| runtime.block_on(fut)).join() {
        Ok(output) => output,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

// ---- nginx ---------------------------------------------------------------------------------------------------------

/// One request from nginx's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The normalized path (`$uri`: decoded, without the query string).
    pub uri: String,
    pub status: u16,
    /// Body bytes sent (`$body_bytes_sent`, headers excluded).
    pub bytes: u64,
    /// The request's `Range` header, if it had one.
    pub range: Option<String>,
}

/// The access log format: the URI last, so that a path with spaces still parses.
const NGINX_LOG_FORMAT: &str = r#"$request_method $status $body_bytes_sent "$http_range" $uri"#;

/// Parse one access-log line written with [`NGINX_LOG_FORMAT`].
pub fn parse_access_line(line: &str) -> Option<Request> {
    let (method, rest) = line.split_once(' ')?;
    let (status, rest) = rest.split_once(' ')?;
    let (bytes, rest) = rest.split_once(' ')?;
    // nginx escapes `"` inside variables (as \x22), so the first `" ` closes the range.
    let (range, uri) = rest.strip_prefix('"')?.split_once("\" ")?;
    Some(Request {
        method: method.to_string(),
        uri: uri.to_string(),
        status: status.parse().ok()?,
        bytes: bytes.parse().ok()?,
        range: (range != "-").then(|| range.to_string()),
    })
}

/// nginx serving one directory on `127.0.0.1`, in the foreground (`daemon off; master_process off;`: one process,
/// so killing it stops the server at once).
pub struct Nginx {
    dir: PathBuf,
    root: PathBuf,
    port: u16,
    process: Process,
}

impl Nginx {
    /// Start a private nginx serving `root` (which must exist). Panics with nginx's error log if it does not
    /// come up within a minute.
    pub fn start(root: &Path) -> Nginx {
        let root = match root.canonicalize() {
            Ok(root) if root.is_dir() => root,
            Ok(root) => panic!("nginx root {} is not a directory", root.display()),
            Err(e) => panic!("nginx root {}: {e}", root.display()),
        };
        let binary = nginx_binary();
        let mut last_error = String::new();
        // A port picked as free can be taken before nginx binds it: then try another (a failed attempt's
        // directory goes with it when it is dropped).
        for _ in 0..3 {
            let nginx = Nginx {
                dir: instance_dir("nginx"),
                root: root.clone(),
                port: free_port(),
                process: Process::new("nginx"),
            };
            nginx.write_config();
            match nginx.launch(&binary) {
                Ok(()) => return nginx,
                Err(e) => last_error = e,
            }
        }
        panic!("nginx did not start:\n{last_error}");
    }

    /// The nginx shared by this test binary, serving an initially empty directory that tests fill with
    /// [`Nginx::put`]. Do not stop it or clear its log: other tests use it at the same time.
    pub fn shared() -> &'static Nginx {
        SHARED_NGINX.get_or_init(|| {
            clean_shared_at_exit();
            let root = instance_dir("nginx-root");
            Nginx::start(&root)
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of `name` (a path relative to the served root).
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{}", self.url(), name.trim_start_matches('/'))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory being served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Write `bytes` as the file `name` (relative, `/`-separated; directories are created) under the served root.
    /// The file is written aside and renamed, so nginx never serves half of it.
    pub fn put(&self, name: &str, bytes: &[u8]) {
        static STAGED: AtomicUsize = AtomicUsize::new(0);
        let path = self.root.join(checked_relative(name));
        // Staged next to the target: a rename within one directory cannot cross file systems.
        let staging = path.with_file_name(format!(
            ".put-{}-{}",
            std::process::id(),
            STAGED.fetch_add(1, Ordering::Relaxed)
        ));
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&staging, bytes))
            .and_then(|()| fs::rename(&staging, &path));
        if let Err(e) = written {
            panic!("could not write {}: {e}", path.display());
        }
    }

    /// Remove the file `name` from the served root.
    pub fn delete(&self, name: &str) {
        let path = self.root.join(checked_relative(name));
        if let Err(e) = fs::remove_file(&path) {
            panic!("could not remove {}: {e}", path.display());
        }
    }

    /// The requests logged so far, oldest first.
    ///
    /// nginx writes a log line just after sending the response, so a client can see the response a moment before
    /// its line exists. This waits until the log has not grown for 50 ms (at most 2 s) before reading it.
    pub fn log(&self) -> Vec<Request> {
        let path = self.access_log();
        let size = || fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut last = size();
        let _ = poll(Duration::from_secs(2), || {
            thread::sleep(Duration::from_millis(50));
            let now = size();
            let settled = now == last;
            last = now;
            settled.then_some(())
        });
        let text = fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|line| match parse_access_line(line) {
                Some(request) => request,
                None => panic!("unexpected line in {}: {line:?}", path.display()),
            })
            .collect()
    }

    /// The logged requests for one path (as in [`Nginx::url_of`]): what a test on the shared server should count.
    pub fn log_of(&self, name: &str) -> Vec<Request> {
        let uri = format!("/{}", name.trim_start_matches('/'));
        self.log().into_iter().filter(|r| r.uri == uri).collect()
    }

    /// Forget the requests logged so far. nginx appends (`O_APPEND`), so truncating the file is enough.
    pub fn clear_log(&self) {
        let path = self.access_log();
        // Let the lines of requests already answered land first, so they are not written after the truncation.
        let _ = self.log();
        if let Err(e) = fs::write(&path, "") {
            panic!("could not truncate {}: {e}", path.display());
        }
    }

    /// Kill nginx (SIGKILL, no graceful shutdown): from now on connections to its port are refused.
    pub fn stop(&self) {
        self.process.kill();
    }

    /// Start nginx again on the same port, with the same root and log (stopping it first if it runs).
    pub fn restart(&self) {
        self.process.kill();
        if let Err(e) = self.launch(&nginx_binary()) {
            panic!("nginx did not restart on port {}:\n{e}", self.port);
        }
    }

    fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    fn write_config(&self) {
        let dir = self.dir.display();
        for path in [&self.dir, &self.root] {
            // Quoted strings in nginx's syntax: a quote or backslash would need escaping, and never occurs here.
            if path.to_string_lossy().contains(['"', '\\']) {
                panic!(
                    "nginx paths with quotes or backslashes are not supported: {}",
                    path.display()
                );
            }
        }
        let config = format!(
            r#"# Written by tests/common/servers.rs: a foreground nginx whose every path is in {dir}.
daemon off;
master_process off;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
events {{ worker_connections 512; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    log_format requests '{NGINX_LOG_FORMAT}';
    access_log "{dir}/access.log" requests;
    client_body_temp_path "{dir}/client_body";
    proxy_temp_path "{dir}/proxy";
    fastcgi_temp_path "{dir}/fastcgi";
    uwsgi_temp_path "{dir}/uwsgi";
    scgi_temp_path "{dir}/scgi";
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root "{root}";
    }}
}}
"#,
            port = self.port,
            root = self.root.display(),
        );
        let path = self.dir.join("nginx.conf");
        if let Err(e) = fs::write(&path, config) {
            panic!("could not write {}: {e}", path.display());
        }
    }

    /// Start the process and wait until it accepts connections. `Err` carries nginx's logs.
    fn launch(&self, binary: &Path) -> Result<(), String> {
        let dir = &self.dir;
        let mut cmd = Command::new(binary);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("stdout.log")))
            .stderr(log_file(&dir.join("stderr.log")));
        let started = Instant::now();
        self.process.spawn(cmd);
        let ready = poll(START_TIMEOUT, || {
            if accepts_connections(self.port) {
                return Some(Ok(()));
            }
            self.process.exited().map(Err)
        });
        let failure = match ready {
            Some(Ok(())) => {
                eprintln!(
                    "servers: nginx on port {} ready in {:?}",
                    self.port,
                    started.elapsed()
                );
                return Ok(());
            }
            Some(Err(status)) => format!("nginx exited ({status})"),
            None => format!("nginx did not accept connections within {START_TIMEOUT:?}"),
        };
        Err(format!(
            "{failure} on port {}\n{}\n{}",
            self.port,
            tail(&dir.join("error.log")),
            tail(&dir.join("stderr.log"))
        ))
    }

    fn shut_down(&self) {
        self.process.kill();
        remove_instance_dir(&self.dir);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// `name` as a relative path that stays inside the served root.
fn checked_relative(name: &str) -> PathBuf {
    let relative = PathBuf::from(name.trim_start_matches('/'));
    let inside = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || relative.as_os_str().is_empty() {
        panic!("{name:?} is not a plain relative file name");
    }
    relative
}

fn nginx_binary() -> PathBuf {
    find_binary(
        "nginx",
        "NGINX_BIN",
        &[PathBuf::from("/usr/sbin/nginx")],
        "apt-get install -y nginx",
    )
}

// ---- Garage --------------------------------------------------------------------------------------------------------

/// An S3 access key made by `garage key create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Key {
    pub name: String,
    pub id: String,
    pub secret: String,
}

/// Parse the output of `garage key create`: the `Key ID:` and `Secret key:` lines.
pub fn parse_key_create(name: &str, output: &str) -> Option<S3Key> {
    let field = |label: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty() && !value.contains(char::is_whitespace))
    };
    Some(S3Key {
        name: name.to_string(),
        id: field("Key ID:")?,
        secret: field("Secret key:")?,
    })
}

/// Parse the node id out of `garage status`: the first column of the first row under the `ID` header.
pub fn parse_status_node_id(output: &str) -> Option<String> {
    let mut lines = output.lines().map(str::trim);
    lines.find(|line| line.starts_with("ID "))?;
    let id = lines.next()?.split_whitespace().next()?;
    id.chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| id.to_string())
}

/// A single-node Garage on `127.0.0.1` with one bucket and a key that may read, write and own it.
pub struct Garage {
    dir: PathBuf,
    binary: PathBuf,
    s3_port: u16,
    key: S3Key,
    process: Process,
}

impl Garage {
    /// Start a private Garage: server, layout, bucket, key. Panics with Garage's log if any step fails or the S3
    /// API is not ready within a minute.
    pub fn start() -> Garage {
        let binary = garage_binary();
        let mut last_error = String::new();
        // A port picked as free can be taken before Garage binds it: then try other ports (a failed attempt's
        // directory goes with it when it is dropped).
        for _ in 0..3 {
            let mut garage = Garage {
                dir: instance_dir("garage"),
                binary: binary.clone(),
                s3_port: free_port(),
                // Set by boot().
                key: S3Key::default(),
                process: Process::new("garage"),
            };
            garage.write_config();
            match garage.boot() {
                Ok(()) => return garage,
                Err(e) => last_error = e,
            }
        }
        panic!("Garage did not start:\n{last_error}");
    }

    /// The Garage shared by this test binary. Do not stop it: other tests use it at the same time.
    pub fn shared() -> &'static Garage {
        SHARED_GARAGE.get_or_init(|| {
            clean_shared_at_exit();
            Garage::start()
        })
    }

    /// `http://127.0.0.1:PORT`: the S3 API, path-style.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn region(&self) -> &str {
        GARAGE_REGION
    }

    pub fn bucket(&self) -> &str {
        GARAGE_BUCKET
    }

    pub fn access_key_id(&self) -> &str {
        &self.key.id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.key.secret
    }

    /// The key allowed on [`Garage::bucket`].
    pub fn key(&self) -> &S3Key {
        &self.key
    }

    /// `s3://BUCKET/KEY`.
    pub fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{}", GARAGE_BUCKET, key.trim_start_matches('/'))
    }

    /// The environment a client needs to reach [`Garage::bucket`] with the allowed key.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with(&self.key)
    }

    /// The same environment with another key (e.g. one from [`Garage::create_key`], for access-denied tests).
    pub fn env_with(&self, key: &S3Key) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", key.id.clone()),
            ("AWS_SECRET_ACCESS_KEY", key.secret.clone()),
            ("AWS_REGION", GARAGE_REGION.to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    /// A new key with no permission on any bucket: requests signed with it are denied (403).
    pub fn create_key(&self, name: &str) -> S3Key {
        let output = self.cli(&["key", "create", name]);
        match parse_key_create(name, &output) {
            Some(key) => key,
            None => panic!(
                "no key id and secret in the output of `garage key create {name}`:\n{output}"
            ),
        }
    }

    /// An object_store client for [`Garage::bucket`] with the allowed key (three retries, within 20 s).
    pub fn store(&self) -> AmazonS3 {
        self.store_with(&self.key.id, &self.key.secret)
    }

    /// An object_store client for [`Garage::bucket`] signing with the given credentials.
    pub fn store_with(&self, access_key_id: &str, secret_access_key: &str) -> AmazonS3 {
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        self.client(access_key_id, secret_access_key, retry)
    }

    fn client(&self, access_key_id: &str, secret_access_key: &str, retry: RetryConfig) -> AmazonS3 {
        let built = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_region(GARAGE_REGION)
            .with_bucket_name(GARAGE_BUCKET)
            .with_access_key_id(access_key_id)
            .with_secret_access_key(secret_access_key)
            .with_allow_http(true)
            .with_retry(retry)
            .build();
        match built {
            Ok(store) => store,
            Err(e) => panic!("could not build an S3 client for {}: {e}", self.endpoint()),
        }
    }

    /// Upload `bytes` as object `key` of [`Garage::bucket`].
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let store = self.store();
        let location = ObjectPath::from(key);
        let payload = PutPayload::from(bytes.to_vec());
        if let Err(e) = block_on(store.put(&location, payload)) {
            panic!("could not upload {}: {e}", self.url_of(key));
        }
    }

    /// Delete object `key` of [`Garage::bucket`].
    pub fn delete(&self, key: &str) {
        let store = self.store();
        if let Err(e) = block_on(store.delete(&ObjectPath::from(key))) {
            panic!("could not delete {}: {e}", self.url_of(key));
        }
    }

    /// Run `garage -c CONFIG ARGS` and return its stdout; panics with its output if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        match self.try_cli(args) {
            Ok(stdout) => stdout,
            Err(e) => panic!("{e}\n{}", tail(&self.dir.join("garage.log"))),
        }
    }

    /// Kill Garage (SIGKILL): from now on connections to the S3 port are refused.
    pub fn stop(&self) {
        self.process.kill();
    }

    /// Start Garage again with the same configuration, data and port, and wait for the S3 API.
    pub fn restart(&self) {
        self.process.kill();
        self.spawn_server();
        if let Err(e) = self.wait_for_s3() {
            panic!(
                "Garage did not restart: {e}\n{}",
                tail(&self.dir.join("garage.log"))
            );
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }

    fn write_config(&self) {
        let dir = self.dir.display();
        let rpc_port = free_port();
        let config = format!(
            r#"# Written by tests/common/servers.rs: one Garage node, every path in {dir}.
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
"#,
            secret = random_hex(32),
            s3_port = self.s3_port,
        );
        if let Err(e) = fs::write(self.config_path(), config) {
            panic!("could not write {}: {e}", self.config_path().display());
        }
    }

    fn spawn_server(&self) {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.join("garage.out")))
            .stderr(log_file(&self.dir.join("garage.log")));
        self.process.spawn(cmd);
    }

    /// Server, layout, bucket, key, permissions, then wait for the S3 API. `Err` carries the logs.
    fn boot(&mut self) -> Result<(), String> {
        let started = Instant::now();
        self.spawn_server();
        let steps = self.wait_for_rpc().and_then(|node| {
            self.try_cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
            self.try_cli(&["layout", "apply", "--version", "1"])?;
            self.try_cli(&["bucket", "create", GARAGE_BUCKET])?;
            let name = "voxelscan-test";
            let output = self.try_cli(&["key", "create", name])?;
            self.key = parse_key_create(name, &output)
                .ok_or_else(|| format!("no key id and secret in `garage key create`:\n{output}"))?;
            self.try_cli(&[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                GARAGE_BUCKET,
                "--key",
                name,
            ])?;
            self.wait_for_s3()
        });
        match steps {
            Ok(()) => {
                eprintln!(
                    "servers: Garage on port {} ready in {:?}",
                    self.s3_port,
                    started.elapsed()
                );
                Ok(())
            }
            Err(e) => Err(format!(
                "{e}\n{}\n{}",
                tail(&self.config_path()),
                tail(&self.dir.join("garage.log"))
            )),
        }
    }

    /// Poll `garage status` until the node answers over RPC; returns its id.
    fn wait_for_rpc(&self) -> Result<String, String> {
        let mut last = String::new();
        let found = poll(START_TIMEOUT, || {
            if let Some(status) = self.process.exited() {
                return Some(Err(format!("garage server exited ({status})")));
            }
            match self.try_cli(&["status"]) {
                Ok(out) => match parse_status_node_id(&out) {
                    Some(id) => Some(Ok(id)),
                    None => {
                        last = format!("`garage status` lists no node:\n{out}");
                        None
                    }
                },
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        found.unwrap_or_else(|| {
            Err(format!(
                "garage did not answer `status` within {START_TIMEOUT:?}; last attempt: {last}"
            ))
        })
    }

    /// Poll the S3 API until a request for a missing object is answered "not found": the server is up, the
    /// layout is active and the key is allowed on the bucket.
    fn wait_for_s3(&self) -> Result<(), String> {
        // No retries inside one probe: the polling is the retrying.
        let no_retry = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let store = self.client(&self.key.id, &self.key.secret, no_retry);
        let probe = ObjectPath::from("voxelscan-readiness-probe");
        let mut last = String::new();
        let ready = poll(START_TIMEOUT, || {
            if let Some(status) = self.process.exited() {
                return Some(Err(format!("garage server exited ({status})")));
            }
            match block_on(store.head(&probe)) {
                Err(object_store::Error::NotFound { .. }) => Some(Ok(())),
                Ok(_) => Some(Err("the readiness probe object exists".to_string())),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
        ready.unwrap_or_else(|| {
            Err(format!(
                "the S3 API at {} was not ready within {START_TIMEOUT:?}; last error: {last}",
                self.endpoint()
            ))
        })
    }

    /// Run `garage -c CONFIG ARGS`; `Err` describes a failure with the command's output.
    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output();
        let describe = |what: &str, out: Option<&Output>| {
            let mut text = format!("`garage {}` {what}", args.join(" "));
            if let Some(out) = out {
                let _ = write!(
                    text,
                    "\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            text
        };
        match output {
            Ok(out) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(out) => Err(describe(&format!("failed ({})", out.status), Some(&out))),
            Err(e) => Err(describe(&format!("could not run: {e}"), None)),
        }
    }

    fn shut_down(&self) {
        self.process.kill();
        remove_instance_dir(&self.dir);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn garage_binary() -> PathBuf {
    // Where `cargo install` puts it.
    let cargo_bins: Vec<PathBuf> = [
        std::env::var_os("CARGO_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")),
    ]
    .into_iter()
    .flatten()
    .map(|cargo_home| cargo_home.join("bin/garage"))
    .collect();
    find_binary(
        "garage",
        "GARAGE_BIN",
        &cargo_bins,
        "cargo install garage --locked --version '^2'",
    )
}

/// `n` random bytes from the kernel, as hex (for Garage's rpc_secret).
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    let read = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if let Err(e) = read {
        panic!("could not read /dev/urandom: {e}");
    }
    bytes
        .iter()
        .fold(String::with_capacity(2 * n), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}
