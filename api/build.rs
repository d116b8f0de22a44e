//! Compiles the agent protocol and the part of the CRI the node fence calls (`proto/`) with protox, a Rust protobuf
//! compiler, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        let protos = ["proto/haiyun/agent/v1/agent.proto", "proto/cri/cri.proto"];
        for proto in protos {
            println!("cargo:rerun-if-changed={proto}");
        }
        let fds = protox::compile(protos, ["proto"])?;
        tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    }
    Ok(())
}
