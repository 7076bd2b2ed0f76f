//! Jobs: the change job, queue backends, workers, retry schedule, reply wake-up.

pub mod change;
pub mod mail;
pub mod queue;
pub mod reply;
pub mod retry;
pub mod together;
pub mod worker;

pub use change::{ChangeOp, ScimChange};
pub use queue::Queue;
