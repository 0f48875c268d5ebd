//! Ranks that are processes, joined over TCP through rank 0: rank 0 listens at
//! `MASTER_ADDR:MASTER_PORT`, every other rank connects, and a sum travels to rank 0 and back.
//! It is the CPU backend (enough for CPUs and for tests of a real multi-process launch; a GPU
//! group moves its gradients with NCCL) and the rendezvous the NCCL backend starts from:
//! rank 0 hands its NCCL id to the others over these connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{add_into, error, host_values, Communicator, Launch};
use crate::error::TrainError;

const MAGIC: &[u8; 4] = b"DSTL";
/// How long a rank waits for a peer's message before it gives up (a peer that died closes its
/// connection, which ends the wait at once).
const READ_TIMEOUT: Duration = Duration::from_secs(1800);

enum Links {
    /// Rank 0: the connection of rank `i + 1` at `i`.
    Hub(Vec<TcpStream>),
    Spoke(TcpStream),
}

/// One rank of a TCP group.
pub struct Tcp {
    rank: usize,
    world: usize,
    links: Mutex<Links>,
}

impl Tcp {
    /// Joins the group `launch` describes, waiting up to `timeout` for every rank (rank 0
    /// listens, the others retry until it does).
    pub fn connect(launch: &Launch, timeout: Duration) -> Result<Tcp, TrainError> {
        let rank = launch.rank;
        let err = |msg: String| error(rank, msg);
        let at = format!("{}:{}", launch.master_addr, launch.master_port);
        let deadline = Instant::now() + timeout;
        let links = if rank == 0 {
            let addr = at
                .to_socket_addrs()
                .map_err(|e| err(format!("MASTER_ADDR:MASTER_PORT {at}: {e}")))?
                .next()
                .ok_or_else(|| err(format!("{at} resolves to no address")))?;
            let listener =
                TcpListener::bind(addr).map_err(|e| err(format!("listening on {at}: {e}")))?;
            Links::Hub(accept_ranks(&listener, launch.world, deadline).map_err(err)?)
        } else {
            let mut stream = loop {
                match TcpStream::connect(&at) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(err(format!(
                            "rank 0 did not answer at {at} within {} s: {e}",
                            timeout.as_secs()
                        )))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            configure(&stream).map_err(|e| err(e.to_string()))?;
            let mut hello = MAGIC.to_vec();
            hello.extend_from_slice(&(rank as u32).to_le_bytes());
            hello.extend_from_slice(&(launch.world as u32).to_le_bytes());
            stream
                .write_all(&hello)
                .map_err(|e| err(format!("greeting rank 0: {e}")))?;
            Links::Spoke(stream)
        };
        tracing::info!(rank, world = launch.world, at = %at, "joined the data-parallel group");
        Ok(Tcp {
            rank,
            world: launch.world,
            links: Mutex::new(links),
        })
    }

    /// Rank 0's `bytes` on every rank (the others pass `None`).
    pub fn broadcast(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>, TrainError> {
        let err = |msg: String| error(self.rank, msg);
        let mut links = self.links.lock().expect("links");
        match &mut *links {
            Links::Hub(peers) => {
                let bytes =
                    bytes.ok_or_else(|| err("rank 0 must give what it broadcasts".into()))?;
                for (i, p) in peers.iter_mut().enumerate() {
                    send(p, bytes).map_err(|e| err(format!("sending to rank {}: {e}", i + 1)))?;
                }
                Ok(bytes.to_vec())
            }
            Links::Spoke(s) => receive(s).map_err(|e| err(format!("receiving from rank 0: {e}"))),
        }
    }
}

impl Communicator for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        let err = |msg: String| error(self.rank, msg);
        let mine = host_values(t).map_err(|e| err(e.to_string()))?;
        let mut links = self.links.lock().expect("links");
        let sum = match &mut *links {
            Links::Hub(peers) => {
                // Rank order, one rank at a time into the running sum: the sum every backend
                // on the CPU computes, without holding every rank's values at once.
                let mut sum = mine;
                for (i, p) in peers.iter_mut().enumerate() {
                    let theirs =
                        receive(p).map_err(|e| err(format!("from rank {}: {e}", i + 1)))?;
                    add_into(&mut sum, i + 1, &theirs).map_err(err)?;
                }
                for (i, p) in peers.iter_mut().enumerate() {
                    send(p, &sum).map_err(|e| err(format!("to rank {}: {e}", i + 1)))?;
                }
                sum
            }
            Links::Spoke(s) => {
                send(s, &mine).map_err(|e| err(format!("to rank 0: {e}")))?;
                let sum = receive(s).map_err(|e| err(format!("from rank 0: {e}")))?;
                if sum.len() != mine.len() {
                    return Err(err(format!(
                        "rank 0 answered {} values for {}",
                        sum.len(),
                        mine.len()
                    )));
                }
                sum
            }
        };
        Tensor::from_vec(sum, t.elem_count(), t.device()).map_err(|e| err(e.to_string()))
    }
}

/// Rank 0's side of the rendezvous: one greeted connection per other rank, in rank order.
fn accept_ranks(
    listener: &TcpListener,
    world: usize,
    deadline: Instant,
) -> Result<Vec<TcpStream>, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                configure(&s).map_err(|e| e.to_string())?;
                let mut hello = [0u8; 12];
                s.read_exact(&mut hello)
                    .map_err(|e| format!("greeting from {from}: {e}"))?;
                let r = u32::from_le_bytes(hello[4..8].try_into().expect("4 bytes")) as usize;
                let w = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
                if &hello[..4] != MAGIC {
                    return Err(format!("{from} is not a distill rank"));
                }
                if w != world || r == 0 || r >= world {
                    return Err(format!(
                        "{from} says it is rank {r} of {w}; this group has {world} ranks"
                    ));
                }
                if peers[r - 1].replace(s).is_some() {
                    return Err(format!("two processes say they are rank {r}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = peers
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    return Err(format!("ranks {} did not join in time", missing.join(", ")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accepting a rank: {e}")),
        }
    }
    Ok(peers.into_iter().map(|p| p.expect("joined")).collect())
}

fn configure(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_TIMEOUT))
}

// Values travel as their in-memory bytes, which are little-endian on every target built here.
#[cfg(not(target_endian = "little"))]
compile_error!("the TCP communicator sends f32 values as little-endian bytes");

/// A message: its length in elements, then the elements' bytes (`f32` values, or `u8`).
fn send<T: bytemuck::Pod>(s: &mut TcpStream, values: &[T]) -> std::io::Result<()> {
    s.write_all(&(values.len() as u64).to_le_bytes())?;
    s.write_all(bytemuck::cast_slice(values))?;
    s.flush()
}

/// A message [`send`] sent, read straight into its values.
fn receive<T: bytemuck::Pod + Default>(s: &mut TcpStream) -> std::io::Result<Vec<T>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let mut values = vec![T::default(); u64::from_le_bytes(len) as usize];
    s.read_exact(bytemuck::cast_slice_mut(&mut values))?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn ranks_over_tcp_sum_and_broadcast() {
        let port = free_port();
        let out: Vec<(Vec<f32>, Vec<u8>)> = std::thread::scope(|s| {
            // Rank 2 starts first: the others retry until rank 0 listens.
            let handles: Vec<_> = [2usize, 0, 1]
                .into_iter()
                .map(|rank| {
                    s.spawn(move || {
                        let launch = Launch {
                            rank,
                            world: 3,
                            local_rank: rank,
                            master_addr: "127.0.0.1".into(),
                            master_port: port,
                        };
                        let c = Tcp::connect(&launch, Duration::from_secs(20)).unwrap();
                        let t = Tensor::new(&[rank as f32, 1.0], &Device::Cpu).unwrap();
                        let sum = c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
                        c.barrier().unwrap();
                        let id = c.broadcast((rank == 0).then_some(&b"nccl-id"[..])).unwrap();
                        (sum, id)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, id) in out {
            assert_eq!(sum, vec![3.0, 3.0]);
            assert_eq!(id, b"nccl-id");
        }
    }

    #[test]
    fn a_missing_rank_is_named() {
        let launch = Launch {
            rank: 0,
            world: 2,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: free_port(),
        };
        let e = Tcp::connect(&launch, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ranks 1 did not join"), "{e}");
    }
}
