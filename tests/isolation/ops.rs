//! Attacks: ops (see main.rs).

#[allow(unused_imports)]
use super::*;
