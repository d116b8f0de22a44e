//! A one-line progress bar on stderr, shown only when stderr is a terminal.

use std::io::{IsTerminal, Write};

/// Reports `done / total` on one refreshed stderr line.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: usize,
    shown: bool,
}

impl Progress {
    /// A bar for `total` steps, silent unless stderr is a terminal.
    pub fn new(label: &str, total: usize) -> Self {
        Progress { label: label.to_string(), total, shown: std::io::stderr().is_terminal() }
    }

    /// Shows `done` steps of the total.
    pub fn set(&self, done: usize) {
        if !self.shown {
            return;
        }
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        let bar: String = "#".repeat(filled) + &" ".repeat(width - filled.min(width));
        let _ = write!(std::io::stderr(), "\r{} [{bar}] {done}/{}", self.label, self.total);
        let _ = std::io::stderr().flush();
    }

    /// Clears the line.
    pub fn finish(&self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(self.label.len() + 50));
        }
    }
}
