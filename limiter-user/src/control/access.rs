//! Who may use the control socket: root, the daemon's own user, and the members of one
//! configured group.
//!
//! The socket file's mode keeps others from connecting, but the decision is made here, on
//! each connection's kernel-reported credentials (`SO_PEERCRED`), so a socket file with the
//! wrong mode (a umask race at bind, an operator's chmod) never opens the daemon to anyone.

use std::{ffi::CString, fs, io};

/// A group whose members may use the socket, resolved when the daemon starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

/// The access rule of one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The daemon's effective user. In production it is root; when the daemon runs as an
    /// ordinary user (development, tests) that user may still talk to its own daemon.
    pub owner_uid: u32,
    pub group: Option<SocketGroup>,
}

/// The credentials of a connected peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// The primary group at connect time (`SO_PEERCRED`).
    pub gid: u32,
    /// Supplementary groups (`/proc/<pid>/status`), read only when they decide.
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "socket_group `{name}` does not exist on this host: create it (groupadd {name}) and add \
         the users who may control the daemon, or remove socket_group to allow root only"
    )]
    UnknownGroup { name: String },
    #[error("cannot look up socket_group `{name}`: {source}; check /etc/group and NSS")]
    Lookup {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl Access {
    /// Root and the daemon's user, plus the members of `socket_group` when one is named (the
    /// configuration's `socket_group`). An unknown group is an error: starting anyway would
    /// lock out everyone the operator meant to let in.
    pub fn for_daemon(socket_group: Option<&str>) -> Result<Access, AccessError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner_uid = unsafe { libc::geteuid() };
        let group = socket_group.map(resolve_group).transpose()?;
        Ok(Access { owner_uid, group })
    }

    /// Whether `peer` may use the socket (pure; see [`Access::permits_connection`]).
    pub fn permits(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.owner_uid {
            return true;
        }
        match &self.group {
            Some(group) => peer.gid == group.gid || peer.groups.contains(&group.gid),
            None => false,
        }
    }

    /// Whether a connection with these `SO_PEERCRED` credentials may use the socket.
    /// Supplementary groups are read from `/proc` only when uid and primary gid do not
    /// decide; a peer whose process is already gone is judged by what is left.
    pub fn permits_connection(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        let mut peer = Peer {
            uid,
            gid,
            groups: Vec::new(),
        };
        if self.permits(&peer) {
            return true;
        }
        match (&self.group, pid) {
            (Some(_), Some(pid)) => {
                peer.groups = supplementary_groups(pid).unwrap_or_default();
                self.permits(&peer)
            }
            _ => false,
        }
    }

    /// The socket file's mode: group read/write only when a group may use it.
    pub fn socket_mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }
}

/// The gid of the group called `name` (`getgrnam_r`).
pub fn resolve_group(name: &str) -> Result<SocketGroup, AccessError> {
    let unknown = || AccessError::UnknownGroup {
        name: name.to_string(),
    };
    let c_name = CString::new(name).map_err(|_| unknown())?;
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: every pointer is valid for the call; getgrnam_r writes the group's strings
        // into `buffer` (of the length given) and the entry into `group`.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let status = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        match status {
            0 if found.is_null() => return Err(unknown()),
            0 => {
                return Ok(SocketGroup {
                    name: name.to_string(),
                    gid: group.gr_gid,
                })
            }
            // Groups with many members need a larger buffer; 1 MiB is far beyond any real one.
            libc::ERANGE if buffer.len() < (1 << 20) => buffer.resize(buffer.len() * 4, 0),
            // "Not found" comes back as one of these from some NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Err(unknown()),
            errno => {
                return Err(AccessError::Lookup {
                    name: name.to_string(),
                    source: io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
}

/// The supplementary groups of process `pid`, from `/proc/<pid>/status`.
fn supplementary_groups(pid: i32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_groups(&status)
}

/// The `Groups:` line of a `/proc/<pid>/status` text (`Groups:\t4 24 27 \n`).
pub fn parse_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))?;
    line.split_whitespace()
        .map(|gid| gid.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(group: Option<u32>) -> Access {
        Access {
            owner_uid: 0,
            group: group.map(|gid| SocketGroup {
                name: "glance-limiter".into(),
                gid,
            }),
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_is_always_allowed() {
        assert!(access(None).permits(&peer(0, 0, &[])));
        assert!(access(Some(990)).permits(&peer(0, 5, &[])));
    }

    #[test]
    fn the_daemons_own_user_is_allowed() {
        let access = Access {
            owner_uid: 1000,
            group: None,
        };
        assert!(access.permits(&peer(1000, 1000, &[])));
        assert!(!access.permits(&peer(1001, 1000, &[])));
    }

    #[test]
    fn group_members_by_primary_or_supplementary_group() {
        let access = access(Some(990));
        assert!(access.permits(&peer(1000, 990, &[])));
        assert!(access.permits(&peer(1000, 1000, &[4, 990])));
        assert!(!access.permits(&peer(1000, 1000, &[4, 24])));
    }

    #[test]
    fn without_a_group_only_root_and_the_owner() {
        assert!(!access(None).permits(&peer(1000, 0, &[0])));
    }

    #[test]
    fn groups_line_parses() {
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 990 \nNgid:\t0\n";
        assert_eq!(parse_status_groups(status), Some(vec![4, 24, 27, 990]));
        assert_eq!(parse_status_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_status_groups("Name:\tx\n"), None);
        assert_eq!(parse_status_groups("Groups:\t4 x\n"), None);
    }

    #[test]
    fn our_own_process_groups_can_be_read() {
        assert!(supplementary_groups(std::process::id() as i32).is_some());
    }

    #[test]
    fn groups_resolve_by_name() {
        assert_eq!(resolve_group("root").unwrap().gid, 0);
        let error = resolve_group("no-such-group-glance-limiter").unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(matches!(
            resolve_group("nul\0byte"),
            Err(AccessError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn mode_follows_the_group() {
        assert_eq!(access(None).socket_mode(), 0o600);
        assert_eq!(access(Some(990)).socket_mode(), 0o660);
    }
}
