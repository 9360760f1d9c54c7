//! What a model file records about how it was made: the `cellscope.train`
//! metadata (DESIGN §3), one JSON object. The trainer writes it, `cellscope eval
//! --record NAME` adds to it, the model page and `GET /api/model` show it, and
//! `scripts/model-card.py` reads it; all of them go through [`TrainMeta`].
//!
//! Every field is optional: a model converted from PyTorch has `{}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::train::TrainConfig;

/// The `cellscope.train` metadata of a model file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainMeta {
    /// File name of the training text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_sha256: Option<String>,
    /// Characters of training text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_chars: Option<u64>,
    /// The run's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<TrainConfig>,
    /// The step the saved (best) model is from, and the epochs done by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    /// Validation loss at that step (the trainer's batched estimate, nats/char).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// The loss curve up to the saved step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<CurvePoint>,
    /// The test text's score (written by the trainer's `--test`, or `eval --record test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_chars: Option<u64>,
    /// The validation text scored as one stream (`eval --record val`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_chars: Option<u64>,
    /// `NAME_loss`, `NAME_sha256` and `NAME_chars` of other texts scored with
    /// `eval --record NAME`.
    #[serde(flatten)]
    pub recorded: BTreeMap<String, Recorded>,
}

/// One point of the loss curve: `[step, mean training loss since the last
/// point, validation loss at this step if measured]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint(pub u64, pub f64, pub Option<f64>);

/// A value `eval --record NAME` stored: a character count, a loss or a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recorded {
    Count(u64),
    Number(f64),
    Text(String),
}

impl TrainMeta {
    /// Records a text's score under `NAME_loss`, `NAME_sha256` and `NAME_chars`,
    /// into the named field where there is one (`test`, `val`), else into
    /// [`TrainMeta::recorded`].
    pub(crate) fn record(&mut self, name: &str, loss: f64, sha256: String, chars: u64) {
        // Through the JSON form, so a name matching a field's prefix (test, val,
        // train) lands in that field and never in both places.
        let mut v = serde_json::to_value(&*self).expect("metadata serialises");
        v[format!("{name}_loss")] = loss.into();
        v[format!("{name}_sha256")] = sha256.into();
        v[format!("{name}_chars")] = chars.into();
        *self = serde_json::from_value(v).expect("recorded fields have their fields' types");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_metadata() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::model::DEFAULT_MODEL);
        let file = crate::model::read_tensor_file(&path).expect("the shipped model");
        file.metadata["cellscope.train"].clone()
    }

    /// Every field of the shipped model's metadata lands in a named field and is
    /// written back under the same key with the same value.
    #[test]
    fn the_shipped_models_metadata_round_trips() {
        let text = shipped_metadata();
        let meta: TrainMeta = serde_json::from_str(&text).unwrap();
        assert!(meta.recorded.is_empty(), "unnamed fields: {:?}", meta.recorded.keys());
        let config = meta.config.as_ref().expect("config");
        assert_eq!((config.layers, config.hidden), (2, 512));
        assert_eq!(meta.steps, Some(11150));
        assert!(meta.curve.len() > 10 && meta.curve[0].2.is_none());
        assert!(meta.test_loss.is_some() && meta.val_loss.is_some() && meta.test_chars.is_some());
        let before: serde_json::Value = serde_json::from_str(&text).unwrap();
        let after = serde_json::to_value(&meta).unwrap();
        let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&before), keys(&after));
        // A config written before `arch` existed (absent = lstm) gets it written back
        // explicitly.
        let mut want = keys(&before["config"]);
        want.push("arch".into());
        want.sort();
        want.dedup();
        assert_eq!(want, keys(&after["config"]));
        assert_eq!(after["config"]["arch"], "lstm");
        for k in keys(&before).iter().filter(|k| *k != "config") {
            assert_eq!(before[k], after[k], "{k}");
        }
    }

    #[test]
    fn empty_and_malformed_metadata() {
        assert_eq!(serde_json::from_str::<TrainMeta>("{}").unwrap(), TrainMeta::default());
        assert_eq!(serde_json::to_string(&TrainMeta::default()).unwrap(), "{}");
        for bad in ["[1]", "7", "{\"steps\": \"many\"}", "{\"x\": {}}"] {
            assert!(serde_json::from_str::<TrainMeta>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_fills_named_fields_or_the_map() {
        let mut m = TrainMeta { train_chars: Some(5), ..TrainMeta::default() };
        m.record("test", 1.5, "ab".into(), 10);
        assert_eq!((m.test_loss, m.test_sha256.as_deref(), m.test_chars), (Some(1.5), Some("ab"), Some(10)));
        m.record("sqlite", 0.25, "cd".into(), 7);
        assert_eq!(m.recorded["sqlite_loss"], Recorded::Number(0.25));
        assert_eq!(m.recorded["sqlite_chars"], Recorded::Count(7));
        assert_eq!(m.recorded["sqlite_sha256"], Recorded::Text("cd".into()));
        m.record("train", 2.0, "ef".into(), 9);
        assert_eq!((m.train_chars, m.recorded.get("train_chars")), (Some(9), None));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json.matches("\"train_chars\"").count(), 1, "{json}");
        assert_eq!(serde_json::from_str::<TrainMeta>(&json).unwrap(), m);
    }
}
