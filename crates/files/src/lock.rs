//! One writer per folder: a lock file (`.distill.lock`) held with the operating system's file
//! lock for as long as the writer lives, naming its pid, host, command and start time so that a
//! second writer can say who is there. The OS releases the lock when a process ends however it
//! ends, so a lock file left by a killed process is not held, and the next writer takes it over
//! with a message.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::FilesError;

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".distill.lock";

/// Who holds (or held) a lock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// What it runs, e.g. `distill run`.
    pub command: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (pid {} on host {}, started {})",
            self.command,
            self.pid,
            self.host,
            utc(self.started)
        )
    }
}

/// A held lock; released (and its file removed) when dropped.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock of `dir` (which must exist) for `command`, or says who holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self, FilesError> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(FilesError::io(&path, "opening the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "another process".into());
                return Err(FilesError::Locked {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(FilesError::io(&path, "locking")(e));
            }
        }
        if let Some(old) = read_holder(&mut file) {
            tracing::warn!(
                dir = %dir.display(),
                "taking over the lock left by {old}, which is no longer running"
            );
        }
        let me = Holder {
            pid: std::process::id(),
            host: host_name(),
            command: command.into(),
            started: now(),
        };
        let json = serde_json::to_vec(&me).expect("a holder serialises");
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(&json))
            .and_then(|()| file.flush())
            .map_err(FilesError::io(&path, "writing the lock file"))?;
        Ok(Self { file, path })
    }

    /// The folder this lock guards.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so no one can have taken it in between; the OS lock goes
        // with the file handle.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's name.
pub fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer outlives the call and its length is passed.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    "unknown".into()
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_655_190), "2026-12-07 14:53:10 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn a_second_writer_is_refused_and_told_who_holds_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let first = Lock::acquire(d.path(), "distill run").unwrap();
        let e = Lock::acquire(d.path(), "distill run --overwrite")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id()))
                && e.contains("distill run")
                && e.contains(&host_name()),
            "{e}"
        );
        drop(first);
        assert!(!d.path().join(LOCK_FILE).exists(), "released and removed");
        let _again = Lock::acquire(d.path(), "distill run").unwrap();
    }

    #[test]
    fn a_lock_file_of_a_dead_process_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let stale = Holder {
            pid: 999_999,
            host: "elsewhere".into(),
            command: "distill run".into(),
            started: 0,
        };
        std::fs::write(
            d.path().join(LOCK_FILE),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        let lock = Lock::acquire(d.path(), "distill cache-teacher").unwrap();
        let now: Holder =
            serde_json::from_slice(&std::fs::read(d.path().join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
        assert_eq!(now.command, "distill cache-teacher");
        drop(lock);
    }
}
