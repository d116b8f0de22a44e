//! Haiyun's API: CRD types, the agent gRPC protocol and shared wire types (CRDs arrive with the operator).
