//! Wall-clock time for the operator (the core never reads a clock; the operator hands it unix seconds).

use haiyun_scheduler::model::Time;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as MetaTime;

/// Now, in unix seconds.
pub fn now() -> Time {
    unix(&jiff::Timestamp::now())
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A timestamp in unix seconds (to the millisecond).
pub fn unix(t: &jiff::Timestamp) -> Time {
    t.as_millisecond() as f64 / 1000.0
}

/// Unix seconds of an RFC 3339 time.
pub fn parse(t: &str) -> Option<Time> {
    t.parse::<jiff::Timestamp>().ok().map(|t| unix(&t))
}

/// Unix seconds of an object's timestamp (0 when it has none).
pub fn of_meta(t: Option<&MetaTime>) -> Time {
    t.map_or(0.0, |t| unix(&t.0))
}

/// Unix seconds as an object's timestamp (to the millisecond).
pub fn meta(t: Time) -> Option<MetaTime> {
    jiff::Timestamp::from_millisecond((t * 1000.0) as i64).ok().map(MetaTime)
}

/// Unix seconds as RFC 3339 (whole seconds, UTC).
pub fn rfc3339(t: Time) -> String {
    let secs = if t.is_finite() { t.round() as i64 } else { 0 };
    jiff::Timestamp::from_second(secs).map_or_else(|_| String::new(), |ts| ts.to_string())
}
