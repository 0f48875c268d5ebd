use distill_teacher::{load_tokenizer, resolve, HubOptions, TeacherSource};

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
    source: String,
    /// The text to tokenise.
    text: String,
    /// Print a JSON array of ids.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let source = TeacherSource::parse(&a.source)?;
    let tok = load_tokenizer(&resolve(&source, &HubOptions::from_env())?)?;
    let ids = tok.encode(&a.text)?;
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in &ids {
            let piece = tok.decode(&[*id])?;
            println!("{id:>7}  {piece:?}");
        }
        println!("{} tokens", ids.len());
    }
    Ok(())
}
