//! Secret files (a local root key, a token PIN): opened once without following a symbolic
//! link, and checked on the opened file, so nothing can be swapped in between the check and
//! the read; written only as new files that group and others cannot access.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Reads the secret file at `path`, at most `max` bytes, into a zeroizing buffer. `Err` is a
/// problem text saying what to fix (the caller names the file): a symbolic link, anything but
/// a regular file, a mode that lets group or others access it, an owner other than the
/// effective user, a folder that others may write to (who could replace the file; a sticky
/// folder such as `/tmp` is allowed), a file over `max` bytes.
pub(crate) fn read(path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>, String> {
    let file = open(path)?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    check(&meta)?;
    check_folder(path)?;
    // Room for one byte more than allowed, so reading never reallocates (no stray copy).
    let mut buf = Zeroizing::new(Vec::with_capacity(max.saturating_add(1)));
    file.take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if buf.len() > max {
        return Err(format!("is larger than {max} bytes"));
    }
    Ok(buf)
}

/// Creates the file `path`, which must not exist yet, with mode `0600` (owner only), writes
/// `bytes` to it and syncs it. `Err` is a problem text (the caller names the file): it could
/// not be created (it exists, or its folder is missing or not writable) or not written.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(path)
        .map_err(|e| format!("cannot create it (it must not exist yet): {e}"))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write it: {e}"))
}

/// A fresh name for a temporary file beside `path` (`.NAME.tmp-` and 16 random hex digits),
/// for writing a new version that is then renamed over `path`. `None` when `path` has no file
/// name.
pub(crate) fn temp_beside(path: &Path) -> Option<PathBuf> {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name()?);
    name.push(format!(".tmp-{:016x}", rand::random::<u64>()));
    Some(path.with_file_name(name))
}

#[cfg(unix)]
fn open(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits())
        .map_err(|_| "cannot be opened without following links here".to_owned())?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                "is a symbolic link; name the file itself (a link could be pointed elsewhere)"
                    .to_owned()
            } else {
                format!("cannot read it: {e}")
            }
        })
}

#[cfg(not(unix))]
fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("cannot read it: {e}"))
}

#[cfg(unix)]
fn check(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} lets group or others access it; run `chmod 600` on it and make sure \
             nobody else copied it",
            mode & 0o7777
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by the user running this process (uid {me}); `chown` it",
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check(meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.is_file() {
        Ok(())
    } else {
        Err("is not a regular file".into())
    }
}

#[cfg(unix)]
fn check_folder(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(folder)
        .map_err(|e| format!("cannot check its folder {}: {e}", folder.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "its folder {} is writable by others, who could replace the file; run `chmod o-w` \
             on the folder",
            folder.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_folder(_path: &Path) -> Result<(), String> {
    Ok(())
}
