//! A `wisp serve` started for a test, on ephemeral ports, with a config file and a known
//! secret; tokens minted with `wisp token`; its log kept for assertions.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use whep_client::Options;

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-e2e";

/// A running `wisp serve` and what it printed.
pub struct Wisp {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Wisp {
    pub fn start(name: &str, toml: &str) -> Self {
        Self::start_with(name, toml, &crate::common::workspace_bin("wisp-transcoder"))
    }

    /// As [`Wisp::start`], with another program as the transcoder.
    pub fn start_with(name: &str, toml: &str, transcoder: &std::path::Path) -> Self {
        Self::start_limited(name, toml, transcoder, None)
    }

    /// As [`Wisp::start_with`], run under `prlimit` with this many file descriptors at most
    /// (soft and hard), as a small `ulimit -n` would leave it.
    pub fn start_limited(
        name: &str,
        toml: &str,
        transcoder: &std::path::Path,
        nofile: Option<u64>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("wisp-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        std::fs::write(dir.join("wisp.toml"), toml).unwrap();
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg(env!("CARGO_BIN_EXE_wisp"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_wisp")),
        };
        let mut child = command
            .args(["serve", "--http", "127.0.0.1:0", "--rtc", "127.0.0.1:0"])
            .args(["--rtmp", "127.0.0.1:0", "--srt", "127.0.0.1:0"])
            .arg("--jwt-secret-file")
            .arg(dir.join("secret"))
            .arg("--config")
            .arg(dir.join("wisp.toml"))
            .arg("--transcoder")
            .arg(transcoder)
            .env("WISP_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wisp starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        // The ready lines on stdout carry the bound HTTP address.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let base = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("wisp exited before serving: {}", log.lock().unwrap());
            }
            if let Some(url) = line.trim().strip_prefix("Watch the demo: ") {
                break url.split("/play/").next().unwrap().to_string();
            }
            // Without the demo session, the console's line says where it serves.
            if let Some(rest) = line.trim().strip_prefix("The console:") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || for _ in stdout.lines() {});
        let wisp = Wisp {
            child,
            base,
            dir,
            log,
        };
        // The log (stderr) is read on its own thread: the ready line on stdout can come
        // first, so a test reading the start-up lines waits for them here.
        assert!(
            wisp.wait_log("wisp is serving", 10),
            "no start-up log line: {}",
            wisp.log()
        );
        wisp
    }

    pub fn token(&self, sessions: &str, scope: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
            .args([
                "token",
                "--sessions",
                sessions,
                "--scope",
                scope,
                "--ttl",
                "600",
            ])
            .arg("--jwt-secret-file")
            .arg(self.dir.join("secret"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// What a viewer of `session` asks for: `frames` frames within `timeout_secs`.
    pub fn viewer(&self, session: &str, token: &str, frames: u64, timeout_secs: u64) -> Options {
        Options {
            url: format!("{}/whep/{session}", self.base),
            token: Some(token.to_string()),
            frames: Some(frames),
            timeout: Duration::from_secs(timeout_secs),
            duration: None,
            rtp_only: false,
            control: None,
            frames_out: None,
            ..Options::default()
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls a condition on the log, up to `secs`.
    pub fn wait_log(&self, needle: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The address a log line `... PREFIX ADDR...` names (the listeners log where they are).
    pub fn logged_addr(&self, prefix: &str) -> String {
        assert!(self.wait_log(prefix, 10), "{}", self.log());
        let log = self.log();
        let rest = log.split(prefix).nth(1).unwrap();
        rest.split(|c: char| c == '/' || c.is_whitespace())
            .next()
            .unwrap()
            .to_string()
    }

    pub async fn api(&self, path: &str) -> serde_json::Value {
        let admin = self.token("*", "admin");
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("API JSON"))
            .unwrap()
    }
}

impl Drop for Wisp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
