//! Turning samples into batches: a seeded per-epoch order ([`EpochOrder`]) and a batcher that
//! decodes and transforms images in parallel ([`ImageBatcher`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::ImageSample;
use super::rng::SplitMix64;
use super::transform::{Normalization, Transform};

/// One example as the data loader hands it to the batcher: which sample, and in which pass over
/// the data (the epoch, counted from 0) — the pass seeds its augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRef {
    /// Index into the split's samples.
    pub index: usize,
    /// Pass over the data (0 for the first epoch).
    pub pass: usize,
}

/// A dataset of [`SampleRef`]s whose order is a seeded permutation that changes every pass.
///
/// burn's data loader asks for items `0..len` once per epoch, in order; this dataset counts the
/// requests to know the pass, so the permutation (and each example's augmentation) is a function
/// of `(seed, pass)` only. [`EpochOrder::starting_at_pass`] lets a resumed run continue with the
/// order the interrupted run would have used.
#[derive(Debug)]
pub struct EpochOrder {
    len: usize,
    seed: Option<u64>,
    requests: AtomicUsize,
    order: Mutex<(usize, Vec<usize>)>,
    /// `(per-device batch, devices)` when the order is laid out for data-parallel training.
    sharding: Option<(usize, usize)>,
}

impl EpochOrder {
    /// `len` examples, shuffled every pass from `seed`, or in order when `seed` is `None`.
    pub fn new(len: usize, seed: Option<u64>) -> Self {
        Self {
            len,
            seed,
            requests: AtomicUsize::new(0),
            order: Mutex::new((usize::MAX, Vec::new())),
            sharding: None,
        }
    }

    /// Lays the order out for `devices` data-parallel workers that each take batches of
    /// `per_device` examples, so that they compute what one device with batches of
    /// `per_device × devices` would.
    ///
    /// burn's multi-device training gives worker `d` the `d`-th of `devices` equal contiguous
    /// slices of the dataset (the last takes the remainder), and each step takes the next
    /// batch of every worker. Here worker `d`'s slice holds, for every step `k`, the `d`-th
    /// part of the single-device batch `k`; the last, partial batch is split as burn's slices
    /// end (`⌊r / devices⌋` examples each, the remainder to the last worker). So every step
    /// sees exactly the examples of the single-device step.
    pub fn for_devices(mut self, per_device: usize, devices: usize) -> Self {
        if devices > 1 && per_device > 0 {
            self.sharding = Some((per_device, devices));
        }
        self
    }

    /// The position in the single-device order of position `index` of the sharded layout.
    fn single_device_position(&self, index: usize) -> usize {
        let Some((per_device, devices)) = self.sharding else {
            return index;
        };
        let batch = per_device * devices;
        let full_steps = self.len / batch;
        let rest = self.len - full_steps * batch;
        let tail = rest / devices;
        let slice = full_steps * per_device + tail;
        // The last worker's slice runs to the end.
        let device = (index / slice.max(1)).min(devices - 1);
        let local = index - device * slice;
        if local < full_steps * per_device {
            let (step, offset) = (local / per_device, local % per_device);
            step * batch + device * per_device + offset
        } else {
            full_steps * batch + device * tail + (local - full_steps * per_device)
        }
    }

    /// Starts counting at pass `pass` (0-based), as after `pass` complete epochs.
    pub fn starting_at_pass(self, pass: usize) -> Self {
        self.requests.store(pass * self.len, Ordering::SeqCst);
        self
    }

    /// The examples of pass `pass` (0-based), as indices into the split, in the order a single
    /// device trains on them: step `k` takes positions `k·batch .. (k+1)·batch`, and with
    /// several devices ([`EpochOrder::for_devices`]) each step still takes exactly those
    /// examples. Written by `--save-initial` so another implementation can follow the run.
    pub fn pass_order(&self, pass: usize) -> Vec<usize> {
        match self.seed {
            Some(seed) => SplitMix64::for_parts(&[seed, pass as u64]).permutation(self.len),
            None => (0..self.len).collect(),
        }
    }

    fn permuted(&self, pass: usize, index: usize) -> usize {
        if self.seed.is_none() {
            return index;
        }
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if order.0 != pass {
            *order = (pass, self.pass_order(pass));
        }
        order.1[index]
    }
}

impl Dataset<SampleRef> for EpochOrder {
    fn get(&self, index: usize) -> Option<SampleRef> {
        if index >= self.len {
            return None;
        }
        let pass = self.requests.fetch_add(1, Ordering::SeqCst) / self.len.max(1);
        let position = self.single_device_position(index);
        Some(SampleRef {
            index: self.permuted(pass, position),
            pass,
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// A batch of images and their labels.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Normalized pixels. Shape: `[batch, channels, size, size]`.
    pub images: Tensor<B, 4>,
    /// Class indices. Shape: `[batch]`.
    pub targets: Tensor<B, 1, Int>,
}

/// How many other samples a batch whose every image failed to decode tries before it falls
/// back to a blank image (see [`ImageBatcher`]).
pub const STAND_IN_TRIES: usize = 32;

/// Decodes, transforms and stacks images, using every CPU core. Images that fail to decode are
/// left out of the batch and counted in [`ImageBatcher::skipped`].
///
/// burn's data loader cannot drop a batch, and a batch of zero examples has no defined loss. So
/// when *every* image of a batch fails, the batch holds one stand-in instead: the first sample
/// after the batch's first one (in split order, wrapping, at most [`STAND_IN_TRIES`] tries)
/// that decodes, or, when none does, a black image with the first item's label. Stand-ins are
/// counted in [`ImageBatcher::stand_ins`]; they are rare (one per batch of undecodable images)
/// and [`crate::train::evaluate`] never uses them.
#[derive(Debug, Clone)]
pub struct ImageBatcher {
    samples: Arc<[ImageSample]>,
    transform: Transform,
    normalization: Normalization,
    channels: usize,
    seed: u64,
    skipped: Arc<AtomicUsize>,
    stand_ins: Arc<AtomicUsize>,
}

impl ImageBatcher {
    /// A batcher over `samples` producing `[channels, size, size]` images with `transform`;
    /// `seed` drives the random augmentation together with each example's pass and index.
    pub fn new(
        samples: Arc<[ImageSample]>,
        transform: Transform,
        normalization: Normalization,
        channels: usize,
        seed: u64,
    ) -> Self {
        Self {
            samples,
            transform,
            normalization,
            channels,
            seed,
            skipped: Arc::new(AtomicUsize::new(0)),
            stand_ins: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many images failed to decode so far (they were left out of their batches).
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// How many batches so far had no decodable image and got a stand-in (see
    /// [`ImageBatcher`]). Clones share the count.
    pub fn stand_ins(&self) -> usize {
        self.stand_ins.load(Ordering::Relaxed)
    }

    /// The transformed pixels of one example, or `None` if it does not decode (a decoder that
    /// panics on a malformed file counts as a failure too).
    pub fn load(&self, item: SampleRef) -> Option<(Vec<f32>, usize)> {
        let sample = self.samples.get(item.index)?;
        let image =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sample.source.decode()))
                .ok()?
                .ok()?;
        let mut rng = SplitMix64::for_parts(&[self.seed, item.pass as u64, item.index as u64]);
        let values = self
            .transform
            .apply(&image, self.channels, &self.normalization, &mut rng);
        Some((values, sample.label))
    }

    /// One example for a batch none of whose `items` decoded (see [`ImageBatcher`]); the
    /// samples tried and failed here are not counted again in [`ImageBatcher::skipped`].
    fn stand_in(&self, items: &[SampleRef]) -> (Vec<f32>, usize) {
        self.stand_ins.fetch_add(1, Ordering::Relaxed);
        let len = self.samples.len();
        let first = items
            .first()
            .copied()
            .unwrap_or(SampleRef { index: 0, pass: 0 });
        let tries = STAND_IN_TRIES.min(len.saturating_sub(1));
        let found = (1..=tries)
            .map(|offset| SampleRef {
                index: (first.index + offset) % len,
                pass: first.pass,
            })
            .filter(|candidate| !items.contains(candidate))
            .find_map(|candidate| self.load(candidate));
        found.unwrap_or_else(|| {
            let size = self.transform.size();
            let black = image::DynamicImage::new_rgb8(size, size);
            let values = Transform::eval(size).apply(
                &black,
                self.channels,
                &self.normalization,
                &mut SplitMix64::new(0),
            );
            let label = self.samples.get(first.index).map_or(0, |s| s.label);
            (values, label)
        })
    }

    /// Loads `items` in parallel, keeping their order; failures are counted and left out.
    pub fn load_all(&self, items: &[SampleRef]) -> Vec<(Vec<f32>, usize)> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = items.len().div_ceil(threads).max(1);
        let loaded: Vec<Option<(Vec<f32>, usize)>> = if items.len() <= 1 {
            items.iter().map(|&item| self.load(item)).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = items
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || part.iter().map(|&i| self.load(i)).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .zip(items.chunks(chunk))
                    .flat_map(|(h, part)| h.join().unwrap_or_else(|_| vec![None; part.len()]))
                    .collect()
            })
        };
        let failed = loaded.iter().filter(|l| l.is_none()).count();
        self.skipped.fetch_add(failed, Ordering::Relaxed);
        loaded.into_iter().flatten().collect()
    }

    /// Stacks loaded examples into a batch on `device`.
    pub fn stack<B: Backend>(
        &self,
        loaded: Vec<(Vec<f32>, usize)>,
        device: &B::Device,
    ) -> ImageBatch<B> {
        let size = self.transform.size() as usize;
        let count = loaded.len();
        let mut pixels = Vec::with_capacity(count * self.channels * size * size);
        let mut labels = Vec::with_capacity(count);
        for (values, label) in loaded {
            pixels.extend_from_slice(&values);
            labels.push(label as i64);
        }
        ImageBatch {
            images: Tensor::from_data(
                TensorData::new(pixels, [count, self.channels, size, size]),
                device,
            ),
            targets: Tensor::from_data(TensorData::new(labels, [count]), device),
        }
    }
}

impl<B: Backend> Batcher<B, SampleRef, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<SampleRef>, device: &B::Device) -> ImageBatch<B> {
        let mut loaded = self.load_all(&items);
        if loaded.is_empty() {
            loaded.push(self.stand_in(&items));
        }
        self.stack(loaded, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// burn's `split_dataloader` slices: `devices` contiguous parts of `len / devices`, the last
    /// taking the remainder.
    fn burn_slices(len: usize, devices: usize) -> Vec<std::ops::Range<usize>> {
        let step = len / devices;
        (0..devices)
            .map(|d| {
                d * step..if d + 1 == devices {
                    len
                } else {
                    (d + 1) * step
                }
            })
            .collect()
    }

    #[test]
    fn sharded_order_gives_every_step_the_single_device_batch() {
        for len in [1, 2, 5, 8, 13, 16, 31, 64, 100] {
            for devices in [2, 3, 4] {
                for per_device in [1, 2, 3, 5] {
                    let order = EpochOrder::new(len, None).for_devices(per_device, devices);
                    let positions: Vec<usize> =
                        (0..len).map(|i| order.single_device_position(i)).collect();
                    let mut sorted = positions.clone();
                    sorted.sort_unstable();
                    assert_eq!(sorted, (0..len).collect::<Vec<_>>(), "a permutation");
                    let batch = per_device * devices;
                    let slices = burn_slices(len, devices);
                    for step in 0..len / batch {
                        let mut seen: Vec<usize> = slices
                            .iter()
                            .flat_map(|slice| {
                                let start = slice.start + step * per_device;
                                positions[start..(start + per_device).min(slice.end)].to_vec()
                            })
                            .collect();
                        seen.sort_unstable();
                        let expected: Vec<usize> = (step * batch..(step + 1) * batch).collect();
                        assert_eq!(seen, expected, "len {len}, {devices}×{per_device}, {step}");
                    }
                }
            }
        }
    }

    #[test]
    fn one_device_keeps_the_order() {
        let order = EpochOrder::new(10, Some(3)).for_devices(4, 1);
        let plain = EpochOrder::new(10, Some(3));
        for i in 0..10 {
            assert_eq!(order.get(i).unwrap().index, plain.get(i).unwrap().index);
        }
    }
}
