//! Compares every intermediate of distill's ggml path with a dump of llama.cpp's graph nodes.
//!
//! ```text
//! ref-venv/bin/python scripts/dump-llamacpp-tensors.py MODEL.gguf /tmp/dump.safetensors 'text'
//! cargo run --release -p distill-models --example compare_llamacpp_dump -- MODEL.gguf /tmp/dump.safetensors
//! ```
//! Prints, per node in graph order, how many values differ in their bits and the largest
//! difference; the first line with differences names the operation to look at.

use std::path::Path;

use distill_models::{GgmlDecoder, GgufFile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, dump] = args.as_slice() else {
        return Err("usage: compare_llamacpp_dump MODEL.gguf DUMP.safetensors".into());
    };
    let model = GgmlDecoder::load(&GgufFile::open(Path::new(model))?)?;
    let bytes = std::fs::read(dump)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let ids: Vec<u32> = st
        .tensor("ids")?
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as u32)
        .collect();
    let mut first_bad: Option<String> = None;
    model.forward_traced(&ids, &mut |name, ours| {
        let Ok(theirs) = st.tensor(name) else {
            println!("{name:>18}: not in the dump");
            return;
        };
        let theirs: Vec<f32> = theirs
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if theirs.len() != ours.len() {
            println!(
                "{name:>18}: {} values in the dump, {} here",
                theirs.len(),
                ours.len()
            );
            return;
        }
        let differ = theirs
            .iter()
            .zip(ours)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        let max = theirs
            .iter()
            .zip(ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{name:>18}: {differ:>8} of {:>8} differ, max |Δ| {max:e}",
            ours.len()
        );
        if differ > 0 && first_bad.is_none() {
            first_bad = Some(name.to_string());
        }
    })?;
    match first_bad {
        Some(n) => println!("first difference: {n}"),
        None => println!("bit-identical at every node"),
    }
    Ok(())
}
