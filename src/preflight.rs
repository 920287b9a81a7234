//! Checks before anything is mounted or any server contacted: the mount point, /dev/fuse and
//! (for a normal user) fusermount3.
//!
//! Owns: the wording of every first-run failure that is not about serverlist.txt. Invariant:
//! each message names the problem and says what to do about it.

use std::io;
use std::path::Path;

use crate::mounts;

const FUSE_DEVICE: &str = "/dev/fuse";

/// The mount point exists and is a directory; unless `nonempty_ok` (`-o nonempty`), it is
/// also empty and not a mount point already (mounting there would hide what is there).
pub fn mount_point(path: &Path, nonempty_ok: bool) -> Result<(), String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "mount point {shown} does not exist; create it first (mkdir -p {shown})"
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let what = mounted_at(path).map_or(String::new(), |m| format!(" of {}", m.describe()));
            return Err(format!(
                "mount point {shown} is a FUSE mount{what} whose process has ended \
                 (transport endpoint is not connected); unmount it first: fusermount3 -u {shown}"
            ));
        }
        Err(e) => return Err(format!("mount point {shown}: {e}")),
    };
    if !meta.is_dir() {
        return Err(format!(
            "mount point {shown} is not a directory; mount on an empty directory"
        ));
    }
    if nonempty_ok {
        return Ok(());
    }
    if let Some(m) = mounted_at(path) {
        // As root the kernel shows type "fuse" (fsname as the source); through fusermount3,
        // "fuse.ftpcircle-fs".
        let hint = if m.fs_type.starts_with("fuse.ftpcircle")
            || (m.is_fuse() && m.source == "ftpcircle")
        {
            " (another ftpcircle-fs serves it)"
        } else {
            ""
        };
        return Err(format!(
            "mount point {shown} is already a mount point: {} is mounted there{hint}; unmount \
             it first (fusermount3 -u {shown}), or choose another directory",
            m.describe()
        ));
    }
    let mut names = std::fs::read_dir(path)
        .map_err(|e| format!("mount point {shown}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name()));
    if let Some(first) = names.next() {
        let more = names.take(10_000).count();
        return Err(format!(
            "mount point {shown} is not empty ({} entr{}, e.g. {:?}); the mount would hide \
             what is there; use an empty directory, or add -o nonempty to mount over it anyway",
            more + 1,
            if more == 0 { "y" } else { "ies" },
            first
        ));
    }
    Ok(())
}

/// What is mounted at `path` (the top mount), if anything.
fn mounted_at(path: &Path) -> Option<mounts::MountEntry> {
    let abs = mounts::absolute(path);
    let table = mounts::read().ok()?;
    mounts::top_at(&table, &abs).cloned()
}

/// /dev/fuse exists.
pub fn fuse_device() -> Result<(), String> {
    fuse_device_at(Path::new(FUSE_DEVICE))
}

fn fuse_device_at(dev: &Path) -> Result<(), String> {
    match std::fs::metadata(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{} does not exist, so nothing can be mounted: load the fuse kernel module \
             (modprobe fuse, as root); in a container, start it with --device /dev/fuse \
             --cap-add SYS_ADMIN",
            dev.display()
        )),
        Err(e) => Err(format!("{}: {e}", dev.display())),
    }
}

/// A normal user mounts through the setuid helper fusermount3; root mounts directly.
pub fn mount_helper() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 || mounts::fusermount_path().is_some() {
        return Ok(());
    }
    Err(match std::env::var_os("FUSERMOUNT_PATH") {
        Some(p) => format!(
            "FUSERMOUNT_PATH is {}, which is not an executable file; a normal user mounts \
             through fusermount3: fix or unset FUSERMOUNT_PATH",
            Path::new(&p).display()
        ),
        None => "fusermount3 not found: a normal user mounts through it; install it (as root: \
                 apt-get install fuse3), or mount as root"
            .to_string(),
    })
}

/// The message for a failed mount, with the likely cause where the bare errno says little.
pub fn explain_mount_error(path: &Path, e: &io::Error) -> String {
    let shown = path.display();
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; mounting needs root, or fusermount3 (package fuse3) for a normal user"
        }
        Some(libc::ENODEV) => "; the fuse kernel module is not loaded (modprobe fuse, as root)",
        _ => "",
    };
    format!("mounting on {shown}: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("ftpcircle-preflight-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn missing_mount_point_says_mkdir() {
        let d = scratch("missing");
        let e = mount_point(&d.join("nope"), false).unwrap_err();
        assert!(
            e.contains("does not exist") && e.contains("mkdir -p"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn file_as_mount_point_is_refused() {
        let d = scratch("file");
        let f = d.join("f");
        std::fs::write(&f, b"x").expect("write");
        let e = mount_point(&f, false).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn nonempty_mount_point_needs_the_option() {
        let d = scratch("nonempty");
        assert!(mount_point(&d, false).is_ok());
        std::fs::write(d.join("a"), b"x").expect("write");
        std::fs::write(d.join("b"), b"x").expect("write");
        let e = mount_point(&d, false).unwrap_err();
        assert!(
            e.contains("not empty (2 entries") && e.contains("-o nonempty"),
            "{e}"
        );
        assert!(mount_point(&d, true).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_fuse_device_says_what_to_do() {
        let d = scratch("dev");
        let e = fuse_device_at(&d.join("fuse")).unwrap_err();
        assert!(
            e.contains("modprobe fuse") && e.contains("--device /dev/fuse"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn mount_errors_get_a_hint() {
        let e = explain_mount_error(Path::new("/m"), &io::Error::from_raw_os_error(libc::EPERM));
        assert!(
            e.starts_with("mounting on /m: ") && e.contains("fusermount3"),
            "{e}"
        );
    }
}
