//! The one way steering runs a command: every iptables, ip6tables and ipset
//! call goes through a [`Runner`]. The daemon uses [`CommandRunner`] (a
//! process per call, optionally inside `ip netns exec`); unit tests use
//! [`RecordingRunner`], which records each argv and answers from a script,
//! so the steering logic is tested without root.

use std::io::Write;
use std::process::{Command, Stdio};

use super::diagnostics::{fix_for, not_installed};
use super::SteeringError;

/// Runs the commands behind steering.
pub trait Runner: std::fmt::Debug + Send + Sync {
    /// Run `program args`, writing `stdin` to it. Errors only when the
    /// program could not be started; a non-zero exit is in [`Ran`] for the
    /// caller to judge.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError>;
}

/// The result of a command that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The command line, for messages.
    pub command: String,
    /// The program asked for (what the fix is looked up by).
    pub program: String,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Stdout, or the failure as an error naming the command, its stderr and
    /// the likely fix.
    pub fn ok(self) -> Result<String, SteeringError> {
        if self.success {
            Ok(self.stdout)
        } else {
            let fix = fix_for(&self.program, &self.stderr);
            Err(SteeringError::Command {
                command: self.command,
                stderr: self.stderr,
                fix,
            })
        }
    }
}

/// The real thing: a process per command, in `netns` when given (tests use
/// their own namespaces).
#[derive(Debug, Clone, Default)]
pub struct CommandRunner {
    netns: Option<String>,
}

impl CommandRunner {
    /// Commands run through `ip netns exec NETNS` when `netns` is given.
    pub fn new(netns: Option<&str>) -> CommandRunner {
        CommandRunner {
            netns: netns.map(str::to_string),
        }
    }
}

impl Runner for CommandRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            // The error texts classified in `diagnostics` are the untranslated ones.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut command = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} {program}"),
            None => program.to_string(),
        };
        for a in args {
            command.push(' ');
            command.push_str(a);
        }
        let launcher = if self.netns.is_some() { "ip" } else { program };
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                not_installed(launcher)
            } else {
                SteeringError::Spawn {
                    command: command.clone(),
                    source,
                }
            }
        })?;
        let output = std::thread::scope(|scope| {
            // Written from a thread so a child that writes much output before
            // reading all its input cannot deadlock against us.
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                scope.spawn(move || {
                    // A child that exits early closes the pipe; its exit
                    // status reports why.
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(|source| SteeringError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        // `ip netns exec` reports a missing program itself.
        if !output.status.success()
            && stderr.contains("exec of \"")
            && stderr.contains("No such file or directory")
        {
            return Err(not_installed(program));
        }
        Ok(Ran {
            command,
            program: program.to_string(),
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        })
    }
}

/// One command a [`RecordingRunner`] was asked to run.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// Program first, then its arguments.
    pub(crate) argv: Vec<String>,
    pub(crate) stdin: Option<String>,
}

#[cfg(test)]
impl Call {
    /// The argv as one line, for assertions.
    pub(crate) fn line(&self) -> String {
        self.argv.join(" ")
    }
}

/// What a scripted command does: exit 0 with this stdout, exit 1 with
/// this stderr, or not start at all (the program is not installed).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Ok(String),
    Fail(String),
    NotInstalled,
}

#[cfg(test)]
type Script = dyn FnMut(&Call) -> Reply + Send;

/// The recording fake: every call is recorded, and answered by a script.
#[cfg(test)]
pub(crate) struct RecordingRunner {
    calls: std::sync::Mutex<Vec<Call>>,
    script: std::sync::Mutex<Box<Script>>,
}

#[cfg(test)]
impl std::fmt::Debug for RecordingRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingRunner")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl RecordingRunner {
    pub(crate) fn new(script: impl FnMut(&Call) -> Reply + Send + 'static) -> RecordingRunner {
        RecordingRunner {
            calls: Default::default(),
            script: std::sync::Mutex::new(Box::new(script)),
        }
    }

    /// Every call so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forget the calls so far.
    pub(crate) fn clear(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
impl Runner for RecordingRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError> {
        let call = Call {
            argv: std::iter::once(program)
                .chain(args.iter().copied())
                .map(str::to_string)
                .collect(),
            stdin: stdin.map(str::to_string),
        };
        let reply = (self.script.lock().unwrap_or_else(|p| p.into_inner()))(&call);
        let command = call.line();
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
        let (success, stdout, stderr) = match reply {
            Reply::Ok(out) => (true, out, String::new()),
            Reply::Fail(err) => (false, String::new(), err),
            Reply::NotInstalled => return Err(not_installed(program)),
        };
        Ok(Ran {
            command,
            program: program.to_string(),
            success,
            stdout,
            stderr,
        })
    }
}
