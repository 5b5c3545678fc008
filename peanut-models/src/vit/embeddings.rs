//! [`VitEmbeddings`]: patches, the CLS token and learned position embeddings.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, backend::Backend};

use super::config::VitConfig;
use crate::error::{ModelError, Result};
use crate::source::{Init, Source};

/// The patch projection: a convolution whose kernel and stride are the patch size, i.e. one
/// linear map per non-overlapping patch. Field name as in transformers.
#[derive(Module, Debug)]
pub struct VitPatchEmbeddings<B: Backend> {
    /// Weight `[hidden_size, num_channels, patch_size, patch_size]` (PyTorch's layout, which
    /// burn's `Conv2d` shares) and bias `[hidden_size]`.
    pub projection: Conv2d<B>,
}

/// Token embeddings of a ViT: `[CLS; patches] + position_embeddings`.
#[derive(Module, Debug)]
pub struct VitEmbeddings<B: Backend> {
    /// The learned classification token, `[1, 1, hidden_size]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Learned position embeddings, `[1, 1 + grid², hidden_size]`.
    pub position_embeddings: Param<Tensor<B, 3>>,
    /// The patch projection.
    pub patch_embeddings: VitPatchEmbeddings<B>,
}

impl<B: Backend> VitEmbeddings<B> {
    /// Builds from `source` under `prefix` (`vit.embeddings`). When the checkpoint's position
    /// grid differs from `config`'s, the grid is resized bicubically (as transformers'
    /// `interpolate_pos_encoding`); returns the original grid side in that case.
    pub(crate) fn build(
        config: &VitConfig,
        prefix: &str,
        source: &mut Source<'_, B>,
    ) -> Result<(Self, Option<usize>)> {
        let d = config.hidden_size;
        let p = config.patch_size;
        let std = Init::Uniform(0.02 * 3f64.sqrt());
        let cls_token = source.param(&format!("{prefix}.cls_token"), [1, 1, d], std)?;
        let grid = config.grid_size();
        let key = format!("{prefix}.position_embeddings");
        let mut resized_from = None;
        let positions = match source.as_checkpoint().and_then(|c| c.shape(&key)) {
            Some(shape) if shape.len() == 3 && shape[2] == d && shape[1] != 1 + grid * grid => {
                let stored_grid = ((shape[1] - 1) as f64).sqrt().round() as usize;
                if stored_grid * stored_grid + 1 != shape[1] {
                    return Err(ModelError::ShapeMismatch {
                        path: source.as_checkpoint().expect("checked").file_of(&key),
                        key,
                        expected: vec![1, 1 + grid * grid, d],
                        found: shape,
                    });
                }
                let stored = source.tensor(&key, [1, shape[1], d], std)?;
                resized_from = Some(stored_grid);
                resize_positions(stored, stored_grid, grid)
            }
            _ => source.tensor(&key, [1, 1 + grid * grid, d], std)?,
        };
        let channels = config.num_channels;
        let bound = 1.0 / ((channels * p * p) as f64).sqrt();
        let projection = format!("{prefix}.patch_embeddings.projection");
        let weight = source.param(
            &format!("{projection}.weight"),
            [d, channels, p, p],
            Init::Uniform(bound),
        )?;
        let bias = source.param(&format!("{projection}.bias"), [d], Init::Uniform(bound))?;
        let projection = Conv2d {
            weight,
            bias: Some(bias),
            stride: [p, p],
            kernel_size: [p, p],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Valid,
        };
        let embeddings = Self {
            cls_token,
            position_embeddings: Param::from_tensor(positions).set_require_grad(false),
            patch_embeddings: VitPatchEmbeddings { projection },
        };
        Ok((embeddings, resized_from))
    }

    /// Embeds images.
    ///
    /// # Shapes
    /// - pixel_values: `[batch, num_channels, image_size, image_size]`
    /// - output: `[batch, 1 + grid², hidden_size]`
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, _, _, _] = pixel_values.dims();
        let patches = self.patch_embeddings.projection.forward(pixel_values); // [b, d, g, g]
        let patches = patches.flatten::<3>(2, 3).swap_dims(1, 2); // [b, g², d]
        let [_, _, d] = patches.dims();
        let cls = self.cls_token.val().expand([batch, 1, d]);
        Tensor::cat(vec![cls, patches], 1) + self.position_embeddings.val()
    }
}

/// Resizes the patch part of `[1, 1 + from², d]` position embeddings to a `to × to` grid
/// (bicubic, half-pixel centres, as `torch.nn.functional.interpolate(align_corners=False)`).
///
/// # Shapes
/// - positions: `[1, 1 + from², d]`
/// - output: `[1, 1 + to², d]`
pub fn resize_positions<B: Backend>(
    positions: Tensor<B, 3>,
    from: usize,
    to: usize,
) -> Tensor<B, 3> {
    if from == to {
        return positions;
    }
    let [_, _, d] = positions.dims();
    let cls = positions.clone().narrow(1, 0, 1);
    let grid = positions
        .narrow(1, 1, from * from)
        .reshape([1, from, from, d])
        .permute([0, 3, 1, 2]);
    let mut options = InterpolateOptions::new(InterpolateMode::Bicubic);
    options.align_corners = false;
    let resized = interpolate(grid, [to, to], options)
        .permute([0, 2, 3, 1])
        .reshape([1, to * to, d]);
    Tensor::cat(vec![cls, resized], 1)
}
