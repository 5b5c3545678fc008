#!/usr/bin/env python3
"""The PyTorch + Hugging Face peft side of benches/accuracy-peft.sh: one fine-tune, one seed.

    python3 benches/accuracy_peer.py --model /tmp/acc/dinov2-s14-vit --data /tmp/acc/fmnist-112 \
        --seed 0 --epochs 3 --out /tmp/acc/results/peft-e3-s0.json

transformers' ViTForImageClassification on the converted checkpoint with a new head, PEANuT
(peft's `PeanutConfig`) on the query and value projections, the head trained through
`modules_to_save`. A hand-written loop: AdamW over the trainable parameters (one rate for
adapters and head, weight decay on every trainable tensor, constant rate, no warmup), mean
cross-entropy over each batch of 32, the training set reshuffled every epoch from the seed, no
augmentation; images read from the ImageFolder at their stored size (112 px), scaled to [0, 1]
and normalised with the checkpoint's `preprocessor_config.json` mean and std, positions
interpolated (`interpolate_pos_encoding=True`). Test accuracy after every epoch. Writes one JSON
object (`--out`) and prints progress. Needs torch, transformers, peft, Pillow, numpy.

With `--init DIR --order FILE` (what `peanut train image --save-initial` writes in
`<run>/initial/`), the loop starts from that run's adapters and head instead of its own draws and
takes the examples in that run's order: the same start and data as the peanut run, so the two
stacks differ only in how they compute.
"""

import argparse
import json
import os
import time

import numpy as np


def read_folder(root, mean, std):
    """`root/<class>/*.png` in sorted order (as peanut reads it): images [N, 3, H, W], labels."""
    from PIL import Image

    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    images, labels = [], []
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            if not file.lower().endswith((".png", ".jpg", ".jpeg")):
                continue
            with Image.open(os.path.join(folder, file)) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            images.append((pixels.transpose(2, 0, 1) - mean) / std)
            labels.append(label)
    return np.stack(images).astype(np.float32), np.asarray(labels, dtype=np.int64), classes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=7)
    parser.add_argument("--peft-depth", type=int, default=0,
                        help="peft's depth: encoder/decoder pairs (0 = the paper's depth 2)")
    parser.add_argument("--act", default="relu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", help="start from this peft adapter directory (adapters and head)")
    parser.add_argument("--order", help="take each epoch's examples in this order (order.json)")
    args = parser.parse_args()

    started = time.time()
    import peft
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import ViTForImageClassification

    torch.set_num_threads(args.threads)
    with open(os.path.join(args.model, "preprocessor_config.json")) as f:
        processor = json.load(f)
    train_x, train_y, classes = read_folder(os.path.join(args.data, "train"),
                                            processor["image_mean"], processor["image_std"])
    test_x, test_y, test_classes = read_folder(os.path.join(args.data, "test"),
                                               processor["image_mean"], processor["image_std"])
    assert classes == test_classes, "train and test class folders differ"
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    test_x, test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)

    # The seed decides the new head (transformers' init), the adapters' A (peft's kaiming
    # uniform; B starts at zero) and the data order.
    torch.manual_seed(args.seed)
    model = ViTForImageClassification.from_pretrained(
        args.model, num_labels=len(classes),
        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = ["q_proj", "v_proj"] if "q_proj" in names else ["query", "value"]
    config = peft.PeanutConfig(r=args.rank, depth=args.peft_depth, act_fn=args.act,
                               target_modules=targets, modules_to_save=["classifier"])
    model = peft.get_peft_model(model, config)
    if args.init:
        from safetensors.torch import load_file
        start = load_file(os.path.join(args.init, "adapter_model.safetensors"))
        ours = peft.get_peft_model_state_dict(model)
        assert sorted(start) == sorted(ours), (
            f"{args.init} holds other tensors than this model's trainable ones: "
            f"{sorted(set(start) ^ set(ours))[:5]}")
        result = peft.set_peft_model_state_dict(model, start)
        assert not result.unexpected_keys, result.unexpected_keys
        print(f"[peft seed {args.seed}] starting from {args.init}", flush=True)
    orders = None
    if args.order:
        with open(args.order) as f:
            orders = json.load(f)["epochs"]
        assert len(orders) >= args.epochs, f"{args.order} has {len(orders)} epochs"
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    print(f"[peft seed {args.seed}] {len(train_y)} train / {len(test_y)} test images, "
          f"{len(classes)} classes, {n_trainable} trainable parameters, targets {targets}", flush=True)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    order = torch.Generator().manual_seed(args.seed)

    def evaluate():
        model.eval()
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(test_y), 100):
                x, y = test_x[start:start + 100], test_y[start:start + 100]
                logits = model(pixel_values=x, interpolate_pos_encoding=True).logits
                correct += int((logits.argmax(-1) == y).sum())
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        model.train()
        return correct / len(test_y), loss_sum / len(test_y)

    epochs, setup_s = [], time.time() - started
    model.train()
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        perm = torch.randperm(len(train_y), generator=order)
        if orders is not None:
            perm = torch.tensor(orders[epoch - 1], dtype=torch.int64)
            assert sorted(perm.tolist()) == list(range(len(train_y))), "order: not a permutation"
        loss_sum, seen = 0.0, 0
        for start in range(0, len(perm), args.batch_size):
            index = perm[start:start + args.batch_size]
            logits = model(pixel_values=train_x[index], interpolate_pos_encoding=True).logits
            loss = F.cross_entropy(logits, train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            seen += len(index)
        train_s = time.time() - t0
        t1 = time.time()
        accuracy, test_loss = evaluate()
        eval_s = time.time() - t1
        epochs.append({"epoch": epoch, "test_accuracy": accuracy, "test_loss": test_loss,
                       "train_loss": loss_sum / seen, "train_s": train_s, "eval_s": eval_s})
        print(f"[peft seed {args.seed}] epoch {epoch}/{args.epochs}: train loss {loss_sum / seen:.4f}, "
              f"test accuracy {100 * accuracy:.2f}%, test loss {test_loss:.4f} "
              f"({train_s:.0f} s training, {eval_s:.0f} s test)", flush=True)

    result = {
        "stack": "pytorch+peft",
        "seed": args.seed,
        "epochs": epochs,
        # The model after the last epoch is the final one: its test accuracy is the last epoch's.
        "final_test_accuracy": epochs[-1]["test_accuracy"],
        "trainable_params": n_trainable,
        "wall_s": time.time() - started,
        "setup_s": setup_s,
        "threads": args.threads,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "threads")},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(args.out + ".tmp", args.out)
    print(f"[peft seed {args.seed}] done in {result['wall_s']:.0f} s: final test accuracy "
          f"{100 * result['final_test_accuracy']:.2f}%", flush=True)


if __name__ == "__main__":
    main()
