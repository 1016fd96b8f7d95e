//! `USER` resolution with Docker's semantics (runc `libcontainer/user.GetExecUser`, as BuildKit
//! calls it): `name`, `uid`, `name:group`, `uid:gid`, looked up in the rootfs's `/etc/passwd` and
//! `/etc/group`.

use std::path::Path;

use super::rootfs::Root;
use super::{SandboxError, UserSpec};

const MAX_FILE: u64 = 64 << 20;

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split(':');
            let name = f.next()?;
            let _pass = f.next();
            let uid = f.next()?.trim().parse().ok()?;
            let gid = f.next()?.trim().parse().ok()?;
            let _gecos = f.next();
            let home = f.next().unwrap_or("");
            Some(PasswdEntry {
                name,
                uid,
                gid,
                home,
            })
        })
        .collect()
}

fn group_entries(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split(':');
            let name = f.next()?;
            let _pass = f.next();
            let gid = f.next()?.trim().parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect()
}

/// Resolves a Dockerfile `USER` value against the rootfs at `rootfs`. An empty `user` is root
/// (0:0, no supplementary groups; only its home is looked up).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<UserSpec, SandboxError> {
    let root = Root::open(rootfs)?;
    let passwd = root
        .read("/etc/passwd", MAX_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let group = root
        .read("/etc/group", MAX_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    resolve_user_from(user, passwd.as_deref(), group.as_deref())
}

/// [`resolve_user`] on file contents (`None`: the file does not exist).
pub fn resolve_user_from(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<UserSpec, SandboxError> {
    let users = passwd.map(passwd_entries).unwrap_or_default();
    if user.is_empty() {
        // Root without supplementary groups; runc still looks up its home.
        let mut spec = UserSpec::default();
        if let Some(u) = users.iter().find(|u| u.uid == 0) {
            spec.home = u.home.to_string();
        }
        return Ok(spec);
    }
    let (user_arg, group_arg) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid_arg: Option<u32> = user_arg.parse().ok();
    let found = users.iter().find(|u| match uid_arg {
        Some(uid) => u.uid == uid,
        None => u.name == user_arg,
    });
    let mut spec = UserSpec::default();
    let mut matched_name = None;
    match (found, uid_arg) {
        (Some(u), _) => {
            spec.uid = u.uid;
            spec.gid = u.gid;
            spec.home = u.home.to_string();
            matched_name = Some(u.name);
        }
        (None, Some(uid)) => spec.uid = uid,
        (None, None) => {
            return Err(SandboxError::UnknownUser {
                user: user_arg.to_string(),
            })
        }
    }
    let groups = group.map(group_entries).unwrap_or_default();
    match group_arg {
        Some(g) if !g.is_empty() => {
            let gid_arg: Option<u32> = g.parse().ok();
            let hit = groups.iter().find(|e| match gid_arg {
                Some(gid) => e.gid == gid,
                None => e.name == g,
            });
            spec.gid = match (hit, gid_arg) {
                (Some(e), _) => e.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(SandboxError::UnknownGroup {
                        group: g.to_string(),
                    })
                }
            };
        }
        _ => {
            if let Some(name) = matched_name {
                spec.additional_gids = groups
                    .iter()
                    .filter(|e| e.members.contains(&name))
                    .map(|e| e.gid)
                    .collect();
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1::/:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        bob:x:1001:100::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        users:x:100:alice\n\
        alice:x:1000:\n\
        docker:x:999:alice,bob\n\
        staff:x:50:\n";

    fn r(u: &str) -> Result<UserSpec, SandboxError> {
        resolve_user_from(u, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let u = r("alice").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![100, 999]);
    }

    #[test]
    fn by_uid_matches_passwd() {
        let u = r("1001").unwrap();
        assert_eq!((u.uid, u.gid), (1001, 100));
        assert_eq!(u.additional_gids, vec![999]);
    }

    #[test]
    fn unknown_uid_is_gid_zero() {
        let u = r("4242").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        assert!(u.additional_gids.is_empty());
    }

    #[test]
    fn home_is_the_passwd_entrys_else_slash_as_runc_sets_it() {
        assert_eq!(r("alice").unwrap().home, "/home/alice");
        assert_eq!(r("1001:50").unwrap().home, "/home/bob");
        assert_eq!(r("daemon").unwrap().home, "/");
        // A uid /etc/passwd lacks (`USER 4242:4242`) gets `/`, as runc's GetExecUser default.
        assert_eq!(r("4242").unwrap().home, "/");
        assert_eq!(r("4242:4242").unwrap().home, "/");
        // No USER is root, whose home is still looked up.
        assert_eq!(r("").unwrap().home, "/root");
        assert_eq!(resolve_user_from("", None, None).unwrap().home, "/");
    }

    #[test]
    fn explicit_group_drops_supplementary() {
        let u = r("alice:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.additional_gids.is_empty());
        let u = r("1000:1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = r("5:7").unwrap();
        assert_eq!((u.uid, u.gid), (5, 7));
    }

    #[test]
    fn unknown_name_is_buildkits_error() {
        let e = r("mallory").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find user mallory: no matching entries in passwd file"
        );
        let e = r("alice:nogroup").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn missing_files() {
        let u = resolve_user_from("1000:1000", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert!(resolve_user_from("alice", None, None).is_err());
        assert_eq!(
            resolve_user_from("", None, None).unwrap(),
            UserSpec::default()
        );
        let u = resolve_user_from("root", Some(PASSWD), None).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
    }

    #[test]
    fn reads_inside_a_fake_rootfs() {
        let t = std::env::temp_dir().join(format!("kiln-user-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(t.join("etc/group"), GROUP).unwrap();
        let u = resolve_user(&t, "bob").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1001, 100, vec![999]));
        // An absolute symlink for /etc/passwd resolves inside the root, not to the host's file.
        std::fs::remove_file(t.join("etc/passwd")).unwrap();
        std::fs::write(t.join("etc/passwd.real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", t.join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(&t, "alice").unwrap().uid, 1000);
        std::fs::remove_dir_all(&t).unwrap();
    }
}
