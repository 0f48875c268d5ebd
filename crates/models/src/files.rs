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

/// Gives `path` the mode a file created here now gets (0666 less the umask). The safetensors
/// writer goes through a private temporary file (mode 0600), which would leave a model
/// unreadable to everyone but its writer, unlike every other output.
pub fn with_usual_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        let probe = dir.join(format!(".mode-probe-{}", std::process::id()));
        std::fs::File::create(&probe)?;
        let mode = std::fs::metadata(&probe).map(|m| m.permissions().mode());
        std::fs::remove_file(&probe)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode? & 0o777))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_safetensors_file_gets_the_mode_of_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("model.safetensors");
        let t = candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("w", t)]), &st).unwrap();
        let plain = dir.path().join("config.json");
        std::fs::write(&plain, "{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&st), 0o600, "the writer's private temporary file");
        with_usual_mode(&st).unwrap();
        assert_eq!(mode(&st), mode(&plain));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no probe left behind"
        );
    }
}
