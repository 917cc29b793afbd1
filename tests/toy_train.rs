//! A few training steps of each kind make the loss fall, and a run resumes from its own file.
//! (The real trainings are minutes long; these are tiny models and a handful of steps.)

mod toy_common;

use prefixscope::load::toy;
use prefixscope::model::gpt::{Gpt, GptConfig, Lora, PrefixTensors};
use prefixscope::train::data::Task;
use prefixscope::train::{self, LoopOpts, Schedule};
use std::path::Path;

fn opts(out: &Path, task: Task, steps: usize, lr: f64, p: usize, wd: f64) -> LoopOpts {
    LoopOpts {
        schedule: Schedule {
            steps,
            batch: 32,
            lr,
            warmup: 0,
            cosine: false,
            weight_decay: wd,
            beta2: 0.95,
            grad_clip: 1.0,
            seed: 5,
        },
        task,
        p,
        out: out.to_path_buf(),
        ckpt_secs: 1e9,
        eval_every: 0,
        eval_samples: 10,
        stop_at: None,
        max_minutes: None,
        final_samples: 0,
    }
}

/// Mean loss over held-out batches (a seed the training never uses).
fn held_out_loss(
    m: &Gpt,
    prefix: Option<&PrefixTensors>,
    lora: Option<&Lora>,
    task: Task,
    p: usize,
) -> f32 {
    let s = Schedule {
        steps: 0,
        batch: 64,
        lr: 0.0,
        warmup: 0,
        cosine: false,
        weight_decay: 0.0,
        beta2: 0.95,
        grad_clip: 0.0,
        seed: 999,
    };
    let mut sum = 0.0;
    for step in 0..4 {
        let l = train::batch_loss(m, prefix, lora, task, p, &s, step).unwrap();
        sum += l.to_scalar::<f32>().unwrap();
    }
    sum / 4.0
}

fn small_cfg() -> GptConfig {
    GptConfig {
        vocab_size: 10,
        n_positions: 20,
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        skip_attn_layernorm: false,
        layer_norm_eps: 1e-5,
        tied_head: false,
    }
}

#[test]
fn every_kind_of_training_lowers_the_loss_and_resumes() {
    let dir = toy_common::tmp_dir("train");
    let cfg = small_cfg();

    // Pretraining from minGPT's init: 20 steps, then resumed to 60.
    let base = dir.join("base.safetensors");
    let fresh = train::pretrain::init(&cfg, 5).unwrap();
    let fresh_model = toy::gpt_from(&base, &fresh, &cfg).unwrap();
    let before = held_out_loss(&fresh_model, None, None, Task::Ascending, 1);
    let o =
        train::pretrain::run(&cfg, &opts(&base, Task::Ascending, 20, 3e-3, 1, 0.1), false).unwrap();
    assert_eq!(o.steps_done, 20);
    let o =
        train::pretrain::run(&cfg, &opts(&base, Task::Ascending, 60, 3e-3, 1, 0.1), true).unwrap();
    assert_eq!(o.steps_done, 60);
    let (m, f) = toy::load_gpt(&base).unwrap();
    assert_eq!(f.get(toy::STEPS), Some("60"));
    assert_eq!(f.get(toy::KIND), Some("toy-gpt"));
    let after = held_out_loss(&m, None, None, Task::Ascending, 1);
    assert!(after < 0.8 * before, "pretraining: {before} -> {after}");

    // Full fine-tuning to descending.
    let ft = dir.join("ft.safetensors");
    let b_desc = held_out_loss(&m, None, None, Task::Descending, 1);
    train::finetune::run(&base, &opts(&ft, Task::Descending, 30, 3e-3, 0, 0.1), false).unwrap();
    let (mf, ff) = toy::load_gpt(&ft).unwrap();
    assert_eq!(ff.get(toy::KIND), Some("toy-finetuned"));
    assert_eq!(ff.get(toy::BASE), Some("base.safetensors"));
    let a_desc = held_out_loss(&mf, None, None, Task::Descending, 1);
    assert!(a_desc < 0.8 * b_desc, "fine-tuning: {b_desc} -> {a_desc}");

    // Prefix-tuning (p = 1) on the frozen base: the weights in the base file do not change.
    let pf = dir.join("prefix.safetensors");
    let base_bytes = std::fs::read(&base).unwrap();
    train::prefix_tuning::run(
        &base,
        &opts(&pf, Task::Descending, 40, 3e-2, 1, 0.01),
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(std::fs::read(&base).unwrap(), base_bytes);
    let loaded =
        prefixscope::prefix::Prefix::load(&pf, prefixscope::prefix::PrefixKind::Hidden).unwrap();
    assert_eq!(loaded.len(), 1);
    let init = {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        train::randn(&mut rng, &[1, 1, 32], 1.0).unwrap()
    };
    let b_pf = held_out_loss(
        &m,
        Some(&PrefixTensors::Hidden(init)),
        None,
        Task::Descending,
        1,
    );
    let trained = PrefixTensors::from_prefix(&loaded).unwrap();
    let a_pf = held_out_loss(&m, Some(&trained), None, Task::Descending, 1);
    assert!(a_pf < b_pf - 0.02, "prefix-tuning: {b_pf} -> {a_pf}");

    // Rank-1 LoRA: starts exactly at the base (B = 0) and lowers the loss.
    let lo = dir.join("lora.safetensors");
    train::lora::run(
        &base,
        &opts(&lo, Task::Descending, 30, 1e-2, 0, 0.01),
        1,
        false,
    )
    .unwrap();
    let lora = toy::load_lora(&lo, &cfg).unwrap();
    assert_eq!(lora.n_params(), (32 + 32) + (32 + 128) + (128 + 32));
    let a_lo = held_out_loss(&m, None, Some(&lora), Task::Descending, 1);
    assert!(a_lo < 0.8 * b_desc, "LoRA: {b_desc} -> {a_lo}");

    // AdamW's beta2 reaches the optimizer (the same run with PyTorch's 0.999 takes other steps from
    // the second one on) and the file records it.
    let lo2 = dir.join("lora-beta2.safetensors");
    let mut o2 = opts(&lo2, Task::Descending, 30, 1e-2, 0, 0.01);
    o2.schedule.beta2 = 0.999;
    train::lora::run(&base, &o2, 1, false).unwrap();
    let lora2 = toy::load_lora(&lo2, &cfg).unwrap();
    let a_lo2 = held_out_loss(&m, None, Some(&lora2), Task::Descending, 1);
    assert!(
        a_lo2 < 0.8 * b_desc,
        "LoRA, beta2 0.999: {b_desc} -> {a_lo2}"
    );
    assert!(
        (a_lo2 - a_lo).abs() > 1e-4,
        "beta2 ignored: {a_lo} vs {a_lo2}"
    );
    let train_meta = toy::read(&lo2)
        .unwrap()
        .get(toy::TRAIN)
        .unwrap()
        .to_string();
    assert!(train_meta.contains("\"beta2\":0.999"), "{train_meta}");
}

#[test]
fn lora_budget_equals_a_twelve_token_prefix_on_the_four_layer_toy() {
    let cfg = GptConfig {
        vocab_size: 10,
        n_positions: 31,
        n_layer: 4,
        n_head: 4,
        n_embd: 256,
        skip_attn_layernorm: false,
        layer_norm_eps: 1e-5,
        tied_head: false,
    };
    let n: usize = Lora::expected(&cfg, 1)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(n, 12_288);
    assert_eq!(n, cfg.n_layer * 12 * cfg.n_embd);
}
