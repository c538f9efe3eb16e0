//! The audit log: an append-only JSON-lines file of who joined, left, was refused, and why.
//!
//! Records are written by a dedicated thread (request handlers never wait on the disk), each as
//! one `write` of a whole line, so a crash never leaves a torn line. The file rotates by size;
//! `fsync` follows the configured policy.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// When records are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every record.
    Always,
    /// At most once a second.
    Interval,
    /// Never explicitly.
    Never,
}

/// `[audit]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File path; empty disables the file.
    pub path: PathBuf,
    /// Rotation size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
    /// fsync policy.
    pub fsync: Fsync,
}

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339 UTC time.
    pub time: String,
    /// `publish`, `subscribe`, `leave`, `refused`, `ice_restart`, `command`.
    pub event: String,
    /// Room.
    pub room: String,
    /// Participant identity (clear text: the audit log is the one place it belongs).
    pub identity: String,
    /// Role, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Remote address, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Why (refusals) or what (tracks published).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: Option<SyncSender<Msg>>,
    dropped: Arc<AtomicU64>,
}

/// Records queued before the writer is considered stuck and records are dropped (and counted).
pub const QUEUE: usize = 65_536;

impl Audit {
    /// Opens the log (or a process-log-only audit when `cfg.path` is empty).
    pub fn open(cfg: &AuditConfig) -> std::io::Result<Audit> {
        let dropped = Arc::new(AtomicU64::new(0));
        if cfg.path.as_os_str().is_empty() {
            return Ok(Audit { tx: None, dropped });
        }
        prepare_dir(&cfg.path)?;
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer {
            cfg: cfg.clone(),
            file,
            size,
            last_sync: Instant::now(),
            dirty: false,
        };
        std::thread::Builder::new()
            .name("cabine-audit".into())
            .spawn(move || writer.run(rx))?;
        info!(path = %cfg.path.display(), "audit log open");
        Ok(Audit {
            tx: Some(tx),
            dropped,
        })
    }

    /// Records an event.
    pub fn record(
        &self,
        event: &str,
        room: &str,
        identity: &str,
        role: Option<&str>,
        remote: Option<SocketAddr>,
        reason: &str,
    ) {
        let rec = Record {
            time: rfc3339(SystemTime::now()),
            event: event.to_owned(),
            room: room.to_owned(),
            identity: identity.to_owned(),
            role: role.map(str::to_owned),
            remote: remote.map(|r| r.to_string()),
            reason: reason.to_owned(),
        };
        // The process log only ever sees pseudonyms; the clear record goes to the audit file.
        // A reason carries what the client chose (room names, track labels, codecs), so only its
        // leading code word is logged as is.
        let (code, detail) = split_reason(reason);
        info!(
            target: "audit",
            event,
            room = %cabine_proto::Redacted(room),
            identity = %cabine_proto::Redacted(identity),
            role,
            reason = code,
            detail = %detail,
        );
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                tx.try_send(Msg::Record(rec))
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                error!("audit record dropped: the audit writer is stuck or gone");
            }
        }
    }

    /// Waits (up to `timeout`) until every record queued so far is written and synced to disk:
    /// at shutdown, so that the last joins and leaves are not lost. False on timeout or when
    /// the writer is gone; true at once for a process-log-only audit.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let (done_tx, done_rx) = sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(done_tx);
        // The queue may be full for a moment: retry until the deadline rather than block.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Records dropped because the writer could not keep up (should stay 0).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Splits an audit reason into its leading code word (`wrong_room`, `DELETE`, `tracks`), safe
/// to log, and a pseudonym of the rest ("" when there is none).
fn split_reason(reason: &str) -> (&str, String) {
    let end = reason
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(reason.len());
    let (code, rest) = reason.split_at(end);
    let rest = rest.trim_start_matches(':').trim();
    if rest.is_empty() {
        (code, String::new())
    } else {
        (code, cabine_proto::Redacted(rest).to_string())
    }
}

/// What the writer thread is asked to do.
enum Msg {
    Record(Record),
    /// Write and sync everything queued before this, then answer.
    Flush(SyncSender<()>),
}

struct Writer {
    cfg: AuditConfig,
    file: File,
    size: u64,
    last_sync: Instant,
    dirty: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let rec = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Record(r)) => Some(r),
                Ok(Msg::Flush(done)) => {
                    let _ = self.file.sync_data();
                    self.dirty = false;
                    self.last_sync = Instant::now();
                    let _ = done.send(());
                    None
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.file.sync_data();
                    return;
                }
            };
            if let Some(rec) = rec {
                if let Err(e) = self.write(&rec) {
                    error!(error = %e, "cannot write the audit log");
                }
            }
            if self.dirty
                && self.cfg.fsync == Fsync::Interval
                && self.last_sync.elapsed() >= Duration::from_secs(1)
            {
                let _ = self.file.sync_data();
                self.dirty = false;
                self.last_sync = Instant::now();
            }
        }
    }

    fn write(&mut self, rec: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        // One write of the whole line: a crash leaves the file ending on a complete record.
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        match self.cfg.fsync {
            Fsync::Always => self.file.sync_data()?,
            Fsync::Interval => self.dirty = true,
            Fsync::Never => {}
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let _ = self.file.sync_data();
        let path = &self.cfg.path;
        for i in (1..self.cfg.keep.max(1)).rev() {
            let from = numbered(path, i);
            if from.exists() {
                std::fs::rename(&from, numbered(path, i + 1))?;
            }
        }
        std::fs::rename(path, numbered(path, 1))?;
        self.file = open_append(path)?;
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Prepares the directory that holds the log, once at start. A directory the server creates
/// is made 0700. An existing one is left as its owner set it (it may be `/var/log` or the
/// working directory, shared with others), but the server refuses to start when it is
/// writable by its group or reachable by others: the rotated files hold identities in clear,
/// and whoever may write the directory may swap them.
fn prepare_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        // A bare file name: the working directory, checked below as ".".
        return check_dir(Path::new("."), path);
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Created by us: owner-only, whatever the umask did.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        return Ok(());
    }
    check_dir(dir, path)
}

/// Refuses a directory open to others (see [`prepare_dir`]).
fn check_dir(dir: &Path, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "audit.path = {}: its directory {} has mode {mode:04o}, open to other users; \
                 the audit files hold identities in clear. Put audit.path in a directory of its \
                 own (the server creates a missing one 0700) or chmod {} 0700",
                path.display(),
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Opens the file for appending, owner-only: created 0600 and set so at every open (start and
/// rotation), since it holds identities in clear.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Formats a time as RFC 3339 UTC with milliseconds.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn time_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn process_log_keeps_only_the_reason_code() {
        let (code, detail) = split_reason("wrong_room: token is for room \"roomB\", not \"roomA\"");
        assert_eq!(code, "wrong_room");
        assert!(
            detail.starts_with('#') && !detail.contains("room"),
            "{detail}"
        );
        let (code, detail) = split_reason("tracks [video:room-camera]");
        assert_eq!(code, "tracks");
        assert!(!detail.contains("camera"), "{detail}");
        assert_eq!(split_reason("DELETE"), ("DELETE", String::new()));
    }

    #[test]
    fn rotates_by_size_and_keeps_whole_lines() {
        let dir = std::env::temp_dir().join(format!("cabine-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = AuditConfig {
            path: dir.join("audit.jsonl"),
            max_bytes: 600,
            keep: 2,
            fsync: Fsync::Always,
        };
        let audit = Audit::open(&cfg).unwrap();
        for i in 0..20 {
            audit.record(
                "publish",
                "room-1",
                &format!("kiosk-{i}"),
                Some("kiosk"),
                None,
                "",
            );
        }
        assert!(audit.flush(Duration::from_secs(30)), "the writer flushes");
        drop(audit);
        let main = std::fs::read_to_string(&cfg.path).unwrap();
        let one = std::fs::read_to_string(numbered(&cfg.path, 1)).unwrap();
        assert!(numbered(&cfg.path, 2).exists());
        assert!(!numbered(&cfg.path, 3).exists(), "keep = 2");
        for text in [&main, &one] {
            assert!(text.len() <= 600);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["event"], "publish");
            }
        }
        assert!(
            main.contains("kiosk-19"),
            "the newest record is in the live file"
        );
    }
}
