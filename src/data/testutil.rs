//! Test helpers: a scratch directory per test under the system temp
//! directory, removed when the test ends.

use std::path::PathBuf;

pub(super) struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory named after the test and this process.
    pub fn new(test: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("nnc-data-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    /// Writes `bytes` to a file in the directory and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
