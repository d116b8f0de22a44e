//! The kubeconfig of a remote cluster, from its Secret: checked as MultiKueue checks it (TLS verified, credentials
//! inline, no exec plugin or auth provider, no file reference), then turned into a client.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why a remote cluster's kubeconfig cannot be used; each names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    /// The Secret could not be read.
    #[error("failed to read Secret {secret:?} in the operator's namespace: {why}")]
    Secret {
        /// The Secret.
        secret: String,
        /// Why.
        why: String,
    },
    /// The Secret could not be read because this cluster's API server did not answer (the link is kept as it is).
    #[error("failed to read Secret {secret:?}: this cluster's API server did not answer: {why}")]
    LocalApi {
        /// The Secret.
        secret: String,
        /// Why.
        why: String,
    },
    /// The Secret has no `kubeconfig` key.
    #[error("Secret {0:?} has no key `kubeconfig`: put the remote cluster's kubeconfig under that key")]
    NoKey(String),
    /// Not a kubeconfig.
    #[error("Secret {secret:?} key `kubeconfig` is not a kubeconfig: {why}")]
    Parse {
        /// The Secret.
        secret: String,
        /// Why.
        why: String,
    },
    /// A field the operator refuses.
    #[error("Secret {secret:?} key `kubeconfig`: {field} {why}")]
    Refused {
        /// The Secret.
        secret: String,
        /// The field, as a path in the kubeconfig.
        field: String,
        /// Why, with the fix.
        why: &'static str,
    },
    /// The client could not be built.
    #[error("Secret {secret:?} key `kubeconfig`: failed to build a client from it: {why}")]
    Client {
        /// The Secret.
        secret: String,
        /// Why.
        why: String,
    },
}

const INLINE: &str = "references a file on the operator's machine; inline it (the *-data field) instead";

/// Parses and checks the kubeconfig text of Secret `secret`: its current context's cluster and user must verify TLS
/// and carry their credentials inline.
pub fn check(secret: &str, text: &str) -> Result<Kubeconfig, KubeconfigError> {
    let parse = |why: String| KubeconfigError::Parse { secret: secret.into(), why };
    let kc = Kubeconfig::from_yaml(text).map_err(|e| parse(e.to_string()))?;
    let refuse = |field: String, why| KubeconfigError::Refused { secret: secret.into(), field, why };
    let current = kc.current_context.clone().ok_or_else(|| parse("it sets no current-context".into()))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| parse(format!("current-context {current:?} is not among its contexts")))?;
    let cluster =
        kc.clusters.iter().find(|c| c.name == ctx.cluster).and_then(|c| c.cluster.as_ref()).ok_or_else(
            || parse(format!("cluster {:?} of context {current:?} is not among its clusters", ctx.cluster)),
        )?;
    let at = |f: &str| format!("clusters[{}].cluster.{f}", ctx.cluster);
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(refuse(
            at("insecure-skip-tls-verify"),
            "skips TLS verification; give certificate-authority-data",
        ));
    }
    if cluster.certificate_authority.is_some() {
        return Err(refuse(at("certificate-authority"), INLINE));
    }
    if cluster.server.as_deref().is_none_or(|s| !s.starts_with("https://")) {
        return Err(refuse(at("server"), "must be an https:// URL"));
    }
    let Some(user_name) = ctx.user.as_ref() else { return Ok(kc) };
    let Some(user) = kc.auth_infos.iter().find(|u| &u.name == user_name).and_then(|u| u.auth_info.as_ref())
    else {
        return Err(parse(format!("user {user_name:?} of context {current:?} is not among its users")));
    };
    let at = |f: &str| format!("users[{user_name}].user.{f}");
    if user.exec.is_some() {
        return Err(refuse(
            at("exec"),
            "runs a program on the operator's machine; use a token or client certificate",
        ));
    }
    if user.auth_provider.is_some() {
        return Err(refuse(at("auth-provider"), "is not supported; use a token or client certificate"));
    }
    for (field, set) in [
        ("tokenFile", user.token_file.is_some()),
        ("client-certificate", user.client_certificate.is_some()),
        ("client-key", user.client_key.is_some()),
    ] {
        if set {
            return Err(refuse(at(field), INLINE));
        }
    }
    Ok(kc)
}

/// A client for a checked kubeconfig.
pub async fn client(secret: &str, kc: Kubeconfig) -> Result<Client, KubeconfigError> {
    let fail = |why: String| KubeconfigError::Client { secret: secret.into(), why };
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\n\
             clusters:\n- name: k\n  cluster:\n{cluster}\nusers:\n- name: u\n  user:\n{user}\n"
        )
    }

    const SERVER: &str = "    server: https://10.0.0.1:6443\n    certificate-authority-data: Zm9v";
    const TOKEN: &str = "    token: abc";

    fn refused(text: &str) -> String {
        match check("remote", text) {
            Err(KubeconfigError::Refused { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_inline_token_or_certificate_over_verified_tls_is_accepted() {
        assert!(check("remote", &config(SERVER, TOKEN)).is_ok());
        let cert = "    client-certificate-data: Zm9v\n    client-key-data: YmFy";
        assert!(check("remote", &config(SERVER, cert)).is_ok());
    }

    #[test]
    fn skipping_tls_verification_is_refused_naming_the_field() {
        let text = config("    server: https://10.0.0.1:6443\n    insecure-skip-tls-verify: true", TOKEN);
        assert_eq!(refused(&text), "clusters[k].cluster.insecure-skip-tls-verify");
        let e = check("remote", &text).unwrap_err().to_string();
        assert!(e.contains("Secret \"remote\"") && e.contains("certificate-authority-data"), "{e}");
    }

    #[test]
    fn exec_plugins_auth_providers_and_file_references_are_refused() {
        let exec = "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws";
        assert_eq!(refused(&config(SERVER, exec)), "users[u].user.exec");
        let provider = "    auth-provider:\n      name: oidc\n      config: {}";
        assert_eq!(refused(&config(SERVER, provider)), "users[u].user.auth-provider");
        assert_eq!(refused(&config(SERVER, "    tokenFile: /var/run/token")), "users[u].user.tokenFile");
        assert_eq!(
            refused(&config(SERVER, "    client-certificate: /a.crt\n    client-key-data: YmFy")),
            "users[u].user.client-certificate"
        );
        assert_eq!(
            refused(&config(SERVER, "    client-certificate-data: Zm9v\n    client-key: /a.key")),
            "users[u].user.client-key"
        );
        let ca_file = "    server: https://10.0.0.1:6443\n    certificate-authority: /ca.crt";
        assert_eq!(refused(&config(ca_file, TOKEN)), "clusters[k].cluster.certificate-authority");
        assert_eq!(refused(&config("    server: http://10.0.0.1:8080", TOKEN)), "clusters[k].cluster.server");
    }

    #[test]
    fn text_that_is_no_kubeconfig_or_names_no_context_is_a_parse_error() {
        assert!(matches!(check("remote", "{{{"), Err(KubeconfigError::Parse { .. })));
        let text = config(SERVER, TOKEN).replace("current-context: c", "current-context: other");
        let e = check("remote", &text).unwrap_err().to_string();
        assert!(e.contains("current-context \"other\""), "{e}");
    }
}
