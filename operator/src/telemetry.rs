//! Logs, and OpenTelemetry traces of scheduling cycles and the audit trail's records as OpenTelemetry logs, sent
//! over OTLP/HTTP when an endpoint is configured.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("failed to set up the OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
}

/// Keeps the tracer and logger providers alive; flushes spans and records when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    logs: Option<SdkLoggerProvider>,
}

impl Telemetry {
    /// The logger the audit trail's records go out through (None without an endpoint).
    pub fn audit_logger(&self) -> Option<opentelemetry_sdk::logs::SdkLogger> {
        use opentelemetry::logs::LoggerProvider as _;
        self.logs.as_ref().map(|p| p.logger("haiyun-audit"))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.logs.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs logging (RUST_LOG, default `info,kube=warn`) and, with an OTLP endpoint (e.g.
/// `http://collector:4318`), a layer that sends spans (one per scheduling cycle) there.
pub fn init(otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let fmt =
        tracing_subscriber::fmt::layer().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return Ok(Telemetry::default());
    };
    let base = endpoint.trim_end_matches('/');
    let base = base.strip_suffix("/v1/traces").unwrap_or(base);
    let url = format!("{base}/v1/traces");
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter { endpoint: endpoint.into(), message: e.to_string() })?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("haiyun-operator").build();
    let provider =
        SdkTracerProvider::builder().with_resource(resource.clone()).with_batch_exporter(exporter).build();
    let records = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/logs"))
        .build()
        .map_err(|e| TelemetryError::Exporter { endpoint: endpoint.into(), message: e.to_string() })?;
    let logs = SdkLoggerProvider::builder().with_resource(resource).with_batch_exporter(records).build();
    let tracer = provider.tracer("haiyun-operator");
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();
    Ok(Telemetry { provider: Some(provider), logs: Some(logs) })
}
