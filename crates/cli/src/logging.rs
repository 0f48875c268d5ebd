//! Logging to stderr through `tracing`; `RUST_LOG` sets the filter (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    // HTTP client internals stay quiet even at `RUST_LOG=trace`: their request dumps carry
    // the Authorization header, and a token must never reach a log.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("ureq=warn".parse().expect("static directive"))
        .add_directive("rustls=warn".parse().expect("static directive"))
        .add_directive("hf_hub=info".parse().expect("static directive"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
