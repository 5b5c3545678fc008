//! Quantized base weights (peanut::quant) on the ndarray backend: the NF4 levels, round trips
//! within each format's bound, a quantized layer against the float layer of its dequantized
//! weight (output, input gradient and adapter gradients; with the registered autodiff
//! operation and without), merging, padding of a short last block, and the typed errors.

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use peanut::init::SeededRng;
use peanut::quant::{self, BLOCK, QuantizeError};
use peanut::{
    AdaptedLinear, AdapterConfig, OutputInit, PeanutConfig, Quantization, QuantizedWeight,
};

type Cpu = NdArray<f32>;

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Normal-ish values (a sum of uniforms) with a few large ones, like trained weights.
fn weight_values(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = SeededRng::new(seed);
    (0..count)
        .map(|i| {
            let v = (0..4).map(|_| rng.uniform(-1.0, 1.0)).sum::<f64>() * 0.02;
            if i % 97 == 0 {
                (v * 10.0) as f32
            } else {
                v as f32
            }
        })
        .collect()
}

fn tensor<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}, tensor {i}");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "{what}, tensor {i}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn nf4_levels_are_qloras() {
    // The table printed in the QLoRA paper's appendix (and used by bitsandbytes), as f32.
    let published = [
        -1.0,
        -0.696_192_8,
        -0.525_073_05,
        -0.394_917_5,
        -0.284_441_38,
        -0.184_773_43,
        -0.091_050_036,
        0.0,
        0.079_580_3,
        0.160_930_2,
        0.246_112_3,
        0.337_915_24,
        0.440_709_83,
        0.562_617,
        0.722_956_84,
        1.0,
    ];
    for (ours, theirs) in quant::nf4_levels().iter().zip(published) {
        assert!((ours - theirs).abs() < 1e-6, "{ours} vs {theirs}");
    }
}

#[test]
fn round_trips_stay_within_the_format_bound() {
    let dims = [48, 80];
    let weights = weight_values(dims[0] * dims[1], 3);
    for format in Quantization::ALL {
        let q = QuantizedWeight::<Cpu>::from_values(&weights, dims, format, &Default::default())
            .unwrap();
        assert_eq!(q.dims(), dims);
        let back = values(q.dequantize());
        let bound = format.max_error();
        let mut worst = 0f32;
        for (block, restored) in weights.chunks(BLOCK).zip(back.chunks(BLOCK)) {
            let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (w, r) in block.iter().zip(restored) {
                let error = (w - r).abs() / scale;
                assert!(error <= bound * (1.0 + 1e-5) + 1e-7, "{format}: {w} → {r}");
                worst = worst.max(error);
            }
            // The largest magnitude of a block is a level (±1·s): it comes back exactly.
            let at = block
                .iter()
                .position(|v| v.abs() == scale)
                .expect("the scale is a value's magnitude");
            assert!((restored[at] - block[at]).abs() <= 1e-6 * scale, "{format}");
        }
        // The bound is tight enough to mean something: the worst error is near it.
        assert!(
            worst > bound * 0.5,
            "{format}: worst {worst}, bound {bound}"
        );
        let count = dims[0] * dims[1];
        let expected = count / format.values_per_byte() + 4 * count / BLOCK;
        assert_eq!(q.stored_bytes(), expected);
    }
    // Bounds: int8 is 1/254 of the scale; nf4's widest gap is between its two lowest levels
    // (the negative side has one level fewer).
    assert!((Quantization::Int8.max_error() - 0.5 / 127.0).abs() < 1e-7);
    let nf4 = quant::nf4_levels();
    assert!((Quantization::Nf4.max_error() - (nf4[1] - nf4[0]) / 2.0).abs() < 1e-7);
}

#[test]
fn an_all_zero_block_stays_zero() {
    let mut weights = weight_values(2 * BLOCK, 5);
    weights[..BLOCK].fill(0.0);
    for format in Quantization::ALL {
        let q =
            QuantizedWeight::<Cpu>::from_values(&weights, [2, BLOCK], format, &Default::default())
                .unwrap();
        let back = values(q.dequantize());
        assert!(back[..BLOCK].iter().all(|v| *v == 0.0), "{format}");
    }
}

/// A dense layer with a weight, and the same layer quantized; both with the same PEANuT adapter
/// (depth 2, a nonzero `B`) and bias. The dense one holds the quantized weight's dequantized
/// values, so the two must compute the same.
fn layers<B: Backend>(
    dims: [usize; 2],
    format: Quantization,
) -> (AdaptedLinear<B>, AdaptedLinear<B>) {
    let device = Default::default();
    let weights = weight_values(dims[0] * dims[1], 11);
    let bias = tensor::<B, 1>(weight_values(dims[1], 12), [dims[1]]);
    let quantized = QuantizedWeight::<B>::from_values(&weights, dims, format, &device).unwrap();
    let dense = Linear {
        weight: Param::from_tensor(quantized.dequantize()),
        bias: Some(Param::from_tensor(bias.clone())),
    };
    let adapter = AdapterConfig::from(
        PeanutConfig::new(3)
            .with_depth(2)
            .with_b_init(OutputInit::KaimingUniform),
    );
    let dense =
        AdaptedLinear::new(dense).with_adapter(adapter.init(dims[0], dims[1], 7, &device).unwrap());
    let quantized = AdaptedLinear::from_quantized(quantized, Some(Param::from_tensor(bias)))
        .with_adapter(adapter.init(dims[0], dims[1], 7, &device).unwrap());
    (dense, quantized)
}

/// Output, input gradient and every adapter gradient of `layer` on fixed inputs.
fn output_and_gradients<B: AutodiffBackend>(layer: &AdaptedLinear<B>) -> Vec<Vec<f32>> {
    let [d_in, d_out] = layer.dims();
    let x = tensor::<B, 3>(weight_values(2 * 5 * d_in, 21), [2, 5, d_in]).require_grad();
    let probe = tensor::<B, 3>(weight_values(2 * 5 * d_out, 22), [2, 5, d_out]);
    let y = layer.forward(x.clone());
    let grads = (y.clone() * probe).sum().backward();
    let mut out = vec![values(y), values(x.grad(&grads).unwrap())];
    let adapter = match &layer.adapters[0] {
        peanut::Adapter::Peanut(adapter) => adapter,
        other => panic!("not PEANuT: {other:?}"),
    };
    out.push(values(adapter.a.val().grad(&grads).unwrap()));
    out.push(values(adapter.b.val().grad(&grads).unwrap()));
    for encoder in &adapter.encoders {
        out.push(values(encoder.val().grad(&grads).unwrap()));
    }
    out
}

fn quantized_equals_dequantized<B: AutodiffBackend>() {
    for format in Quantization::ALL {
        let (dense, quantized) = layers::<B>([32, 48], format);
        assert_eq!(quantized.quantization(), Some(format));
        assert_eq!(quantized.dims(), [32, 48]);
        assert_close(
            &output_and_gradients(&dense),
            &output_and_gradients(&quantized),
            format.name(),
        );
        // Merging uses the dequantized weight.
        let merged = values(quantized.merged_weight());
        assert_close(&[values(dense.merged_weight())], &[merged], "merged");
    }
}

#[test]
fn the_registered_operation_gives_the_dequantized_layers_gradients() {
    quant::register_autodiff::<Cpu, NoCheckpointing>();
    quant::register_autodiff::<Cpu, BalancedCheckpointing>();
    assert!(quant::is_registered::<Autodiff<Cpu>>());
    assert!(quant::is_registered::<Autodiff<Cpu, BalancedCheckpointing>>());
    quantized_equals_dequantized::<Autodiff<Cpu>>();
    quantized_equals_dequantized::<Autodiff<Cpu, BalancedCheckpointing>>();
}

#[test]
fn an_unregistered_autodiff_backend_composes_burn_operations_with_the_same_gradients() {
    // Nothing in this test binary registers the f64 backend.
    assert!(!quant::is_registered::<Autodiff<NdArray<f64>>>());
    quantized_equals_dequantized::<Autodiff<NdArray<f64>>>();
}

#[test]
fn inference_on_a_quantized_layer_equals_the_dequantized_layer() {
    let (dense, quantized) = layers::<Cpu>([32, 48], Quantization::Nf4);
    let x = tensor::<Cpu, 2>(weight_values(4 * 32, 9), [4, 32]);
    let (a, b) = (
        values(dense.forward(x.clone())),
        values(quantized.forward(x)),
    );
    assert_close(&[a], &[b], "inference");
}

#[test]
fn merging_on_a_quantized_base_keeps_it_quantized_and_computes_the_same() {
    let x = tensor::<Cpu, 2>(weight_values(4 * 32, 9), [4, 32]);
    for format in Quantization::ALL {
        let (_, mut layer) = layers::<Cpu>([32, 48], format);
        // A LoRA adapter beside the PEANuT one: both merge as factors.
        let lora = AdapterConfig::from(peanut::LoraConfig::new(2).with_alpha(4.0))
            .init(32, 48, 3, &Default::default())
            .unwrap();
        let lora = match lora {
            peanut::Adapter::Lora(mut lora) => {
                lora.b = Param::from_tensor(tensor(weight_values(2 * 48, 4), [2, 48]));
                peanut::Adapter::Lora(lora)
            }
            other => other,
        };
        layer.push_adapter(lora);
        let unmerged = values(layer.forward(x.clone()));
        layer.merge_in_place();
        assert!(layer.is_merged());
        assert_eq!(
            layer.quantization(),
            Some(format),
            "merging keeps the base quantized"
        );
        let merged = values(layer.forward(x.clone()));
        assert_close(std::slice::from_ref(&unmerged), &[merged], format.name());
        // And the float weight it would have merged into gives the same outputs.
        let dense = x.clone().matmul(layer.merged_weight())
            + layer.base.bias.as_ref().unwrap().val().unsqueeze();
        assert_close(
            std::slice::from_ref(&unmerged),
            &[values(dense)],
            "merged weight",
        );
        layer.unmerge();
        assert!(!layer.is_merged());
        assert_close(&[unmerged], &[values(layer.forward(x.clone()))], "unmerged");
    }
}

#[test]
fn quantizing_a_layer_keeps_its_bias_and_adapters_and_training_it_dequantizes() {
    let (dense, _) = layers::<Cpu>([32, 48], Quantization::Int8);
    let before = values(dense.base_weight());
    let layer = dense.quantize(Quantization::Int8).unwrap();
    assert_eq!(layer.quantization(), Some(Quantization::Int8));
    assert_eq!(
        layer.base.weight.dims(),
        [0, 0],
        "the float weight is dropped"
    );
    assert_eq!(layer.adapters.len(), 1);
    assert!(layer.base.bias.is_some());
    let after = values(layer.base_weight());
    for (b, a) in before.iter().zip(&after) {
        assert!(
            (b - a).abs() <= 1e-6,
            "re-quantizing dequantized int8 values moves them"
        );
    }
    // Full fine-tuning dequantizes into a float parameter, which cannot be quantized again.
    let trained = layer.unfreeze_base(true);
    assert_eq!(trained.quantization(), None);
    assert_eq!(trained.base.weight.dims(), [32, 48]);
    assert!(matches!(
        trained.quantize(Quantization::Nf4),
        Err(QuantizeError::Trainable)
    ));
}

#[test]
fn a_weight_that_does_not_fill_whole_blocks_has_its_last_block_padded() {
    let device = Default::default();
    // 5 × 27 = 135 values: two whole blocks and 7 values.
    let weights = weight_values(5 * 27, 8);
    for format in Quantization::ALL {
        let q = QuantizedWeight::<Cpu>::from_values(&weights, [5, 27], format, &device).unwrap();
        assert_eq!(
            q.stored_bytes(),
            3 * BLOCK / format.values_per_byte() + 3 * 4
        );
        let back = values(q.dequantize());
        assert_eq!(back.len(), weights.len());
        let tail = &weights[2 * BLOCK..];
        let scale = tail.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (w, r) in tail.iter().zip(&back[2 * BLOCK..]) {
            assert!(
                (w - r).abs() <= format.max_error() * scale * (1.0 + 1e-5),
                "{format}"
            );
        }
        // The products compute with it like with the dequantized float weight.
        let x = tensor::<Cpu, 2>(weight_values(3 * 5, 1), [3, 5]);
        let dense = x.clone().matmul(q.dequantize());
        let product = q.left_matmul(x);
        assert_close(&[values(dense)], &[values(product)], "odd shape");
    }
}

#[test]
fn weights_that_are_not_finite_are_refused() {
    let device = Default::default();
    let mut weights = vec![0.5; BLOCK];
    weights[3] = f32::NAN;
    let err =
        QuantizedWeight::<Cpu>::from_values(&weights, [1, BLOCK], Quantization::Int8, &device)
            .unwrap_err();
    assert!(matches!(err, QuantizeError::NonFinite(v) if v.is_nan()));
    assert!(err.to_string().contains("non-finite"), "{err}");
}

#[test]
fn names_parse_and_print() {
    for format in Quantization::ALL {
        assert_eq!(Quantization::from_name(format.name()), Some(format));
        assert_eq!(format.to_string(), format.name());
    }
    assert_eq!(Quantization::from_name("NF4"), Some(Quantization::Nf4));
    assert_eq!(Quantization::from_name("fp4"), None);
    assert!(Quantization::is_supported::<Cpu>(&Default::default()));
}
