//! A small IGVM writer, for our boot images and test generators.
