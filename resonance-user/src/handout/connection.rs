//! One client connection's I/O: a reader task decoding frames into the
//! broker's [`Core`], a writer task sending its queue (frames and
//! descriptors) to the socket.

use super::*;

pub(super) async fn serve_connection(
    core: Arc<Mutex<Core>>,
    wake: Arc<tokio::sync::Notify>,
    stream: tokio::net::UnixStream,
) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let fd = OwnedFd::from(stream);
    let cred = match sys::peer_cred(fd.as_fd()) {
        Ok(cred) => cred,
        Err(error) => {
            log::warn!("broker: SO_PEERCRED failed, dropping the connection: {error}");
            return;
        }
    };
    // SAFETY: `fd` is a valid socket owned by the AsyncFd from here on.
    let Ok(socket) = (unsafe { AsyncFd::register(fd) }) else {
        return;
    };
    let socket = Arc::new(socket);
    let (tx, rx) = mpsc::unbounded_channel();
    let id = lock(&core).add_connection(cred, tx.clone());
    let writer = tokio::spawn(write_loop(Arc::clone(&socket), rx));
    let outcome = read_loop(&socket, id, &core, &wake).await;
    if let Err(reject) = outcome {
        log::warn!(
            "broker: closing connection of pid {} uid {}: {}",
            cred.pid,
            cred.uid,
            reject.message
        );
        lock(&core)
            .metrics
            .rejected
            .with_label_values(&[reject.reason])
            .inc();
        let _ = tx.send(Out::Frame(
            Message::Error {
                req: 0,
                code: reject.code,
                message: reject.message,
            },
            None,
        ));
    }
    let _ = tx.send(Out::Close);
    drop(tx);
    lock(&core).remove_connection(id);
    wake.notify_one();
    let _ = writer.await;
}

async fn read_loop(
    socket: &AsyncFd<OwnedFd>,
    id: u64,
    core: &Mutex<Core>,
    wake: &tokio::sync::Notify,
) -> Result<(), Reject> {
    let mut reader = FrameReader::new();
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some((_, Some(_)))) => {
                    return Err(Reject::new(
                        code::UNEXPECTED_FDS,
                        "unexpected_fds",
                        "clients never send descriptors",
                    ));
                }
                Ok(Some((message, None))) => {
                    lock(core).handle(id, message)?;
                    wake.notify_one();
                }
                Ok(None) => break,
                Err(error) => return Err(Reject::wire(error)),
            }
        }
        if reader.pending_fds() > 0 {
            return Err(Reject::new(
                code::UNEXPECTED_FDS,
                "unexpected_fds",
                "clients never send descriptors",
            ));
        }
        let greeted = lock(core).conns.get(&id).is_some_and(|c| c.name.is_some());
        let readable = if greeted {
            socket.readable().await
        } else {
            match tokio::time::timeout_at(deadline, socket.readable()).await {
                Ok(readable) => readable,
                Err(_) => {
                    return Err(Reject::new(
                        code::PROTOCOL,
                        "handshake_timeout",
                        "no Hello in time",
                    ));
                }
            }
        };
        let mut guard = readable.map_err(|e| Reject::new(code::INTERNAL, "io", e.to_string()))?;
        match reader.fill(socket.get_ref().as_fd(), true) {
            Ok(_) => {}
            Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                guard.clear_ready()
            }
            // A client leaving is normal, even mid-frame: nothing to answer.
            Err(WireError::Closed) => return Ok(()),
            Err(WireError::Io(_)) => return Ok(()),
            Err(error) => return Err(Reject::wire(error)),
        }
    }
}

async fn write_loop(socket: Arc<AsyncFd<OwnedFd>>, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(out) = rx.recv().await {
        let (message, fd) = match out {
            Out::Frame(message, fd) => (message, fd),
            Out::Close => break,
        };
        let bytes = message.encode();
        let mut sent = 0;
        while sent < bytes.len() {
            let Ok(mut guard) = socket.writable().await else {
                return;
            };
            let attach = if sent == 0 {
                fd.as_ref().map(|f| f.as_fd())
            } else {
                None
            };
            match wire::send_once(socket.get_ref().as_fd(), &bytes[sent..], attach) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return,
            }
        }
        // The descriptor is the client's now (or lost with it): ours closes.
        drop(fd);
    }
    // The client sees EOF even while the reader task still holds the
    // descriptor.
    let _ = sys::shutdown(socket.get_ref());
}
