//! The Prometheus endpoint: HTTP/1.1 on hyper, TLS on rustls when the web
//! config file asks for it, basic auth with bcrypt hashes, gzip, and a cap
//! on open connections that idle ones cannot exhaust. Plain HTTP on
//! 127.0.0.1 is the default.

pub mod respond;
pub mod slots;
pub mod web_config;

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::oneshot,
};

pub use web_config::{WebConfigError, WebSettings};

use crate::metrics::Metrics;
use slots::{Admission, ConnectionId, Slots};

/// How long a client may take to send a request's head (also how long a
/// keep-alive connection may sit idle between scrapes).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Successful credentials remembered so that each scrape does not pay a
/// bcrypt check (tens of milliseconds at cost 10).
const AUTH_CACHE: usize = 64;

/// Where the endpoint's web settings come from: nowhere (plain HTTP, no
/// auth) or a file, re-read when it changes, as exporter-toolkit does.
pub struct WebSource {
    path: Option<PathBuf>,
    loaded: Mutex<(Option<SystemTime>, Arc<Loaded>)>,
}

/// Settings in force, with the credentials they have accepted.
struct Loaded {
    settings: WebSettings,
    accepted: Mutex<HashSet<(String, String)>>,
}

impl Loaded {
    fn new(settings: WebSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            accepted: Mutex::new(HashSet::new()),
        })
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl WebSource {
    /// Plain HTTP, no authentication.
    pub fn plain() -> Self {
        Self {
            path: None,
            loaded: Mutex::new((None, Loaded::new(WebSettings::default()))),
        }
    }

    /// Reads `path` now (the agent does not start with a broken one).
    pub fn from_file(path: PathBuf) -> Result<Self, WebConfigError> {
        let stamp = modified(&path);
        let settings = WebSettings::load(&path)?;
        Ok(Self {
            path: Some(path),
            loaded: Mutex::new((stamp, Loaded::new(settings))),
        })
    }

    /// Whether TLS is on (for the log line).
    pub fn uses_tls(&self) -> bool {
        self.current().settings.tls.is_some()
    }

    /// The settings for a new connection: re-read when the file changed;
    /// a file that no longer loads keeps the last good settings, loudly.
    fn current(&self) -> Arc<Loaded> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            let stamp = modified(path);
            if stamp != loaded.0 {
                loaded.0 = stamp;
                match WebSettings::load(path) {
                    Ok(settings) => {
                        log::info!("reloaded the web config {}", path.display());
                        loaded.1 = Loaded::new(settings);
                    }
                    Err(error) => {
                        log::warn!("{error}; keeping the settings loaded before")
                    }
                }
            }
        }
        Arc::clone(&loaded.1)
    }
}

/// Open connections and how to close each.
struct Connections {
    slots: Slots,
    evictors: HashMap<ConnectionId, oneshot::Sender<()>>,
}

impl Connections {
    fn lock(this: &Mutex<Self>) -> std::sync::MutexGuard<'_, Self> {
        this.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves scrapes on `listener` until the task is dropped, with at most
/// `max_connections` open.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    web: Arc<WebSource>,
    max_connections: usize,
) {
    let connections = Arc::new(Mutex::new(Connections {
        slots: Slots::new(max_connections),
        evictors: HashMap::new(),
    }));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and friends: say so, give the table a moment.
                log::warn!("metrics accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, evicted) = {
            let mut open = Connections::lock(&connections);
            match open.slots.admit() {
                Admission::Admitted { id, evict } => {
                    let (close, closed) = oneshot::channel();
                    open.evictors.insert(id, close);
                    let evicted = evict.and_then(|old| open.evictors.remove(&old));
                    (Some((id, closed)), evicted)
                }
                Admission::Refused => (None, None),
            }
        };
        if let Some(evicted) = evicted {
            let _ = evicted.send(());
            metrics.http_connections_shed.inc();
        }
        let Some((id, closed)) = id else {
            metrics.http_connections_shed.inc();
            continue;
        };
        let loaded = web.current();
        let metrics = Arc::clone(&metrics);
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            let served = async {
                match loaded.settings.tls.clone() {
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                connection(stream, id, &connections, &loaded, &metrics).await
                            }
                            Ok(Err(error)) => {
                                log::debug!("metrics TLS handshake failed: {error}")
                            }
                            Err(_) => log::debug!("metrics TLS handshake timed out"),
                        }
                    }
                    None => connection(stream, id, &connections, &loaded, &metrics).await,
                }
            };
            tokio::select! {
                () = served => {}
                _ = closed => {}
            }
            let mut open = Connections::lock(&connections);
            open.slots.closed(id);
            open.evictors.remove(&id);
        });
    }
}

/// One connection's requests, until it closes.
async fn connection<S>(
    stream: S,
    id: ConnectionId,
    connections: &Arc<Mutex<Connections>>,
    loaded: &Arc<Loaded>,
    metrics: &Arc<Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|request: Request<Incoming>| {
        let connections = Arc::clone(connections);
        let loaded = Arc::clone(loaded);
        let metrics = Arc::clone(metrics);
        async move {
            Connections::lock(&connections).slots.request_started(id);
            let response = answer(&request, &loaded, &metrics).await;
            Connections::lock(&connections).slots.request_done(id);
            Ok::<_, Infallible>(response)
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        log::debug!("metrics connection: {error}");
    }
}

async fn answer(
    request: &Request<Incoming>,
    loaded: &Loaded,
    metrics: &Arc<Metrics>,
) -> Response<Full<Bytes>> {
    let header = |name: hyper::header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let reply = if authorised(&header(hyper::header::AUTHORIZATION), loaded).await {
        let gzip = respond::accepts_gzip(&header(hyper::header::ACCEPT_ENCODING));
        respond::respond(
            request.method().as_str(),
            request.uri().path(),
            gzip,
            || metrics.encode().map_err(|e| e.to_string()),
        )
    } else {
        metrics.http_unauthorized.inc();
        respond::unauthorized()
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    let extra = loaded
        .settings
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()));
    let own = reply
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()));
    for (name, value) in own.chain(extra) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

/// Whether the request's credentials are among the configured users (or
/// none are configured). bcrypt runs off the runtime's threads: the
/// broker shares them and must not wait tens of milliseconds.
async fn authorised(authorization: &str, loaded: &Loaded) -> bool {
    let users = &loaded.settings.users;
    if users.is_empty() {
        return true;
    }
    let Some((user, password)) = respond::basic_credentials(authorization) else {
        return false;
    };
    let Some(hash) = users.get(&user).cloned() else {
        return false;
    };
    let key = (user, password);
    if loaded
        .accepted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&key)
    {
        return true;
    }
    let password = key.1.clone();
    let valid =
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
    if valid {
        let mut accepted = loaded.accepted.lock().unwrap_or_else(|p| p.into_inner());
        if accepted.len() >= AUTH_CACHE {
            accepted.clear();
        }
        accepted.insert(key);
    }
    valid
}
