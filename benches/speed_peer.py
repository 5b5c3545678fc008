#!/usr/bin/env python3
"""The PyTorch + peft side of the speed comparison (`benches/compare-pytorch.sh`).

Runs one workload, with the same shapes, batch, adapter and step count as `examples/speed.rs`,
and prints one JSON line in the same format: throughput, cores kept busy during the timed
steps (user + system CPU time over wall time) and peak resident memory (VmHWM).

    python3 benches/speed_peer.py vit-train [steps]   # or lm-train, generate, generate-batch, vit-infer

Models are randomly initialised at real shapes (no download): ViT-S/14 at 112 px in
transformers' ViT layout (DINOv2-S's shape) and a LLaMA with SmolLM2-135M's shape; PEANuT from
peft on the same targets and rank. `PEANUT_SPEED_SIZE=large` takes the GPU shapes (ViT-B/16 at
224 px, Llama-3.2-1B's shape trained on 4 x 512 tokens), `PEANUT_SPEED_DEVICE=cuda` the GPU, and
`PEANUT_SPEED_PRECISION=bf16` bfloat16 frozen weights under torch.autocast.
"""

import json
import os
import sys
import time

import torch
import peft
import transformers

VIT_BATCH, VIT_LABELS = 32, 10
# transformers 5 names ViT's query and value projections q_proj and v_proj.
VIT_TARGETS = ["q_proj", "v_proj"]
LM_BATCH = 4
PROMPT_TOKENS, NEW_TOKENS = 64, 32


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timed(steps, step):
    step()
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - wall
    return seconds / steps, (cpu_seconds() - cpu) / seconds


def report(workload, throughput, unit, cores, **extra):
    line = {
        "stack": "pytorch+peft",
        "workload": workload,
        "throughput": round(throughput, 3),
        "unit": unit,
        "cores": round(cores, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "precision": PRECISION,
    }
    if DEVICE.startswith("cuda"):
        line["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    line.update(extra)
    print(json.dumps(line))


LARGE = os.environ.get("PEANUT_SPEED_SIZE") == "large"
IMAGE = 224 if LARGE else 112
LM_TOKENS = 512 if LARGE else 128
DEVICE = os.environ.get("PEANUT_SPEED_DEVICE", "cpu")
# `PEANUT_SPEED_PRECISION=bf16`: the frozen weights in bfloat16 and the forward under
# torch.autocast(bfloat16), the usual PyTorch recipe; trainable tensors (adapters, head) and
# AdamW's state stay float32, as with `peanut train --precision bf16`.
PRECISION = os.environ.get("PEANUT_SPEED_PRECISION", "f32")
if PRECISION not in ("f32", "bf16"):
    sys.exit(f"PEANUT_SPEED_PRECISION={PRECISION!r}: expected f32 or bf16")


def in_precision(model):
    """The model with its frozen tensors in PRECISION and its trainable ones in float32."""
    if PRECISION == "bf16":
        model = model.to(torch.bfloat16)
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    return model


def autocast():
    """The forward's autocast context: bfloat16 when PRECISION is bf16, else a no-op."""
    device_type = "cuda" if DEVICE.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=PRECISION == "bf16")


def vit_config():
    if LARGE:
        return transformers.ViTConfig(num_labels=VIT_LABELS)  # ViT-B/16 at 224 px
    return transformers.ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=112,
        patch_size=14,
        num_labels=VIT_LABELS,
    )


def lm_config():
    if LARGE:  # Llama-3.2-1B's shape
        return transformers.LlamaConfig(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
        )
    return transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )


def peanut(rank, targets, modules_to_save=None):
    return peft.PeanutConfig(r=rank, target_modules=targets, modules_to_save=modules_to_save)


def token_ids(batch, length, vocab):
    # The same xorshift sequence as examples/speed.rs.
    state, ids, mask = 0x2545F4914F6CDD1D, [], (1 << 64) - 1
    for _ in range(batch * length):
        state ^= (state << 13) & mask
        state ^= state >> 7
        state ^= (state << 17) & mask
        ids.append(state % vocab)
    return torch.tensor(ids, dtype=torch.long).reshape(batch, length).to(DEVICE)


def vit_train(steps):
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(vit_config()).to(DEVICE)
    model = peft.get_peft_model(model, peanut(7, VIT_TARGETS, modules_to_save=["classifier"]))
    model = in_precision(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randn(VIT_BATCH, 3, IMAGE, IMAGE, device=DEVICE)
    labels = (torch.arange(VIT_BATCH) % VIT_LABELS).to(DEVICE)

    def step():
        with autocast():
            logits = model(pixel_values=images).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    seconds, cores = timed(steps, step)
    report("vit-train", VIT_BATCH / seconds, "img/s", cores)


def vit_infer(steps):
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(vit_config()).to(DEVICE)
    model = peft.get_peft_model(model, peanut(7, VIT_TARGETS))
    for name, param in model.named_parameters():
        if "peanut_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model = in_precision(model.merge_and_unload().eval())
    images = torch.randn(VIT_BATCH, 3, IMAGE, IMAGE, device=DEVICE)

    def step():
        with torch.inference_mode(), autocast():
            model(pixel_values=images).logits.cpu()

    seconds, cores = timed(steps, step)
    report("vit-infer", VIT_BATCH / seconds, "img/s", cores)


def lm_train(steps):
    torch.manual_seed(0)
    config = lm_config()
    model = transformers.LlamaForCausalLM(config).to(DEVICE)
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(model, peanut(8, targets))
    model = in_precision(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    ids = token_ids(LM_BATCH, LM_TOKENS + 1, config.vocab_size)
    inputs, targets = ids[:, :-1], ids[:, 1:].reshape(-1)

    def step():
        with autocast():
            logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, config.vocab_size), targets
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    seconds, cores = timed(steps, step)
    report(
        "lm-train",
        LM_BATCH / seconds,
        "seq/s",
        cores,
        tokens_per_s=round(LM_BATCH * LM_TOKENS / seconds, 1),
    )


def generate(repeats):
    torch.manual_seed(0)
    config = lm_config()
    model = transformers.LlamaForCausalLM(config).to(DEVICE)
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(model, peanut(8, targets))
    for name, param in model.named_parameters():
        if "peanut_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    # As `peanut generate` and `eval lm` do: the adapter merged into the weights.
    model = in_precision(model.merge_and_unload().eval())
    prompt = token_ids(1, PROMPT_TOKENS, config.vocab_size)
    prefill = decode = 0.0
    wall = cpu = None
    # Round 0 warms up and is not counted. The same loop as examples/speed.rs: prefill with a
    # KV cache, then one token at a time, greedy, each token read back before the next step.
    for round_ in range(repeats + 1):
        if round_ == 1:
            wall, cpu = time.perf_counter(), cpu_seconds()
        with torch.inference_mode(), autocast():
            start = time.perf_counter()
            out = model(input_ids=prompt, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
            token.item()
            after_prefill = time.perf_counter()
            for _ in range(NEW_TOKENS - 1):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                token = out.logits[:, -1:].argmax(-1)
                token.item()
            if round_ > 0:
                prefill += after_prefill - start
                decode += time.perf_counter() - after_prefill
    cores = (cpu_seconds() - cpu) / (time.perf_counter() - wall)
    decode_rate = (NEW_TOKENS - 1) * repeats / decode
    report(
        "generate",
        decode_rate,
        "tok/s",
        cores,
        prefill_tokens_per_s=round(PROMPT_TOKENS * repeats / prefill, 1),
        decode_tokens_per_s=round(decode_rate, 2),
    )


BATCH_PROMPTS = 8


def generate_batch(repeats):
    """`eval lm`'s generation: 8 prompts of different lengths (64, 61, ..., 43 tokens), greedy,
    32 new tokens each, in one left-padded batch with an attention mask (transformers'
    `generate`, as LLM-Adapters' evaluation batches)."""
    torch.manual_seed(0)
    config = lm_config()
    model = transformers.LlamaForCausalLM(config).to(DEVICE)
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(model, peanut(8, targets))
    for name, param in model.named_parameters():
        if "peanut_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model = model.merge_and_unload().eval()
    ids = token_ids(1, PROMPT_TOKENS, config.vocab_size)[0].tolist()
    lengths = [PROMPT_TOKENS - 3 * i for i in range(BATCH_PROMPTS)]
    longest = max(lengths)
    rows = [[0] * (longest - n) + ids[PROMPT_TOKENS - n :] for n in lengths]
    mask = [[0] * (longest - n) + [1] * n for n in lengths]
    input_ids = torch.tensor(rows, device=DEVICE)
    attention_mask = torch.tensor(mask, device=DEVICE)

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        assert out.shape[1] == longest + NEW_TOKENS

    run()
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(repeats):
        run()
    seconds = time.perf_counter() - wall
    cores = (cpu_seconds() - cpu) / seconds
    report(
        "generate-batch",
        BATCH_PROMPTS * NEW_TOKENS * repeats / seconds,
        "tok/s",
        cores,
        prompts=BATCH_PROMPTS,
    )


def main():
    workload = sys.argv[1] if len(sys.argv) > 1 else ""
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
    runs = {
        "vit-train": (vit_train, 4),
        "vit-infer": (vit_infer, 4),
        "lm-train": (lm_train, 3),
        "generate": (generate, 2),
        "generate-batch": (generate_batch, 1),
    }
    if workload not in runs:
        sys.exit(f"unknown workload {workload!r}: expected one of {', '.join(runs)} [steps]")
    run, default = runs[workload]
    run(max(1, steps or default))


if __name__ == "__main__":
    main()
