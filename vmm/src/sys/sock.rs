//! A Unix socket only its owner can use.

use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds and listens on a new Unix socket at `path` with mode 0600, so no other user can
/// connect between `bind` and a later `chmod`.
///
/// The mode comes from a process-wide umask of 0177 held for the `bind` alone: call it before
/// other threads create files (`relaunch run` does, at start-up).
///
/// # Errors
/// `EEXIST` when something is at `path` already (never clobbered); the `bind`/`listen`
/// error.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
    }
    // SAFETY: umask(2) has no preconditions and cannot fail; it returns the previous mask,
    // restored right after the bind below.
    let old = unsafe { libc::umask(0o177) };
    let r = UnixListener::bind(path);
    // SAFETY: as above; restores the mask this function found.
    unsafe { libc::umask(old) };
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_is_private_and_never_clobbers() {
        let dir = std::env::temp_dir().join(format!("relaunch-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl");
        let _ = std::fs::remove_file(&path);
        let l = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            bind_private(&path).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
