//! The real programs the end-to-end tests run beside Cairn (Debian's `prometheus`,
//! `prometheus-alertmanager`, `prometheus-node-exporter`, `promtool`): started on loopback ports
//! the kernel chose ([`spawn_listening`]), killed when the test ends — also on failure — and,
//! where they are not installed, a SKIPPED notice outside CI and a failure under `CI=true`. Also
//! `cairn serve` itself as a process, the same way ([`spawn_cairn_serve`]), for the tests of the
//! binary. A failure to start names the program and carries its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop, and the file its standard error goes to.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// The end of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// [`wait_for_line_within`] off the async runtime's threads (a program may take seconds to
    /// start). On failure the process is gone and the answer says why.
    pub async fn line_within(mut self, needle: &'static str, limit: Duration) -> Result<(Proc, String), String> {
        tokio::task::spawn_blocking(move || {
            let line = wait_for_line_within(&mut self.child, self.name, &self.log, needle, limit)?;
            Ok((self, line))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// The last 4 KiB of `log` (a program's standard error), or why it cannot be read.
pub fn log_tail(log: &Path) -> String {
    match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4096)..]).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin` with its standard error in `log` (read it when a test fails).
pub fn spawn(name: &'static str, bin: &str, args: &[String], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("create the program's log file");
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); install it: apt-get install prometheus prometheus-alertmanager prometheus-node-exporter"));
    Proc { name, child, log: log.to_path_buf() }
}

/// Starts one of the Prometheus programs (`prometheus`, `prometheus-alertmanager`,
/// `prometheus-node-exporter`) listening on a loopback port the kernel chooses, and returns it
/// with that port, read from the `msg="Listening on" address=…` line all three log. `args` are
/// everything but `--web.listen-address`.
pub async fn spawn_listening(name: &'static str, bin: &str, args: &[String], log: &Path) -> (Proc, u16) {
    let mut args = args.to_vec();
    args.push("--web.listen-address=127.0.0.1:0".into());
    let started = spawn(name, bin, &args, log).line_within("msg=\"Listening on\"", Duration::from_secs(60)).await;
    let (proc, line) = started.unwrap_or_else(|e| panic!("{e}"));
    let port = port_in(&line, "address").unwrap_or_else(|| panic!("{name}: no address in {line:?}"));
    (proc, port)
}

/// The port of the socket address a log line gives as `field=<address>` (logfmt, as the
/// Prometheus programs and `cairn serve` write it).
fn port_in(line: &str, field: &str) -> Option<u16> {
    let value = line.split_whitespace().find_map(|w| w.strip_prefix(field)?.strip_prefix('='))?;
    value.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// A port free on loopback right now, for an address nothing should listen on. Never the same
/// port twice in one test process. Not for starting a program on: another test can take the port
/// before the program binds it (start programs on port 0 and read the port they got:
/// [`spawn_listening`], [`spawn_cairn_serve`]).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port();
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

/// True when every program answers `--version`. Otherwise a SKIPPED notice naming `test` — or,
/// under `CI=true`, a failure: CI installs them, so their absence there is a broken setup.
pub fn programs_present(programs: &[&str], test: &str) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| Command::new(p).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing {missing:?}: apt-get install prometheus prometheus-alertmanager prometheus-node-exporter");
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED {test}: {msg}");
    false
}

/// Waits until `url` answers 2xx, failing early — with the program's log — if one of `procs`
/// exits. Each try has its own timeout, so one connection that hangs cannot use up the wait.
pub async fn wait_ready(client: &reqwest::Client, url: &str, what: &str, procs: &mut [&mut Proc]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client.get(url).timeout(Duration::from_secs(2)).send().await;
        let last = match answer {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{e}"),
        };
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{} exited early with {status}; its log:\n{}", p.name, p.log_tail());
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {} ---\n{}", p.name, p.log_tail())).collect();
            panic!("{what} did not become ready at {url} within 60 s (last try: {last}):\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `child` (`what`) has written a whole line containing `needle` to `log` and returns
/// it. Kills the child and panics with the log if it exits first or 60 s pass. For programs that
/// listen on a port the kernel chose and name it in their log.
pub fn wait_for_line(child: &mut Child, what: &str, log: &Path, needle: &str) -> String {
    wait_for_line_within(child, what, log, needle, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

/// [`wait_for_line`] within `limit`, answering why not (with the log, and what the process was
/// doing if it still ran: it is then killed) instead of panicking.
pub fn wait_for_line_within(child: &mut Child, what: &str, log: &Path, needle: &str, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // A whole line only: the program may be writing it as it is read.
        if let Some(line) = text.split_inclusive('\n').find(|l| l.ends_with('\n') && l.contains(needle)) {
            return Ok(line.trim_end().to_string());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status} before writing {needle:?}:\n{text}"));
        }
        if Instant::now() > deadline {
            let doing = process_state(child.id());
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} wrote no {needle:?} within {limit:?}; its threads: {doing}; its log:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a running process's threads are doing, from `/proc` (state and the kernel function each
/// waits in), for a failure message about a program that stalled.
fn process_state(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return "(not readable)".into() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // `pid (comm) state …`: the name may hold spaces, the state follows its closing parenthesis.
        let (comm, state) = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => (&stat[a + 1..b], stat[b + 1..].split_whitespace().next().unwrap_or("?")),
            _ => ("?", "?"),
        };
        let wchan = std::fs::read_to_string(dir.join("wchan")).unwrap_or_default();
        let syscall = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
        let syscall = syscall.split_whitespace().next().unwrap_or("?");
        out.push(format!("{comm} {state} wchan={wchan} syscall={syscall}"));
    }
    out.join("; ")
}

/// `cairn serve` run as a process (`cmd` is the binary with its `serve` arguments), on loopback
/// ports the kernel chose: it is given port 0 for both listeners and the ports are read from its
/// "cairn is listening" log line in `log`. A port picked beforehand with [`free_port`] can be taken
/// by another test in between — a test then talked to another test's server. Returns the child
/// and its HTTP and gRPC ports once both listen; panics with the log if it exits first.
pub fn spawn_cairn_serve(mut cmd: Command, log: &Path) -> (Child, u16, u16) {
    if !cmd.get_envs().any(|(k, _)| k == "CAIRN_LOG") {
        cmd.env("CAIRN_LOG", "info");
    }
    let out = std::fs::File::create(log).expect("create the server's log file");
    let mut child = cmd
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start cairn serve");
    let line = wait_for_line(&mut child, "cairn serve", log, "cairn is listening");
    match port_in(&line, "http_addr").zip(port_in(&line, "grpc_addr")) {
        Some((http, grpc)) => (child, http, grpc),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no ports in the line {line:?}");
        }
    }
}
