//! IGVM parsing and validation (on top of `igvm_defs`), allocation-free, from a `&[u8]`.
