//! The ledger's vocabulary: every code a command, a record, a hold or a refusal carries, each
//! defined once here with its text (`as_str`) and its reading (`parse`).
//!
//! The texts are what PostgreSQL stores (the CHECK constraints of `migrations/`), what the
//! wire carries (envelopes, worker replies) and what clients read (JSON bodies, metric labels).
//! Everywhere else a code is one of these enums: the store maps text to them at its edge, and
//! refuses a text it does not know instead of guessing.

use serde::{Deserialize, Serialize};

/// Defines a code enum with its text, once: `as_str`, `parse`, `ALL`, and serde using the
/// same text (snake_case).
macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The code's text, as stored and as shown.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value whose text is `s`; `None` for a text this build does not know.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes! {
    /// What a command does.
    Kind {
        Deposit => "deposit",
        Withdraw => "withdraw",
        WithdrawRequest => "withdraw_request",
    }
}

codes! {
    /// The decision recorded for a command (and answered for it).
    OutcomeStatus {
        /// Deposit or withdraw that changed the balance.
        Applied => "applied",
        /// Withdraw recorded but not applied (overdraft policy, another owner).
        Rejected => "rejected",
        /// withdraw_request granted: a hold was placed.
        Approved => "approved",
        /// withdraw_request refused: no hold.
        Denied => "denied",
        /// Reply only, never recorded: the id is already recorded with another payload;
        /// nothing was done.
        IdReused => "id_reused",
    }
}

impl OutcomeStatus {
    /// Whether the command changed the account (balance or held): applied or approved.
    pub fn took_effect(self) -> bool {
        matches!(self, OutcomeStatus::Applied | OutcomeStatus::Approved)
    }
}

codes! {
    /// Why a command was refused (recorded with a rejected or denied record, and answered).
    Reason {
        /// `available` does not cover it (a withdraw_request; a withdraw under
        /// `reject_overdraft`).
        InsufficientFunds => "insufficient_funds",
        /// A withdraw_request not decided by its deadline, or voided by the API that answered
        /// so.
        DeadlineExceeded => "deadline_exceeded",
        /// The command names a user other than the account's owner.
        AccountOwnedByAnotherUser => "account_owned_by_another_user",
        /// The id is already recorded with another payload (a reply and an API error; never
        /// a recorded reason).
        IdReused => "id_reused",
    }
}

codes! {
    /// Where a hold stands.
    HoldStatus {
        /// Counts in `held`: the money is promised to its request.
        Open => "open",
        /// A withdraw took the money it promised.
        Captured => "captured",
        /// Its TTL passed.
        Expired => "expired",
        /// Its request was voided (the API answered "denied").
        Released => "released",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        parse: fn(&str) -> Option<T>,
    ) {
        for &value in all {
            assert_eq!(parse(as_str(value)), Some(value));
            // serde writes the same text as `as_str`.
            assert_eq!(
                serde_json::to_value(value).ok(),
                Some(serde_json::Value::String(as_str(value).into()))
            );
        }
        assert_eq!(parse("bogus"), None);
    }

    #[test]
    fn every_code_reads_back_and_serializes_as_its_text() {
        round_trips(Kind::ALL, Kind::as_str, Kind::parse);
        round_trips(
            OutcomeStatus::ALL,
            OutcomeStatus::as_str,
            OutcomeStatus::parse,
        );
        round_trips(Reason::ALL, Reason::as_str, Reason::parse);
        round_trips(HoldStatus::ALL, HoldStatus::as_str, HoldStatus::parse);
    }
}
