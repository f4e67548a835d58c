//! Client TLS for a test etcd: a CA, a server certificate naming every member's address, and a
//! client certificate, all made with the `openssl` command (as an operator would, and as the
//! HAProxy kit makes its certificate) into the cluster's directory. P-256 keys: generated in
//! milliseconds, and accepted by etcd's Go TLS and by Rust clients alike.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The files a client of a TLS cluster needs, and the server's (for a test that checks what
/// a daemon accepts).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed both certificates (`--trusted-ca-file`, a client's CA).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A certificate the members accept (`--client-cert-auth`), with its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The certificates' validity, in days: enough for any test run.
const DAYS: &str = "2";

impl EtcdTls {
    /// Makes the CA and both certificates in `dir`; the server's names every address in
    /// `member_addrs`.
    pub(super) fn generate(dir: &Path, member_addrs: &[&str]) -> Self {
        let tls = EtcdTls {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        let ca_key = dir.join("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            DAYS,
            "-subj",
            "/CN=glance-limiter test etcd CA",
            "-keyout",
            path(&ca_key),
            "-out",
            path(&tls.ca),
        ]);
        let sans: Vec<String> = member_addrs.iter().map(|a| format!("IP:{a}")).collect();
        let server_ext = format!(
            "subjectAltName={},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        );
        sign(dir, &tls, &ca_key, "server", "/CN=etcd", &server_ext, "1");
        let client_ext = "extendedKeyUsage=clientAuth\n";
        sign(dir, &tls, &ca_key, "client", "/CN=limiter", client_ext, "2");
        tls
    }

    /// etcdctl's flags for this cluster's CA and client certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.client_cert.display()),
            format!("--key={}", self.client_key.display()),
        ]
    }
}

/// A key and a certificate `NAME.pem`/`NAME.key` for `subject`, signed by the CA, with the
/// extensions `ext` (an openssl extension file's lines).
fn sign(
    dir: &Path,
    tls: &EtcdTls,
    ca_key: &Path,
    name: &str,
    subject: &str,
    ext: &str,
    serial: &str,
) {
    let (csr, key, cert, ext_file) = (
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.ext")),
    );
    fs::write(&ext_file, ext).expect("write the extension file");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        path(&key),
        "-out",
        path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(&tls.ca),
        "-CAkey",
        path(ca_key),
        "-set_serial",
        serial,
        "-days",
        DAYS,
        "-extfile",
        path(&ext_file),
        "-out",
        path(&cert),
    ]);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (cargo xtask setup): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
