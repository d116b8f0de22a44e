//! `haiyun get -w`: the table now, then a row each time an object changes (one JSON or YAML object per change with
//! `-o`), until Ctrl-C, as `kubectl get -w` does.

use std::collections::HashMap;
use std::io::Write;

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::Format;
use crate::cluster::{CliError, api_error, not_found_hint, tidy};
use crate::view::{Tabular, line, widths};

/// How changes are printed: rows under the first table's columns, or whole objects.
#[derive(Debug)]
struct Printer {
    format: Format,
    widths: Vec<usize>,
}

impl Printer {
    /// Prints what there is now (the header first, even when there is nothing); false once stdout is closed.
    fn start<K: Tabular + Serialize>(&mut self, items: &[K]) -> bool {
        if self.format != Format::Table {
            return items.iter().all(|o| self.object(o));
        }
        let rows: Vec<Vec<String>> = items.iter().map(Tabular::row).collect();
        self.widths = widths(K::COLUMNS, &rows);
        let mut text = line(&self.widths, K::COLUMNS);
        for r in &rows {
            text.push_str(&line(&self.widths, r));
        }
        emit(&text)
    }

    /// Prints one object as it is now; false once stdout is closed.
    fn object<K: Tabular + Serialize>(&self, o: &K) -> bool {
        let text = match self.format {
            Format::Table | Format::Csv => line(&self.widths, &o.row()),
            Format::Json => serde_json::to_string(o).map(|s| s + "\n").unwrap_or_default(),
            Format::Yaml => serde_yaml::to_string(o).map(|s| format!("---\n{s}")).unwrap_or_default(),
        };
        emit(&text)
    }
}

/// Writes and flushes, so a reader sees each change at once; false when nobody reads any more.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// What tells an object's versions apart.
fn version<K: Resource>(o: &K) -> (String, String) {
    (o.uid().unwrap_or_else(|| o.name_any()), o.resource_version().unwrap_or_default())
}

/// Whether a watch error is the server saying no, which ends the command, rather than a break to resume from: an
/// answer in 4xx but 410 (gone: the watcher lists again) and 429 (too many requests), or one that is not a watch
/// at all (code 0: the demo answers a watch with a list).
fn refused(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    code == 0 || ((400..500).contains(&code) && code != 410 && code != 429)
}

/// A watch that failed before it listed anything, or that the server refused, as the CLI's error.
fn watch_error(kind: &'static str, e: watcher::Error) -> CliError {
    match e {
        watcher::Error::WatchFailed(kube::Error::Api(s)) if s.code == 0 => CliError::Refused(format!(
            "the server answered a watch of {kind} objects with something else (the demo serves no watches): \
             run without -w"
        )),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => api_error(kind, "", e),
        watcher::Error::WatchError(s) => CliError::Refused(s.message.clone()),
        watcher::Error::NoResourceVersion => {
            CliError::Refused(format!("the server cannot watch {kind} objects (no resourceVersion)"))
        }
    }
}

/// Lists `api` (only `name` when given), then prints each change until Ctrl-C or until stdout closes. A watch that
/// breaks off later resumes by itself, with a warning on stderr.
pub async fn run<K>(api: Api<K>, name: Option<&str>, format: Format) -> Result<(), CliError>
where
    K: Tabular + Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + 'static,
{
    let mut config = watcher::Config::default();
    if let Some(n) = name {
        config = config.fields(&format!("metadata.name={n}"));
    }
    let mut stream = std::pin::pin!(watcher(api.clone(), config).default_backoff());
    let mut printer = Printer { format, widths: Vec::new() };
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut listing: Vec<K> = Vec::new();
    let mut started = false;
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = next else { return Ok(()) };
        let changed: Vec<K> = match event {
            Err(e) if !started || refused(&e) => return Err(watch_error(K::KIND, e)),
            Err(e) => {
                eprintln!("warning: the watch of {} broke off ({e}); resuming", K::PLURAL);
                continue;
            }
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listing.push(tidy(o));
                continue;
            }
            Ok(Event::InitDone) if !started => {
                if let (Some(n), true) = (name, listing.is_empty()) {
                    return Err(CliError::NotFound {
                        kind: K::KIND,
                        name: n.into(),
                        hint: not_found_hint(&api),
                    });
                }
                started = true;
                seen.extend(listing.iter().map(version));
                if !printer.start(&listing) {
                    return Ok(());
                }
                listing.clear();
                continue;
            }
            // A relist after a long break: only what changed meanwhile.
            Ok(Event::InitDone) => std::mem::take(&mut listing),
            Ok(Event::Apply(o)) => vec![tidy(o)],
            Ok(Event::Delete(o)) => {
                let o = tidy(o);
                seen.remove(&version(&o).0);
                if !printer.object(&o) {
                    return Ok(());
                }
                continue;
            }
        };
        for o in changed {
            let (id, rv) = version(&o);
            if seen.get(&id) == Some(&rv) {
                continue;
            }
            seen.insert(id, rv);
            if !printer.object(&o) {
                return Ok(());
            }
        }
    }
}
