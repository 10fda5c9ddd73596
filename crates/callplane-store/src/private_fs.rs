//! File modes of what the store keeps on disk: the data directory is 0700 and the database
//! (with its -wal, -shm and -journal companions) 0600, whatever the umask. The database holds
//! trunk passwords, webhook signing secrets and digest HA1 values.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database file and its companions.
pub const FILE_MODE: u32 = 0o600;

/// The files SQLite keeps beside the database.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `dir` (and missing parents) as 0700; an existing `dir` is set to 0700 as well,
/// with a warning when it was more open. Parents that already exist are left alone.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
    }
    // DirBuilder's mode is filtered by the umask: set it explicitly.
    restrict(dir, DIR_MODE)
}

/// Makes sure the database file at `path` exists with mode 0600 before SQLite opens it (SQLite
/// gives the -wal and -shm files the database's mode), and narrows the mode of an existing
/// database and of its companions.
pub fn prepare_db_file(path: &Path) -> io::Result<()> {
    if !path.exists() {
        // create_new: never truncate; a racing creator just means the file exists now.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    restrict_db_files(path)
}

/// Sets 0600 on the database and whichever companions exist (called again after SQLite has
/// created its -wal and -shm files).
pub fn restrict_db_files(path: &Path) -> io::Result<()> {
    restrict(path, FILE_MODE)?;
    for suffix in COMPANIONS {
        let companion = with_suffix(path, suffix);
        if companion.exists() {
            restrict(&companion, FILE_MODE)?;
        }
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Sets `mode` on `path` when it differs, logging once per file that was more open.
fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let found = fs::metadata(path)?.permissions().mode() & 0o777;
    if found != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        if found & !mode != 0 {
            tracing::warn!(
                path = %path.display(),
                was = format!("{found:03o}"),
                now = format!("{mode:03o}"),
                "narrowed the mode of a file holding secrets"
            );
        }
    }
    Ok(())
}

/// A name as one safe file name component: ASCII letters, digits, `-` and `_` kept, `.` kept
/// except in first position (so no `..`, no hidden files), everything else `%XX`. Names are
/// free text in the model; this keeps them from naming another directory.
pub fn file_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
