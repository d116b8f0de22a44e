//! The README's "Install on a cluster" manifests are objects of the API as it is: each one read into its type and
//! written back keeps every field it sets (a misspelt or removed field would be dropped and show here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use haiyun_api::{ComputePool, Queue};
use serde_json::Value;

fn section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start =
        readme.find("## Install on a cluster").expect("the README has an 'Install on a cluster' section");
    let rest = &readme[start + 3..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

/// Whether every field `written` sets is in `read` with the same value (reading may add defaults, never drop).
fn kept(read: &Value, written: &Value) -> bool {
    match (read, written) {
        (Value::Object(r), Value::Object(w)) => w.iter().all(|(k, v)| r.get(k).is_some_and(|rv| kept(rv, v))),
        (Value::Array(r), Value::Array(w)) => r.len() == w.len() && r.iter().zip(w).all(|(r, w)| kept(r, w)),
        (r, w) => r == w,
    }
}

#[test]
fn the_install_sections_manifests_are_objects_of_the_api() {
    let text = section();
    let mut kinds = Vec::new();
    for block in text.split("```yaml").skip(1) {
        let yaml = &block[..block.find("```").unwrap()];
        let yaml: String =
            yaml.lines().map(|l| l.strip_prefix("   ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
        for doc in serde_yaml::Deserializer::from_str(&yaml) {
            let written: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = written["kind"].as_str().unwrap_or_default().to_string();
            let read_back = match kind.as_str() {
                "ComputePool" => {
                    serde_json::to_value(serde_json::from_value::<ComputePool>(written.clone()).unwrap())
                }
                "Queue" => serde_json::to_value(serde_json::from_value::<Queue>(written.clone()).unwrap()),
                other => panic!("the README shows a {other}, which this test does not know"),
            }
            .unwrap();
            assert!(
                kept(&read_back, &written),
                "the README's {kind} is not what the API reads:\n{written}\nread as\n{read_back}"
            );
            kinds.push(kind);
        }
    }
    assert_eq!(kinds, ["ComputePool", "Queue"], "{text}");
}
