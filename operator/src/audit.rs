//! The audit trail's chain: each line of the decision log carries its number, the hash of the line before and its
//! own SHA-256 over both, so that an edited, removed or reordered line is found by `haiyun audit verify`.

use std::io::{Read, Seek, SeekFrom};

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where the chain stands: the last line's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last line's number (0: none yet).
    pub seq: u64,
    /// The last line's hash.
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Head { seq: 0, hash: GENESIS.into() }
    }
}

/// What is wrong with a chain, at which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The line is not a JSON object with `seq`, `prev` and `hash`.
    #[error("line {line}: not a record of the chain ({why})")]
    Malformed {
        /// The line.
        line: usize,
        /// Why.
        why: String,
    },
    /// Its hash does not match its content: it was edited.
    #[error("line {line}: its hash does not match its content (the line was changed after it was written)")]
    Edited {
        /// The line.
        line: usize,
    },
    /// It does not follow the line before.
    #[error(
        "line {line}: it does not follow the line before (expected seq {want_seq} after hash {want_prev:.12}…; a line was removed, added or moved)"
    )]
    Broken {
        /// The line.
        line: usize,
        /// The number it should have.
        want_seq: u64,
        /// The hash it should name.
        want_prev: String,
    },
    /// The file could not be read.
    #[error("{0}")]
    Io(String),
}

fn sha256(prev: &str, body: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(b"\n");
    ctx.update(body.as_bytes());
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The line for `body` (a JSON object that already holds `seq` and `prev`) after `head`: `body` with its hash
/// appended as the last field. Returns the line and the new head.
pub fn seal(body: &str, head: &Head) -> (String, Head) {
    let hash = sha256(&head.hash, body);
    let open = body.strip_suffix('}').unwrap_or(body);
    let line = format!("{open},\"hash\":\"{hash}\"}}");
    (line, Head { seq: head.seq + 1, hash })
}

/// A line's body (what its hash covers) and its hash.
fn split(line: &str) -> Option<(String, &str)> {
    let at = line.rfind(",\"hash\":\"")?;
    let hash = line[at + 9..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..at]), hash))
}

/// Checks every whole line of `text` in order (a last line without its newline is still being written, and is not a
/// record yet); returns the head.
pub fn verify(text: &str) -> Result<Head, AuditError> {
    let whole = if text.ends_with('\n') { text } else { text.rfind('\n').map_or("", |i| &text[..=i]) };
    let mut head = Head::default();
    for (i, line) in whole.lines().enumerate() {
        let n = i + 1;
        let bad = |why: &str| AuditError::Malformed { line: n, why: why.into() };
        let (body, hash) = split(line).ok_or_else(|| bad("no hash at its end"))?;
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let seq = v["seq"].as_u64().ok_or_else(|| bad("no seq"))?;
        let prev = v["prev"].as_str().ok_or_else(|| bad("no prev"))?;
        if seq != head.seq + 1 || prev != head.hash {
            return Err(AuditError::Broken { line: n, want_seq: head.seq + 1, want_prev: head.hash });
        }
        if sha256(prev, &body) != hash {
            return Err(AuditError::Edited { line: n });
        }
        head = Head { seq, hash: hash.to_string() };
    }
    Ok(head)
}

/// The head of the chain in `file` (opened for reading and appending), read from its last line; a last line cut
/// short by a crash (no newline) is removed first, as it was never a whole record.
pub fn resume(file: &mut std::fs::File) -> Result<Head, AuditError> {
    let io = |e: std::io::Error| AuditError::Io(e.to_string());
    let len = file.metadata().map_err(io)?.len();
    let from = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).map_err(io)?;
    if !tail.is_empty() && !tail.ends_with('\n') {
        let keep = tail.rfind('\n').map_or(from, |i| from + i as u64 + 1);
        file.set_len(keep).map_err(io)?;
        tail.truncate((keep - from) as usize);
        tracing::warn!(bytes = len - keep, "removed a decision-log line cut short by a crash");
    }
    file.seek(SeekFrom::End(0)).map_err(io)?;
    let Some(last) = tail.lines().last() else { return Ok(Head::default()) };
    let v: serde_json::Value =
        serde_json::from_str(last).map_err(|e| AuditError::Malformed { line: 0, why: e.to_string() })?;
    match (v["seq"].as_u64(), v["hash"].as_str()) {
        (Some(seq), Some(hash)) => Ok(Head { seq, hash: hash.into() }),
        // A log written before the chain: the chain starts here.
        _ => Ok(Head::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> String {
        let mut head = Head::default();
        let mut out = String::new();
        for i in 0..n {
            let body = format!("{{\"seq\":{},\"prev\":\"{}\",\"job\":\"ns/j{i}\"}}", head.seq + 1, head.hash);
            let (line, next) = seal(&body, &head);
            out.push_str(&line);
            out.push('\n');
            head = next;
        }
        out
    }

    #[test]
    fn a_sealed_chain_verifies_and_its_head_is_the_last_line() {
        let text = chain(5);
        let head = verify(&text).unwrap();
        assert_eq!(head.seq, 5);
        assert!(text.lines().last().unwrap().contains(&head.hash));
    }

    #[test]
    fn an_edited_line_fails_at_that_line() {
        let text = chain(5).replace("ns/j2", "ns/jX");
        assert_eq!(verify(&text), Err(AuditError::Edited { line: 3 }));
    }

    #[test]
    fn a_removed_or_moved_line_breaks_the_chain_at_the_line_after() {
        let text = chain(5);
        let lines: Vec<&str> = text.lines().collect();
        let removed = [lines[0], lines[1], lines[3], lines[4]].join("\n") + "\n";
        assert!(matches!(verify(&removed), Err(AuditError::Broken { line: 3, want_seq: 3, .. })));
        let moved = [lines[1], lines[0]].join("\n") + "\n";
        assert!(matches!(verify(&moved), Err(AuditError::Broken { line: 1, .. })));
    }

    #[test]
    fn resuming_a_file_cut_short_drops_the_partial_line_and_continues_the_chain() {
        let dir = std::env::temp_dir().join(format!("haiyun-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let text = chain(3);
        std::fs::write(&path, format!("{text}{{\"seq\":4,\"prev\"")).unwrap();
        let mut f = std::fs::OpenOptions::new().read(true).append(true).open(&path).unwrap();
        let head = resume(&mut f).unwrap();
        assert_eq!(head, verify(&text).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
