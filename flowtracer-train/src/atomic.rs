//! Durable, atomic file writes: every file the trainer and the CLI write goes through
//! [`write_atomic`], so a reader (or a crash) sees either the old content or the whole new
//! content, never a partial file.

use core::sync::atomic::{AtomicU64, Ordering};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::FileError;
use crate::fault;

/// Writes `bytes` to `path` atomically and durably.
///
/// The bytes go to a temporary file in the same directory (`.NAME.tmp-PID-K`), which is
/// fsynced, renamed over `path`, and then the directory is fsynced so that the rename itself
/// survives a crash. On error the temporary file is removed and `path` is unchanged. The
/// temporaries of `path` that killed processes left are removed first.
///
/// # Errors
///
/// A [`FileError`] (action "write") naming `path` if `path` has no file name or any step
/// fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let fail = |e: std::io::Error| FileError::new("write", path, e);
    let name = path.file_name().ok_or_else(|| {
        fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let dir = parent_dir(path);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    remove_dead_temporaries(&dir, name);
    let result = (|| {
        fault::point("write");
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        fault::point("fsync");
        file.sync_all()?;
        drop(file);
        fault::point("rename");
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        // Gone already if the rename succeeded and only the directory sync failed.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// Removes the temporaries of `write_atomic` for the file `name` in `dir` that a killed
/// process left (`.NAME.tmp-PID-K` whose process no longer runs, known by `/proc/PID` on
/// Linux; elsewhere nothing is removed). Best effort: errors are ignored.
fn remove_dead_temporaries(dir: &Path, name: &std::ffi::OsStr) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp-");
    let Some(prefix) = prefix.to_str() else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let own = std::process::id();
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != own && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Renames `from` to `to` (a file or a directory) and fsyncs the directory of `to`, so the
/// rename survives a crash. `from` should already be durable (its files fsynced).
///
/// # Errors
///
/// A [`FileError`] (action "publish") naming `to`.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), FileError> {
    fault::point("rename");
    fs::rename(from, to)
        .and_then(|()| sync_dir(&parent_dir(to)))
        .map_err(|e| FileError::new("publish", to, e))
}

/// Fsyncs a directory, making the creation, renaming and removal of its entries durable.
///
/// # Errors
///
/// The I/O error of opening or syncing `dir` (on Unix; elsewhere this does nothing).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fault::point("fsync");
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Removes the directory `path` and everything in it, then fsyncs its parent so the removal
/// survives a crash. A directory that is already gone is not an error.
///
/// # Errors
///
/// A [`FileError`] (action "remove") naming `path`.
pub fn remove_dir_durable(path: &Path) -> Result<(), FileError> {
    fault::point("remove");
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FileError::new("remove", path, e)),
    }
    sync_dir(&parent_dir(path)).map_err(|e| FileError::new("remove", path, e))
}

/// The name of the lock file in a run directory.
pub const LOCK: &str = ".lock";

/// An advisory lock on a run directory (`DIR/.lock`), held until dropped: two processes
/// never write one run directory at once.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and takes its lock without waiting.
    ///
    /// # Errors
    ///
    /// A [`FileError`] (action "lock") naming the lock file: another process holds it
    /// ("another flowtracer process is using this directory"), or it cannot be created.
    pub fn acquire(dir: &Path) -> Result<Self, FileError> {
        let path = dir.join(LOCK);
        fs::create_dir_all(dir).map_err(|e| FileError::new("create", dir, e))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FileError::new("lock", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(FileError::new(
                "lock",
                &path,
                "another flowtracer process is using this directory: wait for it to finish or choose another --out",
            )),
            Err(fs::TryLockError::Error(e)) => Err(FileError::new("lock", &path, e)),
        }
    }
}

/// Reads a whole regular file of at most `limit` bytes.
///
/// Anything else is refused before it is read: a directory, a device such as `/dev/zero`, a
/// FIFO or a socket ("not a regular file"), or a file larger than `limit`. The read itself
/// stops at `limit + 1` bytes, so a file that grows while it is read cannot exhaust memory.
///
/// # Errors
///
/// The I/O error of opening or reading, or `InvalidInput` saying what is wrong.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    // Checked before opening too: opening a FIFO for reading blocks until a writer comes.
    if !fs::metadata(path)?.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(invalid(format!(
            "the file has {} bytes, more than the {limit} allowed",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(format!(
            "the file grew past the {limit} bytes allowed while it was read"
        )));
    }
    Ok(bytes)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("flowtracer-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_leaving_no_temporary() {
        let dir = temp_dir("replace");
        let path = dir.join("out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(entries(&dir), ["out.json"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_names_the_path_and_leaves_nothing() {
        let dir = temp_dir("fail");
        // The target is a non-empty directory: the rename fails after the temporary exists.
        let path = dir.join("taken");
        fs::create_dir_all(path.join("inside")).unwrap();
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.action, "write");
        assert_eq!(err.path, path);
        assert!(err.to_string().starts_with("cannot write "), "{err}");
        assert_eq!(entries(&dir), ["taken"]);
        let missing = dir.join("no-such-dir").join("out.json");
        assert!(write_atomic(&missing, b"x").is_err());
        assert_eq!(entries(&dir), ["taken"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_regular_reads_up_to_the_limit_and_refuses_the_rest() {
        let dir = temp_dir("read");
        let path = dir.join("five");
        fs::write(&path, b"12345").unwrap();
        assert_eq!(read_regular(&path, 5).unwrap(), b"12345");
        assert_eq!(read_regular(&path, u64::MAX).unwrap(), b"12345");
        let err = read_regular(&path, 4).unwrap_err();
        assert!(err.to_string().contains("more than the 4 allowed"), "{err}");
        let err = read_regular(&dir, 100).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        let err = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        let _ = fs::remove_dir_all(&dir);
    }
}
