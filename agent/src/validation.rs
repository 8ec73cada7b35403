//! The one error a setting's check returns: where it is (the key as the
//! operator writes it, e.g. `jails.sshd.ignoreip[0]`) and what to do. A leaf
//! like [`crate::units`]: config and every owner of a config section
//! (escalation, actions, geo, fleet) report through it, so none of them
//! needs `config`, and every error reads `PLACE: MESSAGE`.

/// A setting that is wrong: `place` names the key, `message` says what is
/// wrong and, where there is one, the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct ValidationError {
    pub place: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(place: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            place: place.into(),
            message: message.into(),
        }
    }
}

/// Shorthand for [`ValidationError::new`], as checks call it.
pub(crate) fn invalid(place: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError::new(place, message)
}
