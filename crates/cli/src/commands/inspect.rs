//! `distill inspect SOURCE` and `distill tokenize SOURCE TEXT`.

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
    source: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn inspect(a: Args) -> anyhow::Result<()> {
    let info = distill::models::inspect(&a.source)?;
    if a.json {
        crate::out!("{}", serde_json::to_string_pretty(&info)?)?;
    } else {
        crate::out_raw!("{}", info.to_text())?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
    source: String,
    /// The text to tokenise.
    text: String,
    /// Print a JSON array of ids.
    #[arg(long)]
    json: bool,
}

pub fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    let tokens = distill::models::tokenize(&a.source, &a.text)?;
    if a.json {
        let ids: Vec<u32> = tokens.iter().map(|t| t.0).collect();
        crate::out!("{}", serde_json::to_string(&ids)?)?;
    } else {
        for (id, piece) in &tokens {
            crate::out!("{id:>7}  {piece:?}")?;
        }
        crate::out!("{} tokens", tokens.len())?;
    }
    Ok(())
}
