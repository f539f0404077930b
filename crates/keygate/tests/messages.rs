//! What the real binary tells its operator: the start banner, warnings about the environment,
//! errors that say what to do, the password prompt, and where the data lives. Every process
//! runs with a cleared environment and a temporary `HOME`, so none touches the real user's
//! data directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `keygate` with nothing of this process's environment but a private `HOME`.
fn keygate(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command
        .env_clear()
        .env("HOME", home)
        .env("RUST_LOG", "info");
    command
}

fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null()).output().expect("run keygate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `keygate serve` whose stderr lines arrive on a channel; killed on drop.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(home: &Path, extra_env: &[(&str, &str)]) -> Self {
        let mut command = keygate(home);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(home.join("data"))
            .env(
                "KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS",
                "127.0.0.1,localhost",
            )
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn keygate serve");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the first that `until` accepts.
    fn read_until(&self, until: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = until(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("not seen; the server said:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of `host:port` at the end of `text`'s first word after `on `.
fn listening_port(line: &str) -> u16 {
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    addr.parse::<std::net::SocketAddr>().unwrap().port()
}

fn healthz(port: u16) -> bool {
    let Ok(mut sock) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = sock.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn the_banner_names_the_bound_port_and_the_private_hosts_without_colour() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &[]);
    let mut lines = server.read_until(|l| l.contains("keygate is listening on"));
    let port = listening_port(lines.last().unwrap());
    assert_ne!(port, 0);
    assert!(
        lines
            .last()
            .unwrap()
            .contains(&format!("public URL http://127.0.0.1:{port})")),
        "{lines:?}"
    );
    assert!(healthz(port), "nothing answers on the printed port {port}");
    lines.extend(server.read_until(|l| l.contains("private upstream hosts:")));
    assert!(
        lines.last().unwrap().ends_with("127.0.0.1, localhost"),
        "{lines:?}"
    );
    let all = lines.join("\n");
    assert!(
        !all.contains('\u{1b}'),
        "ANSI codes in piped output: {all:?}"
    );
}

#[test]
fn with_json_logs_the_banner_is_a_json_event() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &[("KEYGATE_LOG_FORMAT", "json")]);
    let lines = server.read_until(|l| l.contains("keygate is listening"));
    for line in &lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
    let banner: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let fields = &banner["fields"];
    assert_eq!(fields["message"], "keygate is listening", "{banner}");
    let listen: std::net::SocketAddr = fields["listen"].as_str().unwrap().parse().unwrap();
    assert_ne!(listen.port(), 0);
    assert_eq!(fields["allowed_private_hosts"], "127.0.0.1,localhost");
    assert_eq!(
        fields["public_url"],
        format!("http://127.0.0.1:{}", listen.port())
    );
}

#[test]
fn a_mistyped_variable_is_warned_about_with_the_closest_known_name() {
    let home = tempfile::tempdir().unwrap();
    let mut command = keygate(home.path());
    command
        .arg("migrate")
        .arg("--data-dir")
        .arg(home.path().join("data"))
        .env("KEYGATE_LISTN", "127.0.0.1:9999");
    let out = run(command);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "KEYGATE_LISTN is not a keygate variable and is ignored; did you mean KEYGATE_LISTEN?"
        ),
        "{err}"
    );
}

#[test]
fn an_unreachable_database_fails_within_three_seconds_naming_host_and_cause() {
    // Accepts connections and never answers: the worst case, a silent server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for sock in listener.incoming() {
            held.push(sock);
        }
    });
    let home = tempfile::tempdir().unwrap();
    let mut command = keygate(home.path());
    command.arg("migrate").env(
        "KEYGATE_DATABASE_URL",
        format!("postgres://kg:hunter2@127.0.0.1:{port}/keygate"),
    );
    let started = Instant::now();
    let out = run(command);
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(took < Duration::from_secs(4), "took {took:?}: {err}");
    assert!(
        err.contains(&format!(
            "cannot connect to the database at 127.0.0.1:{port}/keygate: no answer within 3 s"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// A pseudo-terminal: the controlling side, and the path of the terminal side.
fn pty() -> (std::fs::File, std::path::PathBuf) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master: OwnedFd = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let path = std::path::PathBuf::from(name.to_str().unwrap());
    (std::fs::File::from(master), path)
}

fn open_terminal(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path)
        .expect("open the terminal side")
}

/// Everything the terminal side wrote, once no process holds it open any more.
fn drain(mut master: std::fs::File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Linux answers EIO once the last holder of the terminal side has closed it.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn password_stdin_at_a_terminal_prompts_and_does_not_echo() {
    let home = tempfile::tempdir().unwrap();
    let (master, terminal) = pty();
    let mut command = keygate(home.path());
    command
        .args(["user", "add", "owner@example.com", "--role", "owner"])
        .arg("--password-stdin")
        .arg("--data-dir")
        .arg(home.path().join("data"))
        .stdin(Stdio::from(open_terminal(&terminal)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn keygate user add");
    drop(command); // the terminal side is now held by the child alone
    let mut err = child.stderr.take().unwrap();
    let (tx, said) = mpsc::channel::<u8>();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while let Ok(1) = err.read(&mut byte) {
            if tx.send(byte[0]).is_err() {
                break;
            }
        }
    });
    let mut stderr_text = String::new();
    let mut wait_for = |prompt: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stderr_text.contains(prompt) {
            let left = deadline.saturating_duration_since(Instant::now());
            let byte = said
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {prompt:?} prompt; stderr: {stderr_text:?}"));
            stderr_text.push(byte as char);
        }
    };
    let mut typing = master.try_clone().unwrap();
    wait_for("Password for owner@example.com: ");
    typing.write_all(b"correct horse battery\n").unwrap();
    wait_for("Repeat it: ");
    typing.write_all(b"correct horse battery\n").unwrap();
    drop(typing);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {stderr_text:?}");
    let user: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(user["user"]["email"], "owner@example.com");
    let echoed = String::from_utf8_lossy(&drain(master)).into_owned();
    assert!(!echoed.contains("correct horse"), "echoed: {echoed:?}");
}

#[test]
fn log_colours_only_on_a_terminal_and_never_with_no_color() {
    for (no_color, want_colour) in [(None, true), (Some("1"), false)] {
        let home = tempfile::tempdir().unwrap();
        let (master, terminal) = pty();
        let mut command = keygate(home.path());
        // A fresh data directory: the command logs warnings (new database, new vault key).
        command
            .args(["service-account", "create", "--name", "ci", "--data-dir"])
            .arg(home.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(open_terminal(&terminal)));
        if let Some(v) = no_color {
            command.env("NO_COLOR", v);
        }
        let status = command.status().unwrap();
        drop(command);
        assert!(status.success());
        let logged = String::from_utf8_lossy(&drain(master)).into_owned();
        assert!(logged.contains("WARN"), "{logged:?}");
        assert_eq!(
            logged.contains('\u{1b}'),
            want_colour,
            "NO_COLOR={no_color:?}: {logged:?}"
        );
    }
}

#[test]
fn local_commands_find_the_per_user_database_from_any_directory() {
    let home = tempfile::tempdir().unwrap();
    let (first_cwd, second_cwd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let database = home.path().join(".local/share/keygate/keygate.db");

    let mut command = keygate(home.path());
    command
        .args(["user", "add", "owner@example.com", "--role", "owner"])
        .current_dir(first_cwd.path());
    let out = run(command);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "no database at {}: creating a new one",
            database.display()
        )),
        "{err}"
    );
    assert!(database.exists());

    // From elsewhere: the same database (the user exists), and no warning.
    let mut command = keygate(home.path());
    command
        .args(["user", "add", "owner@example.com"])
        .current_dir(second_cwd.path());
    let out = run(command);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("already exists"), "{err}");
    assert!(!err.contains("no database"), "{err}");
    for cwd in [&first_cwd, &second_cwd] {
        assert!(!cwd.path().join("data").exists(), "a ./data appeared");
    }
}

#[test]
fn a_command_on_existing_data_refuses_a_missing_database() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("elsewhere");
    let mut command = keygate(home.path());
    command
        .args(["signing-key", "rotate", "--data-dir"])
        .arg(&data);
    let out = run(command);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "no database at {}: nothing to rotate the signing key of there; pass the --data-dir",
            data.join("keygate.db").display()
        )),
        "{err}"
    );
    assert!(!data.exists(), "a refused command left files behind");
}

/// A data directory whose database survived but whose vault key did not: a fresh key could
/// open none of the stored credentials, so the command refuses, says what to restore, and
/// leaves no generated key behind to be mistaken for the lost one.
#[test]
fn a_lost_vault_key_is_not_silently_replaced() {
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join(".local/share/keygate/vault.key");
    let mut command = keygate(home.path());
    command.args(["user", "add", "owner@example.com", "--role", "owner"]);
    let out = run(command);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(&key).unwrap();

    let mut command = keygate(home.path());
    command.args(["user", "add", "second@example.com"]);
    let out = run(command);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{} is missing, and the database's credentials are sealed with the key that was there",
            key.display()
        )),
        "{err}"
    );
    assert!(!key.exists(), "a generated key was left behind");
}
