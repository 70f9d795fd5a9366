//! Secret files (signing keys, the pseudonym key, secrets the config names) and the keys
//! directory, checked so that what is checked is what is read: a file is opened once and
//! judged by the opened file's own metadata, and a key in the keys directory is never read
//! through a symbolic link.
//!
//! INVARIANT: nobody but the keys directory's owner, the gateway's user and root can have
//! written a secret the gateway reads, and nobody else can read it; the one exception is a
//! configured secret owned by root, which its group may read (see [`read_configured`]).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("is a symbolic link; keys are read only from regular files in the keys directory")]
    Symlink,
    #[error("is not a regular file")]
    NotAFile,
    #[error("is readable by group or others (mode {mode:o}); run chmod 600 on it")]
    Readable { mode: u32 },
    #[error("is writable by group or others (mode {mode:o}); run chmod 700 on it")]
    Writable { mode: u32 },
    #[error("can be read or changed by others (mode {mode:o}); run chmod 600 on it, or chmod 640 with root as its owner to share it with its group only")]
    Exposed { mode: u32 },
    #[error("belongs to uid {owner}, who may not write the gateway's secrets (the gateway runs as uid {euid})")]
    Owner { owner: u32, euid: u32 },
}

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `owner` may have written a secret this process reads: this process's user, root,
/// or `also` (the keys directory's owner, who can replace its files anyway).
fn trusted_owner(owner: u32, euid: u32, also: Option<u32>) -> Result<(), PrivateFileError> {
    if owner == euid || owner == 0 || Some(owner) == also {
        Ok(())
    } else {
        Err(PrivateFileError::Owner { owner, euid })
    }
}

/// Judges a key by its metadata: a regular file, nobody else may read it, and owned by
/// someone [`trusted_owner`] accepts.
fn judge_key(meta: &fs::Metadata, euid: u32, also: Option<u32>) -> Result<(), PrivateFileError> {
    if !meta.file_type().is_file() {
        return Err(PrivateFileError::NotAFile);
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Readable { mode });
    }
    trusted_owner(meta.uid(), euid, also)
}

/// Judges a configured secret file by its mode and owner: never readable by others and
/// never writable by anyone but its owner; readable by its group only when root owns it.
/// That allowance is PostgreSQL's for its key files, and for the same reason: a root-owned
/// secret handed to a service through a group (Kubernetes' `fsGroup`, Debian's `ssl-cert`)
/// is readable by that group, and only root decides who is in it.
fn judge_configured(mode: u32, owner: u32, euid: u32) -> Result<(), PrivateFileError> {
    let mode = mode & 0o777;
    let allowed = if owner == 0 { 0o740 } else { 0o700 };
    if mode & !allowed != 0 {
        return Err(PrivateFileError::Exposed { mode });
    }
    trusted_owner(owner, euid, None)
}

/// Opens `path` once (through a link only if `follow`), judges the opened file and reads it.
fn read_judged(
    path: &Path,
    follow: bool,
    judge: impl FnOnce(&fs::Metadata) -> Result<(), PrivateFileError>,
) -> Result<Vec<u8>, PrivateFileError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    if !follow {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            PrivateFileError::Symlink
        } else {
            PrivateFileError::Io(e)
        }
    })?;
    judge(&file.metadata()?)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a key from the keys directory, never through a link: a link there could point
/// anywhere. `dir_owner` is what [`check_dir`] gave for the directory.
pub fn read_key(path: &Path, dir_owner: Option<u32>) -> Result<Vec<u8>, PrivateFileError> {
    read_judged(path, false, |meta| judge_key(meta, euid(), dir_owner))
}

/// Reads a secret file the config names (`*_file`). It may be a link (orchestrators mount
/// secrets so); whichever regular file it reaches is judged as opened, by
/// [`judge_configured`].
pub fn read_configured(path: &Path) -> Result<Vec<u8>, PrivateFileError> {
    read_judged(path, true, |meta| {
        if !meta.file_type().is_file() {
            return Err(PrivateFileError::NotAFile);
        }
        judge_configured(meta.mode(), meta.uid(), euid())
    })
}

/// Checks the keys directory: a directory that nobody but its owner can add files to, owned
/// by the gateway's user or root (root, running the CLI, may administer a service user's
/// directory). Returns the owner. A link to such a directory is fine: only who may write
/// the link's own directory could point it elsewhere.
pub fn check_dir(dir: &Path) -> Result<u32, PrivateFileError> {
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(PrivateFileError::NotAFile);
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(PrivateFileError::Writable { mode });
    }
    let euid = euid();
    let also = (euid == 0).then_some(meta.uid());
    trusted_owner(meta.uid(), euid, also)?;
    Ok(meta.uid())
}

/// Creates `dir` (and missing parents) as 0700 from the start, then checks it. Returns its
/// owner.
pub fn create_dir(dir: &Path) -> Result<u32, PrivateFileError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    check_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, mode: u32) {
        fs::write(path, b"secret").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_key_is_read_and_a_readable_one_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write(&p, 0o600);
        assert_eq!(read_key(&p, None).unwrap(), b"secret");
        for mode in [0o640, 0o604, 0o660] {
            write(&p, mode);
            assert!(
                matches!(read_key(&p, None), Err(PrivateFileError::Readable { mode: m }) if m == mode),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn a_link_in_the_keys_directory_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        write(&target, 0o600);
        let link = d.path().join("k");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            read_key(&link, None),
            Err(PrivateFileError::Symlink)
        ));
    }

    #[test]
    fn a_configured_secret_is_read_only_if_nobody_else_can_read_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write(&p, 0o600);
        assert_eq!(read_configured(&p).unwrap(), b"secret");
        write(&p, 0o400);
        assert_eq!(read_configured(&p).unwrap(), b"secret");
        // What `echo s3cret > file` leaves under the usual umask, and what a group could read.
        // (0o640 would be allowed if the test ran as root; the unit below judges it.)
        for mode in [0o644, 0o604, 0o660, 0o666, 0o602] {
            write(&p, mode);
            assert!(
                matches!(read_configured(&p), Err(PrivateFileError::Exposed { mode: m }) if m == mode),
                "{mode:o}"
            );
        }
        fs::create_dir(d.path().join("dir")).unwrap();
        assert!(matches!(
            read_configured(&d.path().join("dir")),
            Err(PrivateFileError::NotAFile)
        ));
    }

    #[test]
    fn a_configured_secret_may_be_a_link_and_the_file_it_reaches_is_judged() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("..data-secret");
        write(&target, 0o600);
        let link = d.path().join("secret");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_configured(&link).unwrap(), b"secret");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_configured(&link),
            Err(PrivateFileError::Exposed { mode: 0o644 })
        ));
    }

    #[test]
    fn only_a_root_owned_configured_secret_may_be_shared_with_its_group() {
        // Judged by mode and owner directly: a test cannot give a file to root.
        assert!(judge_configured(0o100640, 0, 1000).is_ok());
        assert!(judge_configured(0o100440, 0, 1000).is_ok());
        assert!(judge_configured(0o100600, 1000, 1000).is_ok());
        for (mode, owner) in [
            (0o640, 1000),
            (0o660, 0),
            (0o644, 0),
            (0o604, 1000),
            (0o642, 0),
        ] {
            assert!(
                matches!(
                    judge_configured(mode, owner, 1000),
                    Err(PrivateFileError::Exposed { .. })
                ),
                "{mode:o} owned by {owner}"
            );
        }
        assert!(matches!(
            judge_configured(0o600, 1001, 1000),
            Err(PrivateFileError::Owner {
                owner: 1001,
                euid: 1000
            })
        ));
    }

    #[test]
    fn only_the_gateways_user_root_or_the_directorys_owner_may_own_a_secret() {
        assert!(trusted_owner(1000, 1000, None).is_ok());
        assert!(trusted_owner(0, 1000, None).is_ok());
        assert!(trusted_owner(1001, 1000, Some(1001)).is_ok());
        assert!(matches!(
            trusted_owner(1001, 1000, None),
            Err(PrivateFileError::Owner {
                owner: 1001,
                euid: 1000
            })
        ));
        assert!(matches!(
            trusted_owner(1002, 0, Some(1001)),
            Err(PrivateFileError::Owner { .. })
        ));
    }

    #[test]
    fn the_keys_directory_admits_nobody_else() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("a/b/keys");
        assert_eq!(create_dir(&keys).unwrap(), euid());
        let mode = fs::metadata(&keys).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for bad in [0o770, 0o775, 0o703] {
            fs::set_permissions(&keys, fs::Permissions::from_mode(bad)).unwrap();
            assert!(
                matches!(check_dir(&keys), Err(PrivateFileError::Writable { .. })),
                "{bad:o}"
            );
        }
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o755)).unwrap();
        check_dir(&keys).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&keys, &link).unwrap();
        check_dir(&link).unwrap();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_dir(&link),
            Err(PrivateFileError::Writable { .. })
        ));
    }
}
