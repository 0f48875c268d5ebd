#!/usr/bin/env bash
# The project's test command (README → "Test"; CI runs exactly this).
# Fetches the real assets if missing, checks formatting, lints and the absence of import cycles,
# then runs every test in the release profile (the binary under test is the one users run,
# built once), and the library example, which distils the real teacher through the library API
# alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-assets.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# No file-level import cycle in any crate (and the size counts, printed).
python3 scripts/check-structure.py
cargo test --release --workspace
# `cargo test` has just built the example with the tests' features; running that binary rather
# than `cargo run --example` saves a second build of the workspace (resolver 2 leaves the
# dev-dependency features out of a plain build).
target/release/examples/distil_tiny
