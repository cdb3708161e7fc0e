pub mod agent;
pub mod bench;
pub mod bench_ae;
pub mod ca;
pub mod client;
pub mod dev;
pub mod sim;
