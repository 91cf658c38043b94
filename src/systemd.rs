//! systemd's `Type=notify` protocol (`sd_notify(3)`): the supervisor says when it is ready,
//! reloading and stopping, each time with a one-line `STATUS=` that `systemctl status`
//! shows.
//!
//! | When                                        | Message                                      |
//! |---------------------------------------------|----------------------------------------------|
//! | every listener is bound and served          | `READY=1`, `STATUS=listening on ...`         |
//! | a reload starts (SIGHUP, `--watch`)          | `RELOADING=1`, `MONOTONIC_USEC=…`, `STATUS=` |
//! | the reload is accepted or rejected          | `READY=1`, `STATUS=reloaded: ...` or `reload rejected: ...` |
//! | shutdown begins (SIGINT, SIGTERM)           | `STOPPING=1`, `STATUS=shutting down: ...`    |
//!
//! `MONOTONIC_USEC` is what `Type=notify-reload` (systemd 253 and later) expects with
//! `RELOADING=1`; older versions and plain `Type=notify` ignore it. Messages go to the
//! datagram socket named by `NOTIFY_SOCKET` through the `sd-notify` crate; without that
//! variable (not under systemd, or under a service type that does not listen) every call
//! here does nothing. A message that cannot be sent is logged at debug level and dropped:
//! the service manager's bookkeeping never stops the balancer.

use sd_notify::NotifyState;

/// Every listener is bound and serving, or a reload has ended (in force or rejected):
/// `READY=1` with `status`.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// A reload has started: `RELOADING=1`, the monotonic clock's reading now, and `status`.
pub(crate) fn reloading(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = one_line(status);
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status(&status)]),
        Err(e) => {
            log::debug!("systemd notification: cannot read the monotonic clock: {e}");
            send(&[NotifyState::Reloading, NotifyState::Status(&status)]);
        }
    }
}

/// Shutdown has begun: `STOPPING=1` with `status`.
pub(crate) fn stopping(status: &str) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status)),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("systemd notification not sent: {e}");
    }
}

/// `STATUS=` ends at the line's end: a multi-line message is joined into one line.
fn one_line(status: &str) -> String {
    status.lines().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(one_line("reloaded"), "reloaded");
        assert_eq!(one_line("bad file\r\nat 3:4\n"), "bad file at 3:4");
        assert_eq!(one_line(""), "");
    }
}
