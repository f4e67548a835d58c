//! A small tmpfs for tests of a full or read-only state directory: mounted in a fresh
//! temporary directory, unmounted (and the directory removed) by its guard, also on panic.
//! Drop the users of the file system (a daemon holding its lock) before the guard.

use std::{
    cell::Cell,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

/// The name of the file [`Tmpfs::fill`] writes.
const FILLER: &str = "filler";

pub struct Tmpfs {
    /// Holds the mount point; removed after the unmount (fields drop after `drop`).
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// A read-only bind mount is over the tmpfs.
    read_only: Cell<bool>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB, mode 0700.
    pub fn mount(size_kib: u32) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-tmpfs-")
            .tempdir()
            .expect("a mount point");
        let path = dir.path().to_path_buf();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k,mode=0700"))
            .arg("tmpfs")
            .arg(&path));
        Tmpfs {
            _dir: dir,
            path,
            read_only: Cell::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the file system until a write fails with ENOSPC; [`Tmpfs::free`] undoes it.
    pub fn fill(&self) {
        let mut file = File::create(self.path.join(FILLER)).expect("create the filler");
        let chunk = [0x5a_u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // The last partial block too.
        loop {
            match file.write(&chunk[..1]) {
                Ok(1) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                other => panic!("filling {}: {other:?}", self.path.display()),
            }
        }
        let probe = File::create(self.path.join("probe")).and_then(|mut f| f.write_all(b"x"));
        let _ = fs::remove_file(self.path.join("probe"));
        assert!(probe.is_err(), "{} still takes writes", self.path.display());
    }

    /// Removes the filler: space is back.
    pub fn free(&self) {
        fs::remove_file(self.path.join(FILLER)).expect("remove the filler");
    }

    /// Makes the file system read-only for everything opened from now on (`false`: back to
    /// read-write). A plain `mount -o remount,ro` is refused while a file is open for writing
    /// (the daemon's lock), so a read-only bind mount goes over the mount point instead: new
    /// opens through the path get EROFS, as after an error remount.
    pub fn set_read_only(&self, read_only: bool) {
        if read_only == self.read_only.get() {
            return;
        }
        if read_only {
            run(Command::new("mount")
                .arg("--bind")
                .arg(&self.path)
                .arg(&self.path));
            self.read_only.set(true);
            run(Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(&self.path));
        } else {
            run(Command::new("umount").arg(&self.path));
            self.read_only.set(false);
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.read_only.get() {
            let _ = Command::new("umount").arg(&self.path).status();
        }
        let out = Command::new("umount").arg(&self.path).output();
        let problem = match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            // Busy (a user still holds it): detach it lazily rather than leave it mounted.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            let message = format!("umount {}: {problem}", self.path.display());
            if thread::panicking() {
                eprintln!("warning: {message}");
            } else {
                panic!("{message}");
            }
        }
    }
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
