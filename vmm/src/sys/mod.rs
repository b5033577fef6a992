//! Every `unsafe` block of the VMM: raw ioctls, mmaps, fds.
