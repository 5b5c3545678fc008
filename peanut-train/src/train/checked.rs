//! [`Checked`]: a training configuration that passed its checks, once, with the adapter
//! configuration of its method built from it.

use std::ops::Deref;

use peanut::AdapterConfig;

/// A training configuration ([`super::ImageTrainConfig`] or [`super::LmTrainConfig`]) that
/// passed its checks, holding the adapter configuration (`peanut::AdapterConfig`) its method and
/// shape describe. Only the configuration's `check` makes one, so the pipelines, which take a
/// `&Checked<_>`, never check again; the configuration is read through `Deref`.
///
/// ```text
/// command line ─┐
///               ├─> ImageTrainConfig ──check()──> Checked<ImageTrainConfig> ──> train_image
/// Rust code ────┘    (plain fields)    (the one     (+ the built AdapterConfig,    prepare_model
///                                       validation)  which builds the adapters)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<C> {
    config: C,
    adapter: Option<AdapterConfig>,
}

impl<C> Checked<C> {
    /// Wraps a configuration its `check` accepted, with the adapter configuration it built.
    pub(crate) fn new(config: C, adapter: Option<AdapterConfig>) -> Self {
        Self { config, adapter }
    }

    /// The adapter configuration of the method (`None` for `head` and `full`).
    pub fn adapter(&self) -> Option<&AdapterConfig> {
        self.adapter.as_ref()
    }

    /// The configuration, to change and check again.
    pub fn into_inner(self) -> C {
        self.config
    }

    /// The configuration, for the fields no check constrains (the callers say which).
    pub(crate) fn unconstrained_mut(&mut self) -> &mut C {
        &mut self.config
    }
}

impl<C> Deref for Checked<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use peanut::{Activation, LoraConfig, PeanutConfig};

    use crate::error::TrainError;
    use crate::train::{ImageTrainConfig, LmTrainConfig, Method};

    #[test]
    fn check_builds_the_adapter_configuration_of_the_method_once() {
        let mut config = ImageTrainConfig::default();
        config.adapter.rank = 5;
        config.adapter.depth = 4;
        config.adapter.activation = Activation::Gelu;
        let checked = config.clone().check().unwrap();
        let want = PeanutConfig::new(5)
            .with_depth(4)
            .with_activation(Activation::Gelu);
        assert_eq!(checked.adapter(), Some(&want.into()));
        assert_eq!(*checked, config);

        config.method = Method::Lora;
        let checked = config.clone().check().unwrap();
        let want = LoraConfig::new(5).with_alpha(config.adapter.lora_alpha);
        assert_eq!(checked.adapter(), Some(&want.into()));
        for method in [Method::Head, Method::Full] {
            config.method = method;
            assert_eq!(config.clone().check().unwrap().adapter(), None);
        }

        let lm = LmTrainConfig::default().check().unwrap();
        assert_eq!(lm.adapter().map(|a| a.rank()), Some(32));
    }

    #[test]
    fn check_refuses_what_could_not_work_naming_the_option() {
        let refused = |edit: &dyn Fn(&mut ImageTrainConfig)| {
            let mut config = ImageTrainConfig::default();
            edit(&mut config);
            config.check().unwrap_err().to_string()
        };
        assert!(refused(&|c| c.adapter.rank = 0).contains("rank"));
        assert!(refused(&|c| c.adapter.depth = 3).contains("depth"));
        assert!(refused(&|c| c.epochs = 0).contains("--epochs"));
        assert!(refused(&|c| c.adapter_lr = f64::NAN).contains("--adapter-lr"));
        let mut lm = LmTrainConfig {
            method: Method::Lora,
            ..LmTrainConfig::default()
        };
        lm.adapter.lora_alpha = 0.0;
        assert!(matches!(
            lm.check(),
            Err(TrainError::InvalidOption {
                option: "--lora-alpha",
                ..
            })
        ));
    }
}
