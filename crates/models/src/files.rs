//! Writing model folders so that a reader never sees a half-written one.

use std::path::Path;

/// Fills a temporary sibling of `dir` with `fill`, then puts it in place of `dir` (replacing
/// an existing folder). Returns what `fill` returns; on any failure the temporary folder is
/// removed and `dir` is left as it was. `io` turns a file-system error into the caller's error.
pub fn write_folder_atomically<E>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<u64, E>,
    io: impl Fn(&Path, std::io::Error) -> E,
) -> Result<u64, E> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let out = match fill(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    Ok(out)
}
