//! Placement plugins with the Kubernetes framework's extension points: Filter, Score and Reserve.

pub mod filter;
mod gpu_choice;
pub mod score;
mod typical;

pub use filter::{Unfit, check_node};
pub use gpu_choice::{best_fit_gpus, fitting_gpus, sorted_by_free};
pub use score::{Policy, PolicyError, PolicyName, Scored};
pub use typical::{TypicalPod, TypicalPods};
