//! Trace loaders: public cluster traces parsed from text into the core's model (the caller reads the files).

mod alibaba;
mod gavel;
mod sequence;

pub use alibaba::{TraceError, TracePod, parse_nodes, parse_pods};
pub use gavel::{GavelJob, Throughputs, parse_jobs, parse_throughputs};
pub use sequence::Sequence;
