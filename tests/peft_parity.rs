//! Golden parity with Hugging Face peft's PEANuT tuner (fixtures from
//! `tests/fixtures/make_peft_fixtures.py`): outputs, ΔW and every gradient, and a peft-written
//! adapter directory loaded through `peanut::io::peft`.

mod common;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, activation::relu};
use common::{Ad, Cpu, assert_close, fixture, read_fixture, values};
use peanut::io::{self, SamePaths};
use peanut::{Activation, AdaptedLinear, Adapter, Peanut};

const TOL: f64 = 1e-5;

const CASES: [&str; 9] = [
    "depth2_relu",
    "depth2_relu_zero_b",
    "depth4_gelu",
    "depth6_silu",
    "depth4_tanh",
    "depth2_gelu_tanh",
    "depth6_sigmoid",
    "depth4_leaky_relu",
    "depth2_linear",
];

fn check_case(name: &str) {
    let device = Default::default();
    let (t, meta) = read_fixture(&fixture(&format!("peft/{name}.safetensors")));
    let pairs: usize = meta["depth"].parse().unwrap();
    let scaling: f64 = meta["scaling"].parse().unwrap();
    let activation = Activation::from_peft_name(&meta["act_fn"]).unwrap();

    let matrix = |key: &str| t[key].matrix::<Ad>(true, &device);
    let encoders = (0..pairs).map(|i| matrix(&format!("enc.{i}"))).collect();
    let decoders = (0..pairs).map(|i| matrix(&format!("dec.{i}"))).collect();
    let peanut = Peanut::from_tensors(
        matrix("A"),
        encoders,
        decoders,
        matrix("B"),
        activation,
        scaling,
    );
    assert_eq!(peanut.depth(), 2 + 2 * pairs);
    let base = Linear {
        weight: Param::from_tensor(matrix("w0")),
        bias: Some(Param::from_tensor(t["bias"].vector::<Ad>(&device))),
    };
    let layer = AdaptedLinear::new(base).with_adapter(Adapter::Peanut(peanut));

    let x = t["x"].matrix::<Ad>(false, &device).require_grad();
    let y = layer.forward(x.clone());
    assert_close(
        &format!("{name}: y"),
        &values(y.clone()),
        &t["y"].values,
        TOL,
    );

    let w0 = t["w0"].matrix::<Cpu>(true, &device);
    let Adapter::Peanut(inner) = &layer.adapters[0] else {
        unreachable!()
    };
    let delta = Peanut::<Cpu>::from_tensors(
        inner.a.val().inner(),
        inner.encoders.iter().map(|e| e.val().inner()).collect(),
        inner.decoders.iter().map(|d| d.val().inner()).collect(),
        inner.b.val().inner(),
        activation,
        scaling,
    )
    .delta_weight(w0);
    assert_close(
        &format!("{name}: ΔW"),
        &values(delta),
        &t["delta_w"].transposed(),
        TOL,
    );

    let loss = (y * t["probe"].matrix::<Ad>(false, &device)).sum();
    let grads = loss.backward();
    let grad = |param: &Param<Tensor<Ad, 2>>| values(param.grad(&grads).expect("gradient"));
    assert_close(
        &format!("{name}: dA"),
        &grad(&inner.a),
        &t["grad.A"].transposed(),
        TOL,
    );
    assert_close(
        &format!("{name}: dB"),
        &grad(&inner.b),
        &t["grad.B"].transposed(),
        TOL,
    );
    for i in 0..pairs {
        let enc = &t[&format!("grad.enc.{i}")];
        let dec = &t[&format!("grad.dec.{i}")];
        assert_close(
            &format!("{name}: dEnc{i}"),
            &grad(&inner.encoders[i]),
            &enc.transposed(),
            TOL,
        );
        assert_close(
            &format!("{name}: dDec{i}"),
            &grad(&inner.decoders[i]),
            &dec.transposed(),
            TOL,
        );
    }
    assert_close(
        &format!("{name}: dx"),
        &values(x.grad(&grads).expect("x gradient")),
        &t["grad.x"].values,
        TOL,
    );
    assert!(
        layer.base.weight.grad(&grads).is_none(),
        "W0 got a gradient"
    );
    assert!(
        layer.base.bias.as_ref().unwrap().grad(&grads).is_none(),
        "bias got a gradient"
    );
}

#[test]
fn every_case_matches_peft_outputs_delta_and_gradients() {
    for name in CASES {
        check_case(name);
    }
}

#[test]
fn cases_cover_the_required_settings() {
    let mut depths = std::collections::BTreeSet::new();
    let mut activations = std::collections::BTreeSet::new();
    let (mut scaled, mut rectangular, mut nonzero_b) = (false, false, false);
    for name in CASES {
        let (t, meta) = read_fixture(&fixture(&format!("peft/{name}.safetensors")));
        depths.insert(2 + 2 * meta["depth"].parse::<usize>().unwrap());
        activations.insert(meta["act_fn"].clone());
        scaled |= meta["scaling"].parse::<f64>().unwrap() != 1.0;
        rectangular |= t["w0"].shape[0] != t["w0"].shape[1];
        nonzero_b |= t["B"].values.iter().any(|&v| v != 0.0);
    }
    assert_eq!(depths.into_iter().collect::<Vec<_>>(), [2, 4, 6]);
    assert!(activations.len() >= 4, "{activations:?}");
    assert!(scaled && rectangular && nonzero_b);
}

/// Builds the fixture MLP's two base layers.
fn mlp_layers(
    t: &std::collections::HashMap<String, common::Fixed>,
) -> (AdaptedLinear<Cpu>, AdaptedLinear<Cpu>) {
    let device = Default::default();
    let linear = |name: &str| Linear {
        weight: Param::from_tensor(t[&format!("{name}.weight")].matrix::<Cpu>(true, &device)),
        bias: Some(Param::from_tensor(
            t[&format!("{name}.bias")].vector::<Cpu>(&device),
        )),
    };
    (
        AdaptedLinear::new(linear("fc1")),
        AdaptedLinear::new(linear("fc2")),
    )
}

#[test]
fn peft_written_adapter_directory_loads_and_gives_pefts_output() {
    let device = Default::default();
    let dir = fixture("peft_adapter");
    let (t, _) = read_fixture(&dir.join("mlp.safetensors"));
    let (mut fc1, mut fc2) = mlp_layers(&t);
    let x = t["x"].matrix::<Cpu>(false, &device);

    let base_out = fc2.forward(relu(fc1.forward(x.clone())));
    assert_close("base output", &values(base_out), &t["y_base"].values, TOL);

    let adapters = io::load_peft::<Cpu>(&dir, &SamePaths, &device).unwrap();
    assert_eq!(
        adapters.keys().collect::<Vec<_>>(),
        ["fc1", "fc2"],
        "module paths"
    );
    for adapter in adapters.values() {
        let Adapter::Peanut(peanut) = adapter else {
            panic!("not PEANuT")
        };
        assert_eq!((peanut.rank(), peanut.depth()), (3, 4));
        assert_eq!(peanut.activation, Activation::Gelu);
        assert_eq!(peanut.scaling, 0.5);
    }
    io::attach(
        [("fc1".to_string(), &mut fc1), ("fc2".to_string(), &mut fc2)],
        adapters,
    )
    .unwrap();
    let adapted = fc2.forward(relu(fc1.forward(x.clone())));
    assert_close(
        "adapted output",
        &values(adapted.clone()),
        &t["y_adapted"].values,
        TOL,
    );

    // Written back in peft's format and read again: the same adapters, the same output.
    let out = std::env::temp_dir().join(format!("peanut-peft-roundtrip-{}", std::process::id()));
    io::save_peft(
        &out,
        [
            ("fc1".to_string(), &fc1.adapters[0]),
            ("fc2".to_string(), &fc2.adapters[0]),
        ],
        &SamePaths,
        None,
    )
    .unwrap();
    let reread = io::load_peft::<Cpu>(&out, &SamePaths, &device).unwrap();
    let (mut fc1b, mut fc2b) = mlp_layers(&t);
    io::attach(
        [
            ("fc1".to_string(), &mut fc1b),
            ("fc2".to_string(), &mut fc2b),
        ],
        reread,
    )
    .unwrap();
    let again = fc2b.forward(relu(fc1b.forward(x)));
    assert_eq!(values(again), values(adapted), "peft round trip");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    for field in ["peft_type", "r", "depth", "act_fn", "scaling"] {
        assert_eq!(
            written[field], original[field],
            "adapter_config.json field {field}"
        );
    }
    std::fs::remove_dir_all(out).ok();
}
