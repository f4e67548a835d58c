//! What a test's HAProxy is told, and the configuration text made of it (a pure function,
//! unit-tested below). Defaults follow the deployments in shared/notes/real-topology.md:
//! TLS on the frontend, `option forwardfor`, `balance roundrobin`, `http-reuse safe`
//! (HAProxy's own default), no PROXY protocol; health checks are off unless asked for, so a
//! test that does not look at them gets no traffic it did not send.

use std::{fmt::Write as _, net::SocketAddr, path::Path};

/// The PROXY protocol header HAProxy sends at the start of each backend connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendProxy {
    #[default]
    None,
    /// `send-proxy`: the v1 text line.
    V1,
    /// `send-proxy-v2`: the binary header.
    V2,
}

/// `http-reuse`: whether one backend connection may carry requests of several clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpReuse {
    Never,
    /// A client's first request on a new backend connection; later ones may reuse idle ones.
    #[default]
    Safe,
    Always,
}

impl HttpReuse {
    fn keyword(self) -> &'static str {
        match self {
            HttpReuse::Never => "never",
            HttpReuse::Safe => "safe",
            HttpReuse::Always => "always",
        }
    }
}

/// The frontend's and backend's names in the configuration (and in `show stat`).
pub const FRONTEND: &str = "glance_api";
pub const BACKEND: &str = "glance_api_back";
/// The certificate and key, in one file, inside HAProxy's directory.
pub const PEM_FILE: &str = "lb.pem";
/// The admin socket inside HAProxy's directory.
pub const STATS_SOCKET: &str = "admin.sock";

#[derive(Clone, Debug)]
pub struct HaProxyConfig {
    pub(super) binds: Vec<SocketAddr>,
    pub(super) tls: bool,
    servers: Vec<SocketAddr>,
    accept_proxy: bool,
    health_checks: bool,
    forwardfor: bool,
    send_proxy: SendProxy,
    http_reuse: HttpReuse,
    httpclose: bool,
    retries: Option<String>,
    retry_on: Option<String>,
}

impl Default for HaProxyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HaProxyConfig {
    /// No frontend or backend yet (add them with [`bind`](Self::bind) and
    /// [`server`](Self::server)); TLS and `option forwardfor` on, the rest off.
    pub fn new() -> Self {
        HaProxyConfig {
            binds: Vec::new(),
            tls: true,
            servers: Vec::new(),
            accept_proxy: false,
            health_checks: false,
            forwardfor: true,
            send_proxy: SendProxy::None,
            http_reuse: HttpReuse::Safe,
            httpclose: false,
            retries: None,
            retry_on: None,
        }
    }

    /// A frontend address: `"203.0.113.1:9292"` or `"[2001:db8:1::1]:9292"`.
    pub fn bind(mut self, addr: &str) -> Self {
        self.binds.push(parse_addr(addr));
        self
    }

    /// A backend server (`glance1`, `glance2`, … in order), IPv4 or IPv6 as for `bind`.
    pub fn server(mut self, addr: &str) -> Self {
        self.servers.push(parse_addr(addr));
        self
    }

    /// TLS on the frontend (the default) or plain HTTP.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// `accept-proxy` on every frontend address: each connection must start with a PROXY
    /// header (v1 or v2), whose client HAProxy then takes as the connection's source (for
    /// `option forwardfor` and its log). A sidecar in front of a Glance that does not speak
    /// the protocol itself.
    pub fn accept_proxy(mut self, on: bool) -> Self {
        self.accept_proxy = on;
        self
    }

    /// `check inter 2s` on every server, with `GET /healthcheck` as the check.
    pub fn health_checks(mut self, on: bool) -> Self {
        self.health_checks = on;
        self
    }

    /// `option forwardfor` (on by default).
    pub fn forwardfor(mut self, on: bool) -> Self {
        self.forwardfor = on;
        self
    }

    pub fn send_proxy(mut self, mode: SendProxy) -> Self {
        self.send_proxy = mode;
        self
    }

    pub fn http_reuse(mut self, mode: HttpReuse) -> Self {
        self.http_reuse = mode;
        self
    }

    /// `option httpclose`: one request per connection on both sides.
    pub fn httpclose(mut self, on: bool) -> Self {
        self.httpclose = on;
        self
    }

    /// `retries VALUE` in the backend (HAProxy's default is 3).
    pub fn retries(mut self, value: &str) -> Self {
        self.retries = Some(value.to_owned());
        self
    }

    /// `retry-on VALUE` in the backend, e.g. `"conn-failure empty-response 503"`.
    pub fn retry_on(mut self, value: &str) -> Self {
        self.retry_on = Some(value.to_owned());
        self
    }

    /// The configuration for an HAProxy whose certificate and admin socket live in `dir`.
    pub fn render(&self, dir: &Path) -> String {
        assert!(!self.binds.is_empty(), "HAProxy needs a frontend address");
        assert!(!self.servers.is_empty(), "HAProxy needs a backend server");
        let dir = dir.display();
        let mut c = String::new();
        // Request logs to stderr (HAProxy's own log file): what a failed test shows.
        let _ = write!(
            c,
            "global\n    \
               maxconn 1024\n    \
               stats socket {dir}/{STATS_SOCKET} mode 600 level admin\n    \
               log stderr format raw local0 info\n\
             defaults\n    \
               mode http\n    \
               log global\n    \
               option httplog\n    \
               timeout connect 5s\n    \
               timeout client 30s\n    \
               timeout server 30s\n"
        );
        if self.forwardfor {
            c.push_str("    option forwardfor\n");
        }
        if self.httpclose {
            c.push_str("    option httpclose\n");
        }
        let _ = writeln!(c, "frontend {FRONTEND}");
        for addr in &self.binds {
            let tls = if self.tls {
                format!(" ssl crt {dir}/{PEM_FILE}")
            } else {
                String::new()
            };
            let accept = if self.accept_proxy {
                " accept-proxy"
            } else {
                ""
            };
            let _ = writeln!(c, "    bind {addr}{tls}{accept}");
        }
        let _ = writeln!(c, "    default_backend {BACKEND}");
        let _ = write!(
            c,
            "backend {BACKEND}\n    balance roundrobin\n    http-reuse {}\n",
            self.http_reuse.keyword()
        );
        if let Some(retries) = &self.retries {
            let _ = writeln!(c, "    retries {retries}");
        }
        if let Some(retry_on) = &self.retry_on {
            let _ = writeln!(c, "    retry-on {retry_on}");
        }
        if self.health_checks {
            c.push_str("    option httpchk\n    http-check send meth GET uri /healthcheck\n");
        }
        let check = if self.health_checks {
            " check inter 2s"
        } else {
            ""
        };
        let proxy = match self.send_proxy {
            SendProxy::None => "",
            SendProxy::V1 => " send-proxy",
            SendProxy::V2 => " send-proxy-v2",
        };
        for (i, addr) in self.servers.iter().enumerate() {
            let _ = writeln!(c, "    server glance{} {addr}{check}{proxy}", i + 1);
        }
        c
    }
}

fn parse_addr(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|e| panic!("`{addr}` is not ADDR:PORT or [ADDR]:PORT: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_tls_frontend_with_forwardfor() {
        let text = HaProxyConfig::new()
            .bind("203.0.113.1:9292")
            .bind("[2001:db8:1::1]:9292")
            .server("198.51.100.1:9292")
            .render(Path::new("/d"));
        for line in [
            "    stats socket /d/admin.sock mode 600 level admin\n",
            "    mode http\n",
            "    timeout connect 5s\n",
            "    option forwardfor\n",
            "    bind 203.0.113.1:9292 ssl crt /d/lb.pem\n",
            "    bind [2001:db8:1::1]:9292 ssl crt /d/lb.pem\n",
            "    balance roundrobin\n",
            "    http-reuse safe\n",
            "    server glance1 198.51.100.1:9292\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        for absent in [
            "httpclose",
            "httpchk",
            "send-proxy",
            "accept-proxy",
            "retries",
            "retry-on",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn every_option_reaches_its_line() {
        let text = HaProxyConfig::new()
            .bind("203.0.113.1:80")
            .tls(false)
            .server("198.51.100.1:9292")
            .server("[2001:db8:51::1]:9292")
            .health_checks(true)
            .forwardfor(false)
            .accept_proxy(true)
            .send_proxy(SendProxy::V2)
            .http_reuse(HttpReuse::Never)
            .httpclose(true)
            .retries("2")
            .retry_on("conn-failure 503")
            .render(Path::new("/d"));
        for line in [
            "    bind 203.0.113.1:80 accept-proxy\n",
            "    option httpclose\n",
            "    http-reuse never\n",
            "    retries 2\n",
            "    retry-on conn-failure 503\n",
            "    http-check send meth GET uri /healthcheck\n",
            "    server glance1 198.51.100.1:9292 check inter 2s send-proxy-v2\n",
            "    server glance2 [2001:db8:51::1]:9292 check inter 2s send-proxy-v2\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(
            !text.contains("forwardfor") && !text.contains("ssl"),
            "{text}"
        );
        let v1 = HaProxyConfig::new()
            .bind("203.0.113.1:80")
            .server("198.51.100.1:9292")
            .send_proxy(SendProxy::V1)
            .render(Path::new("/d"));
        assert!(v1.contains("    server glance1 198.51.100.1:9292 send-proxy\n"));
    }
}
