//! `--watch`: reload when the configuration file's content changes.
//!
//! What is watched is the directory holding the file (and, when the file is a symlink, the
//! directory of the file it resolves to), not the file itself: an editor that saves by
//! writing a new file and renaming it over the old one, and a Kubernetes ConfigMap volume,
//! replace the file rather than change it. A ConfigMap mounts `balancer.ron` as a symlink
//! to `..data/balancer.ron`, where `..data` is itself a symlink to a timestamped directory
//! that the kubelet replaces by renaming a new `..data` over the old one; every step of that
//! happens in the mounted directory.
//!
//! Any event there (but reads and opens, ours included) starts a short wait for the burst to
//! settle ([`SETTLE`] without a further event, at most [`SETTLE_AT_MOST`]); then the file is
//! read through its symlinks and compared with the content seen last. Only a different
//! content reloads, through the same [`Reloads`] channel as SIGHUP: validated, put in force,
//! or rejected with the same `reload rejected: ...` line, the running configuration staying.
//! The directories watched follow the file's resolved path after each event.
//!
//! Watching is done by the `notify` crate (inotify on Linux).

use crate::config::Config;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::reload::Reloads;

/// Quiet time after the last event before the file is read: a save or a ConfigMap swap is
/// a burst of events, and the file is read once it is over.
pub const SETTLE: Duration = Duration::from_millis(150);

/// The longest a burst of events postpones the read.
pub const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

/// Watches the configuration file of `reloads` and requests a reload each time its content
/// differs from the last seen; `seen` is the content the running configuration was read
/// from (`None` when unknown: then the first check reloads). A change made before the
/// watch is in place is caught by a check right after it. Runs in a task of its own until
/// the supervisor is gone. Must be called inside a tokio runtime.
///
/// # Errors
/// The directories to watch cannot be watched (too many inotify watches or instances, a
/// directory that does not exist).
pub fn start(reloads: Reloads, seen: Option<Vec<u8>>) -> Result<(), String> {
    let path = reloads.path().to_path_buf();
    let wake = Arc::new(Notify::new());
    let woken = Arc::clone(&wake);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if !is_change(&event.kind) => {}
            Ok(_) => woken.notify_one(),
            Err(e) => {
                // Events may have been lost (a full queue): look at the file anyway.
                log::warn!("watching the configuration file: {e}");
                woken.notify_one();
            }
        }
    })
    .map_err(|e| format!("--watch: cannot watch {}: {e}", path.display()))?;
    let mut watched = Watched {
        watcher,
        dirs: HashSet::new(),
    };
    if let Some((dir, e)) = watched.update(&path).into_iter().next() {
        return Err(format!("--watch: cannot watch {}: {e}", dir.display()));
    }
    log::info!(
        "watching {} for changes (in {})",
        path.display(),
        watched.list()
    );
    tokio::spawn(async move {
        let mut seen = seen;
        // Whatever changed while the watch was being set up.
        if !check(&reloads, &path, &mut seen).await {
            return;
        }
        loop {
            wake.notified().await;
            settle(&wake).await;
            for (dir, e) in watched.update(&path) {
                log::warn!("--watch: cannot watch {}: {e}", dir.display());
            }
            if !check(&reloads, &path, &mut seen).await {
                return;
            }
        }
    });
    Ok(())
}

/// Whether an event may mean new content: anything but a read, or an open or a close that
/// wrote nothing (reading the file ourselves causes those).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Waits until no event has come for [`SETTLE`], or [`SETTLE_AT_MOST`] has passed.
async fn settle(wake: &Notify) {
    let give_up = Instant::now() + SETTLE_AT_MOST;
    loop {
        let quiet = (Instant::now() + SETTLE).min(give_up);
        tokio::select! {
            () = tokio::time::sleep_until(quiet) => return,
            () = wake.notified() => if Instant::now() >= give_up {
                return;
            },
        }
    }
}

/// Reads the file and requests a reload when its content differs from `seen`. Returns
/// false once the supervisor is gone.
async fn check(reloads: &Reloads, path: &Path, seen: &mut Option<Vec<u8>>) -> bool {
    // Unreadable (gone, say) counts as a content of its own: the reload reports why.
    let mut now = std::fs::read(path).ok();
    // A writer that pauses half way (a slow copy, an editor writing in pieces) leaves a file
    // that does not parse yet: while it keeps changing, wait for it (a few times at most)
    // rather than reject what is not finished.
    for _ in 0..3 {
        let text = now.as_deref().and_then(|b| std::str::from_utf8(b).ok());
        if text.is_some_and(|t| Config::parse(t, path).is_ok()) {
            break;
        }
        tokio::time::sleep(SETTLE_AT_MOST).await;
        let again = std::fs::read(path).ok();
        if again == now {
            break;
        }
        now = again;
    }
    if now == *seen {
        log::debug!("{}: content unchanged, no reload", path.display());
        return true;
    }
    *seen = now;
    reloads
        .request(&format!("{} changed", path.display()))
        .await
}

/// The watcher and the directories it watches.
struct Watched {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
}

impl Watched {
    /// Watches the directories `path` lives in now and stops watching the others; returns
    /// those that could not be watched, with why.
    fn update(&mut self, path: &Path) -> Vec<(PathBuf, notify::Error)> {
        let wanted = directories(path);
        for gone in self.dirs.difference(&wanted) {
            // It may be gone already (a ConfigMap's old data directory), watch and all.
            let _ = self.watcher.unwatch(gone);
        }
        self.dirs.retain(|d| wanted.contains(d));
        let mut failed = Vec::new();
        for dir in wanted {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(e) => failed.push((dir, e)),
            }
        }
        failed
    }

    /// The directories watched, for the log.
    fn list(&self) -> String {
        let mut dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.sort();
        dirs.join(", ")
    }
}

/// The directory holding `path` as given and, when that is not where it resolves (a
/// symlink), the directory of the file it resolves to.
fn directories(path: &Path) -> HashSet<PathBuf> {
    let given = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = HashSet::new();
    let resolved = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(resolved) = resolved
        && std::fs::canonicalize(&given).ok().as_ref() != Some(&resolved)
    {
        dirs.insert(resolved);
    }
    dirs.insert(given);
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    #[test]
    fn reads_and_opens_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Read)));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Other));
    }

    #[test]
    fn a_symlinked_file_adds_the_directory_it_resolves_to() {
        let root = std::env::temp_dir().join(format!("ballast-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (mounted, data) = (root.join("mounted"), root.join("mounted/..2026_01"));
        std::fs::create_dir_all(&data).expect("dirs");
        std::fs::write(data.join("balancer.ron"), "()").expect("file");
        std::os::unix::fs::symlink("..2026_01", mounted.join("..data")).expect("..data");
        std::os::unix::fs::symlink("..data/balancer.ron", mounted.join("balancer.ron"))
            .expect("balancer.ron");
        std::fs::write(mounted.join("plain.ron"), "()").expect("plain");

        let canonical = |p: &Path| std::fs::canonicalize(p).expect("canonical");
        let linked = directories(&mounted.join("balancer.ron"));
        assert_eq!(
            linked,
            HashSet::from([mounted.clone(), canonical(&data)]),
            "{linked:?}"
        );
        let plain = directories(&mounted.join("plain.ron"));
        assert_eq!(plain, HashSet::from([mounted.clone()]));
        assert_eq!(
            directories(Path::new("balancer.ron")),
            HashSet::from([PathBuf::from(".")])
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
