//! The durable outbox: one file per Bundle, `<uuid>.json`, holding exactly the bytes that are
//! POSTed. A Bundle is written to a temporary file, flushed to disk, renamed into place and the
//! directory flushed, all before its first delivery attempt: once [`Outbox::write`] returns,
//! a crash does not lose it. A file is deleted only after the endpoint accepted it (2xx); one
//! the endpoint refused for good (a 4xx other than 408/429) is moved to `failed/` for an
//! operator, never retried by itself. Files and directories are readable by the server's user
//! only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::bundle::BundleId;

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// Name of the sub-directory of Bundles refused for good.
pub const FAILED_DIR: &str = "failed";

impl Outbox {
    /// Opens (creating it, mode 0700) the outbox at `dir`, removes the temporary files of
    /// writes a crash interrupted, and returns the Bundles waiting, oldest first.
    pub fn open(dir: &Path) -> io::Result<(Outbox, Vec<BundleId>)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(FAILED_DIR))?;
        let outbox = Outbox {
            dir: dir.to_owned(),
        };
        let mut pending = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with('.') && name.ends_with(".tmp") {
                // Never renamed into place: its export was not acknowledged to anyone.
                fs::remove_file(entry.path())?;
                continue;
            }
            let Some(id) = name.strip_suffix(".json").and_then(BundleId::parse) else {
                continue;
            };
            let modified = entry.metadata()?.modified()?;
            pending.push((modified, id));
        }
        pending.sort();
        Ok((outbox, pending.into_iter().map(|(_, id)| id).collect()))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a Bundle durably (see the module documentation).
    pub fn write(&self, id: &BundleId, body: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path(id))?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The bytes of a waiting Bundle.
    pub fn read(&self, id: &BundleId) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    /// Deletes a delivered Bundle.
    pub fn remove(&self, id: &BundleId) -> io::Result<()> {
        fs::remove_file(self.path(id))?;
        sync_dir(&self.dir)
    }

    /// Moves a Bundle the endpoint refused for good to `failed/`.
    pub fn fail(&self, id: &BundleId) -> io::Result<()> {
        fs::rename(
            self.path(id),
            self.dir.join(FAILED_DIR).join(format!("{id}.json")),
        )?;
        sync_dir(&self.dir)
    }

    fn path(&self, id: &BundleId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_list_remove_and_fail() {
        let dir = std::env::temp_dir().join(format!("cabine-outbox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (outbox, pending) = Outbox::open(&dir).unwrap();
        assert!(pending.is_empty());
        let (a, b) = (BundleId::random(), BundleId::random());
        outbox.write(&a, b"{\"a\":1}").unwrap();
        outbox.write(&b, b"{\"b\":2}").unwrap();
        let mode = fs::metadata(dir.join(format!("{a}.json")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // An interrupted write and a stranger are not pending; the former is cleaned up.
        fs::write(dir.join(format!(".{}.tmp", BundleId::random())), b"{").unwrap();
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        let (outbox, pending) = Outbox::open(&dir).unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending.contains(&a) && pending.contains(&b));
        assert_eq!(outbox.read(&a).unwrap(), b"{\"a\":1}");
        assert!(!fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        outbox.remove(&a).unwrap();
        outbox.fail(&b).unwrap();
        let (_, pending) = Outbox::open(&dir).unwrap();
        assert!(pending.is_empty());
        assert!(dir.join(FAILED_DIR).join(format!("{b}.json")).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
