//! The selected backend (`peanut_train::backend::TrainBackend`, chosen by cargo feature) against
//! ndarray: a PEANuT layer's forward and gradients, exact GELU, and two training steps of a tiny
//! ViT.
//!
//! Under the default `ndarray` feature both sides are ndarray, so these only check that the
//! comparison runs. `.ci/wgpu.sh` runs them with `--features wgpu` on Mesa's software Vulkan
//! (lavapipe); with `--features cuda` they compare a GPU to the CPU.

use std::collections::BTreeMap;

use super::*;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use peanut::init::SeededRng;
use peanut::{Activation, AdaptedLinear, Adapter, Peanut};
use peanut_train::backend;

/// `shape` values drawn uniformly from `[-1, 1)` with `seed`: the same data on every backend.
fn uniform(seed: u64, shape: &[usize]) -> TensorData {
    let mut rng = SeededRng::new(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    TensorData::new(values, shape.to_vec())
}

fn tensor<B: Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(uniform(seed, &shape), device)
}

const D_IN: usize = 24;
const D_OUT: usize = 16;
const RANK: usize = 4;

/// A 24→16 linear with a depth-4 PEANuT adapter (one encoder/decoder pair) and a non-zero `B`,
/// so every adapter parameter gets a gradient.
fn adapted_layer<B: Backend>(activation: Activation, device: &B::Device) -> AdaptedLinear<B> {
    let base = Linear {
        weight: Param::from_tensor(tensor(1, [D_IN, D_OUT], device)),
        bias: Some(Param::from_tensor(tensor(2, [D_OUT], device))),
    };
    let adapter = Peanut::from_tensors(
        tensor(3, [D_OUT, RANK], device),
        vec![tensor(4, [RANK, RANK], device)],
        vec![tensor(5, [RANK, RANK], device)],
        tensor(6, [RANK, D_OUT], device),
        activation,
        0.5,
    );
    AdaptedLinear::new(base).with_adapter(Adapter::Peanut(adapter))
}

/// Output and gradients (named) of a smooth loss on a batch of `[2, 5, 24]` inputs.
fn forward_backward<B: AutodiffBackend>(
    activation: Activation,
    device: &B::Device,
) -> Vec<(&'static str, Vec<f64>)> {
    let layer = adapted_layer::<B>(activation, device);
    let x = tensor::<B, 3>(7, [2, 5, D_IN], device).require_grad();
    let y = layer.forward(x.clone());
    let target = tensor::<B, 3>(8, [2, 5, D_OUT], device);
    let loss = (y.clone() * target).sum() + (y.clone() * y.clone()).mean();
    let grads = loss.backward();
    assert!(
        layer.base.weight.grad(&grads).is_none(),
        "the frozen base weight must get no gradient"
    );
    let Adapter::Peanut(peanut) = &layer.adapters[0] else {
        unreachable!()
    };
    let grad = |t: &Tensor<B, 2>| common::values(t.grad(&grads).expect("a gradient"));
    vec![
        ("y", common::values(y)),
        ("dx", common::values(x.grad(&grads).expect("dx"))),
        ("dA", grad(&peanut.a)),
        ("dEnc", grad(&peanut.encoders[0])),
        ("dDec", grad(&peanut.decoders[0])),
        ("dB", grad(&peanut.b)),
    ]
}

/// `max|got − want| / max|want|`.
/// `‖got − want‖ / ‖want‖` (Euclidean norms).
fn norm_relative_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let norm = |values: &mut dyn Iterator<Item = f64>| values.map(|v| v * v).sum::<f64>().sqrt();
    let diff = norm(&mut got.iter().zip(want).map(|(g, w)| g - w));
    diff / norm(&mut want.iter().copied()).max(1e-12)
}

fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()))
        / scale
}

/// The backend the test suite's features select, by the same rule as `peanut_train::backend`:
/// a GPU feature, then flex, then candle, then ndarray. Fails when the root package's features and
/// peanut-train's disagree (a feature that does not reach peanut-train, say), which would make a
/// CI job run on another backend than it names.
#[test]
fn the_selected_backend_is_the_one_the_features_name() {
    let want = if cfg!(feature = "cuda-unfused") {
        "cuda"
    } else if cfg!(feature = "wgpu-unfused") {
        "wgpu"
    } else if cfg!(feature = "flex") {
        "flex"
    } else if cfg!(feature = "candle") {
        "candle"
    } else {
        "ndarray"
    };
    eprintln!("selected backend: {}", backend::NAME);
    assert_eq!(backend::NAME, want);
    // The training backend runs on the selected backend's default device.
    use burn::tensor::ElementConversion;
    let x = Tensor::<TrainBackend, 1>::from_floats([1.0, 2.0], &backend::device());
    assert_eq!(x.sum().into_scalar().elem::<f32>(), 3.0);
}

#[test]
fn adapted_linear_forward_and_grads_match_ndarray() {
    let device = backend::device();
    for activation in [Activation::Relu, Activation::Gelu, Activation::Silu] {
        let got = forward_backward::<TrainBackend>(activation, &device);
        let want = forward_backward::<common::Ad>(activation, &Default::default());
        for ((name, got), (_, want)) in got.iter().zip(&want) {
            let err = relative_error(got, want);
            eprintln!(
                "{} vs ndarray, {activation:?} {name}: max relative difference {err:.2e}",
                backend::NAME
            );
            assert!(err <= 1e-4, "{activation:?} {name}: {err:e}");
        }
    }
}

/// `Activation::Gelu` and its gradient at `points` on `B`, in f64.
fn gelu_and_gradient<B: AutodiffBackend>(points: &[f64], device: &B::Device) -> [Vec<f64>; 2] {
    let x = Tensor::<B, 1>::from_data(TensorData::new(points.to_vec(), [points.len()]), device)
        .require_grad();
    let y = Activation::Gelu.forward(x.clone());
    let grads = y.clone().sum().backward();
    let dx = x.grad(&grads).unwrap();
    [common::values(y), common::values(dx)]
}

/// The largest difference of `got` from `want`, relative to `max(1, |want|)`.
fn worst_difference(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0f64, f64::max)
}

#[test]
fn gelu_is_exact_both_ways_on_the_selected_backend_and_on_ndarray() {
    // The reference: erf composed in f64, differentiated by autodiff. f32 rounding is ~1e-7 of
    // the value; the tanh approximation's derivative is up to 8.7e-4 away from the exact one.
    let points: Vec<f64> = (-600..=600).map(|i| f64::from(i) / 100.0).collect();
    let [want_value, want_derivative] = gelu_and_gradient::<
        burn::backend::Autodiff<burn::backend::NdArray<f64>>,
    >(&points, &Default::default());
    let device = backend::device();
    for (name, [value, derivative]) in [
        (
            backend::NAME,
            gelu_and_gradient::<TrainBackend>(&points, &device),
        ),
        (
            "ndarray",
            gelu_and_gradient::<common::Ad>(&points, &Default::default()),
        ),
    ] {
        for (what, got, want) in [
            ("value", value, &want_value),
            ("derivative", derivative, &want_derivative),
        ] {
            let worst = worst_difference(&got, want);
            eprintln!("{name} exact GELU {what}: max difference {worst:.2e}");
            assert!(worst <= 1e-5, "{name} GELU {what} off by {worst:e}");
        }
    }
}

/// Every float parameter of a module by its field path (`vit.encoder.layer.0.…`).
fn params_by_path<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<f64>> {
    struct Paths {
        stack: Vec<String>,
        out: BTreeMap<String, Vec<f64>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Paths {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out
                .insert(self.stack.join("."), common::values(param.val()));
        }
    }
    let mut paths = Paths {
        stack: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut paths);
    paths.out
}

fn vit<B: Backend>(device: &B::Device) -> Vit<B> {
    let mut config = VitConfig::tiny();
    config.num_labels = 3;
    config.init::<B>(3, device).unwrap()
}

#[test]
fn two_peanut_training_steps_match_ndarray_and_train_only_adapters_and_head() {
    let root = temp_dir("backend");
    image_folder(&root.join("data"), 4);
    let dataset = data::detect(&root.join("data")).unwrap();
    // 12 images in batches of 6: two optimizer steps. Depth 4 and GELU reach the encoder/decoder
    // pair and the erf kernel.
    let mut config = tiny_config(Method::Peanut, 1);
    config.batch_size = 6;
    config.augment = false;
    config.adapter.depth = 4;
    config.adapter.activation = peanut::Activation::Gelu;

    let device = backend::device();
    let before = vit::<TrainBackend>(&device);
    let initial = params_by_path(&before.valid());
    let trained = train::train_image(
        before,
        &dataset,
        &checked(&config),
        &run(&root.join(backend::NAME), false),
        &device,
    )
    .unwrap();
    let reference = train::train_image(
        vit::<common::Ad>(&Default::default()),
        &dataset,
        &checked(&config),
        &run(&root.join("reference"), false),
        &Default::default(),
    )
    .unwrap();

    // Only the adapters and the head moved.
    let after = params_by_path(&trained.model);
    for (path, values) in &initial {
        let moved = after[path] != *values;
        assert_eq!(
            moved,
            path.starts_with("classifier."),
            "{path} moved: {moved}"
        );
    }
    let adapters: Vec<&String> = after.keys().filter(|p| !initial.contains_key(*p)).collect();
    // q and v of 2 blocks, each A, encoder, decoder and B.
    assert_eq!(adapters.len(), 2 * 2 * 4, "{adapters:?}");
    for path in adapters {
        assert!(path.contains(".adapters.0."), "{path}");
        if path.ends_with(".b") {
            assert!(after[path].iter().any(|v| *v != 0.0), "{path} still zero");
        }
    }

    // The same parameters and test loss as on ndarray. Adam steps each element by about
    // `lr · g/|g|` whatever the gradient's size, so an element whose gradient is at float noise
    // level (here: an adapter `B` element) moves by a full step in a direction that depends on
    // the kernels' summation order: its element-wise difference reached 9e-4 of the tensor's
    // scale on one CPU and 1.1e-2 on another (the kernels sum in another order there). The
    // tensor-wide norm of the difference is what a wrong kernel moves by O(1).
    let want = params_by_path(&reference.model);
    let mut worst = (0f64, String::new());
    let mut worst_element = (0f64, String::new());
    for (path, values) in &after {
        let err = norm_relative_error(values, &want[path]);
        if err > worst.0 {
            worst = (err, path.clone());
        }
        let err = relative_error(values, &want[path]);
        if err > worst_element.0 {
            worst_element = (err, path.clone());
        }
    }
    eprintln!(
        "{} vs ndarray after 2 steps: max relative parameter difference {:.2e} ({}), \
         largest element difference {:.2e} of its tensor's scale ({})",
        backend::NAME,
        worst.0,
        worst.1,
        worst_element.0,
        worst_element.1
    );
    // The element noise above is ~1/8 of that in norm here (1.15e-4); a wrong kernel is O(1).
    assert!(worst.0 <= 1e-2, "{} differs by {:e}", worst.1, worst.0);

    let loss = train::evaluate(
        &trained.model,
        &dataset.test,
        16,
        config.normalization,
        6,
        &device,
    )
    .loss;
    let reference_loss = train::evaluate(
        &reference.model,
        &dataset.test,
        16,
        config.normalization,
        6,
        &Default::default(),
    )
    .loss;
    eprintln!(
        "{} test loss {loss:.6}, ndarray {reference_loss:.6}",
        backend::NAME
    );
    assert!(loss.is_finite(), "loss {loss}");
    assert!(
        (loss - reference_loss).abs() <= 1e-4 * reference_loss.abs().max(1.0),
        "test loss {loss} vs ndarray {reference_loss}"
    );
}
