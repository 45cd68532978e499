//! Placeholder: the in-memory registry lands next.
pub struct MemoryRegistry;
