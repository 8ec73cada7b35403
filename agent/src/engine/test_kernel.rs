//! What the engine tests' fake enforcers share: the kernel's view of the
//! bans as a map, changed the way the XDP maps would be.

use std::collections::HashMap;

use crate::addr::Target;
use crate::ban::{BanClass, MapChange};

/// `change` applied to `held`, as the ban maps would take it.
pub(super) fn apply_change(
    held: &mut HashMap<Target, BanClass>,
    target: &Target,
    change: MapChange,
) {
    match change {
        MapChange::Set(c) => {
            held.insert(*target, c);
        }
        MapChange::Remove => {
            held.remove(target);
        }
        MapChange::Unchanged => {}
    }
}
