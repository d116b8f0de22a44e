//! Data classification levels and the datasets that carry them.

use serde::{Deserialize, Serialize};

use super::PoolId;

/// How sensitive data is; a pool's clearance is the highest level it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Anyone may see it.
    #[default]
    Public,
    /// Inside the organisation.
    Internal,
    /// Personal or commercially sensitive.
    Sensitive,
    /// The most protected public-data holdings.
    Core,
}

impl Classification {
    /// The lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Sensitive => "sensitive",
            Classification::Core => "core",
        }
    }
}

/// A dataset that jobs read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Unique name.
    pub name: String,
    /// Size in MiB.
    pub size_mib: u64,
    /// Its classification.
    pub classification: Classification,
    /// Pools holding a replica.
    pub replicas: Vec<PoolId>,
}
