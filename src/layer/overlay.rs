//! Where overlayfs keeps its own marks (opaque directories, redirects): `trusted.overlay.*`,
//! or `user.overlay.*` when overlays are mounted with `userxattr`, as rootless kiln does in its
//! user namespace, where `trusted.*` is out of reach. The differ, the extractor, the seeding and
//! the mounts must agree on it, so it is one process-wide switch, thrown once at start-up.

use std::sync::atomic::{AtomicBool, Ordering};

static USER_XATTRS: AtomicBool = AtomicBool::new(false);

/// From now on overlays are mounted with `userxattr` and their marks are `user.overlay.*`.
pub fn use_user_xattrs() {
    USER_XATTRS.store(true, Ordering::Relaxed);
}

/// Whether overlays use `user.overlay.*` (and are mounted with `userxattr`).
pub fn user_xattrs() -> bool {
    USER_XATTRS.load(Ordering::Relaxed)
}

/// The prefix of overlayfs's own xattrs in this process.
pub fn xattr_prefix() -> &'static str {
    if user_xattrs() {
        "user.overlay."
    } else {
        "trusted.overlay."
    }
}

/// The xattr overlayfs marks an opaque directory with.
pub fn opaque_xattr() -> &'static str {
    if user_xattrs() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether `name` is one of overlayfs's xattrs, under either prefix: a layer must never carry
/// them (they would smuggle redirects or opaque marks past the whiteout entries).
pub fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}
