use super::*;
use candle_core::{Device, Tensor};
use distill_models::{Input, LlamaConfig, Model};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, ModelWrapper};

const TRAIN: &str = "Call me Ishmael. Some years ago—never mind how long precisely—having little \
or no money in my purse, and nothing particular to interest me on shore, I thought I would sail \
about a little and see the watery part of the world. It is a way I have of driving off the \
spleen and regulating the circulation. Whenever I find myself growing grim about the mouth; \
whenever it is a damp, drizzly November in my soul; whenever I find myself involuntarily pausing \
before coffin warehouses, and bringing up the rear of every funeral I meet; then, I account it \
high time to get to sea as soon as I can. There now is your insular city of the Manhattoes, \
belted round by wharves as Indian isles by coral reefs—commerce surrounds it with her surf.";

/// The corpus the student trims to: part of what the tokenizer was trained on, plus digits.
const CORPUS: &str = "Call me Ishmael. I thought I would sail about a little and see the watery \
part of the world, 1851 or so.";

/// A byte-level BPE trained on `TRAIN`, with two special tokens.
fn tokenizer() -> Tokenizer {
    let mut t = Tokenizer::new(BPE::default());
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(600)
        .min_frequency(1)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![
            AddedToken::from("<|endoftext|>", true),
            AddedToken::from("<|im_start|>", true),
        ])
        .build()
        .into();
    t.train(&mut trainer, [TRAIN.to_string()].into_iter())
        .unwrap();
    t
}

fn counts(t: &Tokenizer, text: &str) -> Vec<u64> {
    let mut c = vec![0u64; t.get_vocab_size(true)];
    for &id in t.encode_fast(text, false).unwrap().get_ids() {
        c[id as usize] += 1;
    }
    c
}

fn config(min_count: u64, keep: &[&str]) -> VocabConfig {
    VocabConfig {
        trim: TrimSource::Corpus,
        min_count,
        keep: keep.iter().map(|s| s.to_string()).collect(),
    }
}

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode_fast(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn the_trimmed_tokenizer_splits_the_corpus_as_the_full_one() {
    let full = tokenizer();
    let v = full.get_vocab_size(true);
    let trim = VocabTrim::new(&full, v, &config(1, &[]), &counts(&full, CORPUS), None).unwrap();
    assert!(trim.len() < v, "{} of {v}", trim.len());
    assert!(trim.merges_after < trim.merges_before);
    // Every byte token is kept (those the corpus uses count under `corpus`).
    for c in ByteLevel::alphabet() {
        assert!(trim.tokenizer.token_to_id(&c.to_string()).is_some(), "{c}");
    }
    assert!(trim.counts.bytes > 0 && trim.counts.bytes < 256);
    assert_eq!(trim.counts.special, 2);
    assert!(trim.counts.corpus > 0 && trim.counts.corpus == trim.corpus_distinct);
    let mapped: Vec<u32> = ids(&full, CORPUS)
        .iter()
        .map(|&i| trim.new_id(i).unwrap())
        .collect();
    assert_eq!(ids(&trim.tokenizer, CORPUS), mapped);
    // Special tokens keep their (leading) ids and are still matched whole.
    assert_eq!(trim.tokenizer.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(trim.tokenizer.token_to_id("<|im_start|>"), Some(1));
    // Text outside the corpus still tokenises (byte tokens) and decodes back.
    let other = "Queequeg ☃ zyx 42";
    let got = ids(&trim.tokenizer, other);
    assert!(got.len() >= ids(&full, other).len());
    assert_eq!(trim.tokenizer.decode(&got, false).unwrap(), other);
    // The kept ids are ascending and renumbered in order.
    assert!(trim.kept.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(trim.new_id(trim.kept[5]), Some(5));
}

#[test]
fn a_higher_min_count_keeps_fewer_tokens_and_still_covers_the_corpus() {
    let full = tokenizer();
    let v = full.get_vocab_size(true);
    let c = counts(&full, TRAIN);
    let all = VocabTrim::new(&full, v, &config(1, &[]), &c, None).unwrap();
    let few = VocabTrim::new(&full, v, &config(3, &[]), &c, None).unwrap();
    assert!(few.len() < all.len());
    let got = ids(&few.tokenizer, TRAIN);
    assert_eq!(few.tokenizer.decode(&got, false).unwrap(), TRAIN);
}

#[test]
fn listed_tokens_are_kept_and_unknown_ones_refused() {
    let full = tokenizer();
    let v = full.get_vocab_size(true);
    let c = counts(&full, CORPUS);
    let whale = full
        .encode_fast(" coral", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(
        whale.len(),
        1,
        "` coral` is one token of the full vocabulary"
    );
    let t = VocabTrim::new(&full, v, &config(1, &[" coral"]), &c, None).unwrap();
    assert!(t.new_id(whale[0]).is_some());
    assert_eq!(ids(&t.tokenizer, " coral").len(), 1);
    let e = VocabTrim::new(&full, v, &config(1, &["Queequeg"]), &c, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("student.vocab.keep") && e.contains("`Queequeg` is not a token"),
        "{e}"
    );
    let e = VocabTrim::new(&full, v, &config(0, &[]), &c, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("student.vocab.min_count"), "{e}");
}

#[test]
fn a_chat_template_token_that_trimming_would_remove_is_refused() {
    // `<|im_end|>` as an ordinary vocabulary entry (not an added token) the corpus never uses.
    let full = tokenizer();
    let mut json: serde_json::Value =
        serde_json::from_str(&full.to_string(false).unwrap()).unwrap();
    let n = json["model"]["vocab"].as_object().unwrap().len();
    json["model"]["vocab"]["<|im_end|>"] = serde_json::Value::from(n);
    let full: Tokenizer = serde_json::to_string(&json).unwrap().parse().unwrap();
    let v = full.get_vocab_size(true);
    let c = counts(&full, CORPUS);
    let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";
    let e = VocabTrim::new(&full, v, &config(1, &[]), &c, Some(template))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`<|im_end|>`")
            && e.contains("chat template")
            && e.contains("student.vocab.keep"),
        "{e}"
    );
    // Listing it is the way out; `<|im_start|>` is special, so kept anyway.
    let t = VocabTrim::new(&full, v, &config(1, &["<|im_end|>"]), &c, Some(template)).unwrap();
    assert!(t.tokenizer.token_to_id("<|im_end|>").is_some());
}

#[test]
fn a_chat_turn_tokenises_as_with_the_full_vocabulary() {
    let full = tokenizer();
    let v = full.get_vocab_size(true);
    let template = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|endoftext|>' }}\n{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let t = VocabTrim::new(
        &full,
        v,
        &config(1, &[]),
        &counts(&full, CORPUS),
        Some(template),
    )
    .unwrap();
    assert!(t.counts.template > 0);
    let turn = "<|im_start|>user\nsee the world<|endoftext|>\n<|im_start|>assistant\n";
    let mapped: Vec<u32> = ids(&full, turn)
        .iter()
        .map(|&i| t.new_id(i).unwrap())
        .collect();
    assert_eq!(ids(&t.tokenizer, turn), mapped);
    assert_eq!(
        template_text("a{{ 'b\\n' + x }}c{# 'no' #}{% if y == \"d\" %}"),
        vec!["system", "user", "assistant", "tool", "a", "b\n", "c", "d"]
    );
}

#[test]
fn template_tokens_are_the_literal_angle_bracket_runs() {
    assert_eq!(
        template_tokens("{{ bos }}<|im_start|>x</s> a < b <not a token> <s>"),
        vec!["<|im_start|>", "</s>", "<s>"]
    );
}

#[test]
fn only_bpe_tokenizers_are_trimmed() {
    let wp = Tokenizer::new(ModelWrapper::WordPiece(Default::default()));
    let e = VocabTrim::new(&wp, 10, &config(1, &[]), &[], None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("BPE") && e.contains("WordPiece"), "{e}");
}

fn tiny_llama(vocab: usize) -> (LlamaConfig, crate::LlamaStudent) {
    let cfg = distill_models::testing::TinyLlama {
        vocab,
        hidden: 16,
        ffn: 32,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        positions: 32,
        rms_norm_eps: 1e-6,
    }
    .config();
    let s = crate::build_student(
        &cfg,
        None,
        &crate::StudentConfig {
            init: crate::InitConfig::Random { seed: 5 },
            ..Default::default()
        },
        &Device::Cpu,
    )
    .unwrap();
    (cfg, s)
}

#[test]
fn the_restricted_teacher_is_the_full_one_on_the_kept_ids() {
    let (_, teacher) = tiny_llama(40);
    let kept = [0u32, 3, 4, 9, 17, 39];
    let r = RestrictedModel::new(&teacher.model, &kept).unwrap();
    let new_ids = Tensor::new(&[[1u32, 5, 2, 0]], &Device::Cpu).unwrap();
    let full_ids = Tensor::new(&[[3u32, 39, 4, 0]], &Device::Cpu).unwrap();
    let got = r.run(&Input::new(&new_ids)).unwrap().logits;
    let full = teacher.model.run(&Input::new(&full_ids)).unwrap().logits;
    let want = full
        .index_select(&Tensor::new(&kept, &Device::Cpu).unwrap(), 2)
        .unwrap();
    assert_eq!(got.dims(), &[1, 4, 6]);
    assert_eq!(
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // The features path gives the same logits through the restricted head.
    let f = r.run_features(&Input::new(&new_ids)).unwrap().unwrap();
    let via_head = f.features.broadcast_matmul(&f.head.t().unwrap()).unwrap();
    let d = (via_head - got).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
}

#[test]
fn a_student_built_from_selected_rows_has_the_kept_embeddings() {
    let (cfg, teacher) = tiny_llama(40);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    teacher.varmap.save(&p).unwrap();
    let src = distill_models::SafetensorsWeights::open(&[p], candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    let kept = [0u32, 3, 4, 9, 17, 39];
    let rows = RowSelectedWeights::new(
        &src,
        &kept,
        40,
        &["model.embed_tokens.weight", "lm_head.weight"],
    )
    .unwrap();
    let view = LlamaConfig {
        vocab_size: kept.len(),
        ..cfg.clone()
    };
    let s = crate::build_student(
        &view,
        Some(&rows),
        &crate::StudentConfig::default(),
        &Device::Cpu,
    )
    .unwrap();
    let r = RestrictedModel::new(&teacher.model, &kept).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 2]], &Device::Cpu).unwrap();
    // All layers copied: the student is the restricted teacher.
    let a = s.model.run(&Input::new(&ids)).unwrap().logits;
    let b = r.run(&Input::new(&ids)).unwrap().logits;
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}
