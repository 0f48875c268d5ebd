//! Writing files and folders so that a reader never sees a half-written one, a failed write
//! leaves nothing behind, and nothing but a regular file (or a folder distill owns) is ever
//! replaced.

use std::fs::FileType;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::FilesError;
use crate::marker::Marker;

/// What sits at a path, in words, for messages.
pub(crate) fn describe(ft: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a folder"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Refuses `path` as a file output when something other than a regular file is there.
/// Following links: a link to a device is a device.
pub(crate) fn refuse_non_regular_target(path: &Path) -> Result<(), FilesError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(FilesError::refused(
            path,
            format!(
                "is {}; distill writes only regular files (give a file path)",
                describe(&m.file_type())
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FilesError::io(path, "reading what is there")(e)),
    }
}

/// A temporary file or folder beside a target (same folder, so the final rename is atomic),
/// removed when dropped unless it was renamed into place.
struct TempSibling {
    path: PathBuf,
    folder: bool,
    placed: bool,
}

impl TempSibling {
    fn name_for(target: &Path) -> PathBuf {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        target.with_file_name(format!(".{name}.tmp-{}-{serial}", std::process::id()))
    }

    /// An empty file with the mode any new file gets here.
    fn file(target: &Path) -> Result<Self, FilesError> {
        let path = Self::name_for(target);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(FilesError::io(&path, "creating a temporary file"))?;
        Ok(Self {
            path,
            folder: false,
            placed: false,
        })
    }

    fn folder(target: &Path) -> Result<Self, FilesError> {
        let path = Self::name_for(target);
        std::fs::create_dir(&path).map_err(FilesError::io(&path, "creating a temporary folder"))?;
        Ok(Self {
            path,
            folder: true,
            placed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn rename_to(mut self, target: &Path) -> Result<(), FilesError> {
        std::fs::rename(&self.path, target)
            .map_err(FilesError::io(target, "renaming into place"))?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for TempSibling {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        let _ = if self.folder {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
    }
}

/// The folder a file target goes into (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    write_file_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(FilesError::io(tmp, "writing"))
    })
}

/// Lets `fill` write the file at a temporary path beside `path`, then renames it into place
/// with the mode any new file gets (0666 less the umask). If `fill` fails, the temporary file
/// is removed and `path` is left as it was. `path` must be a regular file or absent, and its
/// folder must exist.
pub fn write_file_with<T, E: From<FilesError>>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    refuse_non_regular_target(path)?;
    let tmp = TempSibling::file(path)?;
    let mode = std::fs::metadata(tmp.path())
        .map_err(FilesError::io(tmp.path(), "reading its mode"))?
        .permissions();
    let out = fill(tmp.path())?;
    // A writer that replaced the file with a private one of its own leaves mode 0600.
    std::fs::set_permissions(tmp.path(), mode)
        .map_err(FilesError::io(tmp.path(), "setting its mode"))?;
    // Checked again at the last moment: something may have appeared there meanwhile.
    refuse_non_regular_target(path)?;
    tmp.rename_to(path)?;
    Ok(out)
}

/// Fills a temporary sibling of `dir` with `fill`, writes a [`Marker`] of `kind` listing what
/// it holds, then puts it in place:
/// - `dir` absent: one rename, so a reader sees the whole folder or none of it;
/// - `dir` present (empty, made by distill, or a folder the user allowed with `--overwrite`):
///   each new entry is renamed over its namesake, then the entries the old marker lists that
///   the new folder lacks are removed. Entries distill did not write are never removed.
///
/// On any failure the temporary folder is removed and `dir` keeps what it had.
pub fn write_folder<T, E: From<FilesError>>(
    dir: &Path,
    kind: &str,
    fill: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let parent = parent_of(dir);
    std::fs::create_dir_all(parent).map_err(FilesError::io(parent, "creating the folder"))?;
    if let Ok(m) = std::fs::metadata(dir) {
        if !m.is_dir() {
            return Err(FilesError::refused(
                dir,
                format!("is {}, not a folder", describe(&m.file_type())),
            )
            .into());
        }
    }
    let tmp = TempSibling::folder(dir)?;
    let out = fill(tmp.path())?;
    let entries = entry_names(tmp.path())?;
    write_marker(tmp.path(), &Marker::new(kind, entries.clone()))?;
    if !dir.exists() {
        tmp.rename_to(dir)?;
        return Ok(out);
    }
    merge_into(tmp, dir, &entries)?;
    Ok(out)
}

/// Writes `marker` into `dir` (atomically).
pub fn write_marker(dir: &Path, marker: &Marker) -> Result<(), FilesError> {
    write_file(&dir.join(crate::marker::MARKER), &marker.to_json())
}

/// The names in `dir`, sorted.
fn entry_names(dir: &Path) -> Result<Vec<String>, FilesError> {
    let mut names = vec![];
    for e in std::fs::read_dir(dir).map_err(FilesError::io(dir, "listing"))? {
        let e = e.map_err(FilesError::io(dir, "listing"))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Moves the entries of `tmp` into the existing folder `dir` (see [`write_folder`]).
fn merge_into(tmp: TempSibling, dir: &Path, entries: &[String]) -> Result<(), FilesError> {
    let old = Marker::read(dir)
        .map(|m| m.owned_entries())
        .unwrap_or_default();
    for name in entries {
        let target = dir.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            if m.is_dir() {
                if !old.contains(name) {
                    return Err(FilesError::refused(
                        &target,
                        "a folder distill did not write is in the way; move it or choose another output folder",
                    ));
                }
                std::fs::remove_dir_all(&target)
                    .map_err(FilesError::io(&target, "removing the earlier output"))?;
            } else if !m.is_file() && !m.file_type().is_symlink() {
                return Err(FilesError::refused(
                    &target,
                    format!(
                        "is {}; distill writes only regular files",
                        describe(&m.file_type())
                    ),
                ));
            }
        }
    }
    // The marker goes last: until then the old one still lists what may be removed.
    for name in entries.iter().filter(|n| *n != crate::marker::MARKER) {
        let (from, to) = (tmp.path().join(name), dir.join(name));
        std::fs::rename(&from, &to).map_err(FilesError::io(&to, "renaming into place"))?;
    }
    for name in old.iter().filter(|n| !entries.contains(n)) {
        remove_owned(&dir.join(name))?;
    }
    let (from, to) = (
        tmp.path().join(crate::marker::MARKER),
        dir.join(crate::marker::MARKER),
    );
    std::fs::rename(&from, &to).map_err(FilesError::io(&to, "renaming into place"))?;
    drop(tmp);
    Ok(())
}

/// Removes a file or folder distill wrote earlier; gone already is fine.
pub(crate) fn remove_owned(path: &Path) -> Result<(), FilesError> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(FilesError::io(path, "removing the earlier output"))
}

/// Gives `path` the mode a file created in its folder now gets (0666 less the umask). Some
/// writers (the safetensors writer among them) go through a private temporary file of mode
/// 0600, which would leave an output unreadable to everyone but its writer.
pub fn usual_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = TempSibling::file(path).map_err(|e| match e {
            FilesError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?;
        let mode = std::fs::metadata(probe.path())?.permissions().mode();
        drop(probe);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        entry_names(dir).unwrap()
    }

    #[test]
    fn a_failed_file_write_leaves_the_target_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        let r: Result<(), FilesError> = write_file_with(&p, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(FilesError::refused(tmp, "fill failed"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(d.path()), vec!["out.bin"]);
        write_file(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(names(d.path()), vec!["out.bin"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_or_folder_is_never_replaced_by_a_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = write_file(&fifo, b"x").unwrap_err().to_string();
        assert!(e.contains("a FIFO") && e.contains("regular files"), "{e}");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let e = write_file(d.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        assert_eq!(names(d.path()), vec!["pipe"], "no temporary left");
    }

    #[test]
    fn a_folder_replaces_only_what_distill_wrote() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("model");
        write_folder(&dir, "model", |t| -> Result<(), FilesError> {
            std::fs::write(t.join("a.json"), "1").unwrap();
            std::fs::write(t.join("old.bin"), "1").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(names(&dir), vec![".distill", "a.json", "old.bin"]);
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        write_folder(&dir, "model", |t| -> Result<(), FilesError> {
            std::fs::write(t.join("a.json"), "2").unwrap();
            std::fs::create_dir(t.join("sub")).unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(names(&dir), vec![".distill", "a.json", "notes.txt", "sub"]);
        assert_eq!(std::fs::read_to_string(dir.join("a.json")).unwrap(), "2");
        assert_eq!(
            std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
            "mine"
        );
        assert_eq!(
            Marker::read(&dir).unwrap().owned_entries(),
            vec!["a.json".to_string(), "sub".to_string()]
        );
        // A failing fill leaves the folder as it was and no temporary beside it.
        let r: Result<(), FilesError> = write_folder(&dir, "model", |t| {
            std::fs::write(t.join("a.json"), "3").unwrap();
            Err(FilesError::refused(t, "fill failed"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a.json")).unwrap(), "2");
        assert_eq!(names(d.path()), vec!["model"]);
    }

    #[test]
    fn a_marker_cannot_make_distill_remove_paths_outside_the_folder() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(d.path().join("precious"), "x").unwrap();
        let m = Marker::new(
            "model",
            vec!["../precious".into(), "..".into(), "/etc".into()],
        );
        write_marker(&dir, &m).unwrap();
        write_folder(&dir, "model", |t| -> Result<(), FilesError> {
            std::fs::write(t.join("a.json"), "1").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(d.path().join("precious").is_file());
    }
    #[cfg(unix)]
    #[test]
    fn a_safetensors_file_gets_the_mode_of_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let st = d.path().join("model.safetensors");
        let data = [0u8; 12];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &data).unwrap();
        write_file_with(&st, |tmp| {
            safetensors::serialize_to_file([("w", view)], None, tmp)
                .map_err(|e| FilesError::refused(tmp, e.to_string()))
        })
        .unwrap();
        let plain = d.path().join("config.json");
        std::fs::write(&plain, "{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&st), mode(&plain), "not the writer's private 0600");
        let loose = d.path().join("loose.safetensors");
        safetensors::serialize_to_file(
            [(
                "w",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &data)
                    .unwrap(),
            )],
            None,
            &loose,
        )
        .unwrap();
        assert_eq!(mode(&loose), 0o600, "the writer's private temporary file");
        usual_mode(&loose).unwrap();
        assert_eq!(mode(&loose), mode(&plain));
        assert_eq!(
            names(d.path()).len(),
            3,
            "no probe or temporary left behind"
        );
    }
}
