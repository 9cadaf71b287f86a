//! A RabbitMQ cluster whose nodes each live in a network namespace the test creates, so the
//! test can cut a node off the others while it keeps running: a network partition, not a stop.
//!
//! The network, all of it inside this machine:
//! - the cluster link: each node's `10.77.0.<n>` on a bridge in the namespace `tchu-psw`.
//!   Erlang distribution and epmd use only this link, so unplugging a node's port from the
//!   bridge drops every packet between it and its peers (no reset, no error: packets vanish,
//!   as in a real partition), and plugging it back heals;
//! - the client link: a veth pair from this namespace, `10.78.<n>.1`, to the node's
//!   `10.78.<n>.2`, where it listens for AMQP on 5672. Tests connect there; a node can be
//!   isolated from its clients too.
//!
//! Needs root (`ip netns`). Namespaces left by a run that was killed are removed before a new
//! cluster starts, and on drop every process in them is killed and they are deleted.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SWITCH: &str = "tchu-psw";
const LETTERS: [char; 3] = ['a', 'b', 'c'];

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 (`ip`) must be installed")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {} (the partition tests need root for network namespaces)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills every process in a namespace.
fn kill_all(ns: &str) {
    let pids = ip(&["netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).output();
    }
}

/// Kills every process in a namespace, then deletes it (a namespace with processes would
/// outlive its name).
fn remove_namespace(ns: &str) {
    kill_all(ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !ip(&["netns", "pids", ns]).stdout.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ip(&["netns", "del", ns]);
}

/// One node: its namespace, names and addresses.
pub struct NsNode {
    pub letter: char,
    pub index: u8,
    pub base: PathBuf,
}

impl NsNode {
    pub fn namespace(&self) -> String {
        format!("tchu-p{}", self.letter)
    }

    /// The Erlang node name (long names: the host part is the cluster address).
    pub fn name(&self) -> String {
        format!("tchu_p{}@{}", self.letter, self.cluster_address())
    }

    pub fn cluster_address(&self) -> String {
        format!("10.77.0.{}", self.index)
    }

    /// Where clients reach the node.
    pub fn client_address(&self) -> String {
        format!("10.78.{}.2", self.index)
    }

    /// An AMQP URL of the node, with `query` (for example `heartbeat=5`) when not empty.
    pub fn url_with(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("amqp://guest:guest@{}:5672/%2f{q}", self.client_address())
    }

    pub fn url(&self) -> String {
        self.url_with("")
    }

    /// The node's port on the switch (plugged in: in touch with its peers).
    fn switch_port(&self) -> String {
        format!("tp{}-s", self.letter)
    }

    /// This namespace's end of the client link.
    fn host_link(&self) -> String {
        format!("tp{}-h", self.letter)
    }

    fn plumb(&self) {
        let ns = self.namespace();
        remove_namespace(&ns);
        ip_ok(&["netns", "add", &ns]);
        ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        let (port, inner) = (self.switch_port(), format!("tp{}-c", self.letter));
        ip_ok(&[
            "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            SWITCH,
        ]);
        ip_ok(&["-n", SWITCH, "link", "set", &port, "master", "br0", "up"]);
        let cluster = format!("{}/24", self.cluster_address());
        ip_ok(&["-n", &ns, "addr", "add", &cluster, "dev", &inner]);
        ip_ok(&["-n", &ns, "link", "set", &inner, "up"]);
        let (host, node_end) = (self.host_link(), format!("tp{}-n", self.letter));
        let _ = ip(&["link", "del", &host]);
        ip_ok(&[
            "link", "add", &host, "type", "veth", "peer", "name", &node_end, "netns", &ns,
        ]);
        ip_ok(&[
            "addr",
            "add",
            &format!("10.78.{}.1/30", self.index),
            "dev",
            &host,
        ]);
        ip_ok(&["link", "set", &host, "up"]);
        let client = format!("{}/30", self.client_address());
        ip_ok(&["-n", &ns, "addr", "add", &client, "dev", &node_end]);
        ip_ok(&["-n", &ns, "link", "set", &node_end, "up"]);
    }

    fn env(&self, mut cmd: Command) -> Command {
        cmd.env(
            "RABBITMQ_CONF_ENV_FILE",
            self.base.join("rabbitmq-env.conf"),
        )
        .env("RABBITMQ_USE_LONGNAME", "true");
        super::node_env(cmd, &self.name(), 5672, 25672, &self.base)
    }

    /// A command run inside the node's namespace.
    fn in_namespace(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace(), program]);
        self.env(cmd)
    }

    fn write_config(&self, conf: &str) {
        let _ = std::fs::remove_dir_all(&self.base);
        std::fs::create_dir_all(&self.base).unwrap();
        let addr = self.cluster_address();
        // The machine's own rabbitmq-env.conf pins epmd and distribution to 127.0.0.1; these
        // nodes use their cluster link instead.
        let erl_addr = addr.replace('.', ",");
        std::fs::write(
            self.base.join("rabbitmq-env.conf"),
            format!(
                "ERL_EPMD_ADDRESS={addr}\nexport ERL_FLAGS=\"-kernel inet_dist_use_interface {{{erl_addr}}}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            self.base.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 5672\nloopback_users = none\n{conf}"),
        )
        .unwrap();
        std::fs::write(self.base.join("enabled_plugins"), "[].\n").unwrap();
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&self.base)
            .status();
    }

    fn start(&self, conf: &str) {
        self.write_config(conf);
        super::start_detached(self.in_namespace("rabbitmq-server"), &self.name());
        self.await_startup(Duration::from_secs(120));
    }

    /// Waits until the node runs (bounded); panics past `within`.
    pub fn await_startup(&self, within: Duration) {
        super::await_startup(&self.name(), within, |args| self.ctl(args));
    }

    /// `rabbitmqctl` against this node, from inside its namespace (it works while the node is
    /// cut off).
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.in_namespace("rabbitmqctl")
            .args(["-q", "-n", &self.name()])
            .args(args)
            .output()
            .expect("rabbitmqctl")
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn join(&self, other: &NsNode) {
        self.ctl_ok(&["stop_app"]);
        self.ctl_ok(&["reset"]);
        self.ctl_ok(&["join_cluster", &other.name()]);
        self.ctl_ok(&["start_app"]);
        self.await_startup(Duration::from_secs(60));
    }

    /// Unplugs the node from its peers: a partition.
    pub fn cut(&self) {
        ip_ok(&["-n", SWITCH, "link", "set", &self.switch_port(), "nomaster"]);
    }

    /// Plugs the node back to its peers.
    pub fn heal(&self) {
        ip_ok(&[
            "-n",
            SWITCH,
            "link",
            "set",
            &self.switch_port(),
            "master",
            "br0",
        ]);
    }

    /// Cuts the node's client link too: its clients' packets vanish.
    pub fn unplug_clients(&self) {
        ip_ok(&["link", "set", &self.host_link(), "down"]);
    }

    pub fn plug_clients(&self) {
        ip_ok(&["link", "set", &self.host_link(), "up"]);
    }

    /// Kills the node (its Erlang VM and epmd) and starts it again on its data: what an
    /// operator does with a node that stays stuck after a partition healed.
    pub fn restart(&self) {
        kill_all(&self.namespace());
        std::thread::sleep(Duration::from_secs(1));
        super::start_detached(self.in_namespace("rabbitmq-server"), &self.name());
        self.await_startup(Duration::from_secs(120));
    }

    /// Whether the node's application runs (a node paused by `pause_minority` does not).
    pub fn is_running(&self) -> bool {
        self.ctl(&["await_startup", "--timeout", "1"])
            .status
            .success()
    }
}

/// Three clustered nodes in their namespaces; removed when dropped.
pub struct Cluster {
    pub nodes: Vec<NsNode>,
}

impl Cluster {
    /// Builds the network, starts three nodes with `conf` appended to their rabbitmq.conf and
    /// clusters them.
    pub fn start(conf: &str) -> Cluster {
        let root = super::target_dir().join("partition-nodes");
        let nodes: Vec<NsNode> = LETTERS
            .iter()
            .zip(1u8..)
            .map(|(&letter, index)| NsNode {
                letter,
                index,
                base: root.join(letter.to_string()),
            })
            .collect();
        let cluster = Cluster { nodes };
        cluster.remove();
        ip_ok(&["netns", "add", SWITCH]);
        ip_ok(&["-n", SWITCH, "link", "set", "lo", "up"]);
        ip_ok(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", SWITCH, "link", "set", "br0", "up"]);
        for node in &cluster.nodes {
            node.plumb();
            node.start(conf);
        }
        for node in &cluster.nodes[1..] {
            node.join(&cluster.nodes[0]);
        }
        cluster
    }

    pub fn node(&self, letter: char) -> &NsNode {
        self.nodes.iter().find(|n| n.letter == letter).unwrap()
    }

    /// Every node's URL, starting at `first`, for a client that moves between them.
    pub fn urls_from(&self, first: char, query: &str) -> String {
        let at = self.nodes.iter().position(|n| n.letter == first).unwrap();
        let n = self.nodes.len();
        (0..n)
            .map(|i| self.nodes[(at + i) % n].url_with(query))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether every node runs and sees the other two.
    pub fn is_whole(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.is_running() && running_nodes(n) == 3)
    }

    /// Waits until the cluster is whole again after `healed` was plugged back: returns how
    /// long it took and whether that node had to be restarted. RabbitMQ 3.10 on Erlang 25
    /// sometimes leaves a node that paused for the minority stuck in its own restart (its
    /// boot waits on `global`); past `patience` the node is restarted, as an operator would.
    pub fn await_whole(&self, healed: char, patience: Duration) -> (Duration, bool) {
        let start = Instant::now();
        let mut restarted = false;
        loop {
            if self.is_whole() {
                return (start.elapsed(), restarted);
            }
            if !restarted && start.elapsed() > patience {
                eprintln!("node {healed} did not rejoin within {patience:?}: restarting it");
                self.node(healed).restart();
                restarted = true;
            }
            assert!(
                start.elapsed() < patience * 4,
                "the cluster was not whole again within {:?}",
                patience * 4
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn remove(&self) {
        for node in &self.nodes {
            remove_namespace(&node.namespace());
            let _ = ip(&["link", "del", &node.host_link()]);
        }
        remove_namespace(SWITCH);
    }
}

/// How many running nodes `node` reports in its cluster.
fn running_nodes(node: &NsNode) -> usize {
    let out = node.ctl(&["cluster_status", "--formatter", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    status["running_nodes"]
        .as_array()
        .map_or(0, |nodes| nodes.len())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.remove();
    }
}
