//! Extra RabbitMQ nodes for the cluster and TLS tests, started by the tests themselves on this
//! machine with their own node names, ports and data directories, and stopped when dropped.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Node {
    pub name: String,
    pub port: u16,
    pub base: PathBuf,
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Node {
    /// Starts `<short>@localhost` listening for AMQP on `port` (Erlang distribution on
    /// `port + 20000`), with `conf` appended to its rabbitmq.conf, and waits until it runs.
    pub fn start(short: &str, port: u16, conf: &str) -> Node {
        let name = format!("{short}@localhost");
        let base = target_dir().join("nodes").join(short);
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let listener = if conf.contains("listeners.tcp = none") {
            String::new()
        } else {
            format!("listeners.tcp.local = 127.0.0.1:{port}\n")
        };
        std::fs::write(
            base.join("rabbitmq.conf"),
            format!("{listener}loopback_users = none\n{conf}"),
        )
        .unwrap();
        // No plugins: the machine's node may hold the management port.
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        // rabbitmq-server drops to the `rabbitmq` user when started as root: it must own its files.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&base)
            .status();
        let node = Node { name, port, base };
        start_detached(node.env(Command::new("rabbitmq-server")), &node.name);
        node.await_startup();
        node
    }

    fn env(&self, cmd: Command) -> Command {
        let dist_port = u32::from(self.port) + 20000;
        node_env(cmd, &self.name, self.port.into(), dist_port, &self.base)
    }

    pub fn await_startup(&self) {
        await_startup(&self.name, Duration::from_secs(120), |args| self.ctl(args));
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.env(Command::new("rabbitmqctl"))
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("rabbitmqctl")
    }

    pub fn ctl_ok(&self, args: &[&str]) {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes this node join `other`'s cluster.
    pub fn join(&self, other: &Node) {
        self.ctl_ok(&["stop_app"]);
        self.ctl_ok(&["reset"]);
        self.ctl_ok(&["join_cluster", &other.name]);
        self.ctl_ok(&["start_app"]);
        self.await_startup();
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn stop(&self) {
        let _ = self.ctl(&["stop"]);
    }
}

/// Runs `rabbitmq-server` (`server`, its environment set) detached for the node `name`.
fn start_detached(mut server: Command, name: &str) {
    let out = server
        .arg("-detached")
        .output()
        .expect("rabbitmq-server must be installed");
    assert!(
        out.status.success(),
        "starting {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `ctl` (a node's `rabbitmqctl`) says the node `name` runs; panics past `within`.
fn await_startup(name: &str, within: Duration, ctl: impl Fn(&[&str]) -> Output) {
    let deadline = Instant::now() + within;
    loop {
        let out = ctl(&["await_startup", "--timeout", "5"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The environment `rabbitmq-server` and `rabbitmqctl` need for a node of the tests: its name,
/// ports, and files under `base`.
fn node_env(mut cmd: Command, name: &str, port: u32, dist_port: u32, base: &Path) -> Command {
    cmd.env("RABBITMQ_NODENAME", name)
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", base.join("log"))
        .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq"))
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            base.join("enabled_plugins"),
        )
        .env("RABBITMQ_PID_FILE", base.join("pid"));
    cmd
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it; and an unrelated CA.
pub fn tls_certificates(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for ca in ["ca", "other_ca"] {
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=tchu test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let _ = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(&dir)
        .status();
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status();
    dir
}

/// The rabbitmq.conf lines of an `amqps` listener on `port` with the certificates in `dir`
/// (the node keeps its plain listener unless `conf` turns it off).
pub fn tls_listener(dir: &Path, port: u16) -> String {
    format!(
        "listeners.ssl.1 = 127.0.0.1:{port}\nssl_options.cacertfile = {0}/ca.pem\nssl_options.certfile = {0}/server.pem\nssl_options.keyfile = {0}/server.key\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
        dir.display()
    )
}
