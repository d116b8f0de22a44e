//! Quota requests from flags: a queue, a flavor, an amount and a window (from now for `--hours`, or explicit times).

use haiyun_api::QuotaRequest;
use haiyun_api::quantity::QuantityError;
use serde_json::json;

use crate::cluster::CliError;

/// `haiyun quota request` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RequestFlags {
    /// The queue whose quota rises.
    #[arg(long)]
    pub queue: String,
    /// `nvidia.com/gpu:<model>`, `cpu` or `memory`.
    #[arg(long)]
    pub flavor: String,
    /// How much, e.g. `8` (GPUs or cores) or `64Gi` (memory).
    #[arg(long)]
    pub amount: String,
    /// For this many hours from now.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Why it is needed.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Request name (default: `<queue>-<unix time>`).
    #[arg(long)]
    pub name: Option<String>,
}

/// The request, its window opening at `now` (Unix seconds).
pub fn request(f: &RequestFlags, namespace: &str, now: i64) -> Result<QuotaRequest, CliError> {
    if !(f.hours.is_finite() && f.hours > 0.0) {
        return Err(CliError::Input("--hours must be more than 0".into()));
    }
    // A quantity, as the queue's quota is written: GPUs and cores as numbers ("8", "0.5"), memory as "64Gi".
    let amount = haiyun_api::quantity::parse(&f.amount).map_err(|e| match e {
        QuantityError::Negative(_) => CliError::Input("--amount must be more than 0".into()),
        _ => CliError::Input(format!(
            "--amount {:?} is not a number: write e.g. 8 (GPUs or cores) or 64Gi (memory)",
            f.amount
        )),
    })?;
    if amount <= 0.0 {
        return Err(CliError::Input("--amount must be more than 0".into()));
    }
    let at = |t: i64| {
        jiff::Timestamp::from_second(t).map(|t| t.to_string()).map_err(|e| CliError::Input(e.to_string()))
    };
    let end = now + (f.hours * 3600.0).round() as i64;
    let name = f.name.clone().unwrap_or_else(|| format!("{}-{now}", f.queue));
    let r = json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "QuotaRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"queue": f.queue, "flavor": f.flavor, "amount": f.amount, "start": at(now)?, "end": at(end)?,
                 "reason": f.reason}
    });
    serde_json::from_value(r).map_err(|e| CliError::Input(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_opens_now_for_its_hours_and_bad_amounts_are_refused() {
        let f = RequestFlags {
            queue: "team-a".into(),
            flavor: "nvidia.com/gpu:h100".into(),
            amount: "8".into(),
            hours: 2.0,
            ..Default::default()
        };
        let r = request(&f, "ml", 1_800_000_000).unwrap();
        assert_eq!(r.spec.start, "2027-01-15T08:00:00Z");
        assert_eq!(r.spec.end, "2027-01-15T10:00:00Z");
        assert_eq!(r.metadata.name.as_deref(), Some("team-a-1800000000"));
        let e = request(&RequestFlags { amount: "-3".into(), ..f.clone() }, "ml", 0).unwrap_err();
        assert!(e.to_string().contains("--amount must be more than 0"));
        let e = request(&RequestFlags { amount: "lots".into(), ..f.clone() }, "ml", 0).unwrap_err();
        assert!(e.to_string().contains("is not a number"));
        let memory = RequestFlags { flavor: "memory".into(), amount: "64Gi".into(), ..f };
        assert_eq!(request(&memory, "ml", 0).unwrap().spec.amount, "64Gi");
    }
}
