//! The properties of docs/METHOD.md §8, on the ndarray backend: no-op at init, factorized ==
//! materialized, rank bound, depth reduction, the ReLU/LoRA identity, frozen base under AdamW,
//! merge rules, file round trips, parameter counts, and the typed errors for bad configs and bad files.

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor, TensorData};
use peanut::io::{self, SamePaths};
use peanut::{
    Activation, AdaptedLinear, Adapter, AdapterConfig, LoraConfig, OutputInit, Peanut,
    PeanutConfig, PeanutError, count_trainable_params, merge_weight,
};

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

const ACTIVATIONS: [Activation; 9] = [
    Activation::Relu,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Silu,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::LeakyRelu {
        negative_slope: 0.1,
    },
    Activation::Identity,
    Activation::Sine { frequency: 3.0 },
];

fn device() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn random<B: burn::tensor::backend::Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
) -> Tensor<B, D> {
    // Backend-independent draws through the crate's own generator.
    let mut rng = peanut::init::SeededRng::new(seed);
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn base_layer<B: burn::tensor::backend::Backend>(
    d_in: usize,
    d_out: usize,
    seed: u64,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(random([d_in, d_out], seed)),
        bias: Some(Param::from_tensor(random([d_out], seed + 1))),
    }
}

fn peanut_config(rank: usize, depth: usize, activation: Activation) -> PeanutConfig {
    PeanutConfig::new(rank)
        .with_depth(depth)
        .with_activation(activation)
        .with_scaling(0.7)
        .with_b_init(OutputInit::KaimingUniform)
}

#[test]
fn zero_b_is_a_no_op_at_every_depth_and_activation() {
    for depth in [2, 4, 6] {
        for activation in ACTIVATIONS {
            let config = PeanutConfig::new(4)
                .with_depth(depth)
                .with_activation(activation);
            let adapter = config.init::<Cpu>(12, 10, 5, &device()).unwrap();
            assert!(values(adapter.b.val()).iter().all(|&v| v == 0.0));
            let base = base_layer::<Cpu>(12, 10, 1);
            let x = random::<Cpu, 3>([2, 3, 12], 9);
            let expected = values(base.forward(x.clone()));
            let layer = AdaptedLinear::new(base).with_adapter(Adapter::Peanut(adapter));
            assert_eq!(
                values(layer.forward(x)),
                expected,
                "{activation:?} depth {depth}"
            );
        }
    }
}

#[test]
fn factorized_path_equals_materialized_update() {
    for depth in [2, 4, 6] {
        for (i, activation) in ACTIVATIONS.into_iter().enumerate() {
            let adapter = peanut_config(5, depth, activation)
                .init::<Cpu>(16, 11, i as u64, &device())
                .unwrap();
            let w0 = random::<Cpu, 2>([16, 11], 100 + i as u64);
            let x = random::<Cpu, 3>([3, 4, 16], 200);
            let factorized = values(adapter.forward(x.clone(), w0.clone()));
            let materialized = values(adapter.forward_materialized(x, w0));
            let err = max_abs_diff(&factorized, &materialized);
            assert!(
                max_abs(&factorized) > 1e-3,
                "adapter output is trivially small"
            );
            assert!(
                err <= 1e-5 * max_abs(&materialized).max(1.0),
                "{activation:?} depth {depth}: {err}"
            );
        }
    }
}

/// Numerical rank by Gaussian elimination with partial pivoting (f64).
fn numerical_rank(data: &[f32], rows: usize, cols: usize) -> usize {
    let mut m: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
    let scale = m.iter().fold(0f64, |a, v| a.max(v.abs()));
    let tol = scale * 1e-5 * rows.max(cols) as f64;
    let mut rank = 0;
    for col in 0..cols {
        if rank == rows {
            break;
        }
        let pivot = (rank..rows)
            .max_by(|&a, &b| m[a * cols + col].abs().total_cmp(&m[b * cols + col].abs()))
            .unwrap();
        if m[pivot * cols + col].abs() <= tol {
            continue;
        }
        for k in 0..cols {
            m.swap(rank * cols + k, pivot * cols + k);
        }
        for r in rank + 1..rows {
            let f = m[r * cols + col] / m[rank * cols + col];
            for k in col..cols {
                m[r * cols + k] -= f * m[rank * cols + k];
            }
        }
        rank += 1;
    }
    rank
}

#[test]
fn delta_weight_rank_is_at_most_r() {
    for depth in [2, 4, 6] {
        for rank in [1, 3, 5] {
            let adapter = peanut_config(rank, depth, Activation::Relu)
                .init::<Cpu>(24, 20, rank as u64, &device())
                .unwrap();
            let delta = adapter.delta_weight(random([24, 20], 7));
            let found = numerical_rank(&values(delta), 24, 20);
            // ≤ r always; = r for these generic random draws, so the check is not vacuous.
            assert_eq!(found, rank, "depth {depth}");
        }
    }
    // The helper itself sees a full-rank matrix as such.
    assert_eq!(
        numerical_rank(&values(random::<Cpu, 2>([6, 9], 3)), 6, 9),
        6
    );
}

#[test]
fn zero_encoders_and_decoders_reduce_to_depth_two_when_sigma_of_zero_is_zero() {
    let w0 = random::<Cpu, 2>([10, 12], 1);
    let a = random::<Cpu, 2>([12, 4], 2);
    let b = random::<Cpu, 2>([4, 12], 3);
    for activation in ACTIVATIONS {
        let shallow =
            Peanut::<Cpu>::from_tensors(a.clone(), vec![], vec![], b.clone(), activation, 1.0);
        let expected = values(shallow.delta_weight(w0.clone()));
        for pairs in [1, 2] {
            let zeros = || {
                (0..pairs)
                    .map(|_| Tensor::zeros([4, 4], &device()))
                    .collect()
            };
            let deep = Peanut::<Cpu>::from_tensors(
                a.clone(),
                zeros(),
                zeros(),
                b.clone(),
                activation,
                1.0,
            );
            let err = max_abs_diff(&values(deep.delta_weight(w0.clone())), &expected);
            if activation.maps_zero_to_zero() {
                assert!(err <= 1e-6, "{activation:?}: {err}");
            } else {
                // σ(0) ≠ 0 (sigmoid): the residual path adds σ(0) terms, so the reduction fails.
                assert!(err > 1e-2, "{activation:?} unexpectedly reduced: {err}");
            }
        }
    }
}

/// Solves `M·X = R` for square `M` (f64 Gauss-Jordan), row-major.
fn solve(m: &[f64], r: &[f64], n: usize, k: usize) -> Vec<f64> {
    let mut a = m.to_vec();
    let mut x = r.to_vec();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p * n + col].abs().total_cmp(&a[q * n + col].abs()))
            .unwrap();
        for j in 0..n {
            a.swap(col * n + j, pivot * n + j);
        }
        for j in 0..k {
            x.swap(col * k + j, pivot * k + j);
        }
        let d = a[col * n + col];
        for row in 0..n {
            if row != col {
                let f = a[row * n + col] / d;
                for j in 0..n {
                    a[row * n + j] -= f * a[col * n + j];
                }
                for j in 0..k {
                    x[row * k + j] -= f * x[col * k + j];
                }
            }
        }
    }
    (0..n * k).map(|i| x[i] / a[(i / k) * n + i / k]).collect()
}

#[test]
fn relu_peanut_of_rank_2r_represents_any_lora_update_of_rank_r() {
    let (d_in, d_out, r) = (6, 9, 3);
    let w0 = random::<Cpu, 2>([d_in, d_out], 11); // full row rank: d_in ≤ d_out
    let lora_a = random::<Cpu, 2>([d_in, r], 12);
    let lora_b = random::<Cpu, 2>([r, d_out], 13);
    let lora = Adapter::Lora(peanut::Lora::from_tensors(
        lora_a.clone(),
        lora_b.clone(),
        1.0,
    ));
    let target = values(lora.delta_weight(w0.clone()));

    // C = W0ᵀ (W0 W0ᵀ)⁻¹ A_L, so that W0·C = A_L.
    let gram: Vec<f64> = values(w0.clone().matmul(w0.clone().transpose()))
        .into_iter()
        .map(f64::from)
        .collect();
    let rhs: Vec<f64> = values(lora_a).into_iter().map(f64::from).collect();
    let solved: Vec<f32> = solve(&gram, &rhs, d_in, r)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let solved = Tensor::<Cpu, 2>::from_data(TensorData::new(solved, [d_in, r]), &device());
    let c = w0.clone().transpose().matmul(solved);

    // The identity σ(W0·[C | −C])·[B; −B] = W0·C·B with σ = ReLU.
    let a = Tensor::cat(vec![c.clone(), c.clone().neg()], 1);
    let b = Tensor::cat(vec![lora_b.clone(), lora_b.clone().neg()], 0);
    let peanut = Peanut::<Cpu>::from_tensors(a, vec![], vec![], b, Activation::Relu, 1.0);
    assert_eq!(peanut.rank(), 2 * r);
    let got = values(peanut.delta_weight(w0.clone()));
    let err = max_abs_diff(&got, &target);
    assert!(err <= 1e-4 * max_abs(&target), "{err}");

    // Without the mirrored half, ReLU alone does not give the LoRA update.
    let half = Peanut::<Cpu>::from_tensors(c, vec![], vec![], lora_b, Activation::Relu, 1.0);
    assert!(max_abs_diff(&values(half.delta_weight(w0)), &target) > 1e-2);
}

#[test]
fn gradients_reach_every_adapter_tensor_and_adamw_leaves_the_base_bit_identical() {
    for config in [
        AdapterConfig::from(peanut_config(3, 6, Activation::Gelu)),
        AdapterConfig::from(LoraConfig::new(3).with_b_init(OutputInit::KaimingUniform)),
    ] {
        let base = LinearConfig::new(8, 6).init::<Ad>(&device());
        let adapter = config.init::<Ad>(8, 6, 3, &device()).unwrap();
        let mut layer = AdaptedLinear::new(base).with_adapter(adapter);
        let w0_before = values(layer.base.weight.val());
        let bias_before = values(layer.base.bias.as_ref().unwrap().val());
        let adapter_before: Vec<Vec<f32>> = adapter_tensors(&layer);

        let x = Tensor::<Ad, 2>::random([5, 8], Distribution::Default, &device());
        let grads = layer.forward(x.clone()).powi_scalar(2).sum().backward();
        assert!(layer.base.weight.grad(&grads).is_none());
        assert!(layer.base.bias.as_ref().unwrap().grad(&grads).is_none());
        let adapter_grads = count_adapter_grads(&layer, &grads);
        assert_eq!(adapter_grads, adapter_before.len(), "{}", config.rank());

        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        for _ in 0..3 {
            let grads = layer.forward(x.clone()).powi_scalar(2).sum().backward();
            let grads = GradientsParams::from_grads(grads, &layer);
            layer = optim.step(1e-2, layer, grads);
        }
        assert_eq!(values(layer.base.weight.val()), w0_before, "W0 moved");
        assert_eq!(
            values(layer.base.bias.as_ref().unwrap().val()),
            bias_before,
            "bias moved"
        );
        for (before, after) in adapter_before.iter().zip(adapter_tensors(&layer)) {
            assert!(
                max_abs_diff(before, &after) > 0.0,
                "an adapter tensor did not move"
            );
        }
    }
}

fn adapter_tensors(layer: &AdaptedLinear<Ad>) -> Vec<Vec<f32>> {
    match &layer.adapters[0] {
        Adapter::Peanut(p) => std::iter::once(&p.a)
            .chain(&p.encoders)
            .chain(&p.decoders)
            .chain(std::iter::once(&p.b))
            .map(|t| values(t.val()))
            .collect(),
        Adapter::Lora(l) => vec![values(l.a.val()), values(l.b.val())],
    }
}

fn count_adapter_grads(
    layer: &AdaptedLinear<Ad>,
    grads: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> usize {
    let params: Vec<&Param<Tensor<Ad, 2>>> = match &layer.adapters[0] {
        Adapter::Peanut(p) => std::iter::once(&p.a)
            .chain(&p.encoders)
            .chain(&p.decoders)
            .chain(std::iter::once(&p.b))
            .collect(),
        Adapter::Lora(l) => vec![&l.a, &l.b],
    };
    params
        .into_iter()
        .filter(|p| p.grad(grads).is_some_and(|g| max_abs(&values(g)) > 0.0))
        .count()
}

#[test]
fn unfrozen_base_trains_for_full_fine_tuning() {
    let layer =
        AdaptedLinear::new(LinearConfig::new(4, 3).init::<Ad>(&device())).unfreeze_base(true);
    let x = Tensor::<Ad, 2>::ones([2, 4], &device());
    let grads = layer.forward(x).sum().backward();
    assert!(layer.base.weight.grad(&grads).is_some());
    assert_eq!(layer.num_trainable_params(), 4 * 3 + 3);
}

#[test]
fn merge_follows_the_spec_rules() {
    let base = base_layer::<Cpu>(10, 8, 21);
    let first = AdapterConfig::from(peanut_config(3, 4, Activation::Relu))
        .init::<Cpu>(10, 8, 1, &device())
        .unwrap();
    let second = AdapterConfig::from(peanut_config(2, 2, Activation::Tanh))
        .init::<Cpu>(10, 8, 2, &device())
        .unwrap();
    let lora = AdapterConfig::from(LoraConfig::new(2).with_b_init(OutputInit::KaimingUniform))
        .init::<Cpu>(10, 8, 3, &device())
        .unwrap();
    let w0 = base.weight.val();
    let x = random::<Cpu, 2>([7, 10], 5);

    let mut layer = AdaptedLinear::new(base.clone())
        .with_adapter(first.clone())
        .with_adapter(second.clone())
        .with_adapter(lora.clone());
    let unmerged = values(layer.forward(x.clone()));

    // Merged ≈ unmerged, through the returned Linear and in place.
    let merged_linear = layer.merge();
    let merged = values(merged_linear.forward(x.clone()));
    assert!(max_abs_diff(&merged, &unmerged) <= 1e-5 * max_abs(&unmerged));
    layer.merge_in_place();
    assert!(layer.is_merged());
    assert_eq!(values(layer.forward(x.clone())), merged);

    // Unmerge restores the original weight exactly.
    layer.unmerge();
    assert_eq!(values(layer.base.weight.val()), values(w0.clone()));
    assert_eq!(values(layer.forward(x.clone())), unmerged);

    // Any order gives the same merged weight.
    let orders = [
        vec![first.clone(), second.clone(), lora.clone()],
        vec![lora.clone(), second.clone(), first.clone()],
        vec![second.clone(), lora.clone(), first.clone()],
    ];
    let weights: Vec<Vec<f32>> = orders
        .iter()
        .map(|o| values(merge_weight(w0.clone(), o)))
        .collect();
    for w in &weights[1..] {
        assert!(max_abs_diff(w, &weights[0]) <= 1e-6);
    }

    // Every ΔW comes from the ORIGINAL W0: merging sequentially (ΔW₂ from W0 + ΔW₁) differs.
    let after_first = w0.clone() + first.delta_weight(w0.clone());
    let sequential = values(after_first.clone() + second.delta_weight(after_first));
    let correct = values(merge_weight(w0, &[first, second]));
    assert!(max_abs_diff(&sequential, &correct) > 1e-4);
}

#[test]
fn native_files_round_trip_both_methods_and_leave_no_temporary_files() {
    let dir = tempdir("roundtrip");
    let peanut_cfg = AdapterConfig::from(peanut_config(3, 6, Activation::Sine { frequency: 2.0 }));
    let peanut = peanut_cfg.init::<Cpu>(10, 8, 1, &device()).unwrap();
    let lora_cfg = AdapterConfig::from(
        LoraConfig::new(2)
            .with_alpha(4.0)
            .with_b_init(OutputInit::KaimingUniform),
    );
    let lora = lora_cfg.init::<Cpu>(8, 5, 2, &device()).unwrap();
    // An adapter describes itself with the configuration it was built from, `B`'s start too.
    assert_eq!(peanut.config(), peanut_cfg);
    assert_eq!(lora.config(), lora_cfg);
    io::save(
        &dir,
        [
            ("blocks.0.query".to_string(), &peanut),
            ("blocks.0.value".to_string(), &lora),
        ],
    )
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["peanut_adapter.safetensors", "peanut_config.json"]);

    let loaded = io::load_any::<Cpu>(&dir, &SamePaths, &device()).unwrap();
    assert_eq!(loaded.len(), 2);
    let w0 = random::<Cpu, 2>([10, 8], 4);
    assert_eq!(
        values(loaded["blocks.0.query"].delta_weight(w0.clone())),
        values(peanut.delta_weight(w0))
    );
    assert_eq!(loaded["blocks.0.query"].config(), peanut.config());
    assert_eq!(loaded["blocks.0.value"].config(), lora.config());
    let w1 = random::<Cpu, 2>([8, 5], 6);
    assert_eq!(
        values(loaded["blocks.0.value"].delta_weight(w1.clone())),
        values(lora.delta_weight(w1))
    );

    // Saving again over it replaces the files in place.
    io::save(&dir, [("blocks.0.query".to_string(), &peanut)]).unwrap();
    assert_eq!(io::load::<Cpu>(&dir, &device()).unwrap().len(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_failed_write_reports_the_path_and_keeps_the_previous_adapter() {
    let dir = tempdir("failed-write");
    let adapter = AdapterConfig::from(PeanutConfig::new(2))
        .init::<Cpu>(4, 4, 1, &device())
        .unwrap();
    io::save(&dir, [("layer".to_string(), &adapter)]).unwrap();
    let before = std::fs::read(dir.join("peanut_config.json")).unwrap();
    // A directory where the tensor file should go makes the rename fail.
    std::fs::remove_file(dir.join("peanut_adapter.safetensors")).unwrap();
    std::fs::create_dir(dir.join("peanut_adapter.safetensors")).unwrap();
    std::fs::write(dir.join("peanut_adapter.safetensors/keep"), b"x").unwrap();
    let err = io::save(&dir, [("other".to_string(), &adapter)]).unwrap_err();
    assert!(
        matches!(err, PeanutError::File(peanut::FileError::Io { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("peanut_adapter.safetensors"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("peanut_config.json")).unwrap(),
        before
    );
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);
    std::fs::remove_dir_all(dir).ok();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("peanut-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn parameter_counts_equal_the_closed_forms() {
    for depth in [2, 4, 6] {
        let config = PeanutConfig::new(7).with_depth(depth);
        let adapter = config.init::<Ad>(768, 768, 0, &device()).unwrap();
        let pairs = (depth - 2) / 2;
        let closed = 2 * 7 * 768 + 2 * pairs * 7 * 7;
        assert_eq!(config.num_params(768), closed);
        assert_eq!(adapter.num_params(), closed);
        let layer = AdaptedLinear::new(LinearConfig::new(768, 768).init::<Ad>(&device()))
            .with_adapter(Adapter::Peanut(adapter));
        assert_eq!(layer.num_adapter_params(), closed);
        assert_eq!(count_trainable_params(&layer), closed);
    }
    let lora = LoraConfig::new(8);
    let layer = AdaptedLinear::new(LinearConfig::new(300, 200).init::<Ad>(&device())).with_adapter(
        AdapterConfig::from(lora.clone())
            .init(300, 200, 0, &device())
            .unwrap(),
    );
    assert_eq!(lora.num_params(300, 200), 8 * 500);
    assert_eq!(count_trainable_params(&layer), 8 * 500);
    // PEANuT's count ignores d_in; LoRA's does not.
    assert_eq!(PeanutConfig::new(8).num_params(200), 2 * 8 * 200);

    // The paper's ViT-B setting: q and v of 12 blocks, r = 7 → 258,048.
    let per_layer = PeanutConfig::new(7).num_params(768);
    assert_eq!(12 * 2 * per_layer, 258_048);
    // Per model: the sum over its layers, and inference copies (`valid()`) train nothing.
    let layers: Vec<AdaptedLinear<Ad>> = (0..3)
        .map(|i| {
            AdaptedLinear::new(LinearConfig::new(16, 12).init::<Ad>(&device())).with_adapter(
                AdapterConfig::from(PeanutConfig::new(2))
                    .init(16, 12, i, &device())
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(count_trainable_params(&layers), 3 * 2 * 2 * 12);
    assert_eq!(
        layers
            .valid()
            .iter()
            .map(|l| l.num_adapter_params())
            .sum::<usize>(),
        3 * 48
    );
}

#[test]
fn initialisation_is_reproducible_from_the_seed_and_bounded() {
    let config = PeanutConfig::new(4)
        .with_depth(4)
        .with_b_init(OutputInit::KaimingUniform);
    let draw = |seed| {
        let a = config.init::<Cpu>(9, 25, seed, &device()).unwrap();
        (
            values(a.a.val()),
            values(a.encoders[0].val()),
            values(a.b.val()),
        )
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3).0, draw(4).0);
    let (a, enc, b) = draw(3);
    assert!(
        a.iter().all(|v| v.abs() <= 1.0 / 5.0),
        "A bound 1/sqrt(d_out)"
    );
    assert!(max_abs(&a) > 0.15, "A should span its bound");
    assert!(enc.iter().all(|v| v.abs() <= 0.5), "Enc bound 1/sqrt(r)");
    assert!(b.iter().all(|v| v.abs() <= 0.5), "B bound 1/sqrt(r)");
}

#[test]
fn bad_configs_name_the_field() {
    let field = |result: peanut::Result<Peanut<Cpu>>| match result.map(|_| ()).unwrap_err() {
        PeanutError::InvalidConfig { field, .. } => field,
        other => panic!("unexpected {other}"),
    };
    let init = |c: PeanutConfig| c.init::<Cpu>(4, 4, 0, &device());
    assert_eq!(field(init(PeanutConfig::new(0))), "rank");
    assert_eq!(field(init(PeanutConfig::new(2).with_depth(3))), "depth");
    assert_eq!(field(init(PeanutConfig::new(2).with_depth(0))), "depth");
    assert_eq!(
        field(init(PeanutConfig::new(2).with_scaling(f64::NAN))),
        "scaling"
    );
    assert_eq!(
        field(init(PeanutConfig::new(2).with_scaling(f64::INFINITY))),
        "scaling"
    );
    let sine = |frequency| PeanutConfig::new(2).with_activation(Activation::Sine { frequency });
    assert_eq!(field(init(sine(0.0))), "activation.frequency");
    assert_eq!(field(init(sine(-1.0))), "activation.frequency");
    let leaky = PeanutConfig::new(2).with_activation(Activation::LeakyRelu {
        negative_slope: f64::NAN,
    });
    assert_eq!(field(init(leaky)), "activation.negative_slope");
    assert_eq!(
        field(PeanutConfig::new(2).init::<Cpu>(0, 4, 0, &device())),
        "d_input"
    );

    let lora_field = |c: LoraConfig| match c.validate().unwrap_err() {
        PeanutError::InvalidConfig { field, .. } => field,
        other => panic!("unexpected {other}"),
    };
    assert_eq!(lora_field(LoraConfig::new(0)), "rank");
    assert_eq!(lora_field(LoraConfig::new(4).with_alpha(f64::NAN)), "alpha");
    let message = PeanutConfig::new(2)
        .with_depth(5)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("depth") && message.contains('5'),
        "{message}"
    );
}

#[test]
fn configs_serialize_to_readable_json_and_back() {
    let config = AdapterConfig::from(
        PeanutConfig::new(7)
            .with_depth(4)
            .with_activation(Activation::LeakyRelu {
                negative_slope: 0.2,
            })
            .with_alpha(14.0),
    );
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["method"], "peanut");
    assert_eq!(json["scaling"], 2.0);
    assert_eq!(json["activation"]["kind"], "leaky_relu");
    let back: AdapterConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
}

/// Writes a peft-format directory from raw tensors (torch layout).
fn write_peft(dir: &std::path::Path, config: serde_json::Value, tensors: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, shape)| {
            let n: usize = shape.iter().product();
            (k.to_string(), shape.clone(), vec![0u8; 4 * n])
        })
        .collect();
    let views = data.iter().map(|(k, s, b)| {
        (
            k.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

#[test]
fn bad_files_give_errors_naming_the_key_and_shapes() {
    let dir = tempdir("bad-files");
    let config = serde_json::json!({"peft_type": "PEANUT", "r": 2, "depth": 1, "act_fn": "relu", "scaling": 1.0});
    let good = [
        ("base_model.model.fc.peanut_A.weight", vec![2, 5]),
        ("base_model.model.fc.peanut_encoders.0.weight", vec![2, 2]),
        ("base_model.model.fc.peanut_decoders.0.weight", vec![2, 2]),
        ("base_model.model.fc.peanut_B.weight", vec![5, 2]),
    ];
    let load = || io::load_peft::<Cpu>(&dir, &SamePaths, &device());
    write_peft(&dir, config.clone(), &good);
    assert_eq!(load().unwrap().len(), 1);

    // Wrong shape: names the key and both shapes.
    let mut wrong = good.clone();
    wrong[3].1 = vec![5, 3];
    write_peft(&dir, config.clone(), &wrong);
    let err = load().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PeanutError::ShapeMismatch { .. }), "{text}");
    assert!(
        text.contains("fc.peanut_B.weight") && text.contains("[5, 3]") && text.contains("[5, 2]"),
        "{text}"
    );

    // Missing key.
    write_peft(&dir, config.clone(), &good[..3]);
    let err = load().unwrap_err();
    assert!(
        matches!(&err, PeanutError::MissingKey { key, .. } if key.ends_with("peanut_B.weight")),
        "{err}"
    );

    // A key that is not a PEANuT tensor, and one beyond the configured depth.
    let mut extra = good.to_vec();
    extra.push(("base_model.model.fc.lora_A.weight", vec![2, 5]));
    write_peft(&dir, config.clone(), &extra);
    assert!(
        matches!(load().unwrap_err(), PeanutError::UnexpectedKey { key, .. } if key.contains("lora_A"))
    );
    let mut deeper = good.to_vec();
    deeper.push(("base_model.model.fc.peanut_encoders.1.weight", vec![2, 2]));
    write_peft(&dir, config.clone(), &deeper);
    assert!(
        matches!(load().unwrap_err(), PeanutError::UnexpectedKey { key, .. } if key.contains("encoders.1"))
    );

    // Wrong peft_type, unknown activation, bad rank.
    let mut other = config.clone();
    other["peft_type"] = "LORA".into();
    write_peft(&dir, other, &good);
    assert!(load().unwrap_err().to_string().contains("LORA"));
    let mut act = config.clone();
    act["act_fn"] = "quick_gelu_v9".into();
    write_peft(&dir, act, &good);
    assert!(load().unwrap_err().to_string().contains("quick_gelu_v9"));
    let mut rank = config.clone();
    rank["r"] = 0.into();
    write_peft(&dir, rank, &good);
    assert!(matches!(
        load().unwrap_err(),
        PeanutError::InvalidConfig { field: "rank", .. }
    ));

    // Malformed JSON and a truncated tensor file.
    write_peft(&dir, config.clone(), &good);
    std::fs::write(dir.join("adapter_config.json"), "{\"peft_type\": ").unwrap();
    assert!(matches!(
        load().unwrap_err(),
        PeanutError::File(peanut::FileError::Json { .. })
    ));
    write_peft(&dir, config, &good);
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        &bytes[..bytes.len() - 7],
    )
    .unwrap();
    assert!(matches!(
        load().unwrap_err(),
        PeanutError::File(peanut::FileError::Safetensors { .. })
    ));

    // No adapter at all.
    let empty = tempdir("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = io::load_any::<Cpu>(&empty, &SamePaths, &device()).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(empty).ok();
}

#[test]
fn attach_checks_every_layer_before_changing_any() {
    let mut fc = AdaptedLinear::new(base_layer::<Cpu>(5, 4, 1));
    let mut other = AdaptedLinear::new(base_layer::<Cpu>(5, 6, 2));
    let fits = AdapterConfig::from(PeanutConfig::new(2))
        .init::<Cpu>(5, 4, 1, &device())
        .unwrap();
    let too_wide = AdapterConfig::from(PeanutConfig::new(2))
        .init::<Cpu>(5, 7, 1, &device())
        .unwrap();

    let map = [
        ("fc".to_string(), fits.clone()),
        ("other".to_string(), too_wide),
    ]
    .into();
    let err = io::attach(
        [
            ("fc".to_string(), &mut fc),
            ("other".to_string(), &mut other),
        ],
        map,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("other.peanut.a") && text.contains("[6, 2]") && text.contains("[7, 2]"),
        "{text}"
    );
    assert!(
        fc.adapters.is_empty() && other.adapters.is_empty(),
        "nothing attached on error"
    );

    let map = [("missing".to_string(), fits.clone())].into();
    let err = io::attach([("fc".to_string(), &mut fc)], map).unwrap_err();
    assert!(
        matches!(&err, PeanutError::UnknownModule { module, known }
            if module == "missing" && known == &["fc"]),
        "{err}"
    );

    let map = [("fc".to_string(), fits)].into();
    io::attach([("fc".to_string(), &mut fc)], map).unwrap();
    assert_eq!(fc.adapters.len(), 1);
}

#[test]
fn peft_export_refuses_what_peft_cannot_hold() {
    let dir = tempdir("peft-refuse");
    let lora = AdapterConfig::from(LoraConfig::new(2))
        .init::<Cpu>(4, 4, 0, &device())
        .unwrap();
    let peanut = AdapterConfig::from(PeanutConfig::new(2))
        .init::<Cpu>(4, 4, 0, &device())
        .unwrap();
    // One file holds one method: LoRA beside PEANuT is refused.
    let err = io::save_peft(
        &dir,
        [("fc".to_string(), &lora), ("fd".to_string(), &peanut)],
        &SamePaths,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, PeanutError::AdapterMismatch { .. }), "{err}");
    let sine = AdapterConfig::from(
        PeanutConfig::new(2).with_activation(Activation::Sine { frequency: 1.0 }),
    )
    .init::<Cpu>(4, 4, 0, &device())
    .unwrap();
    let err = io::save_peft(&dir, [("fc".to_string(), &sine)], &SamePaths, None).unwrap_err();
    assert!(err.to_string().contains("Sine"), "{err}");
    let a = AdapterConfig::from(PeanutConfig::new(2))
        .init::<Cpu>(4, 4, 0, &device())
        .unwrap();
    let b = AdapterConfig::from(PeanutConfig::new(3))
        .init::<Cpu>(4, 4, 0, &device())
        .unwrap();
    let err = io::save_peft(
        &dir,
        [("x".to_string(), &a), ("y".to_string(), &b)],
        &SamePaths,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("one configuration"), "{err}");
    assert!(
        !dir.join("adapter_config.json").exists(),
        "nothing written on refusal"
    );
}

#[test]
fn lora_adapters_round_trip_through_peft_lora_files() {
    let dir = tempdir("peft-lora");
    let config = AdapterConfig::from(LoraConfig::new(3).with_alpha(6.0));
    let mut lora = config.init::<Cpu>(5, 4, 1, &device()).unwrap();
    if let Adapter::Lora(l) = &mut lora {
        // A non-zero B, so the update is not trivially zero.
        l.b = burn::module::Param::from_tensor(l.b.val().add_scalar(0.25));
    }
    io::save_peft(&dir, [("fc".to_string(), &lora)], &SamePaths, None).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(
        (json["r"].as_u64(), json["lora_alpha"].as_f64()),
        (Some(3), Some(6.0))
    );
    let loaded = io::load_peft::<Cpu>(&dir, &SamePaths, &device()).unwrap();
    let (Adapter::Lora(a), Adapter::Lora(b)) = (&lora, &loaded["fc"]) else {
        panic!("LoRA expected")
    };
    assert_eq!(a.a.val().into_data(), b.a.val().into_data());
    assert_eq!(a.b.val().into_data(), b.b.val().into_data());
    assert_eq!(a.scaling, b.scaling);
    // rsLoRA scales by alpha / sqrt(r); per-module ranks come from rank_pattern.
    let mut json = json;
    json["use_rslora"] = true.into();
    std::fs::write(dir.join("adapter_config.json"), json.to_string()).unwrap();
    let Adapter::Lora(rs) = &io::load_peft::<Cpu>(&dir, &SamePaths, &device()).unwrap()["fc"]
    else {
        panic!("LoRA expected")
    };
    assert!((rs.scaling - 6.0 / 3f64.sqrt()).abs() < 1e-12);
    json["rank_pattern"] = serde_json::json!({"fc": 2});
    std::fs::write(dir.join("adapter_config.json"), json.to_string()).unwrap();
    let err = io::load_peft::<Cpu>(&dir, &SamePaths, &device()).unwrap_err();
    assert!(matches!(err, PeanutError::ShapeMismatch { .. }), "{err}");
    json["rank_pattern"] = serde_json::json!({});
    json["use_dora"] = true.into();
    std::fs::write(dir.join("adapter_config.json"), json.to_string()).unwrap();
    let err = io::load_peft::<Cpu>(&dir, &SamePaths, &device()).unwrap_err();
    assert!(err.to_string().contains("use_dora"), "{err}");
}

#[test]
fn modules_saved_whole_are_read_in_both_key_spellings() {
    let dir = tempdir("peft-saved");
    let mut config = serde_json::json!({"peft_type": "PEANUT", "r": 2, "depth": 0,
        "act_fn": "relu", "target_modules": ["fc"], "modules_to_save": ["head"]});
    let adapter = [
        ("base_model.model.fc.peanut_A.weight", vec![2, 5]),
        ("base_model.model.fc.peanut_B.weight", vec![5, 2]),
    ];
    // As save_pretrained writes it, and as a live PeftModel's state dict spells it.
    let mut tensors = adapter.to_vec();
    tensors.push(("base_model.model.head.weight", vec![3, 5]));
    tensors.push((
        "base_model.model.head.modules_to_save.default.bias",
        vec![3],
    ));
    write_peft(&dir, config.clone(), &tensors);
    let loaded = io::load_peft_with_saved::<Cpu>(&dir, &SamePaths, &device()).unwrap();
    assert_eq!(loaded.adapters.len(), 1);
    let head = &loaded.saved["head"];
    assert_eq!(head.params["weight"].shape, [3, 5]);
    assert_eq!(head.params["bias"].shape, [3]);
    // load_peft alone still loads the adapters.
    assert_eq!(
        io::load_peft::<Cpu>(&dir, &SamePaths, &device())
            .unwrap()
            .len(),
        1
    );

    // Not listed in modules_to_save, or peft's frozen original copy: unexpected keys.
    config["modules_to_save"] = serde_json::Value::Null;
    write_peft(&dir, config.clone(), &tensors);
    let err = io::load_peft_with_saved::<Cpu>(&dir, &SamePaths, &device()).unwrap_err();
    assert!(
        matches!(&err, PeanutError::UnexpectedKey { key, .. } if key.contains("head")),
        "{err}"
    );
    config["modules_to_save"] = serde_json::json!(["head"]);
    let mut original = adapter.to_vec();
    original.push(("base_model.model.head.original_module.weight", vec![3, 5]));
    write_peft(&dir, config.clone(), &original);
    let err = io::load_peft_with_saved::<Cpu>(&dir, &SamePaths, &device()).unwrap_err();
    assert!(err.to_string().contains("original_module"), "{err}");

    // A module outside target_modules is refused, naming it.
    config["target_modules"] = serde_json::json!(["other"]);
    write_peft(&dir, config, &tensors);
    let err = io::load_peft_with_saved::<Cpu>(&dir, &SamePaths, &device()).unwrap_err();
    assert!(err.to_string().contains("`fc`"), "{err}");
}
