//! What the daemon needs to know about the host it protects: its own addresses (never banned)
//! and the interface of its default route (attached when none is configured).

use std::{
    ffi::CStr,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Every address configured on this network namespace's interfaces.
pub fn own_addresses() -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = interface_entries()
        .into_iter()
        .filter_map(|(_, addr)| addr)
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Names of this namespace's interfaces, for error messages.
pub fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    for (name, _) in interface_entries() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One `(interface, address)` per entry of `getifaddrs`: an interface appears once per
/// address, and once with `None` for its link-layer entry.
fn interface_entries() -> Vec<(String, Option<IpAddr>)> {
    let mut entries = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return entries;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned; ifa_name is NUL-terminated.
        let entry = unsafe { &*cursor };
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        entries.push((name, address_of(entry.ifa_addr)));
        cursor = entry.ifa_next;
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(list) };
    entries
}

fn address_of(sockaddr: *const libc::sockaddr) -> Option<IpAddr> {
    if sockaddr.is_null() {
        return None;
    }
    // SAFETY: a sockaddr from getifaddrs; its family says its real type.
    match unsafe { (*sockaddr).sa_family } as i32 {
        libc::AF_INET => {
            // SAFETY: AF_INET means sockaddr_in.
            let sin = unsafe { &*(sockaddr as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6 means sockaddr_in6.
            let sin6 = unsafe { &*(sockaddr as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The kind of a virtual link (`veth`, `vlan`, ...) as `ip -d link` reports it; `None` for a
/// physical device or when it cannot be read.
pub fn link_kind(iface: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        links
            .get(0)?
            .get("linkinfo")?
            .get("info_kind")?
            .as_str()?
            .to_owned(),
    )
}

/// The interface of the IPv4 default route, else of the IPv6 one.
pub fn default_route_interface() -> Option<String> {
    let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_route_v4(&v4).or_else(|| default_route_v6(&v6))
}

/// `/proc/net/route`: Iface, Destination (hex), Gateway, Flags, ...; the default route has
/// destination and mask 0.
fn default_route_v4(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000")
            .then(|| fields[0].to_owned())
    })
}

/// `/proc/net/ipv6_route`: destination (32 hex), prefix length (hex), ..., interface last.
fn default_route_v6(table: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() == 10
            && fields[0].chars().all(|c| c == '0')
            && fields[1] == "00"
            && fields[9] != "lo")
            .then(|| fields[9].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_default_route_is_found() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_v4(table), Some("eth0".into()));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
    }

    #[test]
    fn ipv6_default_route_skips_loopback() {
        let table = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ens3\n\
                     00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(default_route_v6(table), Some("ens3".into()));
    }

    #[test]
    fn own_addresses_include_loopback() {
        assert!(own_addresses().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
