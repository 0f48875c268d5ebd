//! # distill-files
//!
//! Everything distill writes goes through here, so that it never destroys what it did not
//! write and never leaves a half-written file behind:
//!
//! - [`atomic`]: a file or a folder is written under a temporary name beside its target and
//!   renamed into place; the temporary is removed on every error path. Targets are only ever
//!   regular files (a device, FIFO or socket is refused, never replaced).
//! - [`target`]: the checks a command makes before any work: a file target (regular or absent,
//!   its folder writable), a folder target (new, empty, or marked as distill's — else refused
//!   unless the user says `--overwrite`), never `/`, the home folder, the working folder or an
//!   ancestor of an input.
//! - [`marker`]: the `.distill` file inside every folder distill writes, listing what it wrote,
//!   so that replacing the folder later removes exactly those entries; [`container`]: folders
//!   distill adds entries to over time (a run folder), marked and cleared of its own entries.
//! - [`lock`]: one writer per run folder or cache (an OS lock on a file naming pid, host and
//!   start time; a lock left by a dead process is taken over with a message).
//! - [`input`]: inputs must be regular files (a FIFO or `/dev/zero` would never end), read with
//!   a size limit where the whole file is needed at once.

pub mod atomic;
pub mod container;
pub mod input;
pub mod lock;
pub mod marker;
pub mod target;

mod error;

pub use atomic::{usual_mode, write_file, write_file_with, write_folder};
pub use error::FilesError;
pub use lock::Lock;
pub use marker::Marker;
pub use target::{check_file_target, check_folder_target, FolderPolicy};
