//! Reading a password for `--password-stdin`: a script pipes it in as the first line; a person
//! at a terminal is prompted (on stderr) and types it twice without echo, instead of facing a
//! silent wait.

use std::io::{BufRead, IsTerminal, Write};

use rustix::termios::{self, LocalModes, OptionalActions};

/// The password for `email`, from standard input.
pub fn read(email: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = prompt_hidden(&format!("Password for {email}: "))?;
    let again = prompt_hidden("Repeat it: ")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    Ok(first)
}

/// Turns echo off, writes `prompt` to stderr (so nothing typed after the prompt shows) and
/// reads one line from the terminal on stdin. The newline the user types still shows
/// (`ECHONL`), so the next output starts on a line of its own.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let _echo_off = EchoOff::new(&stdin)?;
    let mut err = std::io::stderr().lock();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    drop(err);
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The terminal's echo turned off until this is dropped, when its modes are restored.
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    saved: termios::Termios,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> std::io::Result<Self> {
        let saved = termios::tcgetattr(stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        termios::tcsetattr(stdin, OptionalActions::Now, &quiet)?;
        Ok(Self { stdin, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.stdin, OptionalActions::Now, &self.saved);
    }
}
