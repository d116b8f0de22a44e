//! `kubectl-haiyun`: the same command line as `haiyun`, as a kubectl plugin (`kubectl haiyun …`).

fn main() -> std::process::ExitCode {
    haiyun_cli::app::main()
}
