//! Who an agent is: in a cluster, its projected ServiceAccount token, checked by TokenReview (the token is bound to
//! the agent's pod, so the API server names the pod's node); outside one, a file of per-node tokens.

use std::collections::HashMap;
use std::path::Path;

use haiyun_api::agent::TOKEN_AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

/// The TokenReview extra key that names the node of the pod a token is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Why an agent was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token.
    #[error("no bearer token: send `authorization: Bearer <token>`")]
    Missing,
    /// The agent reports as a node of a remote pool whose cluster is not linked.
    #[error(
        "node {0} names a remote pool whose cluster is not linked (yet): no API server there can review its token"
    )]
    NoCluster(String),
    /// The token is not valid.
    #[error("the token was not accepted: {0}")]
    Invalid(String),
    /// The token is valid but not for an agent.
    #[error("{0} is not the agent's service account")]
    NotAgent(String),
    /// The token names no node.
    #[error(
        "the token is not bound to a pod on a node (mount a projected token with audience {TOKEN_AUDIENCE})"
    )]
    NoNode,
    /// The token is for another node.
    #[error("the token belongs to node {token} but the agent says it is {claimed}")]
    Forged {
        /// The node the token proves.
        token: String,
        /// The node the agent claimed.
        claimed: String,
    },
    /// The API server could not be asked.
    #[error("failed to review the token: {0}")]
    Review(#[source] kube::Error),
    /// The token file could not be read.
    #[error("failed to read the agent token file {path}: {why} (write one `<node> <token>` per line)")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// How agents prove which node they speak for.
#[derive(Clone)]
pub enum Authenticator {
    /// TokenReview against the API server; the token must belong to `service_account`
    /// (`system:serviceaccount:<namespace>:<name>`) and be bound to a pod on a node. An agent that reports as
    /// `<pool>/<node>` runs in the cluster of remote pool `<pool>`: that cluster's API server reviews its token.
    TokenReview {
        /// The client.
        client: kube::Client,
        /// The agent's service account user name (in every cluster).
        service_account: String,
        /// The remote pools' clusters.
        remotes: Option<crate::backend::remote::Remotes>,
    },
    /// Static tokens, node → token.
    Tokens(HashMap<String, String>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::TokenReview { service_account, .. } => {
                f.debug_struct("TokenReview").field("service_account", service_account).finish()
            }
            Authenticator::Tokens(t) => f.debug_struct("Tokens").field("nodes", &t.len()).finish(),
        }
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Reads a token file: one `<node> <token>` per line; `#` starts a comment.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let err = |why: String| AuthError::File { path: path.display().to_string(), why };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(node), Some(token), None) => {
                    tokens.insert(node.to_string(), token.to_string());
                }
                _ => return Err(err(format!("line {} is not `<node> <token>`", n + 1))),
            }
        }
        Ok(Authenticator::Tokens(tokens))
    }

    /// The node `token` proves, if it is `claimed`.
    pub async fn check(&self, token: Option<&str>, claimed: &str) -> Result<(), AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let node = match self {
            Authenticator::Tokens(tokens) => {
                let mine = tokens.get(claimed).is_some_and(|t| same(t.as_bytes(), token.as_bytes()));
                if mine {
                    return Ok(());
                }
                let owner = tokens.iter().find(|(_, t)| same(t.as_bytes(), token.as_bytes()));
                match owner {
                    Some((node, _)) => node.clone(),
                    None => return Err(AuthError::Invalid("unknown token".into())),
                }
            }
            Authenticator::TokenReview { client, service_account, remotes } => {
                match claimed.split_once('/') {
                    // A node of a remote pool: its own cluster proves it, by the name it has there.
                    Some((pool, _)) => {
                        let remote = remotes.as_ref().and_then(|r| r.client(pool));
                        let remote = remote.ok_or_else(|| AuthError::NoCluster(claimed.to_string()))?;
                        crate::backend::remote::node_name(
                            pool,
                            &review(&remote, service_account, token).await?,
                        )
                    }
                    None => review(client, service_account, token).await?,
                }
            }
        };
        if node == claimed {
            Ok(())
        } else {
            Err(AuthError::Forged { token: node, claimed: claimed.to_string() })
        }
    }
}

async fn review(client: &kube::Client, service_account: &str, token: &str) -> Result<String, AuthError> {
    let review = TokenReview {
        spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![TOKEN_AUDIENCE.into()]) },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let out = api.create(&PostParams::default(), &review).await.map_err(AuthError::Review)?;
    let status = out.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(AuthError::Invalid(status.error.unwrap_or_else(|| "not authenticated".into())));
    }
    let user = status.user.unwrap_or_default();
    let name = user.username.unwrap_or_default();
    if name != service_account {
        return Err(AuthError::NotAgent(name));
    }
    user.extra
        .and_then(|mut e| e.remove(NODE_NAME_EXTRA))
        .and_then(|v| v.into_iter().next())
        .ok_or(AuthError::NoNode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_file_names_each_node_and_a_token_cannot_speak_for_another_node() {
        let path = std::env::temp_dir().join(format!("haiyun-agent-tokens-{}", std::process::id()));
        std::fs::write(&path, "# node token\nnode-a s3cret-a\nnode-b s3cret-b\n").unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        auth.check(Some("s3cret-a"), "node-a").await.unwrap();
        let e = auth.check(Some("s3cret-a"), "node-b").await.unwrap_err();
        assert!(
            matches!(&e, AuthError::Forged { token, claimed } if token == "node-a" && claimed == "node-b")
        );
        assert!(matches!(auth.check(Some("guess"), "node-a").await, Err(AuthError::Invalid(_))));
        assert!(matches!(auth.check(None, "node-a").await, Err(AuthError::Missing)));
        std::fs::write(&path, "node-a\n").unwrap();
        let e = Authenticator::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
