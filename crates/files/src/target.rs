//! Checks a command makes on its outputs before any work starts, so that a wrong path is found
//! in a second, not after hours of training, and nothing the user owns is put at risk.

use std::path::{Component, Path, PathBuf};

use crate::atomic::describe;
use crate::error::FilesError;
use crate::marker::Marker;

/// How a folder output may be used.
#[derive(Clone, Debug, Default)]
pub struct FolderPolicy {
    /// The user allowed writing into a folder distill did not make (`--overwrite`): distill's
    /// files replace their namesakes there; nothing else is removed.
    pub overwrite: bool,
    /// Paths the command reads: an output may not be one of them or hold one of them.
    pub inputs: Vec<PathBuf>,
}

/// What an output folder is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderState {
    /// Not there yet.
    New,
    /// There and empty.
    Empty,
    /// Made by distill (it holds the marker).
    Distills,
    /// Holds files distill did not write; allowed by `--overwrite`.
    Foreign,
}

/// Checks that `path` may receive a file: absent or a regular file (never a device, FIFO,
/// socket or folder), not one of `inputs`, in a folder that exists and can be written.
pub fn check_file_target(path: &Path, inputs: &[PathBuf]) -> Result<(), FilesError> {
    crate::atomic::refuse_non_regular_target(path)?;
    let resolved = resolve(path);
    if inputs.iter().any(|i| resolve(i) == resolved) {
        return Err(FilesError::refused(
            path,
            "is an input of this command; write the output somewhere else",
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => probe_writable(parent),
        Ok(m) => Err(FilesError::refused(
            parent,
            format!("is {}, not a folder", describe(&m.file_type())),
        )),
        Err(_) => Err(FilesError::refused(
            parent,
            "does not exist; create the folder first or write the file elsewhere",
        )),
    }
}

/// Checks that `dir` may receive distill's output folder, and says what it is now. Always
/// refused: `/`, the home folder, the working folder or any folder above it, an input or any
/// folder above one. A folder that holds files distill did not write is refused unless
/// `policy.overwrite`. A folder to be created must have a writable nearest existing ancestor.
pub fn check_folder_target(dir: &Path, policy: &FolderPolicy) -> Result<FolderState, FilesError> {
    refuse_protected(dir, &policy.inputs)?;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(_) => {
            let ancestor = nearest_existing(dir);
            let m = std::fs::metadata(&ancestor)
                .map_err(FilesError::io(&ancestor, "reading what is there"))?;
            if !m.is_dir() {
                return Err(FilesError::refused(
                    &ancestor,
                    format!("is {}, not a folder", describe(&m.file_type())),
                ));
            }
            probe_writable(&ancestor)?;
            return Ok(FolderState::New);
        }
    };
    if !meta.is_dir() {
        return Err(FilesError::refused(
            dir,
            format!(
                "is {}; give a folder for this output",
                describe(&meta.file_type())
            ),
        ));
    }
    probe_writable(dir)?;
    if Marker::is_marked(dir) {
        return Ok(FolderState::Distills);
    }
    let empty = std::fs::read_dir(dir)
        .map_err(FilesError::io(dir, "listing"))?
        .next()
        .is_none();
    if empty {
        Ok(FolderState::Empty)
    } else if policy.overwrite {
        tracing::warn!(dir = %dir.display(), "--overwrite: writing into a folder distill did not make; only the files distill writes are replaced");
        Ok(FolderState::Foreign)
    } else {
        Err(FilesError::refused(
            dir,
            "holds files distill did not write (it has no .distill marker); choose a new or empty folder, or pass --overwrite to write into it (distill then replaces only the files it writes and removes nothing else)",
        ))
    }
}

/// Refuses the folders no output may be: `/`, home, the working folder and its ancestors,
/// an input and its ancestors.
fn refuse_protected(dir: &Path, inputs: &[PathBuf]) -> Result<(), FilesError> {
    let target = resolve(dir);
    let refuse = |what: String| {
        Err(FilesError::refused(
            dir,
            format!("is {what}; distill never writes an output folder there (give a new folder)"),
        ))
    };
    if target.parent().is_none() {
        return refuse("the root folder".into());
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        if resolve(&home) == target {
            return refuse("the home folder".into());
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        if resolve(&cwd).starts_with(&target) {
            return refuse("the working folder or a folder above it".into());
        }
    }
    for input in inputs {
        if resolve(input).starts_with(&target) {
            return refuse(format!(
                "{} or a folder above it, an input of this command",
                input.display()
            ));
        }
    }
    Ok(())
}

/// Finds out whether `dir` can be written by creating and removing a file in it.
fn probe_writable(dir: &Path) -> Result<(), FilesError> {
    let probe = dir.join(format!(".distill-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(FilesError::refused(
            dir,
            format!("cannot be written ({e}); choose a folder you can write to"),
        )),
    }
}

/// The deepest ancestor of `p` (or `p` itself) that exists.
fn nearest_existing(p: &Path) -> PathBuf {
    let abs = absolute(p);
    let mut cur = abs.as_path();
    loop {
        if std::fs::symlink_metadata(cur).is_ok() {
            return cur.to_path_buf();
        }
        match cur.parent() {
            Some(parent) => cur = parent,
            None => return cur.to_path_buf(),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `p` made absolute, with links resolved in the part that exists and `.`/`..` resolved by
/// name in the part that does not.
pub(crate) fn resolve(p: &Path) -> PathBuf {
    let abs = absolute(p);
    let base = nearest_existing(&abs);
    let mut out = std::fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
    for c in abs
        .strip_prefix(&base)
        .unwrap_or(Path::new(""))
        .components()
    {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(overwrite: bool, inputs: &[&Path]) -> FolderPolicy {
        FolderPolicy {
            overwrite,
            inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    #[test]
    fn folders_that_are_never_outputs() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("runs/x/final");
        std::fs::create_dir_all(&model).unwrap();
        for (dir, says) in [
            (PathBuf::from("/"), "root"),
            (PathBuf::from("."), "working folder"),
            (PathBuf::from(".."), "working folder"),
            (d.path().join("runs"), "input"),
            (d.path().join("runs/x/final/../"), "input"),
            (model.clone(), "input"),
        ] {
            let e = check_folder_target(&dir, &policy(true, &[&model]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{}: {e}", dir.display());
        }
        if let Some(home) = std::env::var_os("HOME") {
            let e = check_folder_target(Path::new(&home), &policy(true, &[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("home") || e.contains("working folder"), "{e}");
        }
    }

    #[test]
    fn a_users_folder_needs_overwrite_and_distills_does_not() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        assert_eq!(
            check_folder_target(&out, &policy(false, &[])).unwrap(),
            FolderState::New
        );
        std::fs::create_dir(&out).unwrap();
        assert_eq!(
            check_folder_target(&out, &policy(false, &[])).unwrap(),
            FolderState::Empty
        );
        std::fs::write(out.join("thesis.tex"), "years of work").unwrap();
        let e = check_folder_target(&out, &policy(false, &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--overwrite") && e.contains("did not write"),
            "{e}"
        );
        assert_eq!(
            check_folder_target(&out, &policy(true, &[])).unwrap(),
            FolderState::Foreign
        );
        crate::atomic::write_marker(&out, &Marker::new("model", vec![])).unwrap();
        assert_eq!(
            check_folder_target(&out, &policy(false, &[])).unwrap(),
            FolderState::Distills
        );
        let file = out.join("thesis.tex");
        let e = check_folder_target(&file, &policy(true, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("regular file"), "{e}");
    }

    #[test]
    fn file_targets_need_an_existing_writable_folder_and_are_not_inputs() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("model.gguf");
        std::fs::write(&input, "x").unwrap();
        check_file_target(&d.path().join("out.gguf"), std::slice::from_ref(&input)).unwrap();
        let e = check_file_target(&input, std::slice::from_ref(&input))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input"), "{e}");
        let e = check_file_target(&d.path().join("nope/out.gguf"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_file_target(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_folder_is_found_before_work() {
        use std::os::unix::fs::PermissionsExt;
        // root writes everywhere: nothing to find then.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("skipped: running as root, every folder is writable");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let ro = d.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let e = check_file_target(&ro.join("x.gguf"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be written"), "{e}");
        let e = check_folder_target(&ro.join("a/b"), &FolderPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be written"), "{e}");
    }
}
