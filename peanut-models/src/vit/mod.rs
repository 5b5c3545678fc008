//! The Vision Transformer of transformers' `ViTForImageClassification`.

pub mod attention;
pub mod config;
pub mod embeddings;
pub mod layer;
pub mod model;
pub mod paths;
pub mod preprocess;

pub use config::{VIT_ARCHITECTURES, VitConfig};
pub use model::{Vit, VitLoadOptions, VitLoadReport, VitModel};
pub use paths::VitPeftPaths;
pub use preprocess::{ImageProcessorConfig, PREPROCESSOR_FILE, Resample, ResizeTo};
