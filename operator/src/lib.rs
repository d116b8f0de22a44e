//! Haiyun's Kubernetes operator: controllers, the index, the scheduling loop and pool backends.
