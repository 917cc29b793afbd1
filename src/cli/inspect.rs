use prefixscope::load;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint: a Hugging Face folder, a .gguf file, or a prefixscope .safetensors.
    #[arg(long)]
    pub model: PathBuf,
    /// Keep GGUF weights quantized in memory (each is dequantized for its product): less memory, same numbers.
    #[arg(long)]
    pub quantized: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    let loaded = load::load_with(
        &a.model,
        &load::LoadControl {
            quantized: a.quantized,
            ..Default::default()
        },
    )?;
    let info = loaded.model.info();
    if a.json {
        let mut v = serde_json::to_value(info).unwrap_or_default();
        v["tokenizer"] = loaded.tokenizer.describe().into();
        for (k, d) in loaded.model.details() {
            v[k] = d.into();
        }
        v["path"] = a.model.display().to_string().into();
        v["matmul"] = prefixscope::model::blas::backend().into();
        v["matmul_choice"] = prefixscope::model::blas::source().into();
        v["matmul_from_cache"] = prefixscope::model::blas::from_cache().into();
        v["cpu"] = prefixscope::model::blas::Cpu::detect().describe().into();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("model:        {}", a.model.display());
        println!("architecture: {} ({})", info.arch, info.source);
        for (k, d) in loaded.model.details() {
            println!("{:<14}{d}", format!("{k}:"));
        }
        println!("layers:       {}", info.n_layers);
        println!(
            "heads:        {} query, {} key/value, head dim {}",
            info.n_heads, info.n_kv_heads, info.head_dim
        );
        println!("d_model:      {}", info.d_model);
        println!("vocabulary:   {}", info.vocab_size);
        match info.max_positions {
            Some(m) => println!("context:      {m} positions (learned)"),
            None => println!("context:      unbounded (RoPE)"),
        }
        println!("dtype:        {}", info.dtype);
        println!("tokenizer:    {}", loaded.tokenizer.describe());
        println!("parameters:   {}", info.n_params);
        println!("matmul:       {}", prefixscope::model::blas::backend());
        println!("matmul from:  {}", prefixscope::model::blas::source());
        println!(
            "cpu:          {}",
            prefixscope::model::blas::Cpu::detect().describe()
        );
    }
    Ok(())
}
