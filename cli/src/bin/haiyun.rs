//! `haiyun`: jobs, pools, queues and quota of a Haiyun cluster.

fn main() -> std::process::ExitCode {
    haiyun_cli::app::main()
}
