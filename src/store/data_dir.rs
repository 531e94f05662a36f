//! The data directory on disk: private to the service's user, and used by one process at a time.
//!
//! The directory is created with mode 0700 and every file in it with 0600 (the database with its `-wal` and
//! `-shm` files, the lock file; the key file in [`super::secrets`]), whatever the umask. At start-up a database
//! file, `-wal` or `-shm` that group or others may read is tightened to 0600, and so is a loose directory that
//! holds nothing but this service's files; a loose directory holding other files is left alone with a warning
//! (it may be shared, e.g. `/var/lib`), since the files themselves are private.
//!
//! [`DataDirLock`] is an exclusive advisory lock (`flock`) on `<data-dir>/lock`, held while the server runs: a
//! second process on the same directory is refused instead of both writing to one database.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::error::{Context, StoreError};
use super::secrets::SECRET_KEY_FILE;
use super::sqlite::DATABASE_FILE;

/// Name of the lock file inside the data directory; it holds the pid of the process that has the lock.
pub const LOCK_FILE: &str = "lock";

/// Suffixes SQLite adds to the database file name for its side files.
const DATABASE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];
/// A fresh ext4 volume's root holds this; it does not make the directory shared.
const LOST_AND_FOUND: &str = "lost+found";

/// Why the data directory cannot be used.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// Another process holds the lock. `pid` is what it wrote into the lock file, when it could be read.
    #[error("data dir {dir} is in use by another groove-destination process{}", pid_note(*.pid))]
    InUse { dir: String, pid: Option<u32> },
    /// The lock could not be taken for another reason (the file system does not support it, I/O).
    #[error("cannot lock data dir {dir}: {source}")]
    Lock { dir: String, source: std::io::Error },
    /// The directory or the lock file could not be created or read.
    #[error(transparent)]
    Prepare(#[from] StoreError),
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
}

/// The exclusive lock on a data directory; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if missing (mode 0700), tightens it if it is loose and holds only this service's files,
    /// then takes the lock, writing this process's id into the lock file.
    ///
    /// Refuses with [`DataDirError::InUse`] when another process (or another server in this process) holds
    /// it; never waits.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        create_private_dir(dir)?;
        tighten_dir(dir);
        let path = dir.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        // Not truncated on open: the holder's pid must stay readable to the process that is refused.
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&path)
            .context(|| format!("opening lock file {}", path.display()))?;
        restrict_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse {
                    dir: dir.display().to_string(),
                    pid: read_pid(&mut file),
                })
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Lock {
                    dir: dir.display().to_string(),
                    source,
                })
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .context(|| format!("writing the pid into {}", path.display()))?;
        Ok(DataDirLock { file, path })
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDirLock {
    /// Clears the pid while the lock is still held, so the file never names a process that has let go.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Creates `dir` and its parents if missing; new directories are private to the owner (mode 0700).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .context(|| format!("creating data directory {}", dir.display()))
}

/// Creates `path` empty with mode 0600 if it does not exist (whatever the umask), or tightens it to 0600 if
/// group or others may access it. For files other programs create inside the data directory (SQLite's
/// database), so they never start out readable by others.
pub(crate) fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(file) => {
            // The mode given to open() is masked by the umask; this is not.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(0o600))
                    .context(|| format!("setting the mode of {}", path.display()))?;
            }
            #[cfg(not(unix))]
            let _ = file;
            Ok(())
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => restrict_file(path),
        Err(error) => Err(StoreError::internal(
            format!("creating {}", path.display()),
            error,
        )),
    }
}

/// Tightens `path` to mode 0600 if group or others may access it, logging that it did; a missing file is
/// fine.
#[cfg(unix)]
pub(crate) fn restrict_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata.permissions().mode() & 0o7777,
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(StoreError::internal(
                format!("reading the mode of {}", path.display()),
                error,
            ))
        }
    };
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .context(|| format!("tightening the mode of {} to 0600", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        was = %format!("{mode:04o}"),
        "file was accessible to group or others; tightened to 0600"
    );
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn restrict_file(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Tightens a data directory that group or others may access to 0700 when it holds nothing but this service's
/// files; otherwise (it may be a shared directory, or not ours to change) only warns. Never fails start-up:
/// the files inside are 0600 either way.
#[cfg(unix)]
fn tighten_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = fs::metadata(dir) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let shown = dir.display();
    let was = format!("{mode:04o}");
    match foreign_entry(dir) {
        Ok(None) => match fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
            Ok(()) => tracing::warn!(
                path = %shown,
                %was,
                "data dir was accessible to group or others; tightened to 0700"
            ),
            Err(error) => tracing::warn!(
                path = %shown,
                %was,
                %error,
                "data dir is accessible to group or others and cannot be tightened; its files are 0600, \
                 but others may rename or delete them: run `chmod 700` on it"
            ),
        },
        Ok(Some(other)) => tracing::warn!(
            path = %shown,
            %was,
            other_file = %other,
            "data dir is accessible to group or others and holds files of other programs, so it is left as \
             it is; its files are 0600, but a directory of its own, mode 0700, is safer"
        ),
        Err(error) => tracing::warn!(
            path = %shown,
            %was,
            %error,
            "data dir is accessible to group or others and cannot be listed; left as it is"
        ),
    }
}

#[cfg(not(unix))]
fn tighten_dir(_dir: &Path) {}

/// The first entry of `dir` that is not one of this service's files, if any.
#[cfg(unix)]
fn foreign_entry(dir: &Path) -> std::io::Result<Option<String>> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let ours = name == DATABASE_FILE
            || name == SECRET_KEY_FILE
            || name == LOCK_FILE
            || name == LOST_AND_FOUND
            || DATABASE_SIDE_FILES
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(DATABASE_FILE));
        if !ours {
            return Ok(Some(name.into_owned()));
        }
    }
    Ok(None)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = DataDirLock::acquire(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(held.path()), 0o600);
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let refused = DataDirLock::acquire(&data).unwrap_err();
        assert!(
            matches!(&refused, DataDirError::InUse { pid: Some(pid), .. } if *pid == std::process::id()),
            "{refused:?}"
        );
        assert_eq!(
            refused.to_string(),
            format!(
                "data dir {} is in use by another groove-destination process (pid {})",
                data.display(),
                std::process::id()
            )
        );
        drop(held);
        assert_eq!(fs::read_to_string(data.join(LOCK_FILE)).unwrap(), "");
        let again = DataDirLock::acquire(&data).unwrap();
        assert_eq!(
            fs::read_to_string(again.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn a_loose_dir_holding_only_our_files_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join(DATABASE_FILE), b"").unwrap();
        fs::write(data.join(format!("{DATABASE_FILE}-wal")), b"").unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        let _held = DataDirLock::acquire(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn a_loose_dir_holding_other_files_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("someone-elses.conf"), b"").unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let _held = DataDirLock::acquire(&shared).unwrap();
        assert_eq!(mode(&shared), 0o755);
        assert_eq!(mode(&shared.join(LOCK_FILE)), 0o600);
    }

    #[test]
    fn private_files_are_created_0600_and_loose_ones_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.db");
        create_private_file(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
        assert_eq!(fs::read(&new).unwrap(), b"");

        let loose = dir.path().join("loose.db");
        fs::write(&loose, b"kept").unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
        create_private_file(&loose).unwrap();
        assert_eq!(mode(&loose), 0o600);
        assert_eq!(fs::read(&loose).unwrap(), b"kept", "never truncated");

        restrict_file(&dir.path().join("missing")).unwrap();
    }
}
