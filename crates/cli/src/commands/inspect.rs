use distill_teacher::{inspect, HubOptions, TeacherSource};

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, or hf://org/name[@revision]
    source: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let source = TeacherSource::parse(&a.source)?;
    let info = inspect(&source, &HubOptions::from_env())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", info.to_text());
    }
    Ok(())
}
