//! Whole-image replay tests (kernel-made journals).
