//! `check_root`: every record and every object of a root, read and hashed (being built).
