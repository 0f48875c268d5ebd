//! Results on stdout. A reader that goes away (`distill tokenize … | head -n1`) or a full
//! disk (`> /dev/full`) ends the command with a non-zero exit instead of a panic: every line is
//! written and flushed with its error returned.

use std::io::Write;

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output")]
pub struct StdoutError(#[from] pub std::io::Error);

impl StdoutError {
    /// The reader closed the pipe: nothing is wrong with the command, and nothing is said.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `args` to stdout and flushes.
pub fn write(args: std::fmt::Arguments) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()?;
    Ok(())
}

/// `println!` whose failure is an error, not a panic: `out!("…")?`.
#[macro_export]
macro_rules! out {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` whose failure is an error, not a panic.
#[macro_export]
macro_rules! out_raw {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}
