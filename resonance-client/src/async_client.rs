//! The tokio form of the client (feature `tokio`).
//!
//! [`AsyncClient`] wraps a [`Client`]: pushed ends are still drained by the
//! client's reader thread (so a hit stays a local lookup, awaited without a
//! wake-up), and the calls that wait for the broker run on tokio's blocking
//! pool so they never stall the runtime.

use std::{path::Path, sync::Arc};

use crate::{
    client::{Channel, Client, ClientError},
    proto::Want,
};

/// An async handle to a broker connection; cheap to clone.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Client>,
}

fn joined<T>(
    result: Result<Result<T, ClientError>, tokio::task::JoinError>,
) -> Result<T, ClientError> {
    result.map_err(|e| ClientError::Wire(format!("client task failed: {e}")))?
}

impl AsyncClient {
    /// Connects to the broker at `path` as `name`.
    pub async fn connect_to(path: &Path, name: &str) -> Result<Self, ClientError> {
        let (path, name) = (path.to_owned(), name.to_owned());
        let client =
            joined(tokio::task::spawn_blocking(move || Client::connect_to(&path, &name)).await)?;
        Ok(Self {
            inner: Arc::new(client),
        })
    }

    /// See [`Client::register`].
    pub async fn register(&self, service: &str) -> Result<(), ClientError> {
        let (client, service) = (Arc::clone(&self.inner), service.to_owned());
        joined(tokio::task::spawn_blocking(move || client.register(&service)).await)
    }

    /// See [`Client::open_with`]: a hit returns at once.
    pub async fn open(&self, service: &str, want: Want) -> Result<Channel, ClientError> {
        if let Some(channel) = self.inner.take_prepared(service) {
            return Ok(channel);
        }
        let (client, service) = (Arc::clone(&self.inner), service.to_owned());
        joined(tokio::task::spawn_blocking(move || client.open_on_demand(&service, want)).await)
    }

    /// See [`Client::accept`]: the next channel opened to this process.
    pub async fn accept(&self) -> Option<Channel> {
        if let Some(channel) = self.inner.try_incoming() {
            return Some(channel);
        }
        let client = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || client.accept())
            .await
            .ok()
            .flatten()
    }

    /// The blocking client underneath (stats, inbox sizes).
    pub fn blocking(&self) -> &Client {
        &self.inner
    }
}
