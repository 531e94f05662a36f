//! Commands that are clients of a running server, through the gRPC contract only: they name nothing of the
//! server's own layers, as a client written in another language could not.

pub mod send;
