//! nftables tables inside test namespaces, for the benchmarks that compare against them.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use crate::netns::Netns;

/// A table `family name { body }` inside a test namespace, deleted on drop (and with the
/// namespace).
pub struct NftTable {
    ns: String,
    family: &'static str,
    name: &'static str,
}

impl NftTable {
    /// Loads the table with `nft -f -`; panics with nft's message if it refuses it.
    pub fn new(ns: &Netns, family: &'static str, name: &'static str, body: &str) -> Self {
        let script = format!("table {family} {name} {{\n{body}\n}}\n");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        // The guard exists before the check: a half-made table is removed too.
        let table = NftTable {
            ns: ns.name().to_owned(),
            family,
            name,
        };
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        table
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "nft",
                "delete",
                "table",
                self.family,
            ])
            .arg(self.name)
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not delete nft table {} in {}",
                self.name, self.ns
            );
        }
    }
}
