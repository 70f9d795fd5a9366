//! Context signals that feed policy: the client's network (address, zone), and later device
//! posture and location. Each signal reports the documented "unknown" value when absent.

pub mod network;
