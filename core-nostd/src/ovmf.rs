//! OVMF / TDVF firmware images: the SEV metadata and TDX metadata found through the GUID
//! table at the reset vector.
