//! The run directory's lock: one process at a time trains in a run directory.
//!
//! The lock is an exclusive OS file lock (`flock` on Unix, `LockFileEx` on Windows) on
//! [`LOCK_FILE`] inside the run directory, so it is released by the operating system when the
//! process ends, however it ends (a SIGKILLed run leaves no stale lock). The file holds the
//! holder's process id, which a refused process names. The file itself stays (removing a lock
//! file while another process may be opening it would let two processes lock two different
//! files); runs ignore it as an entry of the directory.
//!
//! Inside one process the lock is re-entrant: a job that takes it before training (so that the
//! export after training is covered too) and the training loop that takes it again share it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Result, TrainError};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".peanut.lock";

/// The locks this process holds, by run directory (canonical path).
static HELD: Mutex<Vec<(PathBuf, Weak<File>)>> = Mutex::new(Vec::new());

/// A held lock on a run directory; released when the last clone is dropped (or the process
/// ends).
#[derive(Debug, Clone)]
pub struct RunLock {
    /// The locked file: holding it is what holds the lock.
    _file: Arc<File>,
    dir: PathBuf,
}

impl RunLock {
    /// Locks the run directory `dir` (created when missing) for this process.
    ///
    /// # Errors
    /// [`TrainError::RunDirectoryLocked`] (naming the holder's pid) when another process holds
    /// it; an I/O error when the directory or the lock file cannot be created.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
        let canonical = dir
            .canonicalize()
            .map_err(|e| TrainError::io("cannot resolve", dir, e))?;
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(_, file)| file.strong_count() > 0);
        if let Some(file) = held
            .iter()
            .find(|(path, _)| *path == canonical)
            .and_then(|(_, file)| file.upgrade())
        {
            return Ok(Self {
                _file: file,
                dir: dir.to_path_buf(),
            });
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TrainError::io("cannot open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(TrainError::RunDirectoryLocked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        format!("process {holder}")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(TrainError::io("cannot lock", &path, e)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| TrainError::io("cannot write", &path, e))?;
        let file = Arc::new(file);
        held.push((canonical, Arc::downgrade(&file)));
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `name` is the lock file (which a run directory's listing leaves out).
pub(crate) fn is_lock_file(name: &std::ffi::OsStr) -> bool {
    name == LOCK_FILE
}
