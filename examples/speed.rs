//! One workload of the side-by-side speed comparison with PyTorch + peft
//! (`benches/compare-pytorch.sh` runs every workload here and in `benches/speed_peer.py`,
//! each in its own process, and prints the ratios).
//!
//! ```sh
//! cargo run --release --example speed -- vit-train      # or lm-train, generate, generate-batch, vit-infer
//! cargo run --release --example speed -- save-vit DIR   # the ViT-S as a transformers checkpoint
//! ```
//!
//! Models are randomly initialised at real shapes (no download). `PEANUT_SPEED_SIZE=small` (the
//! default, for CPUs): a ViT-S/14 at 112 px (the shape of DINOv2-S in transformers' ViT layout)
//! and a LLaMA with SmolLM2-135M's shape; `large` (for GPUs, `benches/device-check.sh`): ViT-B/16
//! at 224 px and a LLaMA with Llama-3.2-1B's shape, trained on 4 × 512 tokens (4 × 128 at the
//! CPU shapes). The backend is the one the cargo features
//! select (`--features flex`, `wgpu`, `cuda`). The last line printed is one JSON object: the
//! workload, its throughput, the cores kept busy and the peak resident memory of this process,
//! measured the same way as the Python peer does.
//!
//! The training workloads also take the scale options of `peanut train`:
//! `PEANUT_SPEED_CHECKPOINTING=1` (gradient checkpointing), `PEANUT_SPEED_PRECISION=bf16` (or
//! `f16`: the frozen weights' precision; the inference workloads take it too, for the merged
//! weights), `PEANUT_SPEED_QUANTIZE=nf4` (or `int8`: the frozen linear weights quantized, as
//! `--quantize`) and `PEANUT_SPEED_BATCH=8` (another ViT batch);
//! `benches/scale-memory.sh` uses them to measure what checkpointing saves.
//! `PEANUT_SPEED_COMPOSED=1` trains with attention, RMS norm and SwiGLU composed from burn
//! operations, as before `peanut_models::ops`, to measure what those save.
//!
//! The training workloads run as `peanut train` does by default (`--devices auto`): on a CPU
//! backend, one data-parallel worker per core ([`peanut_train::train::parallel`]), each step
//! computed as burn's multi-device strategy computes it ([`step_grads`]).
//! `PEANUT_SPEED_WORKERS=1` times one training thread instead.

use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use peanut::{AdapterConfig, PeanutConfig, Precision};
use peanut_models::llama::GenerationConfig;
use peanut_models::{AdaptableModel, Llama, LlamaConfig, Targets, Vit, VitConfig};
use peanut_train::backend::{self, DeviceSpec, Selected, TrainBackend};

/// Training batch of the ViT workloads (the DINOv2-S protocol of the speed issue).
const VIT_BATCH: usize = 32;
/// Labels of the ViT head.
const VIT_LABELS: usize = 10;
/// LM training batch: sequences × tokens ([`lm_tokens`]).
const LM_BATCH: usize = 4;
/// Generation: prompt length and tokens generated greedily after it.
const PROMPT_TOKENS: usize = 64;
const NEW_TOKENS: usize = 32;

/// `PEANUT_SPEED_SIZE=large` selects the GPU shapes.
fn large() -> bool {
    std::env::var("PEANUT_SPEED_SIZE").is_ok_and(|size| size == "large")
}

/// Tokens per LM training sequence: 128, or 512 at the GPU shapes.
fn lm_tokens() -> usize {
    if large() { 512 } else { 128 }
}

fn image_size() -> usize {
    if large() { 224 } else { 112 }
}

fn vit_config() -> VitConfig {
    if large() {
        VitConfig::vit_base_patch16_224_in21k(VIT_LABELS)
    } else {
        VitConfig::new(384, 12, 6, 1536, VIT_LABELS)
            .with_image_size(112)
            .with_patch_size(14)
    }
}

fn lm_config() -> LlamaConfig {
    if large() {
        LlamaConfig::llama3_2_1b()
    } else {
        LlamaConfig::new(49152, 576, 1536, 30, 9, 3)
            .with_rope_theta(100000.0)
            .with_rms_norm_eps(1e-5)
            .with_tie_word_embeddings(true)
            .with_max_position_embeddings(2048)
    }
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size of this process in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Times `steps` calls of `step` after one warm-up call; returns (seconds per step, cores busy).
fn timed(steps: usize, mut step: impl FnMut()) -> (f64, f64) {
    step();
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..steps {
        step();
    }
    let seconds = wall.elapsed().as_secs_f64();
    (seconds / steps as f64, (cpu_seconds() - cpu) / seconds)
}

fn report(workload: &str, throughput: f64, unit: &str, cores: f64, extra: &str) {
    println!(
        "{{\"stack\": \"peanut-{}\", \"workload\": \"{workload}\", \"throughput\": {throughput:.3}, \
         \"unit\": \"{unit}\", \"cores\": {cores:.2}, \"peak_rss_mib\": {:.0}{extra}}}",
        backend::NAME,
        peak_rss_mib()
    );
}

fn peanut_adapter(rank: usize) -> AdapterConfig {
    PeanutConfig::new(rank).into()
}

/// `PEANUT_SPEED_CHECKPOINTING=1`: train with gradient checkpointing.
fn checkpointing() -> bool {
    std::env::var("PEANUT_SPEED_CHECKPOINTING").is_ok_and(|v| v == "1")
}

/// `PEANUT_SPEED_PRECISION`: the frozen weights' precision (default f32).
fn precision() -> Precision {
    std::env::var("PEANUT_SPEED_PRECISION")
        .ok()
        .and_then(|name| Precision::from_name(&name))
        .unwrap_or_default()
}

/// `PEANUT_SPEED_QUANTIZE`: the format the frozen linear weights are quantized in (`int8`,
/// `nf4`; default none), for the training workloads.
fn quantize() -> Option<peanut::Quantization> {
    std::env::var("PEANUT_SPEED_QUANTIZE")
        .ok()
        .and_then(|name| peanut::Quantization::from_name(&name))
}

/// The frozen storage of the training workloads: [`precision`] and [`quantize`].
fn storage() -> peanut::FrozenStorage {
    if std::env::var("PEANUT_SPEED_COMPOSED").is_ok_and(|v| v == "1") {
        // Before the lean operations: only the quantized products are registered.
        peanut::quant::register_autodiff::<Selected, NoCheckpointing>();
        peanut::quant::register_autodiff::<Selected, BalancedCheckpointing>();
    } else {
        backend::register_autodiff_ops();
    }
    peanut::FrozenStorage::new(precision()).with_quantization(quantize())
}

/// `PEANUT_SPEED_BATCH`: the ViT training batch (default [`VIT_BATCH`]).
fn vit_batch() -> usize {
    std::env::var("PEANUT_SPEED_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(VIT_BATCH)
}

/// The frozen weights' precision, as an extra JSON field (the inference workloads).
fn precision_field() -> String {
    format!(", \"precision\": \"{}\"", precision())
}

/// The scale options of a training workload, as extra JSON fields.
fn scale_fields() -> String {
    format!(
        ", \"checkpointing\": {}, \"precision\": \"{}\"",
        checkpointing(),
        precision()
    )
}

/// `PEANUT_SPEED_WORKERS`, when set to a count.
fn workers_asked() -> Option<usize> {
    std::env::var("PEANUT_SPEED_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Data-parallel workers of the training workloads for a batch of `batch`:
/// `PEANUT_SPEED_WORKERS`, or what `peanut train --devices auto` (the default) picks.
fn workers(batch: usize) -> usize {
    workers_asked()
        .filter(|&n: &usize| n >= 1 && batch.is_multiple_of(n))
        .unwrap_or_else(|| {
            backend::devices(&DeviceSpec::auto(), batch)
                .expect("the selected backend's devices")
                .len()
        })
}

/// One training step's loss and gradients over `parts` (the batch, split among workers), as
/// burn's multi-device strategy computes them for `peanut train` with several devices: each
/// worker thread forks the model (its own autodiff graph over the shared frozen weights) and
/// takes the loss and gradients `grads` gives for its part with the loss divided by the worker
/// count (the divisor it is passed); the gradients are then summed. One part runs on this
/// thread, without a fork.
fn step_grads<B, M, I>(
    model: &M,
    parts: Vec<I>,
    device: &B::Device,
    grads: impl Fn(&M, I, usize) -> (Tensor<B, 1>, GradientsParams) + Sync,
) -> (Tensor<B, 1>, GradientsParams)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    I: Send,
{
    let n = parts.len();
    if n == 1 {
        let input = parts.into_iter().next().expect("one part");
        return grads(model, input, 1);
    }
    let grads = &grads;
    let results: Vec<(Tensor<B, 1>, GradientsParams)> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|input| {
                let worker = model.clone();
                scope.spawn(move || {
                    let worker = worker.fork(device);
                    let (loss, grads) = grads(&worker, input, n);
                    (loss.detach(), grads)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a worker panicked"))
            .collect()
    });
    // Summed as burn's multi-device strategy sums them.
    let mut sum = GradientsAccumulator::new();
    let mut losses = Vec::with_capacity(n);
    for (loss, grads) in results {
        sum.accumulate(model, grads);
        losses.push(loss);
    }
    (Tensor::cat(losses, 0).sum(), sum.grads())
}

/// [`step_grads`]' `grads` of a loss: its own backward.
fn backward_of<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    loss: Tensor<B, 1>,
    divisor: usize,
) -> (Tensor<B, 1>, GradientsParams) {
    let loss = loss / divisor as f32;
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (loss, grads)
}

/// With checkpointing, each encoder block is recomputed in the backward pass
/// (`Vit::recompute_backward`, what `peanut train image --checkpointing` does).
fn vit_train(steps: usize) {
    vit_train_on::<TrainBackend>(steps)
}

fn vit_train_on<B: AutodiffBackend<Device = burn::tensor::Device<Selected>>>(steps: usize) {
    let device = backend::device();
    // The same random images in every process, so runs with and without checkpointing (or
    // in another precision) can compare their losses.
    B::seed(&device, 7);
    let batch = vit_batch();
    // Built in the frozen weights' precision (each matrix cast as it is drawn), as
    // `peanut train --precision` loads a checkpoint.
    let mut model: Vit<B> = vit_config()
        .init_in(0, &device, storage())
        .expect("valid config");
    model
        .add_adapters(&Targets::vit_qv(), &peanut_adapter(7), 1)
        .expect("query and value exist");
    let model = model.with_trainable_head(true);
    let mut model = peanut::cast_frozen(model, precision());
    let mut optimizer = AdamWConfig::new().init::<B, Vit<B>>();
    let images = Tensor::<B, 4>::random(
        [batch, 3, image_size(), image_size()],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let labels: Vec<i64> = (0..batch).map(|i| (i % VIT_LABELS) as i64).collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let mut last_loss = 0.0;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let workers = workers(batch);
    let share = batch / workers;
    let (seconds, cores) = timed(steps, || {
        let parts: Vec<_> = (0..workers)
            .map(|k| {
                (
                    images.clone().narrow(0, k * share, share),
                    labels.clone().narrow(0, k * share, share),
                )
            })
            .collect();
        let (loss, grads) = step_grads(&model, parts, &device, |model, (images, labels), n| {
            if checkpointing() {
                model.recompute_backward(images, |logits| {
                    let loss = loss_fn.forward(logits, labels) / n as f32;
                    (loss.clone(), loss)
                })
            } else {
                backward_of(model, loss_fn.forward(model.forward(images), labels), n)
            }
        });
        model = optimizer.step(1e-3, model.clone(), grads);
        // One read-back per step, as a training loop logging its loss would do.
        last_loss = loss.into_scalar().elem::<f64>();
    });
    let extra = format!(
        "{}, \"batch\": {batch}, \"workers\": {workers}, \"last_loss\": {last_loss:.6}",
        scale_fields()
    );
    report("vit-train", batch as f64 / seconds, "img/s", cores, &extra);
}

fn vit_infer(steps: usize) {
    let device = backend::device();
    let mut model: Vit<Selected> = vit_config().init(0, &device).expect("valid config");
    let adapter: AdapterConfig = PeanutConfig::new(7)
        .with_b_init(peanut::OutputInit::KaimingUniform)
        .into();
    model
        .add_adapters(&Targets::vit_qv(), &adapter, 1)
        .expect("query and value exist");
    model.merge_adapters();
    // The merged weights in the frozen weights' precision, as `peanut merge` then a bf16 load.
    let model = peanut::cast_frozen(model, precision());
    let images = Tensor::<Selected, 4>::random(
        [VIT_BATCH, 3, image_size(), image_size()],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let (seconds, cores) = timed(steps, || {
        let _ = model.forward(images.clone()).into_data();
    });
    report(
        "vit-infer",
        VIT_BATCH as f64 / seconds,
        "img/s",
        cores,
        &precision_field(),
    );
}

fn token_ids<B: Backend>(
    batch: usize,
    len: usize,
    vocab: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    // A fixed pseudo-random sequence (the same on every backend and run).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let ids: Vec<i64> = (0..batch * len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [batch, len]), device)
}

/// With checkpointing, each decoder layer is recomputed in the backward pass
/// (`Llama::recompute_backward`, what `peanut train lm --checkpointing` does).
fn lm_train(steps: usize) {
    lm_train_on::<TrainBackend>(steps)
}

fn lm_train_on<B: AutodiffBackend<Device = burn::tensor::Device<Selected>>>(steps: usize) {
    let device = backend::device();
    let config = lm_config();
    let vocab = config.vocab_size;
    let mut model: Llama<B> = config.init_in(0, &device, storage()).expect("valid config");
    model
        .add_adapters(&Targets::llama_qkv_up_down(), &peanut_adapter(8), 1)
        .expect("q, k, v, up, down exist");
    let mut model = peanut::cast_frozen(model, precision());
    let mut optimizer = AdamWConfig::new().init::<B, Llama<B>>();
    let ids = token_ids::<B>(LM_BATCH, lm_tokens() + 1, vocab, &device);
    let inputs = ids.clone().narrow(1, 0, lm_tokens());
    let targets = ids
        .narrow(1, 1, lm_tokens())
        .reshape([LM_BATCH * lm_tokens()]);
    let mut last_loss = 0.0;
    let workers = workers(LM_BATCH);
    let share = LM_BATCH / workers;
    let (seconds, cores) = timed(steps, || {
        let parts: Vec<_> = (0..workers)
            .map(|k| {
                (
                    inputs.clone().narrow(0, k * share, share),
                    targets
                        .clone()
                        .narrow(0, k * share * lm_tokens(), share * lm_tokens()),
                )
            })
            .collect();
        let loss_of = |model: &Llama<B>, hidden: Tensor<B, 3>, targets| {
            let width = hidden.dims()[2];
            let rows = share * lm_tokens();
            model.head_loss(hidden.reshape([rows, width]), targets).0
        };
        let (loss, grads) = step_grads(&model, parts, &device, |model, (inputs, targets), n| {
            if checkpointing() {
                model.recompute_backward(inputs, |hidden| {
                    let loss = loss_of(model, hidden, targets) / n as f32;
                    (loss.clone(), loss)
                })
            } else {
                backward_of(model, loss_of(model, model.hidden(inputs), targets), n)
            }
        });
        model = optimizer.step(3e-4, model.clone(), grads);
        last_loss = loss.into_scalar().elem::<f64>();
    });
    report(
        "lm-train",
        LM_BATCH as f64 / seconds,
        "seq/s",
        cores,
        &format!(
            ", \"tokens_per_s\": {:.1}{}, \"workers\": {workers}, \"last_loss\": {last_loss:.6}",
            (LM_BATCH * lm_tokens()) as f64 / seconds,
            scale_fields()
        ),
    );
}

fn generate(repeats: usize) {
    let device = backend::device();
    let config = lm_config();
    let vocab = config.vocab_size;
    let mut model: Llama<Selected> = config.init(0, &device).expect("valid config");
    let adapter: AdapterConfig = PeanutConfig::new(8)
        .with_b_init(peanut::OutputInit::KaimingUniform)
        .into();
    model
        .add_adapters(&Targets::llama_qkv_up_down(), &adapter, 1)
        .expect("q, k, v, up, down exist");
    // As `peanut generate` and `eval lm` do (and peft's `merge_and_unload` on the other side).
    model.merge_adapters();
    let model = peanut::cast_frozen(model, precision());
    let prompt = token_ids::<Selected>(1, PROMPT_TOKENS, vocab, &device);
    let (mut prefill, mut decode) = (0.0, 0.0);
    let (mut wall, mut cpu) = (Instant::now(), cpu_seconds());
    // Round 0 warms up and is not counted.
    for round in 0..=repeats {
        if round == 1 {
            (wall, cpu) = (Instant::now(), cpu_seconds());
        }
        let start = Instant::now();
        let mut cache = model.new_cache();
        let logits = model.forward_last(prompt.clone(), Some(&mut cache));
        let mut next = logits.argmax(1);
        let _ = next.clone().into_data();
        let after_prefill = Instant::now();
        for _ in 1..NEW_TOKENS {
            let logits = model.forward_last(next, Some(&mut cache));
            next = logits.argmax(1);
            // Greedy decoding needs the token on the host before the next step.
            let _ = next.clone().into_data();
        }
        if round > 0 {
            prefill += (after_prefill - start).as_secs_f64();
            decode += after_prefill.elapsed().as_secs_f64();
        }
    }
    let cores = (cpu_seconds() - cpu) / wall.elapsed().as_secs_f64();
    let repeats = repeats as f64;
    let decode_rate = (NEW_TOKENS - 1) as f64 * repeats / decode;
    report(
        "generate",
        decode_rate,
        "tok/s",
        cores,
        &format!(
            ", \"prefill_tokens_per_s\": {:.1}, \"decode_tokens_per_s\": {decode_rate:.2}{}",
            PROMPT_TOKENS as f64 * repeats / prefill,
            precision_field()
        ),
    );
}

/// Prompts of `generate-batch` and their lengths (left-padded to the longest).
const BATCH_PROMPTS: usize = 8;

fn batch_prompt_lengths() -> Vec<usize> {
    (0..BATCH_PROMPTS).map(|i| PROMPT_TOKENS - 3 * i).collect()
}

/// `eval lm`'s generation: `BATCH_PROMPTS` prompts of different lengths, greedy, `NEW_TOKENS`
/// each, in left-padded batches (`Llama::generate_batch`) generated side by side by `eval lm`'s
/// workers (`backend::workers()`, or `PEANUT_SPEED_WORKERS`; on 2 cores: two batches of 4); and,
/// for reference, the same prompts one at a time (`Llama::generate`).
fn generate_batch(repeats: usize) {
    let device = backend::device();
    let config = lm_config();
    let vocab = config.vocab_size;
    let mut model: Llama<Selected> = config.init(0, &device).expect("valid config");
    let adapter: AdapterConfig = PeanutConfig::new(8)
        .with_b_init(peanut::OutputInit::KaimingUniform)
        .into();
    model
        .add_adapters(&Targets::llama_qkv_up_down(), &adapter, 1)
        .expect("q, k, v, up, down exist");
    model.merge_adapters();
    let ids: Vec<u32> = token_ids::<Selected>(1, PROMPT_TOKENS, vocab, &device)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("ids")
        .into_iter()
        .map(|id| id as u32)
        .collect();
    let prompts: Vec<Vec<u32>> = batch_prompt_lengths()
        .into_iter()
        .map(|len| ids[PROMPT_TOKENS - len..].to_vec())
        .collect();
    let generation = GenerationConfig::greedy(NEW_TOKENS);
    let workers = workers_asked()
        .unwrap_or_else(backend::workers)
        .clamp(1, BATCH_PROMPTS);
    // As `eval lm` runs its batches (peanut_train::train::lm::evaluate_lm).
    let generate_all = || -> Vec<Vec<u32>> {
        let (model, generation) = (&model, &generation);
        std::thread::scope(|scope| {
            let handles: Vec<_> = prompts
                .chunks(BATCH_PROMPTS.div_ceil(workers))
                .map(|batch| scope.spawn(move || model.generate_batch(batch, generation)))
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("no panic").expect("valid prompts"))
                .collect()
        })
    };
    let _ = generate_all();
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..repeats {
        let out = generate_all();
        assert!(out.len() == BATCH_PROMPTS && out.iter().all(|t| t.len() == NEW_TOKENS));
    }
    let seconds = wall.elapsed().as_secs_f64();
    let cores = (cpu_seconds() - cpu) / seconds;
    let batched = (BATCH_PROMPTS * NEW_TOKENS * repeats) as f64 / seconds;
    let one = Instant::now();
    for prompt in &prompts {
        model.generate(prompt, &generation).expect("valid prompt");
    }
    let alone = (BATCH_PROMPTS * NEW_TOKENS) as f64 / one.elapsed().as_secs_f64();
    report(
        "generate-batch",
        batched,
        "tok/s",
        cores,
        &format!(
            ", \"prompts\": {BATCH_PROMPTS}, \"workers\": {workers}, \"one_at_a_time_tok_s\": \
             {alone:.2}"
        ),
    );
}

/// `save-vit DIR`: writes the random-initialised ViT of the training workload to `DIR` as a
/// transformers checkpoint (`benches/cli-workers.sh` trains it with `peanut train image`).
fn save_vit() {
    let Some(dir) = std::env::args().nth(2) else {
        eprintln!("usage: speed save-vit DIR");
        std::process::exit(2);
    };
    let model: Vit<Selected> = vit_config()
        .init_in(0, &backend::device(), Precision::F32)
        .expect("valid config");
    if let Err(err) = model.save_merged(std::path::Path::new(&dir)) {
        eprintln!("cannot write {dir}: {err}");
        std::process::exit(1);
    }
}

fn main() {
    backend::tune_allocator();
    let workload = std::env::args().nth(1).unwrap_or_default();
    // Optional second argument: timed steps (repeats for `generate`), after one warm-up.
    let steps: Option<usize> = std::env::args().nth(2).and_then(|s| s.parse().ok());
    // `save-vit DIR` takes a directory, not a step count.
    match workload.as_str() {
        "vit-train" => vit_train(steps.unwrap_or(4).max(1)),
        "vit-infer" => vit_infer(steps.unwrap_or(4).max(1)),
        "save-vit" => save_vit(),
        "lm-train" => lm_train(steps.unwrap_or(3).max(1)),
        "generate" => generate(steps.unwrap_or(2).max(1)),
        "generate-batch" => generate_batch(steps.unwrap_or(1).max(1)),
        other => {
            eprintln!(
                "unknown workload `{other}`: expected vit-train, vit-infer, lm-train, generate \
                 or generate-batch [steps], or save-vit DIR"
            );
            std::process::exit(2);
        }
    }
}
