//! Small state files under /run and data directories: written whole or not at all, and tied to
//! the boot they were written in.

use std::io;
use std::path::Path;

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if it cannot be read: state keyed
/// by it is thrown away at the next boot.
pub fn boot_id() -> String {
    crate::sysctl::get("kernel/random/boot_id").unwrap_or_default()
}

/// Replaces the file at `path` with `text`: written under a temporary name in the same
/// directory (made if missing), then renamed, so a reader sees the old file or the whole new
/// one. The temporary file does not outlive a failure.
pub fn replace(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("state");
        replace(&path, "one\n").unwrap();
        replace(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        // A directory in the way: the rename fails and the temporary file goes.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(replace(&blocked, "three\n").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_boot_id_is_read() {
        assert!(!boot_id().is_empty());
    }
}
