//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

/// The CPU backend of the tests.
pub type Cpu = NdArray<f32>;
/// The CPU backend with autodiff.
pub type Ad = Autodiff<Cpu>;

/// `tests/fixtures/<relative>`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// A tensor read from a fixture: shape and values (f32 or f64 on disk) as f64.
#[derive(Clone, Debug)]
pub struct Fixed {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Fixed {
    /// As a burn matrix, transposed from PyTorch's `[out, in]` when `transpose`.
    pub fn matrix<B: Backend>(&self, transpose: bool, device: &B::Device) -> Tensor<B, 2> {
        let values: Vec<f32> = self.values.iter().map(|&v| v as f32).collect();
        let t = Tensor::<B, 2>::from_data(
            TensorData::new(values, [self.shape[0], self.shape[1]]),
            device,
        );
        if transpose { t.transpose() } else { t }
    }

    /// As a burn vector.
    pub fn vector<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1> {
        let values: Vec<f32> = self.values.iter().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(values, [self.values.len()]), device)
    }

    /// The values transposed (for a 2-D tensor), as a flat row-major vector.
    pub fn transposed(&self) -> Vec<f64> {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        (0..cols)
            .flat_map(|c| (0..rows).map(move |r| (r, c)))
            .map(|(r, c)| self.values[r * cols + c])
            .collect()
    }
}

/// Every tensor of a safetensors file, plus its metadata.
pub fn read_fixture(path: &Path) -> (HashMap<String, Fixed>, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("header");
    let meta = metadata.metadata().clone().unwrap_or_default();
    let file = SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            let fixed = Fixed {
                shape: view.shape().to_vec(),
                values,
            };
            (name, fixed)
        })
        .collect();
    (tensors, meta)
}

/// Values of a burn tensor as f64.
pub fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Asserts `max|got − want| ≤ tol · max(max|want|, 1e-12)`, i.e. relative to the tensor's scale.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} exceeds {tol:e} × scale {scale:e}"
    );
}
