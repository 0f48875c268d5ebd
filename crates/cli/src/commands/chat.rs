//! `distill chat SOURCE`: a conversation in the terminal. Each line typed is a user turn; the
//! answer streams as it is written. `/reset` starts again, `/exit` (or end of input) ends;
//! Ctrl-C stops the answer being written, not the program.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use distill::chat::{ChatOptions, ChatSession};
use distill::generate::{Finish, Sampling};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, hf://org/name[@revision], or a run folder
    /// (its exported student).
    source: String,
    /// A system turn at the start of the conversation.
    #[arg(long)]
    system: Option<String>,
    /// New tokens at most per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0: greedy (always the most probable token).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value = "0.9")]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = ChatOptions {
        system: a.system.clone(),
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
    };
    let mut session = ChatSession::open(&a.source, &a.model.load_options()?, opts)?;
    // Ctrl-C sets the flag (the process goes on); the answer being written checks it.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    crate::out!(
        "chat with {} — /reset starts again, /exit ends, Ctrl-C stops an answer",
        a.source
    )?;
    let stdin = std::io::stdin();
    loop {
        crate::out_raw!("> ")?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            crate::out!()?;
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                session.reset();
                crate::out!("(a new conversation)")?;
                continue;
            }
            _ => {}
        }
        stop.store(false, Ordering::SeqCst);
        let reply = session.reply(
            line.trim_end_matches(['\n', '\r']),
            &mut |piece| {
                let _ = crate::out_raw!("{piece}");
            },
            &|| stop.load(Ordering::SeqCst),
        );
        match reply {
            Ok(r) => {
                let mark = match r.finish {
                    Finish::Stopped => " [stopped]",
                    Finish::Budget => " [cut short at the token budget]",
                    Finish::Eos => "",
                };
                crate::out!("{mark}")?;
            }
            // A turn that cannot be answered is said; the conversation goes on.
            Err(e) => crate::out!("({e})")?,
        }
    }
}
