//! Launch measurements, folded over a launch plan's op stream.
