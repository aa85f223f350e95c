//! activepref's preference trainer: the DPO loss family as pure functions over sequence log-probs, and
//! the optimizers that apply their gradients. Usable alone (like TRL's DPOTrainer) and by the active loop.

pub mod data;
pub mod loss;
pub mod optim;
pub mod train;
