//! The real kubectl, run against a test server.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub struct Kubectl<'a> {
    pub kubeconfig: &'a Path,
    pub binary: &'static str,
    /// Network namespace (a test host's) to run in; None: the test's own.
    pub netns: Option<&'a Path>,
}

/// kubectl before it defaulted to protobuf request bodies.
pub const KUBECTL_JSON: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.31";

impl Kubectl<'_> {
    /// The kubectl command line with `args`, in the right namespace, not started (for
    /// streaming or a terminal).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.binary);
        if let Some(netns) = self.netns {
            super::agent::enter_netns(&mut command, netns);
        }
        command.arg("--kubeconfig").arg(self.kubeconfig).args(args);
        command
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}
