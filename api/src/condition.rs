//! Kubernetes-style status conditions with observedGeneration.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One condition of an object's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Admitted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word for machines.
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The spec generation this condition describes.
    #[serde(default)]
    pub observed_generation: i64,
}

impl Condition {
    /// A condition; `now` is an RFC 3339 time.
    pub fn new(
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        generation: i64,
        now: &str,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now.into(),
            observed_generation: generation,
        }
    }
}

/// Sets `c` in `list`, keeping the old transition time when the status did not change.
pub fn set(list: &mut Vec<Condition>, mut c: Condition) {
    match list.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) => {
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
            *old = c;
        }
        None => list.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_a_condition_with_the_same_status_keeps_its_transition_time() {
        let mut list = vec![Condition::new("Admitted", false, "Quota", "short", 1, "t1")];
        set(&mut list, Condition::new("Admitted", false, "Quota", "still short", 2, "t2"));
        assert_eq!(list[0].last_transition_time, "t1");
        assert_eq!(list[0].observed_generation, 2);
        set(&mut list, Condition::new("Admitted", true, "Admitted", "", 2, "t3"));
        assert_eq!(list[0].last_transition_time, "t3");
        assert_eq!(list.len(), 1);
    }
}
