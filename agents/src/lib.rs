//! Haiyun's node agent: GPU probes, health and telemetry streaming to the operator.
