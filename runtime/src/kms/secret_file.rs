//! Secret files (a local root key, a token PIN): opened once without following a symbolic
//! link, and checked on the opened file, so nothing can be swapped in between the check and
//! the read.

use std::fs::File;
use std::io::Read;
use std::path::Path;

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
