//! The three recurrent architectures and what each records.
//!
//! All three use PyTorch's own parameter names and gate order (`rnn.weight_ih_l{k}`
//! holds G·H rows, the gates stacked in the order below), so a `state_dict()` of
//! `nn.LSTM`, `nn.GRU` or `nn.RNN(nonlinearity="tanh")` loads unchanged:
//! ```text
//! lstm  (G = 4: i, f, g, o)   c = f ⊙ c₋₁ + i ⊙ g,  h = o ⊙ tanh(c)        (see lstm.rs)
//! gru   (G = 3: r, z, n)      r = σ(W_ir x + b_ir + W_hr h₋₁ + b_hr)
//!                             z = σ(W_iz x + b_iz + W_hz h₋₁ + b_hz)
//!                             n = tanh(W_in x + b_in + r ⊙ (W_hn h₋₁ + b_hn))
//!                             h = (1 − z) ⊙ n + z ⊙ h₋₁                    (see gru.rs)
//! rnn   (G = 1)               h = tanh(W_ih x + b_ih + W_hh h₋₁ + b_hh)    (see rnn.rs)
//! ```

/// The recurrent architecture named in `cellscope.arch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `nn.LSTM`: gates i, f, g, o and a cell state c.
    #[default]
    Lstm,
    /// `nn.GRU`: gates r, z and the candidate n; no cell state.
    Gru,
    /// `nn.RNN` with tanh: only h.
    Rnn,
}

impl Arch {
    /// Every architecture, in the order help texts list them.
    pub const ALL: [Arch; 3] = [Arch::Lstm, Arch::Gru, Arch::Rnn];

    /// The name in `cellscope.arch`, the API and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Lstm => "lstm",
            Arch::Gru => "gru",
            Arch::Rnn => "rnn",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The name for people: "LSTM", "GRU", "tanh RNN".
    pub fn title(self) -> &'static str {
        match self {
            Arch::Lstm => "LSTM",
            Arch::Gru => "GRU",
            Arch::Rnn => "tanh RNN",
        }
    }

    /// G: the blocks of H rows stacked in `weight_ih` and `weight_hh`.
    pub(crate) fn gates(self) -> usize {
        match self {
            Arch::Lstm => 4,
            Arch::Gru => 3,
            Arch::Rnn => 1,
        }
    }

    /// Whether the state carries a cell state c besides h (LSTM only).
    pub(crate) fn has_cell(self) -> bool {
        self == Arch::Lstm
    }

    /// The kinds a trace of this architecture records, in the order a
    /// [`LayerTrace`](super::LayerTrace) holds them; h is always first.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            // The first eight of `Kind::ALL`: h, c, i, f, g, o, write, keep.
            Arch::Lstm => Kind::ALL.split_at(8).0,
            Arch::Gru => &[Kind::Hidden, Kind::Reset, Kind::Update, Kind::New],
            Arch::Rnn => &[Kind::Hidden],
        }
    }

    /// Whether this architecture records `kind`.
    pub(crate) fn has(self, kind: Kind) -> bool {
        self.kinds().contains(&kind)
    }

    /// The kinds shown when a request names none: h and c where there is a c,
    /// else h alone.
    pub(crate) fn default_kinds(self) -> &'static [Kind] {
        if self.has_cell() {
            &[Kind::Hidden, Kind::Cell]
        } else {
            &[Kind::Hidden]
        }
    }

    /// The kind a view opens on: c for an LSTM (the paper's figures), else h.
    pub(crate) fn default_kind(self) -> Kind {
        if self.has_cell() {
            Kind::Cell
        } else {
            Kind::Hidden
        }
    }

    /// The sigmoid gates (the gate-saturation plot's): i, f, o; r, z; none.
    pub fn gate_kinds(self) -> &'static [Kind] {
        match self {
            Arch::Lstm => &[Kind::Input, Kind::Forget, Kind::Output],
            Arch::Gru => &[Kind::Reset, Kind::Update],
            Arch::Rnn => &[],
        }
    }

    /// "h, r, z, n": this architecture's kinds for a message.
    pub fn kind_list(self) -> String {
        self.kinds().iter().map(|k| k.letter()).collect::<Vec<_>>().join(", ")
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::parse(s).ok_or_else(|| format!("unknown architecture {s:?} (use lstm, gru or rnn)"))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which recorded quantity of a cell. Not every architecture records every kind:
/// [`Arch::kinds`] lists what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    #[serde(rename = "h")]
    Hidden,
    #[serde(rename = "c")]
    Cell,
    #[serde(rename = "i")]
    Input,
    #[serde(rename = "f")]
    Forget,
    #[serde(rename = "g")]
    Candidate,
    #[serde(rename = "o")]
    Output,
    /// What the step writes into the memory: `i ⊙ g`.
    #[serde(rename = "write")]
    Write,
    /// What the step keeps of the previous memory: `f ⊙ c_{t−1}`, so that
    /// `c_t = keep + write` (except where a clamp overwrote `c_t`).
    #[serde(rename = "keep")]
    Keep,
    /// The GRU's reset gate r.
    #[serde(rename = "r")]
    Reset,
    /// The GRU's update gate z (z = 1 keeps the previous h).
    #[serde(rename = "z")]
    Update,
    /// The GRU's candidate n.
    #[serde(rename = "n")]
    New,
}

impl Kind {
    /// Every kind any architecture records: the LSTM's six, its two memory terms,
    /// then the GRU's gates.
    pub const ALL: [Kind; 11] = [
        Kind::Hidden,
        Kind::Cell,
        Kind::Input,
        Kind::Forget,
        Kind::Candidate,
        Kind::Output,
        Kind::Write,
        Kind::Keep,
        Kind::Reset,
        Kind::Update,
        Kind::New,
    ];

    /// The name used in URLs, the API and the CLI: one letter, or `write` and `keep`.
    pub fn letter(self) -> &'static str {
        match self {
            Kind::Hidden => "h",
            Kind::Cell => "c",
            Kind::Input => "i",
            Kind::Forget => "f",
            Kind::Candidate => "g",
            Kind::Output => "o",
            Kind::Write => "write",
            Kind::Keep => "keep",
            Kind::Reset => "r",
            Kind::Update => "z",
            Kind::New => "n",
        }
    }

    /// A longer description for people.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Hidden => "hidden state h",
            Kind::Cell => "cell state c",
            Kind::Input => "input gate i",
            Kind::Forget => "forget gate f",
            Kind::Candidate => "candidate g",
            Kind::Output => "output gate o",
            Kind::Write => "write i·g",
            Kind::Keep => "keep f·c₋₁",
            Kind::Reset => "reset gate r",
            Kind::Update => "update gate z",
            Kind::New => "candidate n",
        }
    }

    /// Whether the kind is a sigmoid gate (values in [0, 1]).
    pub fn is_gate(self) -> bool {
        matches!(self, Kind::Input | Kind::Forget | Kind::Output | Kind::Reset | Kind::Update)
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.letter() == s)
    }
}

/// A kind the model does not record, with what it does record: the one message for
/// the API (`bad_kind`), the command line and the library.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("kind {kind} does not exist in this {arch} model; it records {list}", kind = kind.letter(), list = arch.kind_list())]
pub struct MissingKind {
    pub kind: Kind,
    pub arch: Arch,
}

impl Arch {
    /// `Ok` if this architecture records `kind`, else the error that says which it does.
    pub(crate) fn check_kind(self, kind: Kind) -> Result<Kind, MissingKind> {
        if self.has(kind) {
            Ok(kind)
        } else {
            Err(MissingKind { kind, arch: self })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_belongs_to_some_architecture_and_h_comes_first() {
        for k in Kind::ALL {
            assert!(Arch::ALL.iter().any(|a| a.has(k)), "{k:?} is recorded by no architecture");
            assert_eq!(Kind::parse(k.letter()), Some(k));
        }
        for a in Arch::ALL {
            assert_eq!(a.kinds()[0], Kind::Hidden, "{a}");
            assert_eq!(Arch::parse(a.name()), Some(a));
            assert!(a.default_kinds().iter().all(|&k| a.has(k)));
        }
        let e = Arch::Gru.check_kind(Kind::Cell).unwrap_err().to_string();
        assert_eq!(e, "kind c does not exist in this gru model; it records h, r, z, n");
    }
}
