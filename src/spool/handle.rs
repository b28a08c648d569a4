//! The spool as async code holds it. Every spool call blocks (sled, segment
//! files, fsyncs), so async code never calls the spool itself: it goes
//! through [`SpoolHandle::run`], which runs the call on tokio's blocking
//! pool and turns a panicked call into an error. Threads that block anyway
//! (the commit thread, file sources, staging) use [`SpoolHandle::blocking`].

use std::sync::Arc;

use super::{Spool, SpoolError};

#[derive(Clone)]
pub struct SpoolHandle {
    spool: Arc<Spool>,
}

impl SpoolHandle {
    pub fn new(spool: Spool) -> Self {
        Self {
            spool: Arc::new(spool),
        }
    }

    /// The spool's random ID (no disk involved), as status and object metadata show it.
    pub fn instance_hex(&self) -> String {
        self.spool.instance_hex()
    }

    /// Notes that an upload of part `id` failed (in memory, no disk): see
    /// [`Spool::note_upload_waiting`].
    pub fn note_upload_waiting(&self, id: &super::PartId) {
        self.spool.note_upload_waiting(id);
    }

    /// The spool itself, for code that runs on a thread of its own.
    pub fn blocking(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Runs `work` on the spool off the async runtime.
    pub async fn run<T, E>(
        &self,
        work: impl FnOnce(&Spool) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SpoolError> + Send + 'static,
    {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || work(&spool))
            .await
            .map_err(|e| E::from(SpoolError::Task(e.to_string())))?
    }
}
