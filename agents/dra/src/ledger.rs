//! The claims prepared on this node, kept in a file so a restarted driver knows them: what each holds of each GPU,
//! and the refusal of a claim that would take a GPU past 100 %.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::allocation::Grant;

/// One prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// `namespace/name`.
    pub claim: String,
    /// Its GPUs.
    pub grants: Vec<Grant>,
    /// The pods it was reserved for.
    #[serde(default)]
    pub pods: Vec<PodRef>,
}

/// A pod a claim was reserved for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid (a pod of the same name with another uid is another pod).
    pub uid: String,
}

/// Why a claim was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// It would over-commit a GPU.
    #[error(
        "claim {claim} asks {asked}% of gpu-{index}, which already gives {held}% to {holders}: \
         a GPU's shares may not pass 100%"
    )]
    OverCommit {
        /// The claim.
        claim: String,
        /// The GPU.
        index: u32,
        /// What it asks.
        asked: u32,
        /// What others hold.
        held: u32,
        /// Who holds it.
        holders: String,
    },
    /// The file could not be written or read.
    #[error("failed to {what} the prepared-claims file {path}: {why}")]
    File {
        /// Read or write.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        why: String,
    },
}

/// Prepared claims by claim uid.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    claims: BTreeMap<String, Prepared>,
}

impl Ledger {
    /// The ledger kept in `path` (empty if the file does not exist yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, LedgerError> {
        let path = path.into();
        let claims = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| LedgerError::File {
                what: "read",
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(LedgerError::File { what: "read", path, why: e.to_string() }),
        };
        Ok(Ledger { path, claims })
    }

    /// The claim with this uid, if prepared.
    pub fn get(&self, uid: &str) -> Option<&Prepared> {
        self.claims.get(uid)
    }

    /// Percent of GPU `index` that prepared claims other than `uid` hold, and who holds it.
    fn held(&self, index: u32, uid: &str) -> (u32, Vec<&str>) {
        let mut sum = 0;
        let mut who = Vec::new();
        for p in self.claims.iter().filter(|(u, _)| *u != uid).map(|(_, p)| p) {
            let here: u32 = p.grants.iter().filter(|g| g.index == index).map(|g| g.cores).sum();
            if here > 0 {
                sum += here;
                who.push(p.claim.as_str());
            }
        }
        (sum, who)
    }

    /// Records a claim unless one of its GPUs would pass 100 %; a claim already recorded is replaced.
    pub fn admit(&mut self, uid: &str, prepared: Prepared) -> Result<(), LedgerError> {
        let mut asked: BTreeMap<u32, u32> = BTreeMap::new();
        for g in &prepared.grants {
            *asked.entry(g.index).or_default() += g.cores;
        }
        for (index, a) in asked {
            let (held, who) = self.held(index, uid);
            if held + a > 100 {
                return Err(LedgerError::OverCommit {
                    claim: prepared.claim.clone(),
                    index,
                    asked: a,
                    held,
                    holders: who.join(", "),
                });
            }
        }
        self.claims.insert(uid.into(), prepared);
        self.save()
    }

    /// The other prepared claims holding any GPU of `grants`, by uid.
    pub fn sharing(&self, uid: &str, grants: &[Grant]) -> Vec<(String, Prepared)> {
        self.claims
            .iter()
            .filter(|(u, p)| *u != uid && p.grants.iter().any(|g| grants.iter().any(|a| a.index == g.index)))
            .map(|(u, p)| (u.clone(), p.clone()))
            .collect()
    }

    /// Forgets a claim; returns whether it was there.
    pub fn release(&mut self, uid: &str) -> Result<bool, LedgerError> {
        let had = self.claims.remove(uid).is_some();
        if had {
            self.save()?;
        }
        Ok(had)
    }

    fn save(&self) -> Result<(), LedgerError> {
        let err = |e: &dyn std::fmt::Display| LedgerError::File {
            what: "write",
            path: self.path.clone(),
            why: e.to_string(),
        };
        let text = serde_json::to_string_pretty(&self.claims).map_err(|e| err(&e))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(&e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(claim: &str, index: u32, cores: u32) -> Prepared {
        Prepared {
            claim: claim.into(),
            grants: vec![Grant { request: "gpus".into(), index, cores, share_id: None }],
            pods: Vec::new(),
        }
    }

    #[test]
    fn shares_fill_a_gpu_to_100_and_no_further_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("haiyun-dra-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prepared.json");
        let _ = std::fs::remove_file(&path);
        let mut l = Ledger::open(&path).unwrap();
        l.admit("a", share("ns/a", 3, 50)).unwrap();
        l.admit("b", share("ns/b", 3, 50)).unwrap();
        // The same claim again (the kubelet retries) replaces itself rather than counting twice.
        l.admit("b", share("ns/b", 3, 50)).unwrap();
        let e = l.admit("c", share("ns/c", 3, 50)).unwrap_err().to_string();
        assert!(e.contains("asks 50% of gpu-3, which already gives 100% to ns/a, ns/b"), "{e}");
        l.admit("d", share("ns/d", 4, 100)).unwrap();
        let held: Vec<String> =
            l.sharing("c", &share("ns/c", 3, 50).grants).into_iter().map(|(u, _)| u).collect();
        assert_eq!(held, vec!["a", "b"]);
        let mut again = Ledger::open(&path).unwrap();
        assert_eq!(again.get("a"), Some(&share("ns/a", 3, 50)));
        assert!(again.release("a").unwrap());
        assert!(!again.release("a").unwrap());
        again.admit("c", share("ns/c", 3, 50)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
