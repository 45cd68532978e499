//! Placeholder: the tenant state machine lands next.
