//! Stop requests from signals. SIGINT (Ctrl-C), SIGTERM (what `timeout`, Slurm, systemd and
//! Kubernetes send) and SIGHUP (a closed terminal) all ask the run to finish its step, write a
//! checkpoint and stop, so that `--resume` continues it; a second signal exits at once. A
//! command that stopped on a signal exits with 128 + its number, as a shell reports it.

use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The signals that stop a run.
pub const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// The first stop signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "interrupt",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// A stop flag set by the first stop signal; a second one exits at once with 128 + its number.
pub fn stop_flag() -> distill::StopFlag {
    let stop = distill::StopFlag::new();
    let flag = stop.clone();
    on_stop_signals(move |sig| {
        if flag.request() {
            std::process::exit(128 + sig);
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n{}: finishing the current step and writing a checkpoint (send it again to stop at once)",
            name(sig)
        );
    });
    stop
}

/// Calls `f` with each stop signal, from a thread of its own, after recording the first.
pub fn on_stop_signals(mut f: impl FnMut(i32) + Send + 'static) {
    let mut signals = match Signals::new(STOP_SIGNALS) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("signals cannot stop a run cleanly here: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let _ = RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            f(sig);
        }
    });
}

/// The exit code of a command that stopped on a signal: 128 + the first signal's number (130
/// for Ctrl-C), or 130 when the stop came some other way.
pub fn exit_code() -> u8 {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => 130,
        sig => (128 + sig).clamp(0, 255) as u8,
    }
}

/// The first stop signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
