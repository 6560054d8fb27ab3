//! safemount broker library.
