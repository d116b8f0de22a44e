//! The demo's federation: ComputePools, Queues and Datasets read from YAML (the embedded default, or a file).

use haiyun_api::{ComputePool, Dataset, Queue};
use serde::Deserialize;

use crate::cluster::CliError;

/// The objects a federation file holds.
#[derive(Debug, Clone, Default)]
pub struct Federation {
    /// Pools.
    pub pools: Vec<ComputePool>,
    /// Queues.
    pub queues: Vec<Queue>,
    /// Datasets.
    pub datasets: Vec<Dataset>,
}

/// The federation `haiyun demo` runs when given none.
pub const DEFAULT: &str = include_str!("../../assets/demo-federation.yaml");

fn object<T: serde::de::DeserializeOwned>(v: serde_yaml::Value, what: &str) -> Result<T, CliError> {
    serde_yaml::from_value(v).map_err(|e| CliError::Input(format!("{what}: {e}")))
}

/// Reads a multi-document YAML of ComputePool, Queue and Dataset objects; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Federation, CliError> {
    let mut f = Federation::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(doc)
            .map_err(|e| CliError::Input(format!("{source}: document {}: {e}", i + 1)))?;
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let what = format!("{source}: document {} ({kind})", i + 1);
        match kind.as_str() {
            "ComputePool" => f.pools.push(object(v, &what)?),
            "Queue" => f.queues.push(object(v, &what)?),
            "Dataset" => f.datasets.push(object(v, &what)?),
            other => {
                return Err(CliError::Input(format!(
                    "{source}: document {}: kind {other:?} is not ComputePool, Queue or Dataset",
                    i + 1
                )));
            }
        }
    }
    if f.pools.is_empty() || f.queues.is_empty() {
        return Err(CliError::Input(format!(
            "{source}: a federation needs at least one ComputePool and one Queue"
        )));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_federation_has_every_kind_of_pool() {
        let f = parse(DEFAULT, "default").unwrap();
        let kinds: std::collections::BTreeSet<String> =
            f.pools.iter().map(|p| format!("{:?}", p.spec.kind).to_lowercase()).collect();
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["ai", "edge", "general", "hpc"]);
        assert!(f.pools.iter().all(|p| p.spec.backend.simulated.is_some()));
        let base = f.pools.iter().find(|p| p.metadata.name.as_deref() == Some("public-data-base")).unwrap();
        assert_eq!(base.spec.clearance, haiyun_api::Classification::Core);
        assert_eq!(f.queues.len(), 5);
        assert_eq!(f.datasets.len(), 4);
    }

    #[test]
    fn a_bad_document_is_named() {
        let e = parse("kind: Node\n", "f.yaml").unwrap_err().to_string();
        assert!(e.contains("f.yaml: document 1") && e.contains("Node"), "{e}");
        let e = parse("kind: Queue\nmetadata: {name: q}\nspec: {weight: nope}\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("document 1 (Queue)"), "{e}");
    }
}
