//! Slurm's JWT (HS256, payload `{"exp","iat","sun"}`) minted from the cluster's signing key, as `scontrol token` does.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A token for `user`, valid `lifespan_s` seconds from `now_unix`, signed with `key`.
pub fn mint(key: &[u8], user: &str, now_unix: i64, lifespan_s: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"exp": now_unix + lifespan_s, "iat": now_unix, "sun": user});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_carries_the_user_and_lifetime_and_verifies_with_the_key() {
        let t = mint(b"secret", "alice", 1_000, 300);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims, serde_json::json!({"exp": 1300, "iat": 1000, "sun": "alice"}));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        ring::hmac::verify(&key, format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
        assert!(
            ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other"), b"x", &sig).is_err()
        );
    }
}
