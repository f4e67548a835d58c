//! DEBIAN/control: the fields the package declares, from what the build found out.

use anyhow::{bail, Result};

pub const PACKAGE: &str = "glance-limiter";
/// Runtime needs beyond the shared libraries: the daemon asks `ip` for an interface's XDP
/// mode.
const EXTRA_DEPENDS: &[&str] = &["iproute2"];

/// What varies from build to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub version: String,
    pub arch: String,
    pub depends: String,
    pub installed_size_kib: u64,
}

/// The upstream version with Debian revision 1: a later packaging-only fix can be `-2`
/// without pretending the software changed.
pub fn debian_version(upstream: &str) -> String {
    format!("{upstream}-1")
}

/// `shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)` (dpkg-shlibdeps -O) → the list.
pub fn parse_shlibs(output: &str) -> Result<String> {
    match output
        .lines()
        .find_map(|l| l.trim().strip_prefix("shlibs:Depends="))
    {
        Some(list) if !list.trim().is_empty() => Ok(list.trim().to_owned()),
        _ => bail!("dpkg-shlibdeps found no shared libraries: `{output}`"),
    }
}

/// The shared libraries' dependencies plus the tools the daemon runs.
pub fn depends(shlibs: &str) -> String {
    let mut all: Vec<&str> = shlibs.split(',').map(str::trim).collect();
    for extra in EXTRA_DEPENDS {
        if !all
            .iter()
            .any(|d| d.split_whitespace().next() == Some(extra))
        {
            all.push(extra);
        }
    }
    all.join(", ")
}

pub fn render(fields: &Fields) -> String {
    let Fields {
        version,
        arch,
        depends,
        installed_size_kib,
    } = fields;
    format!(
        "Package: {PACKAGE}
Version: {version}
Architecture: {arch}
Maintainer: glance-limiter maintainers <root@localhost>
Installed-Size: {installed_size_kib}
Depends: {depends}
Section: net
Priority: optional
Description: XDP protection of the OpenStack Glance API against image-create floods
 Glance creates a database record for every image-create request and enforces no rate
 limit on them (OSSN-0076). glance-limiter counts, per source, new connections and
 image-create requests to the Glance port in an XDP program, bans sources that exceed
 configurable rates, and drops their traffic before the network stack sees it.
 .
 The program and its rules stay pinned in the kernel while the daemon restarts or is
 stopped; `limiter detach` removes them. The service is installed disabled: fill in the
 allowlist in /etc/glance-limiter/limiter.toml first
 (/usr/share/doc/glance-limiter/OPERATIONS.md).
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shlibs_become_depends_with_the_tools_the_daemon_runs() {
        let shlibs = parse_shlibs("shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n").unwrap();
        assert_eq!(
            depends(&shlibs),
            "libc6 (>= 2.34), libgcc-s1 (>= 4.2), iproute2"
        );
        assert_eq!(
            depends("libc6 (>= 2.34), iproute2"),
            "libc6 (>= 2.34), iproute2"
        );
    }

    #[test]
    fn no_shared_libraries_is_an_error() {
        assert!(parse_shlibs("").is_err());
        assert!(parse_shlibs("shlibs:Depends=\n").is_err());
    }

    #[test]
    fn control_has_every_required_field_and_a_valid_description() {
        let text = render(&Fields {
            version: debian_version("0.1.0"),
            arch: "amd64".into(),
            depends: "libc6 (>= 2.34), iproute2".into(),
            installed_size_kib: 4321,
        });
        for field in [
            "Package: glance-limiter\n",
            "Version: 0.1.0-1\n",
            "Architecture: amd64\n",
            "Installed-Size: 4321\n",
            "Depends: libc6 (>= 2.34), iproute2\n",
        ] {
            assert!(text.contains(field), "{field:?} in\n{text}");
        }
        assert!(text.contains("\nMaintainer: "));
        // Continuation lines start with a space; a field ends the file with a newline.
        let description = text.split_once("Description: ").unwrap().1;
        assert!(description.lines().skip(1).all(|l| l.starts_with(' ')));
        assert!(text.ends_with('\n') && !text.ends_with("\n\n"));
    }
}
