//! Two ranks of a data-parallel group as threads of a test, joined over TCP on `port`.

use distill::{Launch, RunOptions};

/// `f` run by both ranks at once, with each rank's options; the results in rank order.
pub fn in_group_of_two<T: Send>(port: u16, f: impl Fn(&RunOptions) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                s.spawn(move || {
                    let opts = RunOptions {
                        launch: Some(Launch {
                            rank,
                            world: 2,
                            local_rank: rank,
                            master_addr: "127.0.0.1".into(),
                            master_port: port,
                        }),
                        ..RunOptions::default()
                    };
                    f(&opts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}
