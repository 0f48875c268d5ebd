//! A rank's place in a data-parallel group, from the environment a launcher sets: the names
//! `torchrun` uses (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), so
//! `distill launch`, `torchrun --no-python` and a Slurm script that exports them all work.

use crate::error::TrainError;

/// Where this process sits, and where rank 0 listens for the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// The rank on this host: which of its GPUs this process takes.
    pub local_rank: usize,
    /// Rank 0's address and port, where every rank meets.
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// The launch the environment describes, or `None` when it names no group of more than
    /// one rank (`WORLD_SIZE` unset or 1). A malformed or inconsistent value is an error
    /// naming the variable.
    pub fn from_env() -> Result<Option<Launch>, TrainError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any lookup (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, TrainError> {
        let number = |key: &str| -> Result<Option<usize>, TrainError> {
            var(key)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        TrainError::Invalid(format!(
                            "environment variable {key}={v:?}: expected a non-negative integer"
                        ))
                    })
                })
                .transpose()
        };
        let world = match number("WORLD_SIZE")? {
            None | Some(1) => return Ok(None),
            Some(0) => {
                return Err(TrainError::Invalid(
                    "environment variable WORLD_SIZE=0: a group has at least one rank".into(),
                ))
            }
            Some(w) => w,
        };
        let rank = number("RANK")?.ok_or_else(|| {
            TrainError::Invalid(format!(
                "WORLD_SIZE={world} but RANK is not set: each process needs its rank (0..{world})"
            ))
        })?;
        if rank >= world {
            return Err(TrainError::Invalid(format!(
                "environment variable RANK={rank}: must be below WORLD_SIZE={world}"
            )));
        }
        let master_port = match number("MASTER_PORT")? {
            None => 29500,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(TrainError::Invalid(format!(
                    "environment variable MASTER_PORT={p}: expected a port in 1..65535"
                )))
            }
        };
        Ok(Some(Launch {
            rank,
            world,
            local_rank: number("LOCAL_RANK")?.unwrap_or(rank),
            master_addr: var("MASTER_ADDR")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, TrainError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_the_torchrun_variables() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
        let l = launch(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (3, 4, 1));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("node0", 1234));
        let d = launch(&[("WORLD_SIZE", "2"), ("RANK", "1")])
            .unwrap()
            .unwrap();
        assert_eq!((d.local_rank, d.master_port), (1, 29500));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (vars, want) in [
            (&[("WORLD_SIZE", "two")][..], "WORLD_SIZE=\"two\""),
            (&[("WORLD_SIZE", "2")][..], "RANK is not set"),
            (&[("WORLD_SIZE", "2"), ("RANK", "2")][..], "RANK=2"),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")][..],
                "MASTER_PORT=70000",
            ),
        ] {
            let e = launch(vars).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
