//! Trace loaders: public cluster traces parsed from text into the core's model (the caller reads the files).

mod alibaba;
mod sequence;

pub use alibaba::{TraceError, TracePod, parse_nodes, parse_pods};
pub use sequence::Sequence;
