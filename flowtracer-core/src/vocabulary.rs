//! One vocabulary for every crate: the names of the core's option enums and the `flow/*`
//! metrics.
//!
//! Every option enum of the core ([`CreditMethod`](crate::baselines::CreditMethod),
//! [`LossType`](crate::grpo::LossType), [`ScaleRewards`](crate::grpo::ScaleRewards),
//! [`ApplyTo`](crate::shaping::ApplyTo), [`Select`](crate::shaping::Select),
//! [`AnswerMode`](crate::AnswerMode), [`LayerSelection`](crate::aggregate::LayerSelection))
//! has one snake_case name per variant, the TRL-style spelling. `Display` writes it,
//! `FromStr` reads it (an unknown name is [`Error::UnknownName`] listing the allowed ones),
//! and with the `serde` feature the enums serialise as that string. The trainer, the CLI
//! and the Python package use these impls; none of them restates the names.

use alloc::string::ToString;

use crate::error::Error;

/// Implements `name`, `ALL`, `NAMES`, `Display`, `FromStr` and (with `serde`) `Serialize` and
/// `Deserialize` for a fieldless enum from one table of `Variant => "name"` pairs.
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// The name of every variant, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The variant's snake_case name (what `Display` writes and `FromStr` reads).
            pub const fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl core::fmt::Display for $ty {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl core::str::FromStr for $ty {
            type Err = $crate::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::vocabulary::unknown($what, s, Self::NAMES)),
                }
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <alloc::string::String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use named_enum;

/// The error for a name that is none of `allowed`.
pub(crate) fn unknown(what: &'static str, given: &str, allowed: &'static [&'static str]) -> Error {
    Error::UnknownName {
        what,
        given: given.to_string(),
        allowed,
    }
}

/// The `flow/*` metric names, logged by every trainer (the Rust trainer and the Python
/// package log exactly these keys).
pub mod metrics {
    /// Mean credit weight over scored response tokens.
    pub const WEIGHT_MEAN: &str = "flow/weight_mean";
    /// Largest credit weight.
    pub const WEIGHT_MAX: &str = "flow/weight_max";
    /// Mean flow absorbed by the answer (1 by conservation).
    pub const ANSWER_MASS: &str = "flow/answer_mass";
    /// Fraction of completions without an answer span (weight 1 everywhere).
    pub const NO_ANSWER_FRAC: &str = "flow/no_answer_frac";
    /// Fraction of completions the core could not score (e.g. no source mass).
    pub const UNSCORED_FRAC: &str = "flow/unscored_frac";
    /// Largest `|sum_k W'[i][k] - 1|` over scored sequences and their live non-answer tokens.
    pub const CONSERVATION_RESIDUAL: &str = "flow/conservation_residual";
    /// Attention capture plus scoring time over the step time.
    pub const SCORING_TIME_FRAC: &str = "flow/scoring_time_frac";
    /// Precision of the selected tokens against the task's decisive tokens (when known).
    pub const FIDELITY: &str = "flow/fidelity";

    /// Every `flow/*` metric, in logging order.
    pub const ALL: &[&str] = &[
        WEIGHT_MEAN,
        WEIGHT_MAX,
        ANSWER_MASS,
        NO_ANSWER_FRAC,
        UNSCORED_FRAC,
        CONSERVATION_RESIDUAL,
        SCORING_TIME_FRAC,
        FIDELITY,
    ];
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use crate::AnswerMode;
    use crate::aggregate::LayerSelection;
    use crate::baselines::CreditMethod;
    use crate::grpo::{LossType, ScaleRewards};
    use crate::shaping::{ApplyTo, Select};

    /// Every name round-trips and is distinct; `NAMES` lines up with `ALL`.
    fn round_trip<T>(all: &[T], names: &[&str])
    where
        T: Copy + PartialEq + core::fmt::Debug + core::fmt::Display + core::str::FromStr,
        T::Err: core::fmt::Debug,
    {
        assert_eq!(all.len(), names.len());
        for (v, name) in all.iter().zip(names) {
            assert_eq!(v.to_string(), *name);
            assert_eq!(name.parse::<T>().unwrap(), *v);
        }
        for (i, a) in names.iter().enumerate() {
            assert!(!names[..i].contains(a), "{a} twice");
        }
    }

    #[test]
    fn names_round_trip() {
        round_trip(CreditMethod::ALL, CreditMethod::NAMES);
        round_trip(LossType::ALL, LossType::NAMES);
        round_trip(ScaleRewards::ALL, ScaleRewards::NAMES);
        round_trip(ApplyTo::ALL, ApplyTo::NAMES);
        round_trip(Select::ALL, Select::NAMES);
        round_trip(AnswerMode::ALL, AnswerMode::NAMES);
    }

    #[test]
    fn trl_spellings() {
        assert_eq!(LossType::DrGrpo.to_string(), "dr_grpo");
        assert_eq!(ScaleRewards::None.to_string(), "none");
        assert_eq!(ApplyTo::NonnegativeOnly.to_string(), "nonnegative_only");
        assert_eq!(CreditMethod::FlowTracer.to_string(), "flowtracer");
        assert_eq!(CreditMethod::BottomFlow.to_string(), "bottom_flow");
    }

    #[test]
    fn unknown_name_lists_the_allowed() {
        let e = "dr-grpo".parse::<LossType>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown loss_type \"dr-grpo\"; expected one of: grpo, bnpo, dr_grpo, dapo"
        );
    }

    #[test]
    fn layer_selection_round_trips() {
        for (text, sel) in [
            ("middle", LayerSelection::Middle),
            ("all", LayerSelection::All),
            ("2..6", LayerSelection::Range(2..6)),
            ("1,3,5", LayerSelection::List(alloc::vec![1, 3, 5])),
            ("7", LayerSelection::List(alloc::vec![7])),
            ("spaced:3", LayerSelection::Spaced(3)),
        ] {
            assert_eq!(text.parse::<LayerSelection>().unwrap(), sel, "{text}");
            assert_eq!(sel.to_string(), text);
        }
        for bad in [
            "", "middle2", "1,,2", "3..", "..3", "a..b", "spaced:", "spaced:x", "-1",
        ] {
            assert!(
                matches!(
                    bad.parse::<LayerSelection>(),
                    Err(crate::Error::UnknownName { what: "layers", .. })
                ),
                "{bad:?}"
            );
        }
    }
}
