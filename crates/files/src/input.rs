//! Inputs: regular files only (a FIFO, `/dev/zero` or a terminal may never end, and reading
//! one to its end would grow memory until something kills the process), and a size limit where
//! a file is read whole.

use std::io::Read;
use std::path::Path;

use crate::atomic::describe;
use crate::error::FilesError;

/// Checks that `path` is a regular file (following links) and returns its size.
pub fn regular_file(path: &Path) -> Result<u64, FilesError> {
    let m = std::fs::metadata(path).map_err(FilesError::io(path, "reading"))?;
    if !m.is_file() {
        return Err(FilesError::refused(
            path,
            format!(
                "is {}; distill reads regular files only (a stream may never end: save it to a file first)",
                describe(&m.file_type())
            ),
        ));
    }
    Ok(m.len())
}

/// Reads a regular file whole, refusing one larger than `limit` bytes (`what` names it in
/// the message, e.g. "a run config").
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, FilesError> {
    let size = regular_file(path)?;
    if size > limit {
        return Err(too_large(path, what, limit));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(FilesError::io(path, "reading"))?;
    // The file may have grown since it was measured.
    if bytes.len() as u64 > limit {
        return Err(too_large(path, what, limit));
    }
    Ok(bytes)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64, what: &str) -> Result<String, FilesError> {
    String::from_utf8(read_limited(path, limit, what)?).map_err(|e| {
        FilesError::refused(
            path,
            format!(
                "is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn too_large(path: &Path, what: &str, limit: u64) -> FilesError {
    FilesError::refused(
        path,
        format!(
            "is larger than {} MiB, more than {what} can be; is it the right file?",
            limit >> 20
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn streams_and_devices_are_refused_at_once() {
        for p in ["/dev/zero", "/dev/null"] {
            if Path::new(p).exists() {
                let e = read_limited(Path::new(p), 1 << 20, "a run config")
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains("character device") && e.contains("regular files"),
                    "{e}"
                );
            }
        }
        let e = regular_file(Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run.yaml");
        std::fs::write(&p, vec![b'a'; 2 << 20]).unwrap();
        let e = read_text_limited(&p, 1 << 20, "a run config")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("larger than 1 MiB") && e.contains("a run config"),
            "{e}"
        );
        std::fs::write(&p, "steps: 1\n").unwrap();
        assert_eq!(
            read_text_limited(&p, 1 << 20, "a run config").unwrap(),
            "steps: 1\n"
        );
    }
}
