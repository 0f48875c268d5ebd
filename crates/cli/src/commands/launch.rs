//! `distill launch --nproc-per-node N -- run CONFIG` (or `-- cache-teacher CONFIG`): starts N ranks of a data-parallel group
//! on this host, each this binary with the command after `--` and the variables `torchrun`
//! sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`). With `--nnodes` and `--node-rank` it starts this host's share of a group
//! over several hosts. Rank 0 of the host keeps the terminal; the others' lines come
//! prefixed with their rank. When one rank fails, the others are stopped. The host's cores are
//! shared out (`RAYON_NUM_THREADS`) unless the caller chose.
//!
//! The ranks run in a process group of their own, so a stop signal (Ctrl-C at the terminal,
//! SIGTERM from `timeout`, Slurm or systemd, SIGHUP) reaches each rank exactly once: the
//! launcher forwards every one it receives. The ranks then checkpoint together and the
//! launcher waits for all of them and exits with the signal's code.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Ranks on this host (one per GPU; any number on the CPU).
    #[arg(long)]
    nproc_per_node: usize,
    /// Hosts in the group.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This host's place among them, `0..nnodes`.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Where rank 0 (on host 0) listens for the others.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// The command each rank runs: `run CONFIG [--resume | --overwrite]` or
    /// `cache-teacher CONFIG`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.nproc_per_node == 0 || a.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if a.node_rank >= a.nnodes {
        bail!(
            "--node-rank {}: must be below --nnodes {}",
            a.node_rank,
            a.nnodes
        );
    }
    if !matches!(
        a.command.first().map(String::as_str),
        Some("run" | "cache-teacher")
    ) {
        bail!(
            "distill launch starts ranks of `distill run` or `distill cache-teacher`: write `distill launch --nproc-per-node N -- run CONFIG` (got `{}`)",
            a.command.join(" ")
        );
    }
    let exe = std::env::current_exe().context("finding this binary")?;
    let world = a.nnodes * a.nproc_per_node;
    // Ranks on one host share its cores: each gets its share of the CPU threads (candle's and
    // rayon's pools read RAYON_NUM_THREADS), unless the caller set it.
    let threads = std::env::var_os("RAYON_NUM_THREADS").is_none().then(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / a.nproc_per_node).max(1)
    });
    if let Some(t) = threads {
        tracing::info!(
            threads_per_rank = t,
            "RAYON_NUM_THREADS set for each rank (set it to choose)"
        );
    }
    // Every stop signal the launcher receives goes to every rank once; the ranks checkpoint
    // and exit, and the launcher waits for them.
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let forward_to = pids.clone();
    crate::signals::on_stop_signals(move |sig| {
        for &pid in forward_to.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: kill only sends a signal to a process this launcher started.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    });
    let mut ranks: Vec<(usize, Child)> = vec![];
    let mut copiers = vec![];
    for local in 0..a.nproc_per_node {
        let rank = a.node_rank * a.nproc_per_node + local;
        let mut c = Command::new(&exe);
        c.args(&a.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc_per_node.to_string())
            .env("MASTER_ADDR", &a.master_addr)
            .env("MASTER_PORT", a.master_port.to_string());
        if let Some(t) = threads {
            c.env("RAYON_NUM_THREADS", t.to_string());
        }
        if local != 0 {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        // Out of the terminal's process group: signals reach a rank through the launcher only.
        c.process_group(0);
        let mut child = c.spawn().with_context(|| format!("starting rank {rank}"))?;
        pids.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child.id());
        if local != 0 {
            copiers.push(prefix_lines(rank, child.stdout.take().expect("piped")));
            copiers.push(prefix_lines(rank, child.stderr.take().expect("piped")));
        }
        ranks.push((rank, child));
    }
    tracing::info!(world, local = a.nproc_per_node, "ranks started");
    let failed = wait_all(&mut ranks)?;
    for c in copiers {
        let _ = c.join();
    }
    if let Some(sig) = crate::signals::received() {
        tracing::warn!(signal = sig, "the ranks stopped on a signal");
        return Err(super::Stopped.into());
    }
    match failed {
        None => Ok(()),
        Some((rank, status)) => {
            bail!("rank {rank} failed ({status}); the other ranks were stopped")
        }
    }
}

/// Copies a rank's output to stderr line by line, each line prefixed with the rank.
fn prefix_lines(rank: usize, from: impl Read + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
        }
    })
}

/// Waits for every rank; at the first that fails, stops the others and returns it.
fn wait_all(ranks: &mut [(usize, Child)]) -> anyhow::Result<Option<(usize, ExitStatus)>> {
    let mut running: Vec<usize> = (0..ranks.len()).collect();
    while !running.is_empty() {
        let mut still = vec![];
        for i in running {
            let (rank, child) = &mut ranks[i];
            match child
                .try_wait()
                .with_context(|| format!("waiting for rank {rank}"))?
            {
                // After a stop signal every rank checkpoints and exits non-zero: all are
                // waited for, none is killed in the middle of writing.
                Some(status) if !status.success() && crate::signals::received().is_none() => {
                    let failed = (*rank, status);
                    for (_, other) in ranks.iter_mut() {
                        let _ = other.kill();
                        let _ = other.wait();
                    }
                    return Ok(Some(failed));
                }
                Some(_) => {}
                None => still.push(i),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(None)
}
