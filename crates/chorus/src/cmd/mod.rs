pub mod agent;
pub mod bench;
pub mod ca;
pub mod client;
pub mod dev;
pub mod sim;
