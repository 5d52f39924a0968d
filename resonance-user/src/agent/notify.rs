//! The systemd notification protocol (`sd_notify`), for `Type=notify`:
//! `READY=1` once the probes are attached and every socket listens,
//! `STATUS=` lines saying what is attached, `RELOADING=1` around a SIGHUP,
//! `STOPPING=1` at SIGTERM, and `WATCHDOG=1` from the agent's own loop at
//! half the `WatchdogSec` period, so a loop that stops turning gets the
//! agent restarted. Without `NOTIFY_SOCKET` (not under systemd) every call
//! does nothing. A message that cannot be sent is logged once and
//! dropped: the service manager's troubles must not stop the agent.

use std::{
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// Where and how often to notify.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    failed: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace)
    /// and `WATCHDOG_USEC` (honoured only if `WATCHDOG_PID` is unset or
    /// names this process, as sd_watchdog_enabled does).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            let address = match name.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
                None => SocketAddr::from_pathname(&name),
            };
            let socket = UnixDatagram::unbound();
            match (address, socket) {
                (Ok(address), Ok(socket)) => Some((socket, address)),
                (Err(error), _) | (_, Err(error)) => {
                    log::warn!("NOTIFY_SOCKET={name} is unusable: {error}");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(Duration::from_micros);
        Self {
            target,
            watchdog,
            failed: AtomicBool::new(false),
        }
    }

    /// How often to send `WATCHDOG=1`: half the period systemd allows.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog.map(|period| period / 2)
    }

    /// Ready to serve, and what is running.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A new status line (shown by `systemctl status`).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// Reloading the configuration; `ready` follows when done.
    pub fn reloading(&self) {
        let now = crate::sys::monotonic_ns() / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    /// Stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The loop is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), address)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            log::warn!("notifying the service manager failed (said once): {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_in_order() {
        let dir = std::env::temp_dir().join(format!("resonance-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(10)),
            failed: AtomicBool::new(false),
        };
        notifier.ready("observing in tp_btf mode");
        notifier.watchdog();
        notifier.stopping();
        let mut buffer = [0u8; 256];
        let mut next = || {
            let n = listener.recv(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        };
        assert_eq!(next(), "READY=1\nSTATUS=observing in tp_btf mode");
        assert_eq!(next(), "WATCHDOG=1");
        assert_eq!(next(), "STOPPING=1");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let notifier = Notifier {
            target: None,
            watchdog: Some(Duration::from_secs(10)),
            failed: AtomicBool::new(false),
        };
        notifier.ready("x");
        assert_eq!(notifier.watchdog_interval(), None);
    }
}
