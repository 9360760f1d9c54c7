//! The page view's int8 trace against the exact trace on the shipped model and its
//! reference text: the deviation the README reports, held to tolerances a change
//! must not exceed. (The kernels against a scalar int8 reference, on every kernel
//! this CPU has, are unit tests in `src/model/quant.rs`.)

use cellscope::finder::precision::int8_deviation;
use cellscope::model::{default_model_path, Model, Precision};

#[test]
fn int8_trace_stays_near_the_exact_trace_on_the_reference_text() {
    let path = default_model_path();
    let model = Model::load(&path).expect("the shipped model loads");
    let text = std::fs::read_to_string(path.with_extension("reference.txt")).expect("the reference text");
    let layers = int8_deviation(&model, &text).expect("an LSTM has an int8 trace");
    for l in &layers {
        eprintln!("{l:?}");
    }
    // Measured (AVX2 and portable alike: same integer sums): see the README's table.
    // h is shown on the page as round(127·h): the mean error is a fraction of one
    // step of that scale, and a cell's top contexts stay where they were.
    for l in &layers {
        let k = l.layer;
        assert!(l.h_mean < 0.01, "layer {k}: mean |Δh| {} (expected < 0.01)", l.h_mean);
        assert!(l.h_max < 0.5, "layer {k}: max |Δh| {} (expected < 0.5)", l.h_max);
        assert!(l.tanh_c_mean < 0.01, "layer {k}: mean |Δtanh c| {} (expected < 0.01)", l.tanh_c_mean);
        assert!(l.contexts_same > 0.8, "layer {k}: only {:.1}% of top contexts kept", 100.0 * l.contexts_same);
    }
    // The exact path is untouched by the int8 one.
    assert_eq!(model.trace_at("int x;", Precision::Exact).layers, model.trace("int x;").layers);
}
