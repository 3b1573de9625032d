//! What the CLI tests share: the real `cairn serve` started as a user would start it (a config file
//! holding a token made by `cairn token new`, loopback ports), the `cairn` binary run as a
//! subprocess, and a bare HTTP POST. The server process is killed when the test ends, also on
//! failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs the `cairn` binary.
pub fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).env("CAIRN_LOG", "warn").output().unwrap()
}

/// Standard output of a command that must have succeeded.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Standard output and error together, for messages that may go to either.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// POSTs a JSON body over plain HTTP/1.1 and requires a 200.
pub fn post_json(port: u16, path: &str, body: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// A running `cairn serve`.
pub struct Server {
    child: Child,
    pub http: u16,
    pub grpc_url: String,
    /// The bearer token of the one person the config knows.
    pub token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `cairn serve` with its data in `dir/data` and a config of `config` (TOML, may be empty)
    /// followed by the `[[auth.tokens]]` entry `cairn token new` printed for `subject` in group `sre`.
    /// `args` are extra `serve` flags. Returns once both ports listen (ports the kernel chose).
    pub fn start(dir: &Path, subject: &str, config: &str, args: &[&str]) -> Server {
        let text = ok(cairn(&["token", "new", "--subject", subject, "--group", "sre", "--kind", "person", "--scopes", "read,review,breakglass,freeze,policy,admin"]));
        let token = text.lines().nth(1).unwrap().trim().to_string();
        let entry = &text[text.find("[[auth.tokens]]").unwrap()..];
        let path = dir.join("cairn.toml");
        std::fs::write(&path, format!("{config}\n\n{entry}")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["serve", "--config", path.to_str().unwrap(), "--data-dir", dir.join("data").to_str().unwrap()]).args(args);
        let (child, http, grpc) = cairn_testkit::programs::spawn_cairn_serve(cmd, &dir.join("serve.log"));
        Server { child, http, grpc_url: format!("http://127.0.0.1:{grpc}"), token }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `--server … --token …` for the client commands.
    pub fn client_args(&self) -> [&str; 4] {
        ["--server", &self.grpc_url, "--token", &self.token]
    }

    /// SIGTERM, as a service manager stops it, and wait for the graceful exit.
    pub fn stop_gracefully(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
