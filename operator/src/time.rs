//! Wall-clock time for the operator (the core never reads a clock; the operator hands it unix seconds).

use haiyun_scheduler::model::Time;

/// Now, in unix seconds.
pub fn now() -> Time {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// Unix seconds as RFC 3339 (whole seconds, UTC).
pub fn rfc3339(t: Time) -> String {
    let secs = if t.is_finite() { t.round() as i64 } else { 0 };
    jiff::Timestamp::from_second(secs).map_or_else(|_| String::new(), |ts| ts.to_string())
}
