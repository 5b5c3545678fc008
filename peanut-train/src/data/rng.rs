//! The deterministic random generator of data order and augmentation: the workspace's one
//! SplitMix64, [`peanut::init::SeededRng`], under the name the data code uses. The same seed
//! gives the same batches on every platform and after a resume.

/// SplitMix64 (see [`peanut::init::SeededRng`]): `for_parts` seeds a stream from a tuple such
/// as (seed, epoch, example index); `permutation`, `below` and `uniform` draw from it.
pub use peanut::init::SeededRng as SplitMix64;
