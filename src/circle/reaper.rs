//! The idle reaper: an open file whose transfer nobody read for [`IDLE_TRANSFER`] gives its
//! connection back (see [`OpenFile::reap_if_idle`](super::reader::OpenFile::reap_if_idle)).
//!
//! Owns: one thread for the whole mount. Invariant: it ends within a second of the merged view
//! going away.

use std::sync::Arc;
use std::time::Duration;

use super::Circle;
use super::reader::OpenFile;

/// An open file whose transfer nobody read for this long gives its connection back: long
/// enough for any program reading steadily (even `less` paging), short enough that a few idle
/// open files don't keep a server's 4 connections from listings and other reads.
const IDLE_TRANSFER: Duration = Duration::from_secs(2);

impl Circle {
    /// Start the thread that frees the connections of open files nobody reads (see
    /// [`reader::OpenFile::reap_if_idle`]). It ends within a second of the circle going away.
    pub fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("ftpc-reaper".into())
            .spawn(move || {
                while let Some(circle) = weak.upgrade() {
                    let files: Vec<Arc<OpenFile>> = circle
                        .files
                        .lock()
                        .map(|f| f.values().cloned().collect())
                        .unwrap_or_default();
                    drop(circle);
                    for f in files {
                        if f.reap_if_idle(IDLE_TRANSFER) {
                            log::debug!("freed the connection of an idle open file");
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the idle-transfer reaper: {e}");
        }
    }
}
